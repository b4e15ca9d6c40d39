"""The HDF5 implementation of the storage protocol (:class:`~deker.storage.arrayfile.ArrayFiles`).

This module owns the choice of fast paths from an :class:`~deker.storage.arrayfile.ArrayLayout`,
so that callers pass plain values and never decide them: a layout without dataset options
(:attr:`~deker.storage.arrayfile.ArrayLayout.contiguous`) lets a file be written whole from a
template and read with ``preadv`` even while it is new (:mod:`deker.storage.templates`,
:mod:`deker.storage.rawio`); chunked layouts are decoded outside h5py's lock
(:mod:`deker.storage.chunkcodec`).  The file format, crash safety and empty-cell accounting are
those of :mod:`deker.storage.hdf5`, whose functions do the work (looked up at each call).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from deker.storage import atomic, hdf5
from deker.storage.arrayfile import ArrayLayout, Bounds, Values

__all__ = ["HDF5_FILES", "HDF5Files"]


class HDF5Files:
    """Array files in HDF5 (SPEC §2.4): :class:`~deker.storage.arrayfile.ArrayFiles`.

    Stateless: every instance is the same, and it pickles.  Use :data:`HDF5_FILES`.
    """

    def create(
        self, path: Path, layout: ArrayLayout, meta: bytes, meta_dtype: str, data: Values | None = None
    ) -> None:
        """Create the file: :meth:`~deker.storage.arrayfile.ArrayFiles.create`.

        A contiguous file with data, and every file without, is written from a template; a file
        with dataset options gets its chunks encoded in parallel.
        """
        hdf5.create_array_file(
            path,
            meta,
            meta_dtype,
            layout.cells,
            data=data,
            shape=layout.shape,
            fill_value=layout.fill_value,
            dataset_kwargs=layout.dataset_kwargs,
        )

    def read(
        self, path: Path, layout: ArrayLayout, bounds: Bounds, out: np.ndarray[Any, Any] | None = None
    ) -> np.ndarray[Any, Any]:
        """Read a region: :meth:`~deker.storage.arrayfile.ArrayFiles.read`.

        Without HDF5 when the file's layout is cached, or when the layout is contiguous and the
        file was written whole from a template.
        """
        return hdf5.read_region(
            path,
            bounds,
            layout.np_dtype,
            layout.fill_value,
            out,
            file_shape=layout.shape if layout.contiguous else None,
        )

    def write(self, path: Path, layout: ArrayLayout, bounds: Bounds, data: Values) -> None:
        """Write a region: :meth:`~deker.storage.arrayfile.ArrayFiles.write`."""
        hdf5.write_region(path, bounds, data, layout.shape, layout.fill_value, layout.dataset_kwargs)

    def clear(self, path: Path, layout: ArrayLayout, bounds: Bounds) -> None:
        """Clear a region: :meth:`~deker.storage.arrayfile.ArrayFiles.clear`."""
        hdf5.clear_region(path, bounds, layout.shape, layout.fill_value)

    def read_meta(self, path: Path) -> bytes:
        """Return the metadata: :meth:`~deker.storage.arrayfile.ArrayFiles.read_meta`."""
        return hdf5.read_meta(path)

    def write_meta(self, path: Path, meta: bytes, meta_dtype: str) -> None:
        """Replace the metadata: :meth:`~deker.storage.arrayfile.ArrayFiles.write_meta`."""
        hdf5.write_meta(path, meta, meta_dtype)

    def empty_cells(self, path: Path) -> int:
        """Count the empty cells: :meth:`~deker.storage.arrayfile.ArrayFiles.empty_cells`."""
        return hdf5.read_empty_cells(path)

    def has_data(self, path: Path) -> bool:
        """Say whether data is stored: :meth:`~deker.storage.arrayfile.ArrayFiles.has_data`."""
        return hdf5.has_data(path)

    def delete(self, path: Path) -> None:
        """Delete the file: :meth:`~deker.storage.arrayfile.ArrayFiles.delete`.

        The file first, then the temporary files and undo journal an interrupted change left
        (never applied): an interrupted deletion leaves no file.
        """
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        atomic.discard_leftovers(path)


#: The HDF5 implementation (stateless: the one instance callers need).
HDF5_FILES = HDF5Files()
