"""The value types deker accepts, and the names under which they are stored.

Array data may be of any numeric numpy scalar type of SPEC §1.7.6 (Python ``int``, ``float`` and
``complex`` stand for ``numpy.int64``, ``numpy.float64`` and ``numpy.complex128``).  Attributes
may also be ``str``, ``tuple`` or ``datetime.datetime``.

Stored names follow deker 1.1.7: the name of a numpy type is ``"numpy.<name>"`` where ``<name>``
is the *first* entry of deker 1.1.7's dtype enum holding that type object, so ``complex128`` is
stored as ``"numpy.cfloat"``, ``uint64`` as ``"numpy.uint"``, ``longdouble`` as
``"numpy.float128"`` and ``clongdouble`` as ``"numpy.clongfloat"``.  The table below does not
depend on the numpy version: the aliases numpy 2 removed (``cfloat``, ``complex_``,
``longfloat``...) are resolved to the type objects they named in numpy 1.26, so names written by
deker 1.1.7 are read back everywhere.  On Linux ``numpy.longlong`` and ``numpy.int64`` are two
distinct type objects (``int64`` is the C ``long``), under numpy 1.26 and 2.x alike; both are
accepted and keep their own names.
"""

from __future__ import annotations

from datetime import datetime
from fractions import Fraction
from typing import Any

import numpy as np

from deker.errors import DekerArrayTypeError, DekerValidationError

__all__ = [
    "ARRAY_DTYPES",
    "ATTRIBUTE_DTYPES",
    "attribute_dtype_to_name",
    "attribute_name_to_dtype",
    "casts_exactly",
    "check_integer_range",
    "convert_exactly",
    "datetime64_moment",
    "default_fill_value",
    "dtype_to_name",
    "is_attribute_dtype",
    "name_to_dtype",
    "normalize_array_dtype",
]


def _np(name: str, fallback: str) -> type[np.generic]:
    """Return ``numpy.<name>``, or ``numpy.<fallback>`` where this numpy lacks ``name``."""
    # vars(): a plain lookup, never numpy's module __getattr__ (which warns about removed aliases)
    found = vars(np).get(name)
    if not isinstance(found, type):
        found = vars(np)[fallback]
    return found  # type: ignore[no-any-return]


#: deker 1.1.7's numeric dtype enum, in its order: ``name`` holds ``numpy.<name>``,
#: ``name=other`` holds ``numpy.<other>`` (an alias numpy 2 removed, as numpy 1.26 resolved it)
#: and ``name|other`` holds ``numpy.<name>`` where this numpy has it, else ``numpy.<other>``.
_ENUM_MEMBERS = (
    "int8 byte int16 short int32 intc int64 intp int_ longlong uint|uintp uint8 ubyte uint16 ushort"
    " uint32 uintc uint64 uintp ulonglong float16 cfloat=complex128 cdouble float32"
    " clongfloat=clongdouble float64 double float128|longdouble longfloat=longdouble longdouble"
    " complex64 singlecomplex=complex64 complex128 complex_=complex128 complex256|clongdouble"
    " longcomplex=clongdouble"
)


def _member(spec: str) -> tuple[str, type[np.generic]]:
    if "=" in spec:
        name, other = spec.split("=")
        return name, vars(np)[other]  # type: ignore[no-any-return]
    name, _, other = spec.partition("|")
    return name, _np(name, other or name)


#: (member name, numpy scalar type) of each member; the first member holding a type object
#: gives that type's stored name.
_NUMPY_ENUM: tuple[tuple[str, type[np.generic]], ...] = tuple(map(_member, _ENUM_MEMBERS.split()))

#: Names that deker 1.1.7 never wrote but that name a numeric type in some numpy version; they are
#: accepted when reading, never written.
_EXTRA_READ_NAMES: dict[str, type[np.generic]] = {
    "float_": np.float64,
    "half": np.float16,
    "single": np.float32,
    "csingle": np.complex64,
    "clongdouble": np.clongdouble,
    "long": np.int_,
    "ulong": _np("ulong", "uint"),
}

_PYTHON_TO_NUMPY: dict[type, type[np.generic]] = {int: np.int64, float: np.float64, complex: np.complex128}
_PYTHON_NAMES: dict[str, type] = {t.__name__: t for t in _PYTHON_TO_NUMPY}

_NAME_OF: dict[type, str] = {}
for _name, _type in _NUMPY_ENUM:
    _NAME_OF.setdefault(_type, _name)
_TYPE_OF: dict[str, type[np.generic]] = {**_EXTRA_READ_NAMES, **dict(_NUMPY_ENUM)}

#: Every numpy scalar type an array may hold (Python ``int``/``float``/``complex`` are accepted by
#: :func:`normalize_array_dtype` too, and replaced by their numpy counterparts).
ARRAY_DTYPES: tuple[type[np.generic], ...] = tuple(_NAME_OF)

_PLAIN_ATTRIBUTE_NAMES: dict[type, str] = {
    int: "int",
    float: "float",
    complex: "complex",
    str: "string",
    tuple: "tuple",
    datetime: "datetime",
}
_PLAIN_ATTRIBUTE_TYPES: dict[str, type] = {v: k for k, v in _PLAIN_ATTRIBUTE_NAMES.items()}

#: Every type an attribute may be declared with.
ATTRIBUTE_DTYPES: tuple[type, ...] = (*_PLAIN_ATTRIBUTE_NAMES, *ARRAY_DTYPES)

_PREFIX = "numpy."


def _is_type_in(value: object, types: tuple[type, ...]) -> bool:
    return isinstance(value, type) and any(value is t for t in types)


def normalize_array_dtype(dtype: object) -> type[np.generic]:
    """Return the numpy scalar type an array of ``dtype`` holds.

    Parameters
    ----------
    dtype : type
        Python ``int``, ``float`` or ``complex`` (meaning ``numpy.int64``, ``numpy.float64``,
        ``numpy.complex128``) or a numeric numpy scalar type (SPEC §1.7.6).

    Returns
    -------
    type of numpy.generic
        The numpy scalar type of the array's values.

    Raises
    ------
    DekerValidationError
        For anything else: ``bool``, ``str``, ``numpy.dtype`` instances, strings such as
        ``"float32"``...
    """
    if isinstance(dtype, type) and dtype in _PYTHON_TO_NUMPY and not issubclass(dtype, bool):
        return _PYTHON_TO_NUMPY[dtype]
    if _is_type_in(dtype, ARRAY_DTYPES):
        return dtype  # type: ignore[return-value]
    raise DekerValidationError(
        f"Invalid dtype {dtype!r}: use int, float, complex or a numeric numpy scalar type "
        "(e.g. numpy.float32), not a numpy.dtype instance or a string"
    )


def dtype_to_name(dtype: object) -> str:
    """Return the stored name of an array dtype, e.g. ``"numpy.cfloat"`` for ``numpy.complex128``.

    Parameters
    ----------
    dtype : type
        Anything :func:`normalize_array_dtype` accepts.

    Returns
    -------
    str
        ``"numpy.<name>"`` as deker 1.1.7 writes it.

    Raises
    ------
    DekerValidationError
        If the dtype is not accepted.
    """
    return _PREFIX + _NAME_OF[normalize_array_dtype(dtype)]


def name_to_dtype(name: str) -> type[np.generic]:
    """Return the numpy scalar type a stored name (``"numpy.<name>"``) stands for.

    Every name deker 1.1.7 could write is accepted, including those numpy 2 removed
    (``numpy.cfloat``, ``numpy.complex_``, ``numpy.longfloat``, ``numpy.clongfloat``...).  As in
    deker 1.1.7, the ``numpy.`` prefix may be left out, and the builtin names ``int``, ``float``
    and ``complex`` (with or without it) stand for ``numpy.int64``, ``numpy.float64`` and
    ``numpy.complex128``.

    Parameters
    ----------
    name : str
        The stored name, e.g. ``"numpy.float32"``, ``"float32"`` or ``"int"``.

    Returns
    -------
    type of numpy.generic
        The numpy scalar type stored under that name.

    Raises
    ------
    DekerValidationError
        If the name is unknown.
    """
    bare = _bare(name)
    if bare in _PYTHON_NAMES:
        return _PYTHON_TO_NUMPY[_PYTHON_NAMES[bare]]
    if bare in _TYPE_OF:
        return _TYPE_OF[bare]
    raise DekerValidationError(
        f"Unknown dtype name {name!r}: expected 'int', 'float', 'complex' or 'numpy.<numeric type name>'"
    )


def _bare(name: object) -> str:
    """Return ``name`` without its ``numpy.`` prefix ("" for a non-string)."""
    if not isinstance(name, str):
        return ""
    return name[len(_PREFIX) :] if name.startswith(_PREFIX) else name


def default_fill_value(dtype: object) -> np.generic:
    """Return the fill value an array of ``dtype`` gets when none is declared (SPEC §7.1).

    NaN for floating types (``nan+0j`` for complex types), the minimum for signed integers and
    0 (the minimum) for unsigned integers.

    Parameters
    ----------
    dtype : type
        Anything :func:`normalize_array_dtype` accepts.

    Returns
    -------
    numpy.generic
        A numpy scalar of the dtype.
    """
    np_type: Any = normalize_array_dtype(dtype)
    if issubclass(np_type, np.inexact):
        return np_type(np.nan)  # type: ignore[no-any-return]
    return np_type(np.iinfo(np_type).min)  # type: ignore[no-any-return]


def attribute_dtype_to_name(dtype: object) -> str:
    """Return the stored name of an attribute type.

    Parameters
    ----------
    dtype : type
        One of :data:`ATTRIBUTE_DTYPES`.

    Returns
    -------
    str
        ``"int"``, ``"float"``, ``"complex"``, ``"string"``, ``"tuple"``, ``"datetime"`` or
        ``"numpy.<name>"``.

    Raises
    ------
    DekerValidationError
        If the type is not an attribute type.
    """
    if _is_type_in(dtype, tuple(_PLAIN_ATTRIBUTE_NAMES)):
        return _PLAIN_ATTRIBUTE_NAMES[dtype]  # type: ignore[index]
    if _is_type_in(dtype, ARRAY_DTYPES):
        return _PREFIX + _NAME_OF[dtype]  # type: ignore[index]
    raise DekerValidationError(
        f"Invalid dtype value {dtype!r}: attributes may be int, float, complex, str, tuple, "
        "datetime.datetime or a numeric numpy scalar type"
    )


def attribute_name_to_dtype(name: str) -> type:
    """Return the attribute type a stored name stands for (the reverse of :func:`attribute_dtype_to_name`).

    As for :func:`name_to_dtype`, a ``numpy.`` prefix before a plain name is ignored (deker
    1.1.7 looked both up in one table): ``"numpy.int"`` is ``int``.

    Parameters
    ----------
    name : str
        The stored name.

    Returns
    -------
    type
        The attribute type.

    Raises
    ------
    DekerValidationError
        If the name is unknown.
    """
    bare = _bare(name)
    if bare in _PLAIN_ATTRIBUTE_TYPES:
        return _PLAIN_ATTRIBUTE_TYPES[bare]
    return name_to_dtype(name)


def is_attribute_dtype(dtype: Any) -> bool:
    """Return whether ``dtype`` is one of :data:`ATTRIBUTE_DTYPES` (by identity, so ``bool`` is not)."""
    return _is_type_in(dtype, ATTRIBUTE_DTYPES)


def check_integer_range(dtype: Any, value: object) -> None:
    """Raise :class:`OverflowError` if a Python int is out of the range of a numpy integer dtype.

    NumPy 2 raises it itself when ``dtype(value)`` is out of range; NumPy 1.26 wraps the value
    around instead (with a ``DeprecationWarning``), which would store another number.  Call this
    before such a conversion.  Other values and dtypes (Python's ``int`` among them, which has no
    range) are left to the conversion.

    Parameters
    ----------
    dtype : numpy.dtype or type
        The dtype the value is about to be converted to.
    value : object
        The value.

    Raises
    ------
    OverflowError
        ``value`` is a Python int outside the dtype's range.
    """
    if not isinstance(value, int):
        return
    if isinstance(dtype, np.dtype):
        np_dtype = dtype
    elif isinstance(dtype, type) and issubclass(dtype, np.generic):
        np_dtype = np.dtype(dtype)
    else:
        return
    if np_dtype.kind not in "iu":
        return
    info = np.iinfo(np_dtype)
    if not info.min <= value <= info.max:
        raise OverflowError(f"{value} is out of the range of {np_dtype} ({info.min} to {info.max})")


def casts_exactly(source: Any, target: Any) -> bool:
    """Return whether every value of dtype ``source`` is a value of dtype ``target``.

    This is numpy's ``"safe"`` casting rule without its one loss: numpy calls an integer type
    safe to cast into a floating or complex type whose significand has fewer digits than the
    integer has bits (``int64`` into ``float64`` rounds every odd number above ``2**53``).  Such a
    pair is refused here; ``int32`` into ``float64``, or ``int64`` into an 80-bit ``longdouble``,
    is not.

    Parameters
    ----------
    source, target : numpy.dtype or type
        The dtype of the data, and the dtype it is to be stored as.

    Returns
    -------
    bool
        True when the cast can change no value.
    """
    src, dst = np.dtype(source), np.dtype(target)
    if not np.can_cast(src, dst, casting="safe"):
        return False
    if src.kind in "iu" and dst.kind in "fc":
        bits = np.iinfo(src).bits - (1 if src.kind == "i" else 0)
        return bits <= int(np.finfo(dst).nmant) + 1
    return True


def _same_values(back: np.ndarray[Any, Any], source: np.ndarray[Any, Any]) -> bool:
    """Whether two arrays of one dtype hold the same numbers, NaN for NaN (complex: part by part).

    (numpy's ``equal_nan`` takes two complex numbers with a NaN in either part as equal, whatever
    the other parts hold.)
    """
    if source.dtype.kind == "c":
        return _same_values(back.real, source.real) and _same_values(back.imag, source.imag)
    return bool(np.array_equal(back, source, equal_nan=source.dtype.kind == "f"))


def _within(values: np.ndarray[Any, Any], dtype: np.dtype[Any]) -> bool:
    """Whether every one of ``values`` lies in the range of ``dtype`` (always, unless an integer).

    Casting a value out of an integer dtype's range to it wraps around (or is undefined, for a
    float or an infinity), and may give back the very number the source held: ``np.int8(-1)``
    stored as uint8 is 255, and 255 cast to int8 is -1 again.  A value out of the source's own
    range is not one of its values, so the source changed.
    """
    if dtype.kind not in "iu" or values.size == 0:
        return True
    info = np.iinfo(dtype)
    low, high = values.min(), values.max()
    if values.dtype.kind in "biu":
        return info.min <= int(low) and int(high) <= info.max
    if not np.isfinite(values).all():
        return False
    return info.min <= Fraction(*low.as_integer_ratio()) and Fraction(*high.as_integer_ratio()) < info.max + 1


def convert_exactly(values: np.ndarray[Any, Any], dtype: Any, what: str) -> np.ndarray[Any, Any]:
    """Return the numbers ``values`` as an array of ``dtype``, or refuse them if any would change.

    A dtype pair that :func:`casts_exactly` is converted without a look at the values.  Any other
    pair is converted and checked: every value must come back the same (NaN as NaN, part by part
    for complex numbers; a complex value converts to a real dtype only when its imaginary part
    is 0), and none may have wrapped around an integer range on the way (``-1`` as uint8 is
    255, which converts back to ``int8(-1)``).  So float64 data of float32 values converts to
    float32, and int64 data converts to int8 when every value lies in -128..127.

    Parameters
    ----------
    values : numpy.ndarray
        Numbers (a boolean, integer, floating or complex dtype).
    dtype : numpy.dtype or type
        The dtype to store them as.
    what : str
        The values, as an error message names them (e.g. ``"the int64 list"``).

    Returns
    -------
    numpy.ndarray
        ``values`` itself when its dtype is ``dtype``, else a new array.

    Raises
    ------
    DekerArrayTypeError
        ``values`` are not numbers, or some of them change when stored as ``dtype``.
    """
    target = np.dtype(dtype)
    if values.dtype == target:
        return values
    if values.dtype.kind not in "biufc":
        raise DekerArrayTypeError(f"Invalid data type: {what} holds {values.dtype} values; {target} expected")
    if casts_exactly(values.dtype, target):
        return values.astype(target)
    changed = DekerArrayTypeError(f"Invalid data: some values of {what} change when stored as {target}")
    source = values
    if source.dtype.kind == "c" and target.kind != "c":  # complex values into a real dtype
        if np.any(source.imag != 0):
            raise changed
        source = source.real  # (casting the complex values themselves would warn)
    if not _within(source, target):  # out of an integer dtype's range: the cast is undefined
        raise changed  # (x86 makes -inf INT_MIN, which casts back to float16's -inf)
    with np.errstate(all="ignore"):
        try:
            converted = source.astype(target)
        except (TypeError, ValueError, OverflowError) as exc:
            raise DekerArrayTypeError(f"Invalid data: {exc}") from exc
        # back to the source's own dtype, where a change shows (real values into a complex
        # dtype: through the real part, as casting complex to real warns)
        stored = converted.real if target.kind == "c" and source.dtype.kind != "c" else converted
        if not _within(stored, source.dtype):  # (casting it back would wrap around)
            raise changed
        if not _same_values(stored.astype(source.dtype), source):
            raise changed
    return converted


def datetime64_moment(value: np.datetime64) -> Any:
    """Return a ``numpy.datetime64`` as the naive (UTC) datetime it is exactly.

    Parameters
    ----------
    value : numpy.datetime64
        Of any unit.

    Returns
    -------
    datetime, int or None
        What ``value.astype("datetime64[us]").item()`` gives: ``None`` for NaT, an int for an
        instant outside the years datetime holds.

    Raises
    ------
    ValueError
        If ``value`` falls between two microseconds: no datetime is that instant (truncated, it
        would be the microsecond below).
    """
    micro = value.astype("datetime64[us]")
    if not np.isnat(value) and micro != value:
        raise ValueError(f"{value!r} is finer than a microsecond, which no datetime holds")
    return micro.item()
