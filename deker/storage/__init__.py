"""Storage layer: on-disk layout, HDF5 array files and the lockfile protocol.

This is the only part of deker that touches files and the only importer of ``h5py``.  It knows
nothing of schemas: it works on paths, ids, bounds, numpy arrays and plain settings.
"""
