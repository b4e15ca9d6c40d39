"""HDF5 storage options of a collection: chunking and compression (SPEC §1.10).

The options apply to every data file of a collection (tiles included) when its ``data``
dataset is created.  :meth:`HDF5Options.as_dict` is the form stored in the collection metadata,
:meth:`HDF5Options.from_dict` reads it back (every form deker 1.1.7 writes), and
:meth:`HDF5Options.h5py_dataset_kwargs` gives the arguments of ``h5py``'s ``create_dataset``.

Deviations from deker 1.1.7 (problems are reported at declaration instead of at the first write
in h5py): a compression name must be ``"gzip"``, ``"lzf"``, ``"szip"`` or a filter id (an int, or
a string of digits, stored as an int); ``lzf`` takes no options; gzip takes one level 0-9 (stored
as an int); options of a filter id are a tuple of non-negative ints (a single int ``n`` becomes
``(n,)``); chunk sizes must be positive.  A manual chunk shape is checked against and clipped to
the array shape in :meth:`HDF5Options.h5py_dataset_kwargs`.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from deker.errors import DekerValidationError

__all__ = ["LOSSY_NAN_UNSAFE_FILTERS", "HDF5CompressionOpts", "HDF5Options", "check_fill_value_supported"]

logger = logging.getLogger(__name__)

_NAMED = ("gzip", "lzf", "szip")

CompressionOptions = int | tuple[int | str, ...] | None


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_compression(compression: Any) -> str | int | None:
    if compression is None:
        return None
    if not isinstance(compression, (str, numbers.Integral)) or isinstance(compression, bool):
        raise DekerValidationError(
            f"Invalid compression type {type(compression).__name__} ({compression!r}): "
            "use a filter name (str) or an HDF5 filter id (int)"
        )
    if isinstance(compression, str):
        name = compression.strip()
        if name.isdigit():
            return int(name)
        if name not in _NAMED:
            raise DekerValidationError(
                f"Invalid compression value {compression!r}: use 'gzip', 'lzf', 'szip' or an HDF5 filter id "
                "(e.g. from hdf5plugin)"
            )
        return name
    if int(compression) < 0:
        raise DekerValidationError(f"Invalid compression value {compression!r}: a filter id is not negative")
    return int(compression)


def _check_opts(compression: str | int | None, opts: Any) -> CompressionOptions:
    if opts is None:
        return None
    if compression is None:
        raise DekerValidationError(
            f"Compression options {opts!r} are given without a compression. Perhaps you forgot to indicate "
            "filter name?"
        )
    if not isinstance(opts, (list, tuple)) and not _is_int(opts):
        raise DekerValidationError(
            f"Invalid compression options {opts!r}: use an int or a list or tuple of options"
        )
    items: tuple[Any, ...] = tuple(opts) if isinstance(opts, (list, tuple)) else (opts,)
    for item in items:
        if _is_int(item) and int(item) < 0:
            raise DekerValidationError(f"Invalid compression level value {item!r}: options are not negative")
        if not _is_int(item) and not (compression == "szip" and isinstance(item, str)):
            raise DekerValidationError(
                f"Invalid compression options {opts!r} for {compression!r}: options are non-negative ints"
                + (" (szip also takes a mask name such as 'nn')" if compression == "szip" else "")
            )
    items = tuple(int(i) if _is_int(i) else i for i in items)
    if not items:
        return None
    if compression == "lzf":
        raise DekerValidationError(f"Invalid compression options {opts!r}: lzf takes no options")
    if compression == "gzip":
        if len(items) != 1 or not 0 <= items[0] <= 9:
            raise DekerValidationError(f"Invalid compression level value {opts!r}: gzip takes one level, 0-9")
        return int(items[0])
    return items


@dataclass(frozen=True)
class HDF5CompressionOpts:
    """An HDF5 compression filter and its options.

    ``HDF5CompressionOpts(**hdf5plugin.Zstd(6))`` uses a filter of ``hdf5plugin``.

    Parameters
    ----------
    compression : str or int or None
        ``"gzip"``, ``"lzf"``, ``"szip"``, an HDF5 filter id, or ``None`` (no compression).
    compression_opts : int or list or tuple or None
        The filter options: the gzip level (0-9, stored as an int), the szip tuple
        (e.g. ``("nn", 16)``), or the tuple of ints of a filter id.  An empty list means none.

    Raises
    ------
    DekerValidationError
        If a value is invalid.
    """

    compression: str | int | None
    compression_opts: CompressionOptions

    def __post_init__(self) -> None:
        compression = _check_compression(self.compression)
        object.__setattr__(self, "compression", compression)
        object.__setattr__(self, "compression_opts", _check_opts(compression, self.compression_opts))

    @property
    def as_dict(self) -> dict[str, Any]:
        """The stored form: ``{"compression": "none"|name|"<id>", "options": []|None|[str, ...]}``."""
        if self.compression is None:
            return {"compression": "none", "options": []}
        opts = self.compression_opts
        if opts is None:
            options: list[str] | None = None
        elif isinstance(opts, tuple):
            options = [str(o) for o in opts]
        else:
            options = [str(opts)]
        return {"compression": str(self.compression), "options": options}


Chunks = Literal[True] | tuple[int, ...] | None


def _check_chunks(chunks: Any) -> Chunks:
    if chunks is None or chunks is True:
        return chunks  # type: ignore[no-any-return]
    if not isinstance(chunks, (list, tuple)):
        raise DekerValidationError(
            f"Invalid chunks {chunks!r}: use None, True (automatic) or a list or tuple of positive ints"
        )
    if not chunks or not all(_is_int(c) and int(c) > 0 for c in chunks):
        raise DekerValidationError(
            f"Invalid chunks {chunks!r}: a chunk shape is a non-empty list of positive ints"
        )
    return tuple(int(c) for c in chunks)


@dataclass(frozen=True)
class HDF5Options:
    """The HDF5 storage options of a collection.

    Parameters
    ----------
    chunks : None or True or list or tuple of int
        No chunking (contiguous data, unless compression needs chunks), automatic chunking, or
        a chunk shape (one positive int per dimension; clipped to the array shape).
    compression_opts : HDF5CompressionOpts, optional
        The compression; ``None`` means ``HDF5CompressionOpts(None, None)``.

    Raises
    ------
    DekerValidationError
        If a value is invalid.
    """

    chunks: Chunks = None
    compression_opts: HDF5CompressionOpts = field(default_factory=lambda: HDF5CompressionOpts(None, None))

    def __post_init__(self) -> None:
        object.__setattr__(self, "chunks", _check_chunks(self.chunks))
        opts: Any = self.compression_opts
        if opts is None:
            object.__setattr__(self, "compression_opts", HDF5CompressionOpts(None, None))
        elif not isinstance(opts, HDF5CompressionOpts):
            raise DekerValidationError(
                f"Invalid compression_opts {opts!r}: use an HDF5CompressionOpts instance or None"
            )

    @property
    def as_dict(self) -> dict[str, Any]:
        """The stored form (the ``"options"`` object of the collection metadata)."""
        if self.chunks is None:
            chunks: dict[str, Any] = {"mode": "none"}
        elif self.chunks is True:
            chunks = {"mode": "true"}
        else:
            chunks = {"mode": "manual", "size": list(self.chunks)}
        return {"chunks": chunks, "compression": self.compression_opts.as_dict}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HDF5Options:
        """Build options from their stored form (the reverse of :attr:`as_dict`).

        Parameters
        ----------
        data : Mapping
            ``{"chunks": {...}, "compression": {...}}`` as deker 1.1.7 or deker write it.

        Returns
        -------
        HDF5Options
            The options.

        Raises
        ------
        DekerValidationError
            If the stored form cannot be understood.
        """
        if not isinstance(data, Mapping):
            raise DekerValidationError(f"Options shall be an object; got {data!r}")
        chunks_data = data.get("chunks") or {}
        if not isinstance(chunks_data, Mapping):
            raise DekerValidationError(f"Options 'chunks' shall be an object; got {chunks_data!r}")
        mode = chunks_data.get("mode")
        chunks: Any = None
        if mode == "manual":
            chunks = chunks_data.get("size")
        elif mode == "true":
            chunks = True
        comp_data = data.get("compression") or {}
        if not isinstance(comp_data, Mapping):
            raise DekerValidationError(f"Options 'compression' shall be an object; got {comp_data!r}")
        return cls(chunks=chunks, compression_opts=_compression_from_dict(comp_data))

    def h5py_dataset_kwargs(self, shape: Sequence[int]) -> dict[str, Any]:
        """Return the ``chunks``, ``compression`` and ``compression_opts`` for ``create_dataset``.

        Parameters
        ----------
        shape : sequence of int
            The shape of the dataset.

        Returns
        -------
        dict
            Keyword arguments for ``h5py.Group.create_dataset``.

        Raises
        ------
        DekerValidationError
            If a manual chunk shape does not have one size per dimension.
        """
        chunks: Any = self.chunks
        if isinstance(chunks, tuple):
            if len(chunks) != len(shape):
                raise DekerValidationError(
                    f"Chunk shape {chunks} does not match the array shape {tuple(shape)}: "
                    "give one chunk size per dimension"
                )
            chunks = tuple(max(1, min(c, int(s))) for c, s in zip(chunks, shape, strict=True))
        compression = self.compression_opts.compression
        opts = self.compression_opts.compression_opts
        if isinstance(compression, int) and isinstance(opts, int):  # pragma: no cover - normalised away
            opts = (opts,)
        return {"chunks": chunks, "compression": compression, "compression_opts": opts}


def _maybe_int(value: Any) -> int | str:
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


def _compression_from_dict(data: Mapping[str, Any]) -> HDF5CompressionOpts:
    name = data.get("compression", "none")
    raw = data.get("options")
    if raw is not None and not isinstance(raw, (list, tuple)):
        raw = [raw]
    options = [_maybe_int(o) for o in raw] if raw else []
    if name is None or name == "none":
        return HDF5CompressionOpts(None, None)
    if name == "gzip":
        level = options[0] if options else None
        if isinstance(level, str):
            raise DekerValidationError(f"Invalid stored gzip level {level!r}")
        return HDF5CompressionOpts("gzip", level)
    if name == "lzf":
        if options:
            logger.warning("Ignoring options %s stored for the lzf compression (it takes none)", options)
        return HDF5CompressionOpts("lzf", None)
    if name == "szip":
        return HDF5CompressionOpts("szip", tuple(options) or None)
    try:
        filter_id = int(name)
    except (TypeError, ValueError) as exc:
        raise DekerValidationError(f"Unknown stored compression {name!r}") from exc
    return HDF5CompressionOpts(filter_id, tuple(options) or None)


#: HDF5 filter ids of the lossy floating-point compressors shipped by hdf5plugin (ZFP, SZ, SZ3,
#: SPERR).  They cannot store NaN: SZ3 crashes the process on a chunk holding NaN, ZFP returns
#: garbage in its place, SZ reports a corrupt chunk (checked with hdf5plugin 7.1).
LOSSY_NAN_UNSAFE_FILTERS: dict[int, str] = {32013: "ZFP", 32017: "SZ", 32024: "SZ3", 32028: "SPERR"}


def check_fill_value_supported(options: HDF5Options | None, dtype: Any, fill_value: Any) -> None:
    """Refuse a lossy filter that cannot store the NaN fill value of a float collection.

    Empty cells of a chunk hold the fill value, so such a filter would crash or corrupt the
    first partially written chunk.

    Parameters
    ----------
    options : HDF5Options or None
        The collection options.
    dtype : numpy dtype-like
        The collection dtype.
    fill_value : Any
        The collection fill value.

    Raises
    ------
    DekerValidationError
        If the filter is one of :data:`LOSSY_NAN_UNSAFE_FILTERS` and the fill value is NaN.
    """
    if options is None or options.compression_opts is None:
        return
    compression = options.compression_opts.compression
    name = LOSSY_NAN_UNSAFE_FILTERS.get(compression) if isinstance(compression, int) else None
    if name is None or np.dtype(dtype).kind not in "fc":
        return
    if fill_value is None or bool(np.isnan(np.asarray(fill_value)).any()):
        raise DekerValidationError(
            f"The {name} filter (HDF5 filter {compression}) cannot store NaN, the fill value of this "
            "collection: give the schema a finite fill_value (e.g. fill_value=-9999.0) or use a "
            "lossless filter"
        )
