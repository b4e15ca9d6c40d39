"""Codecs of deker's stored metadata, byte-compatible with deker 1.1.7 (SPEC §2.3-§2.4).

- Collection metadata (``<name>/<name>.json``): :class:`CollectionMeta`,
  :func:`encode_collection_meta` and :func:`decode_collection_meta`.
- Array, tile and VArray metadata (the ``meta`` dataset of a data file, or a VArray's ``.json``):
  :func:`encode_array_meta`, :func:`meta_storage_dtype`, :func:`decode_array_meta` and
  :func:`deserialize_attributes`.

Notes
-----
Decoding accepts metadata versions up to :data:`CURRENT_METADATA_VERSION`, compared numerically
(deker 1.1.7 compared strings, so "0.10" would have counted as older than "0.2"); older versions
are read as the current one, as deker 1.1.7 does.

Reading attributes keeps a lossy quirk of deker 1.1.7 so that both read the same values: inside a
``tuple`` attribute, a string that looks like a parenthesised complex literal (``"(1+2j)"``) is
read as a ``complex`` (complex numbers inside tuples are stored that way, pure imaginary ones
as ``"(0+2j)"``: deker 1.1.7 wrote ``"2j"``, which both read back as that string).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np

from deker.dtypes import attribute_name_to_dtype, check_integer_range, name_to_dtype
from deker.errors import DekerMetaDataError, DekerValidationError
from deker.options import HDF5Options
from deker.schemas import (
    ArraySchema,
    AttributeSchema,
    DimensionSchema,
    TimeDimensionSchema,
    VArraySchema,
)
from deker.types import to_utc

__all__ = [
    "CURRENT_METADATA_VERSION",
    "CollectionMeta",
    "as_read_back",
    "collection_meta_as_dict",
    "decode_array_meta",
    "decode_collection_meta",
    "deserialize_attributes",
    "encode_array_meta",
    "encode_collection_meta",
    "meta_storage_dtype",
    "serialize_attribute_value",
]

#: The metadata version deker writes.
CURRENT_METADATA_VERSION = "0.2"

#: ``sys.getsizeof(b"")`` on 64-bit CPython: deker 1.1.7 sizes the ``meta`` dataset with
#: ``sys.getsizeof(payload)``, i.e. the byte length plus this overhead.
_BYTES_OVERHEAD = 33

_COMPLEX_IN_TUPLE = re.compile(r"^\([^()]*j\)$")


@dataclass(frozen=True)
class CollectionMeta:
    """Everything stored about a collection in its ``<name>.json``.

    Parameters
    ----------
    name : str
        The collection name.
    schema : ArraySchema or VArraySchema
        The collection schema.
    options : HDF5Options, optional
        The storage options, if any were declared.
    storage_adapter : str
        The storage adapter name (always ``"HDF5StorageAdapter"`` for local storages).
    metadata_version : str
        The metadata format version.
    """

    name: str
    schema: ArraySchema | VArraySchema
    options: HDF5Options | None = None
    storage_adapter: str = "HDF5StorageAdapter"
    metadata_version: str = CURRENT_METADATA_VERSION

    @property
    def kind(self) -> Literal["array", "varray"]:
        """``"varray"`` for a VArray collection, else ``"array"``."""
        return "varray" if isinstance(self.schema, VArraySchema) else "array"


# -------------------------------------------------------------------------------------- collection
def collection_meta_as_dict(meta: CollectionMeta) -> dict[str, Any]:
    """Return the stored form of a collection's metadata, keys in deker 1.1.7's order.

    Parameters
    ----------
    meta : CollectionMeta
        The metadata.

    Returns
    -------
    dict
        ``{"name", "type", "schema", "options", "storage_adapter", "metadata_version"}``.
    """
    return {
        "name": meta.name,
        "type": meta.kind,
        "schema": meta.schema.as_dict,
        "options": None if meta.options is None else meta.options.as_dict,
        "storage_adapter": meta.storage_adapter,
        "metadata_version": meta.metadata_version,
    }


def encode_collection_meta(meta: CollectionMeta) -> str:
    """Return the text of a collection's ``<name>.json``, byte-identical to deker 1.1.7's.

    Parameters
    ----------
    meta : CollectionMeta
        As for :func:`collection_meta_as_dict`.

    Returns
    -------
    str
        ``json.dumps`` of :func:`collection_meta_as_dict` with default settings.
    """
    return json.dumps(collection_meta_as_dict(meta))


def _parse_version(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def decode_collection_meta(data: str | bytes | Mapping[str, Any]) -> CollectionMeta:
    """Parse a collection's stored metadata (SPEC §2.3).

    Missing ``options``, ``fill_value``, ``attributes``, ``labels`` and ``scale`` take their
    defaults.  Versions up to :data:`CURRENT_METADATA_VERSION` are accepted and the result has
    the current version.  The input is not modified.

    Parameters
    ----------
    data : str or bytes or Mapping
        The JSON text or the already parsed object.

    Returns
    -------
    CollectionMeta
        The metadata.

    Raises
    ------
    DekerMetaDataError
        If the metadata is not valid JSON, is too new or has no version, or any field is
        missing or invalid; the message names the collection and the problem.
    """
    if isinstance(data, (str, bytes, bytearray)):
        try:
            parsed = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DekerMetaDataError(f"Collection metadata is not valid JSON: {exc}") from exc
    else:
        parsed = data
    if not isinstance(parsed, Mapping):
        raise DekerMetaDataError(f"Collection metadata shall be a JSON object; got {type(parsed).__name__}")
    name = parsed.get("name")
    label = f'Collection "{name}" metadata'
    version = parsed.get("metadata_version")
    if version is None:
        raise DekerMetaDataError(f"{label} has no metadata_version")
    try:
        too_new = _parse_version(str(version)) > _parse_version(CURRENT_METADATA_VERSION)
    except ValueError as exc:
        raise DekerMetaDataError(f"{label} has an invalid metadata_version {version!r}") from exc
    if too_new:
        raise DekerMetaDataError(
            f"{label} has version {version}, newer than the supported {CURRENT_METADATA_VERSION}: "
            "upgrade deker to read it"
        )
    try:
        if not isinstance(name, str) or not name:
            raise DekerValidationError(f"'name' shall be a non-empty string; got {name!r}")
        kind = parsed.get("type")
        if kind not in ("array", "varray"):
            raise DekerValidationError(f"unknown collection type {kind!r} (expected 'array' or 'varray')")
        schema = _schema_from_dict(_require(parsed, "schema", Mapping), kind)
        options_data = parsed.get("options")
        options = None if options_data is None else HDF5Options.from_dict(options_data)
        adapter = parsed.get("storage_adapter", "HDF5StorageAdapter")
        if not isinstance(adapter, str):
            raise DekerValidationError(f"'storage_adapter' shall be a string; got {adapter!r}")
    except DekerMetaDataError:
        raise
    except (DekerValidationError, KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise DekerMetaDataError(f"{label} is invalid/corrupted: {exc}") from exc
    return CollectionMeta(name, schema, options, adapter, CURRENT_METADATA_VERSION)


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise DekerValidationError(f"missing {key!r}")
    value = data[key]
    if not isinstance(value, kind):
        raise DekerValidationError(f"{key!r} has an invalid value {value!r}")
    return value


_SCHEMA_KEYS = {"dimensions", "dtype", "attributes", "fill_value"}


def _schema_from_dict(data: Mapping[str, Any], kind: str) -> ArraySchema | VArraySchema:
    extra = set(data) - _SCHEMA_KEYS - ({"vgrid", "arrays_shape"} if kind == "varray" else set())
    if extra:
        raise DekerValidationError(f"unknown schema keys {sorted(extra)}")
    dims = [_dimension_from_dict(d) for d in _require(data, "dimensions", (list, tuple))]
    dtype = name_to_dtype(_require(data, "dtype", str))
    attrs = [_attribute_from_dict(a) for a in (data.get("attributes") or [])]
    fill = data.get("fill_value")  # a string (or null); the schema parses it with the dtype
    if kind == "varray":
        return VArraySchema(
            dtype=dtype,
            dimensions=dims,
            vgrid=data.get("vgrid"),
            arrays_shape=data.get("arrays_shape") if data.get("vgrid") is None else None,
            fill_value=fill,
            attributes=attrs,
        )
    return ArraySchema(dtype=dtype, dimensions=dims, fill_value=fill, attributes=attrs)


def _dimension_from_dict(data: Any) -> DimensionSchema | TimeDimensionSchema:
    if not isinstance(data, Mapping):
        raise DekerValidationError(f"a dimension shall be an object; got {data!r}")
    name, size = _require(data, "name", str), _require(data, "size", int)
    if data.get("type") == "time" or "start_value" in data:
        step = _require(data, "step", Mapping)
        return TimeDimensionSchema(name, size, _require(data, "start_value", str), timedelta(**step))
    return DimensionSchema(name, size, data.get("labels"), data.get("scale"))


def _attribute_from_dict(data: Any) -> AttributeSchema:
    if not isinstance(data, Mapping):
        raise DekerValidationError(f"an attribute shall be an object; got {data!r}")
    return AttributeSchema(
        _require(data, "name", str),
        attribute_name_to_dtype(_require(data, "dtype", str)),
        _require(data, "primary", bool),
    )


# ------------------------------------------------------------------------------- array / VArray
def serialize_attribute_value(value: Any) -> Any:
    """Return the JSON-ready form of an attribute value (SPEC §2.4).

    Parameters
    ----------
    value : Any
        ``None``, ``str``, ``bool``, a Python or numpy number, a ``datetime``, a tuple, list or
        ndarray of those.

    Returns
    -------
    Any
        ``datetime`` becomes ``isoformat()``; complex numbers ``str()`` (``"(1+2j)"``); numpy
        numbers Python numbers; tuples, lists and arrays lists.

    Raises
    ------
    DekerValidationError
        For a value of another type.
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (complex, np.complexfloating)):
        return str(value)
    if isinstance(value, (int, float)):  # Python numbers, np.float64 included
        return float(value) if isinstance(value, np.floating) else value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return (
            [serialize_attribute_value(v) for v in value.tolist()]
            if value.ndim
            else serialize_attribute_value(value[()])
        )
    if isinstance(value, (tuple, list)):
        return [_tuple_element(v) for v in value]
    raise DekerValidationError(f"Cannot store attribute value {value!r} of type {type(value).__name__}")


def _tuple_element(value: Any) -> Any:
    """Return the JSON-ready form of an element of a tuple attribute.

    A complex number is always written in parentheses: inside a tuple only a string that looks
    like ``"(a+bj)"`` is read back as a complex (by deker 1.1.7 too), and ``str(2j)`` is ``"2j"``,
    which would come back as a string (and no longer name the array's primary-key folder).
    """
    if isinstance(value, (complex, np.complexfloating)):
        text = str(value)
        if not text.startswith("("):  # a real part of +0.0: "2j", "-2j", "nanj"
            text = f"(0{text})" if text.startswith("-") else f"(0+{text})"
        return text
    return serialize_attribute_value(value)


def encode_array_meta(array_id: str, primary: Mapping[str, Any], custom: Mapping[str, Any]) -> bytes:
    """Return the stored metadata of an Array, tile or VArray (UTF-8 JSON).

    Parameters
    ----------
    array_id : str
        The id.
    primary, custom : Mapping
        The attribute values, in schema order.

    Returns
    -------
    bytes
        ``{"id", "primary_attributes", "custom_attributes"}`` as deker 1.1.7 writes it.
    """
    document = {
        "id": array_id,
        "primary_attributes": {k: serialize_attribute_value(v) for k, v in primary.items()},
        "custom_attributes": {k: serialize_attribute_value(v) for k, v in custom.items()},
    }
    return json.dumps(document).encode("utf-8")


def meta_storage_dtype(payload: bytes) -> str:
    """Return the HDF5 dtype of the ``meta`` dataset holding ``payload``: ``"S<len + 33>"``.

    This is ``"S%d" % sys.getsizeof(payload)`` on 64-bit CPython, as deker 1.1.7 writes it,
    computed so that it does not depend on the interpreter.
    """
    return f"S{len(payload) + _BYTES_OVERHEAD}"


def decode_array_meta(payload: bytes | str | np.bytes_) -> dict[str, Any]:
    """Parse stored Array/VArray metadata into its raw JSON object.

    Parameters
    ----------
    payload : bytes or str or numpy.bytes_
        The content of a ``meta`` dataset (NUL padding allowed) or of a VArray ``.json``.

    Returns
    -------
    dict
        ``{"id": str, "primary_attributes": dict, "custom_attributes": dict}`` with JSON values.

    Raises
    ------
    DekerMetaDataError
        If the payload is not such an object.
    """
    try:
        raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        document = json.loads(raw.rstrip(b"\0").decode("utf-8"))
    except (ValueError, UnicodeError, TypeError) as exc:
        raise DekerMetaDataError(f"Array metadata is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise DekerMetaDataError(f"Array metadata shall be a JSON object; got {type(document).__name__}")
    if not isinstance(document.get("id"), str):
        raise DekerMetaDataError(f"Array metadata has no valid 'id': {document.get('id')!r}")
    for key in ("primary_attributes", "custom_attributes"):
        if not isinstance(document.get(key), dict):
            raise DekerMetaDataError(f"Array metadata {key!r} shall be an object; got {document.get(key)!r}")
    return document


def _tuple_item(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuple_item(v) for v in value)
    if isinstance(value, str) and _COMPLEX_IN_TUPLE.match(value):
        try:
            return complex(value)
        except ValueError:
            return value
    return value


def _typed(value: Any, dtype: type) -> Any:
    if value is None:
        return None
    if dtype is datetime:
        return to_utc(value)
    if dtype is tuple:
        if not isinstance(value, (list, tuple)):
            raise DekerValidationError(f"expected a list for a tuple attribute; got {value!r}")
        return _tuple_item(list(value))
    if dtype is str:
        return str(value)
    if dtype is int and isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise DekerValidationError(f"expected an integer; got {value!r}")
    check_integer_range(dtype, value)
    return dtype(value)


def deserialize_attributes(raw: Mapping[str, Any], attributes: Sequence[AttributeSchema]) -> dict[str, Any]:
    """Return typed attribute values from their stored form, in schema order.

    Parameters
    ----------
    raw : Mapping
        The stored values (``primary_attributes`` or ``custom_attributes`` of the metadata).
    attributes : sequence of AttributeSchema
        The attributes this mapping holds (the primary or the custom ones of the schema); the
        result has exactly these keys, a missing value being ``None``.  Stored keys that are
        not in ``attributes`` are ignored.

    Returns
    -------
    dict
        Datetimes are aware UTC (both ``isoformat()`` and ``str()`` forms are read), tuples are
        rebuilt recursively, complex numbers parsed from ``"(a+bj)"``, other values converted
        with ``dtype(value)``; ``None`` stays ``None``.

    Raises
    ------
    DekerMetaDataError
        If a value cannot be converted to its attribute's type.
    """
    result: dict[str, Any] = {}
    for attr in attributes:
        value = raw.get(attr.name)
        try:
            result[attr.name] = _typed(value, attr.dtype)
        except (DekerValidationError, TypeError, ValueError, OverflowError) as exc:
            raise DekerMetaDataError(
                f"Stored value {value!r} of attribute {attr.name!r} is not a valid "
                f"{attr.dtype.__name__}: {exc}"
            ) from exc
    return result


def as_read_back(values: Mapping[str, Any], attributes: Sequence[AttributeSchema]) -> dict[str, Any]:
    """Return attribute values as every later read of their stored form gives them.

    Only tuples change: a datetime inside one is stored (and read back) as its ISO string, a
    string in it that looks like a complex number is read back as one (SPEC §2.4).  The
    handle that writes such values holds what every other handle reads, not what it was given.

    Parameters
    ----------
    values : Mapping
        Typed values, as :func:`deserialize_attributes` returns them.
    attributes : sequence of AttributeSchema
        The attributes of ``values``.

    Returns
    -------
    dict
        ``values`` itself (a copy) when it holds no tuple.
    """
    if not any(isinstance(v, tuple) for v in values.values()):
        return dict(values)
    return deserialize_attributes({k: serialize_attribute_value(v) for k, v in values.items()}, attributes)
