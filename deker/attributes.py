"""Attribute values of arrays: validation, conversion, filters, ids and primary-key paths.

The rules are those of deker 1.1.7 (SPEC §1.5, §1.9, §2.5), checked in the same order with the
same exception classes.  Deviations (SPEC §8.8, §8.15):

- A primary attribute passed only in the custom attributes raises :class:`DekerValidationError`
  (deker 1.1.7 leaked a ``KeyError``).
- A custom datetime attribute is mandatory when a time dimension starts at exactly ``"$<name>"``
  (deker 1.1.7 used a prefix match).
- Partial custom-attribute updates keep every unspecified custom attribute.
- Filter values are coerced to the attribute dtype (``{"q": 1}`` finds ``q == 1.0``).
- Primary-key path components and collection names are checked to be safe single path
  components (no ``/``, NUL, ``.``/``..``, blank or over-long values).
- Ids must be canonical UUID strings (8-4-4-4-12 groups); deker 1.1.7 only checked the length
  and the number of groups.
- A primary key is one key for values that compare equal: ``-0.0`` becomes ``0.0`` (in floats,
  complex parts and tuple elements, at creation and in filters), so both name the array of
  ``0.0``, stored where deker 1.1.7 looks for ``0.0``.  Keys 1.1.7 stored with a ``-0.0`` are
  still found (:func:`equal_key_components`).  NaN keys are one key, as in 1.1.7 (every NaN
  is spelt ``nan``).
- New collections cannot be named ``<x>.lock``: that is the lock file of a collection ``<x>``
  (:func:`check_new_collection_name`).
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import numpy as np

from deker.dtypes import check_integer_range, datetime64_moment, is_attribute_dtype
from deker.errors import DekerUnknownFilterError, DekerValidationError
from deker.schemas import ArraySchema, AttributeSchema, VArraySchema
from deker.types import to_utc

__all__ = [
    "canonical_key_components",
    "check_collection_name",
    "check_new_collection_name",
    "check_path_component",
    "equal_key_components",
    "normalize_filters",
    "primary_key_components",
    "process_attributes",
    "process_custom_update",
    "validate_id",
]

#: The longest file name (in UTF-8 bytes) most file systems accept.
MAX_COMPONENT_BYTES = 255
# ``<name>.json`` and ``<name>.lock`` must be valid file names.
MAX_COLLECTION_NAME_BYTES = MAX_COMPONENT_BYTES - len(".json")


# --------------------------------------------------------------------------------------------- ids
def validate_id(value: Any, cls_name: str) -> str:
    """Check that an id is a UUID string (any version).

    Parameters
    ----------
    value : Any
        The id to check (``None`` is handled by the caller).
    cls_name : str
        The name of the object kind, for the message (``"Array"``, ``"VArray"``).

    Returns
    -------
    str
        The id.

    Raises
    ------
    DekerValidationError
        If the id is not a canonical UUID string (hex groups of 8-4-4-4-12 characters that
        :class:`uuid.UUID` accepts; any version).  deker 1.1.7 only checked the length and the
        number of groups, which let ids through that break the directory layout.

    """
    ok = isinstance(value, str) and [len(group) for group in value.split("-")] == [8, 4, 4, 4, 12]
    if ok:
        try:
            uuid.UUID(value)
        except ValueError:
            ok = False
    if not ok:
        raise DekerValidationError(
            f"{cls_name} id shall be a non-empty uuid.uuid5 string or None, got {value!r}"
        )
    return str(value)


# --------------------------------------------------------------------------------------- processing
def _referenced_attributes(schema: ArraySchema | VArraySchema) -> set[str]:
    """Names of the attributes that time dimensions start at (``"$name"``, exact match)."""
    refs: set[str] = set()
    for dim in schema.dimensions:
        start = getattr(dim, "start_value", None)
        if isinstance(start, str) and start.startswith("$"):
            refs.add(start[1:])
    return refs


def _convert_tuple(value: tuple[Any, ...]) -> tuple[Any, ...]:
    """Validate the elements of a tuple attribute value (recursively) and convert them."""
    out: list[Any] = []
    for item in value:
        kind = type(item)
        if item is None:
            out.append(None)
        elif kind is tuple:
            out.append(_convert_tuple(item))
        elif is_attribute_dtype(kind):
            out.append(to_utc(item) if kind is datetime else kind(item))
        else:
            raise DekerValidationError(
                f"Invalid dtype value {kind}: tuple elements shall be int, float, complex, str, tuple, "
                "datetime, numpy numbers or None"
            )
    return tuple(out)


def _convert(attr: AttributeSchema, value: Any) -> Any:
    """Convert an already type-checked value with the attribute dtype."""
    dtype = attr.dtype
    if dtype is datetime:
        return to_utc(value)
    if dtype is tuple:
        return _convert_tuple(value)
    return dtype(value)


def _without_negative_zero(value: Any) -> Any:
    """Return ``value`` with every ``-0.0`` (of a float, a complex part, a tuple element) as ``0.0``.

    ``-0.0 == 0.0``, so they are one primary key; ``x + 0`` is ``x`` for every other float
    (NaN and infinities included) and keeps the type.
    """
    if isinstance(value, (float, complex, np.floating, np.complexfloating)):
        return value + type(value)(0)
    if isinstance(value, tuple):
        return tuple(_without_negative_zero(item) for item in value)
    return value


def _check_mapping(value: Any) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise DekerValidationError(
            f"Invalid attributes type: {type(value).__name__}; attributes shall be a dict or None"
        )


def process_attributes(
    schema: ArraySchema | VArraySchema,
    primary: Mapping[str, Any] | None,
    custom: Mapping[str, Any] | None,
    *,
    kind: str = "Array",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate and convert the attribute values of a new array (SPEC §1.9.1, in that order).

    Parameters
    ----------
    schema : ArraySchema or VArraySchema
        The schema of the array.
    primary : Mapping, optional
        Primary attribute values; all of them are required when the schema has any.
    custom : Mapping, optional
        Custom attribute values; missing ones become ``None``.
    kind : str
        ``"Array"`` or ``"VArray"``, for the messages.

    Returns
    -------
    tuple of dict
        The primary and the custom values, each in schema order; every custom attribute is
        present (``None`` when absent).  Values are converted with their dtype (``True`` for an
        ``int`` attribute becomes ``1``; datetimes become aware UTC datetimes).

    Raises
    ------
    DekerValidationError
        If any rule is broken.

    """
    _check_mapping(primary)
    _check_mapping(custom)
    primary = primary or {}
    custom = custom or {}
    attributes: tuple[AttributeSchema, ...] = tuple(schema.attributes or ())
    if (primary or custom) and not attributes:
        raise DekerValidationError(f"{kind.capitalize()} attributes schema is missing")
    if any(a.primary for a in attributes) and not primary:
        raise DekerValidationError("No primary attributes provided")
    both = set(primary) & set(custom)
    if both:
        raise DekerValidationError(
            f"Key and custom attributes shall not have same names; invalid names: {sorted(both, key=str)}"
        )
    known = {a.name for a in attributes}
    extra = [name for name in (*primary, *custom) if name not in known]
    if extra:
        raise DekerValidationError(
            f"Setting additional attributes not listed in schema is not allowed. Invalid attributes: {extra}"
        )
    refs = _referenced_attributes(schema)
    out_primary: dict[str, Any] = {}
    out_custom: dict[str, Any] = {}
    for attr in attributes:
        name = attr.name
        if attr.primary:
            if name not in primary:
                if name in custom:
                    raise DekerValidationError(
                        f'Key attribute "{name}" was passed in the custom attributes; '
                        "pass it in the primary attributes"
                    )
                raise DekerValidationError(f"Key attribute missing: {name}")
            value = primary[name]
            if value is None or not isinstance(value, attr.dtype):
                raise DekerValidationError(
                    f'Key attribute "{name}" invalid type: {type(value).__name__}; '
                    f"expected {attr.dtype.__name__}"
                )
            out_primary[name] = _without_negative_zero(_convert(attr, value))
        else:
            value = custom.get(name)
            if value is None:
                if name in refs:
                    raise DekerValidationError(
                        f'Custom attribute "{name}" cannot be None: a time dimension starts at it'
                    )
                out_custom[name] = None
                continue
            if not isinstance(value, attr.dtype):
                raise DekerValidationError(
                    f'Custom attribute "{name}" invalid type: {type(value).__name__}; '
                    f"expected {attr.dtype.__name__}"
                )
            out_custom[name] = _convert(attr, value)
    return out_primary, out_custom


def process_custom_update(
    schema: ArraySchema | VArraySchema,
    primary: Mapping[str, Any],
    current_custom: Mapping[str, Any],
    update: Mapping[str, Any] | None,
    *,
    kind: str = "Array",
) -> dict[str, Any]:
    """Validate a (partial) update of the custom attributes of an array (SPEC §1.9.2).

    Parameters
    ----------
    schema : ArraySchema or VArraySchema
        The schema of the array.
    primary : Mapping
        The current primary attribute values.
    current_custom : Mapping
        The current custom attribute values.
    update : Mapping
        The new values; unspecified custom attributes keep their current value.
    kind : str
        ``"Array"`` or ``"VArray"``, for the messages.

    Returns
    -------
    dict
        The complete new custom attributes, in schema order.

    Raises
    ------
    DekerValidationError
        If nothing is passed or any rule of :func:`process_attributes` is broken.

    """
    _check_mapping(update)
    if not update:
        raise DekerValidationError("No attributes passed for update")
    fixed = [a.name for a in (schema.attributes or ()) if a.primary and a.name in update]
    if fixed:
        raise DekerValidationError(
            f"Primary attributes cannot change: {fixed} identif{'y' if len(fixed) > 1 else 'ies'} the "
            f"{kind}; only custom attributes can be updated (create a new {kind} for other key values)"
        )
    custom_names = {a.name for a in (schema.attributes or ()) if not a.primary}
    merged = {name: value for name, value in current_custom.items() if name in custom_names}
    merged.update(update)
    return process_attributes(schema, primary, merged, kind=kind)[1]


# ------------------------------------------------------------------------------------------ filters
def _coerce_number(value: Any, dtype: Any) -> Any:
    """Convert a number to a numeric dtype when the conversion is exact; else raise ValueError."""
    integral = dtype is int or issubclass(dtype, np.integer)
    if isinstance(value, (bool, np.bool_)):
        if not integral:
            raise ValueError("a boolean is not a number")
        value = int(value)
    if not isinstance(value, (int, float, complex, np.number)):
        raise ValueError("not a number")
    if integral:
        if isinstance(value, (complex, np.complexfloating)):
            if value.imag != 0:
                raise ValueError("complex value for an integer attribute")
            value = value.real
        if isinstance(value, (float, np.floating)) and (
            not math.isfinite(value) or not float(value).is_integer()
        ):
            raise ValueError("not a whole number")
        number = int(value)
        try:
            check_integer_range(dtype, number)  # (then the conversion is exact)
        except OverflowError as exc:
            raise ValueError("out of range") from exc
        return dtype(number)
    if dtype is float or issubclass(dtype, np.floating):
        if isinstance(value, (complex, np.complexfloating)):
            if value.imag != 0:
                raise ValueError("complex value for a float attribute")
            value = value.real
        return dtype(value)
    return dtype(value)  # complex


def _coerce_tuple(value: Any) -> tuple[Any, ...]:
    out: list[Any] = []
    for item in value:
        if isinstance(item, (list, tuple)):
            out.append(_coerce_tuple(item))
        else:
            out.append(item)
    return _convert_tuple(tuple(out))


def _coerce_filter_value(attr: AttributeSchema, value: Any) -> Any:
    return _without_negative_zero(_coerce_filter_value_as_given(attr, value))


def _coerce_filter_value_as_given(attr: AttributeSchema, value: Any) -> Any:
    dtype = attr.dtype
    try:
        if dtype is datetime:
            if isinstance(value, np.datetime64):  # (no stored key is finer than a microsecond)
                value = datetime64_moment(value)
            if not isinstance(value, (datetime, str, float)) or isinstance(value, bool):
                raise ValueError("not a time")
            return to_utc(value)
        if dtype is tuple:
            if not isinstance(value, (list, tuple)):
                raise ValueError("not a tuple")
            return _coerce_tuple(value)
        if dtype is str:
            if not isinstance(value, str):
                raise ValueError("not a string")
            return str(value)
        return _coerce_number(value, dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise DekerValidationError(
            f'Filter value of attribute "{attr.name}" is invalid: {value!r} cannot be converted to '
            f"{dtype.__name__} ({exc})"
        ) from exc


def normalize_filters(schema: ArraySchema | VArraySchema, filters: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a filter and convert its values to the attribute dtypes.

    Parameters
    ----------
    schema : ArraySchema or VArraySchema
        The schema of the arrays searched.
    filters : Mapping
        ``{"id": <uuid string>}`` or a value for every primary attribute.

    Returns
    -------
    dict
        ``{"id": id}``, or the primary values in schema order, converted to their dtypes
        (``1`` for a float attribute becomes ``1.0``, ISO strings become UTC datetimes, lists
        become tuples).

    Raises
    ------
    DekerValidationError
        If the id is not a UUID string or a value cannot be converted to its dtype.
    DekerUnknownFilterError
        If a key is neither ``id`` nor an attribute of the schema (the message names it); it
        is a :class:`DekerFilterError` and a :class:`NotImplementedError`.
    NotImplementedError
        If the schema has no primary attributes, a primary value is missing or ``None``, or a
        custom attribute is used.

    """
    if not isinstance(filters, Mapping):
        raise DekerValidationError(f"Filters shall be a dict, got {type(filters).__name__}")
    if "id" in filters:
        return {"id": validate_id(filters["id"], "Filter")}
    attributes: tuple[AttributeSchema, ...] = tuple(schema.attributes or ())
    primary = [a for a in attributes if a.primary]
    not_implemented = "Filtering by non primary attributes is not implemented yet"
    known = {a.name for a in attributes}
    unknown = [key for key in filters if key not in known]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        keys = [a.name for a in primary]
        hint = (
            f"filter by {{'id': ...}} or by every primary attribute {keys}"
            if primary
            else "the schema has no primary attributes: filter by {'id': ...}"
        )
        raise DekerUnknownFilterError(
            f"Unknown filter key{'s' if len(unknown) > 1 else ''} {names}: not an attribute of the "
            f"schema; {hint}"
        )
    if not primary:
        raise NotImplementedError(not_implemented)
    if any(filters.get(a.name) is None for a in primary) or len(filters) != len(primary):
        raise NotImplementedError(not_implemented)
    return {a.name: _coerce_filter_value(a, filters[a.name]) for a in primary}


# -------------------------------------------------------------------------------------------- paths
def check_collection_name(name: str) -> str:
    """Check a collection name: a path component whose ``.json`` and ``.lock`` names fit too.

    The name is returned as it is.

    Raises
    ------
    DekerValidationError
        As :func:`check_path_component`, with at most :data:`MAX_COLLECTION_NAME_BYTES` bytes
        (the collection's files ``<name>.json`` and ``<name>.lock`` are one name each).

    """
    return check_path_component(name, "Collection name", MAX_COLLECTION_NAME_BYTES)


def check_new_collection_name(name: str) -> str:
    """Check the name of a collection to create: :func:`check_collection_name`, not ``<x>.lock``.

    The lock file of a collection ``x`` is ``<collections>/x.lock`` (SPEC §2.1), the directory
    of a collection ``x.lock`` would be the same path: whichever came second failed (deker
    1.1.7 raised a raw ``IsADirectoryError`` or a false "already exists" and left a stray
    ``x.lock.lock``).  So names ending with ``.lock`` (in any case: some file systems do not
    tell case apart) are refused before anything is written.  Existing collections of such a
    name (a storage deker 1.1.7 wrote) are still opened.

    Parameters
    ----------
    name : str
        The candidate name; the name is returned.

    Raises
    ------
    DekerValidationError
        As :func:`check_collection_name`, or if the name ends with ``.lock``.

    """
    check_collection_name(name)
    if name.lower().endswith(_LOCK_SUFFIX):
        raise DekerValidationError(
            f"Collection name {name!r} ends with {_LOCK_SUFFIX!r}: such names are the lock files "
            f"of collections (the lock of a collection {name[: -len(_LOCK_SUFFIX)]!r} has that path); "
            "choose another name"
        )
    return name


_LOCK_SUFFIX = ".lock"


def check_path_component(text: str, what: str, max_bytes: int = MAX_COMPONENT_BYTES) -> str:
    """Check that a text can be used as one directory or file name.

    Parameters
    ----------
    text : str
        The candidate component (a collection name, a primary-key value).
    what : str
        What the text is, for the message (``"Collection name"``).
    max_bytes : int
        The longest allowed UTF-8 encoding (a file name holds at most 255 bytes).

    Returns
    -------
    str
        The text.

    Raises
    ------
    DekerValidationError
        If the text is not a string, is empty or blank, is ``.`` or ``..``, contains ``/`` or a
        NUL character, or is longer than ``max_bytes`` bytes in UTF-8.

    """
    if not isinstance(text, str):
        raise DekerValidationError(f"{what} shall be a string, got {type(text).__name__}")
    if not text.strip():
        raise DekerValidationError(f"{what} shall not be empty or blank, got {text!r}; use a visible name")
    if text in (".", ".."):
        raise DekerValidationError(f"{what} shall not be {text!r}: it is a special directory name")
    for bad, label in (("/", "'/'"), ("\x00", "a NUL character")):
        if bad in text:
            raise DekerValidationError(
                f"{what} {text!r} contains {label}, which cannot be used in a file name; remove it"
            )
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise DekerValidationError(f"{what} {text!r} cannot be encoded in UTF-8; remove surrogates") from exc
    if size > max_bytes:
        raise DekerValidationError(
            f"{what} is {size} bytes long in UTF-8; at most {max_bytes} bytes are allowed, "
            "use a shorter value"
        )
    return text


def _legacy_repr(value: Any) -> str:
    """``repr`` of a tuple element as numpy 1.x printed it (numpy scalars without their type)."""
    if isinstance(value, tuple):
        inner = ", ".join(_legacy_repr(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, np.generic):
        return str(value)
    return repr(value)


def _component(name: str, value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if name == "v_position" and isinstance(value, (tuple, list)):
        return "-".join(str(v) for v in value)
    if isinstance(value, tuple):
        return _legacy_repr(value)
    return str(value)


def primary_key_components(schema: ArraySchema | VArraySchema, primary: Mapping[str, Any]) -> tuple[str, ...]:
    """Return the symlink directory components of a primary key (SPEC §2.5).

    Parameters
    ----------
    schema : ArraySchema or VArraySchema
        The schema of the arrays.
    primary : Mapping
        The (processed) primary attribute values.

    Returns
    -------
    tuple of str
        One component per primary attribute in schema order: ``isoformat()`` for datetimes,
        ``"i-j-..."`` for ``v_position``, ``str(value)`` otherwise (tuples printed as deker
        1.1.7 printed them).

    Raises
    ------
    DekerValidationError
        If a primary value is missing or its text is not a safe path component.

    """
    out = []
    for attr in schema.attributes or ():
        if not attr.primary:
            continue
        if attr.name not in primary:
            raise DekerValidationError(f"Key attribute missing: {attr.name}")
        text = _component(attr.name, primary[attr.name])
        out.append(check_path_component(text, f'Primary attribute "{attr.name}" value'))
    return tuple(out)


#: The most other spellings :func:`equal_key_components` gives for one key.
MAX_EQUAL_KEY_SPELLINGS = 64


def _signed_zero_variants(value: Any, limit: int) -> Iterator[Any]:
    """Yield ``value`` (first) and values equal to it with some zeros as ``-0.0`` (``limit`` in all)."""
    if isinstance(value, (float, np.floating)):
        yield value
        if value == 0 and limit > 1:
            yield -value
    elif isinstance(value, (complex, np.complexfloating)):
        kind = type(value)
        parts = [[p, -p] if p == 0 else [p] for p in (float(value.real), float(value.imag))]
        for real, imag in itertools.islice(itertools.product(*parts), limit):
            yield kind(complex(real, imag))
    elif isinstance(value, tuple):
        choices = [list(_signed_zero_variants(item, limit)) for item in value]
        for items in itertools.islice(itertools.product(*choices), limit):
            yield tuple(items)
    else:
        yield value


def canonical_key_components(
    schema: ArraySchema | VArraySchema, primary: Mapping[str, Any]
) -> tuple[str, ...]:
    """Return the components of a key as stored now: :func:`primary_key_components` without ``-0.0``.

    Equal keys give equal components, however they were stored (deker 1.1.7 kept ``-0.0``).

    Parameters
    ----------
    schema : ArraySchema or VArraySchema
        The schema of the arrays.
    primary : Mapping
        The primary attribute values, as stored.

    Returns
    -------
    tuple of str
        The components of the key once its ``-0.0`` are ``0.0``.

    Raises
    ------
    DekerValidationError
        As :func:`primary_key_components`.

    """
    canonical = {name: _without_negative_zero(value) for name, value in primary.items()}
    return primary_key_components(schema, canonical)


def equal_key_components(
    schema: ArraySchema | VArraySchema, primary: Mapping[str, Any]
) -> list[tuple[str, ...]]:
    """Return the other symlink directories where deker 1.1.7 may have stored an equal key.

    Keys are stored without ``-0.0`` (:func:`process_attributes`), but deker 1.1.7 (and this
    package before) wrote ``str(-0.0)``, ``"-0.0"``: such an object is found there, and a new
    equal key is refused while it exists.

    Parameters
    ----------
    schema : ArraySchema or VArraySchema
        The schema of the arrays.
    primary : Mapping
        The (processed) primary attribute values, without ``-0.0``.

    Returns
    -------
    list of tuple of str
        The components (as :func:`primary_key_components`) of every equal key spelt with some
        ``-0.0``, at most :data:`MAX_EQUAL_KEY_SPELLINGS`; empty when the key holds no float
        zero (the usual case).

    """
    names = [a.name for a in schema.attributes or () if a.primary]
    if not names or any(name not in primary for name in names):
        return []
    limit = MAX_EQUAL_KEY_SPELLINGS + 1
    variants = [list(_signed_zero_variants(primary[name], limit)) for name in names]
    if all(len(v) == 1 for v in variants):
        return []  # no float zero in the key
    canonical = tuple(_component(name, v[0]) for name, v in zip(names, variants, strict=True))
    out: list[tuple[str, ...]] = []
    for values in itertools.islice(itertools.product(*variants), 1, None):
        spelling = tuple(_component(name, value) for name, value in zip(names, values, strict=True))
        if spelling != canonical and spelling not in out:
            out.append(spelling)
            if len(out) == MAX_EQUAL_KEY_SPELLINGS:
                break
    return out
