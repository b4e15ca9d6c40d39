"""deker 1.1.7's import path of the public value types.

``from deker.types.public.classes import Scale`` keeps working: the names here are the classes
of :mod:`deker.types` themselves (``deker.types.public.classes.Scale is deker.Scale``).
"""

from __future__ import annotations

from deker.types import IndexLabels, Scale, StorageSize

__all__ = ["IndexLabels", "Scale", "StorageSize"]
