"""SPEC §1.12, the quick error index: each bad input raises the documented exception class.

Rows where this project deviates on purpose say so (``# deviation:``); the migration guide lists
them.  Client construction errors are in tests/test_client.py, schema rules in test_schemas.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deker import ArraySchema, AttributeSchema, Client, DimensionSchema, VArraySchema
from deker.errors import (
    DekerArrayError,
    DekerArrayTypeError,
    DekerClientError,
    DekerCollectionAlreadyExistsError,
    DekerCollectionNotExistsError,
    DekerFilterError,
    DekerInstanceNotExistsError,
    DekerInvalidManagerCallError,
    DekerMemoryError,
    DekerShapeError,
    DekerStorageError,
    DekerSubsetError,
    DekerUnknownFilterError,
    DekerValidationError,
)

DIMS = [DimensionSchema(name="x", size=4)]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    client = Client(f"file://{tmp_path}")
    keyed = ArraySchema(
        dtype=float,
        dimensions=DIMS,
        attributes=[
            AttributeSchema(name="k", dtype=int, primary=True),
            AttributeSchema(name="dt", dtype=datetime, primary=False),
        ],
    )
    plain = client.create_collection("plain", ArraySchema(dtype=float, dimensions=DIMS))
    yield {
        "client": client,
        "plain": plain,
        "keyed": client.create_collection("keyed", keyed),
        "tiles": client.create_collection("v", VArraySchema(dtype=float, dimensions=DIMS, vgrid=(2,))),
        "array": plain.create(),
    }
    client.close()


CASES: list[tuple[str, type[BaseException], Callable[[dict[str, Any]], Any]]] = [
    (
        "unknown storage adapter",
        DekerStorageError,
        lambda e: e["client"].create_collection("z", ArraySchema(dtype=float, dimensions=DIMS), None, "s3"),
    ),
    (
        "collection exists",
        DekerCollectionAlreadyExistsError,
        lambda e: e["client"].create_collection("plain", ArraySchema(dtype=float, dimensions=DIMS)),
    ),
    (
        "size of unknown collection",
        DekerCollectionNotExistsError,
        lambda e: e["client"].calculate_storage_size("no"),
    ),
    (
        "clear_locks of unknown collection",
        DekerCollectionNotExistsError,
        lambda e: e["client"].clear_locks("no"),
    ),
    (
        "schema too large for memory",
        DekerMemoryError,
        lambda e: e["client"].create_collection(
            "big", ArraySchema(dtype=float, dimensions=[DimensionSchema(name="x", size=10**15)])
        ),
    ),
    ("bad id format", DekerValidationError, lambda e: e["plain"].create(id_="nope")),
    ("attributes not a dict", DekerValidationError, lambda e: e["keyed"].create([1])),
    ("duplicate primary key", DekerValidationError, lambda e: [e["keyed"].create({"k": 1}) for _ in "ab"]),
    # deviation: deker 1.1.7 raises a raw KeyError; a missing primary value is a validation error
    ("primary only in custom attributes", DekerValidationError, lambda e: e["keyed"].create(None, {"k": 2})),
    ("same id stored", DekerArrayError, lambda e: e["plain"].create(id_=e["array"].id)),
    # deviation: also a DekerFilterError naming the key (1.1.7: a bare NotImplementedError)
    ("filter without id or primary", DekerUnknownFilterError, lambda e: e["plain"].filter({"x": 1}).last()),
    (
        "filter with a None primary value",
        NotImplementedError,
        lambda e: e["keyed"].filter({"k": None}).last(),
    ),
    ("filter with extra keys", DekerFilterError, lambda e: e["keyed"].filter({"k": 1, "zz": 2}).last()),
    ("varrays of an Array collection", DekerInvalidManagerCallError, lambda e: e["plain"].varrays),
    ("bad index type", IndexError, lambda e: e["array"]["x"]),
    ("two ellipses", IndexError, lambda e: e["array"][..., ...]),
    ("step other than 1", IndexError, lambda e: e["array"][::2]),
    ("zero-length axis", IndexError, lambda e: e["array"][2:2]),
    ("integer out of range", IndexError, lambda e: e["array"][10]),
    ("update with None", DekerArrayError, lambda e: e["array"][:].update(None)),
    ("update with a wrong type", DekerArrayTypeError, lambda e: e["array"][:].update("abc")),
    ("update with a lossy dtype", DekerArrayTypeError, lambda e: e["array"][:].update(np.ones(4) * 1j)),
    # deviation: a DekerShapeError, still the IndexError of 1.1.7
    ("update with a wrong shape", DekerShapeError, lambda e: e["array"][:].update(np.ones(3))),
    ("scalar subset to xarray", DekerSubsetError, lambda e: e["array"][1].read_xarray()),
]


@pytest.mark.parametrize(("case", "exc", "call"), CASES, ids=[c[0] for c in CASES])
def test_error_index(env: dict[str, Any], case: str, exc: type[BaseException], call: Any) -> None:
    with pytest.raises(exc) as info:
        call(env)
    assert str(info.value), f"{case}: the message must say what to fix"


def test_messages_name_what_is_wrong(env: dict[str, Any]) -> None:
    """Filters, primary-attribute updates and update shapes: a Deker error that is the 1.1.7 builtin."""
    for coll, filters in (
        (env["plain"], {"nope": 1}),
        (env["keyed"], {"nope": 1}),
        (env["keyed"], {"k": 1, "zz": 2}),
    ):
        with pytest.raises(DekerUnknownFilterError) as info:
            coll.filter(filters).last()
        assert isinstance(info.value, NotImplementedError) and isinstance(info.value, DekerFilterError)
        key = "'nope'" if "nope" in filters else "'zz'"
        assert f"Unknown filter key {key}: not an attribute of the schema" in str(info.value)
    assert "has no primary attributes: filter by {'id': ...}" in _message(
        lambda: env["plain"].filter({"nope": 1}).last()
    )
    assert "every primary attribute ['k']" in _message(lambda: env["keyed"].filter({"nope": 1}).last())
    with pytest.raises(
        NotImplementedError, match="non primary attributes"
    ):  # 1.1.7's, for a custom attribute
        env["keyed"].filter({"dt": datetime(2024, 1, 1)}).last()
    array = env["keyed"].create({"k": 1})
    with pytest.raises(
        DekerValidationError, match=r"Primary attributes cannot change: \['k'\] identifies the Array"
    ):
        array.update_custom_attributes({"k": 2})
    assert array.primary_attributes == {"k": 1}
    tiles = env["client"].create_collection(
        "kv",
        VArraySchema(dtype=float, dimensions=DIMS, vgrid=(2,), attributes=[AttributeSchema("k", int, True)]),
    )
    with pytest.raises(DekerValidationError, match=r"Primary attributes cannot change: .* the VArray"):
        tiles.create({"k": 1}).update_custom_attributes({"k": 2})
    for subset in (env["array"][:], env["tiles"].create()[:]):
        with pytest.raises(DekerShapeError, match=r"Invalid data shape: \(3,\); \(4,\) expected") as shape:
            subset.update(np.ones(3))
        assert isinstance(shape.value, IndexError) and isinstance(shape.value, DekerArrayError)


def _message(call: Callable[[], Any]) -> str:
    try:
        call()
    except Exception as exc:  # the message is what is tested
        return str(exc)
    raise AssertionError("no exception")


def test_deleted_objects_and_closed_client(env: dict[str, Any]) -> None:
    arr, plain, client = env["array"], env["plain"], env["client"]
    varr = env["tiles"].create()
    arr.delete()
    for call in (lambda: arr[:].read(), lambda: arr[:].update(1.0)):
        with pytest.raises(DekerInstanceNotExistsError):
            call()
    plain.delete()
    with pytest.raises(DekerInstanceNotExistsError):
        plain.create()
    client.close()
    for call in (
        lambda: client.get_collection("v"),
        lambda: client.create_collection("q", ArraySchema(dtype=float, dimensions=DIMS)),
        lambda: varr[:].read(),
        lambda: list(env["tiles"]),
    ):
        with pytest.raises(DekerClientError, match="Client is closed"):
            call()


def test_scalar_update_of_many_cells_broadcasts(env: dict[str, Any]) -> None:
    # deviation: deker 1.1.7 raises IndexError for a scalar update of a multi-cell VSubset;
    # scalars broadcast like numpy here, for Arrays and VArrays alike
    varr = env["tiles"].create()
    varr[:].update(5.0)
    np.testing.assert_array_equal(varr[:].read(), np.full(4, 5.0))
