"""deker 1.1.7's import path of the collection managers.

``from deker.managers import FilteredManager`` keeps working: the names here are the classes of
:mod:`deker.collection` themselves (``deker.managers.FilteredManager is deker.FilteredManager``).
A collection makes its managers (``collection.arrays``, ``collection.varrays``,
``collection.filter(...)``); they are not built directly.
"""

from __future__ import annotations

from deker.collection import ArrayManager, DataManager, FilteredManager, VArrayManager

__all__ = ["ArrayManager", "DataManager", "FilteredManager", "VArrayManager"]
