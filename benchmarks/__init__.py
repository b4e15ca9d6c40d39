"""Benchmarks of issue 6: deker against raw h5py and deker 1.1.7.

Run ``python -m benchmarks`` (``--help`` for the options); see docs/PERFORMANCE.md.
"""
