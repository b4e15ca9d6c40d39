"""deker/managers.py: deker 1.1.7's import path of the collection managers.

Covered: the four names 1.1.7 defined in ``deker.managers`` are importable there, are the
classes of ``deker.collection`` (not copies), and are what a collection hands out.
"""

from __future__ import annotations

from pathlib import Path

from deker import ArraySchema, Client, DimensionSchema, VArraySchema


def test_deker_117_import_path_of_the_managers(tmp_path: Path) -> None:
    import deker
    from deker import collection, managers
    from deker.managers import ArrayManager, DataManager, FilteredManager, VArrayManager

    assert managers.__all__ == ["ArrayManager", "DataManager", "FilteredManager", "VArrayManager"]
    assert FilteredManager is collection.FilteredManager is deker.FilteredManager
    assert ArrayManager is collection.ArrayManager
    assert VArrayManager is collection.VArrayManager
    assert DataManager is collection.DataManager
    with Client(f"file://{tmp_path}") as client:
        dims = [DimensionSchema("x", 4)]
        plain = client.create_collection("a", ArraySchema(dtype=float, dimensions=dims))
        tiled = client.create_collection("v", VArraySchema(dtype=float, dimensions=dims, vgrid=(2,)))
        assert isinstance(plain.arrays, ArrayManager)
        assert isinstance(tiled.varrays, VArrayManager)
        assert isinstance(tiled.arrays, ArrayManager)
        found = plain.filter({"id": plain.create().id})
        assert isinstance(found, FilteredManager)
        assert found.last() is not None
