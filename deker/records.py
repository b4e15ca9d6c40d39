"""Array, VArray and tile records on disk: create, find, read metadata, delete.

This module turns schema-level requests into storage-layer calls (paths, HDF5 files,
symlinks, creation locks).  Objects are always located from their id; symlinks are only read
for their *names* (so a storage copied or mounted elsewhere, whose absolute symlinks dangle,
works unchanged) and are written for compatibility with deker 1.1.7.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from deker.attributes import equal_key_components, primary_key_components
from deker.errors import (
    DekerArrayError,
    DekerInstanceNotExistsError,
    DekerLockError,
    DekerMetaDataError,
    DekerStorageError,
    DekerValidationError,
)
from deker.meta import (
    CollectionMeta,
    decode_array_meta,
    deserialize_attributes,
    encode_array_meta,
    meta_storage_dtype,
)
from deker.schemas import ArraySchema, TimeDimensionSchema, VArraySchema, tile_schema
from deker.storage import atomic
from deker.storage.arrayfile import ArrayLayout
from deker.storage.hdf5files import HDF5_FILES
from deker.storage.layout import (
    ARRAY_EXT,
    VARRAY_EXT,
    CollectionPaths,
    id_dir_parts,
    ids_in_dir,
    make_symlink,
    remove_file_and_empty_parents,
)
from deker.storage.locks import array_read_lock, creation_lock
from deker.tasks import FileSpec, storage_errors

__all__ = [
    "ArrayRecord",
    "array_schema_of",
    "varray_schema_of",
    "create_record",
    "create_tile_with",
    "pass_tile_creations",
    "delete_record",
    "file_spec",
    "find_by_primary",
    "read_record",
    "tile_ids",
]

logger = logging.getLogger(__name__)

Kind = str  # "array" | "varray"
ArrayRecord = tuple[str, dict[str, Any], dict[str, Any]]  # id, primary, custom


def array_schema_of(meta: CollectionMeta) -> ArraySchema:
    """Return the schema of the Arrays of a collection (the tile schema in a VArray collection)."""
    schema = meta.schema
    if isinstance(schema, VArraySchema):
        return tile_schema(schema)
    return schema


def varray_schema_of(meta: CollectionMeta) -> VArraySchema:
    """Return the schema of a VArray collection's VArrays (the caller knows it is one)."""
    schema = meta.schema
    assert isinstance(schema, VArraySchema)
    return schema


def _options_kwargs(meta: CollectionMeta, shape: tuple[int, ...]) -> dict[str, Any]:
    return dict(meta.options.h5py_dataset_kwargs(shape)) if meta.options is not None else {}


# The file layout of each CollectionMeta object's Arrays (a VArray builds the spec of every
# tile it touches, on every read: the tile schema is built once instead).  The entry keeps its
# meta alive, so its id is not reused while it is cached.
_LAYOUTS: dict[int, tuple[CollectionMeta, ArrayLayout]] = {}
_LAYOUTS_MAX = 256


def layout_of(meta: CollectionMeta) -> ArrayLayout:
    """Return the :class:`ArrayLayout` of a collection's Arrays (its VArrays' tiles), built once per ``meta``.

    The layout is what each of their files holds: shape, dtype, fill value and dataset options.
    """
    kept = _LAYOUTS.get(id(meta))
    if kept is not None and kept[0] is meta:
        return kept[1]
    schema = array_schema_of(meta)
    shape = tuple(schema.shape)
    layout = ArrayLayout(shape, np.dtype(schema.dtype).str, schema.fill_value, _options_kwargs(meta, shape))
    if len(_LAYOUTS) >= _LAYOUTS_MAX:
        _LAYOUTS.clear()
    _LAYOUTS[id(meta)] = (meta, layout)
    return layout


def file_spec(
    root: str,
    meta: CollectionMeta,
    array_id: str,
    locks: Any,
    symlink: tuple[str, ...] = (),
    storage_id: str | None = None,
) -> FileSpec:
    """Return the :class:`~deker.tasks.FileSpec` of an Array (or tile) of a collection."""
    layout = layout_of(meta)
    return FileSpec(
        root=root,
        collection=meta.name,
        array_id=array_id,
        shape=layout.shape,
        dtype=layout.dtype,
        fill_value=layout.fill_value,
        dataset_kwargs=dict(layout.dataset_kwargs),
        locks=locks,
        symlink=symlink,
        storage_id=storage_id,
    )


def position_key(position: Sequence[int]) -> str:
    """Return the symlink folder name of a tile's grid position (``(1, 0, 3)`` -> ``"1-0-3"``)."""
    return "-".join(map(str, position))


def _key_lock_name(kind: Kind, components: tuple[str, ...]) -> str:
    return f"{kind}:" + "/".join(components)


def _ext(kind: Kind) -> str:
    return ARRAY_EXT if kind == "array" else VARRAY_EXT


def _live_ids(
    paths: CollectionPaths, kind: Kind, components: tuple[str, ...], *, clean: bool = False
) -> list[str]:
    """Return the ids linked under a primary key whose main file exists.

    With ``clean`` (under the key's creation lock), the links naming a missing file are removed:
    what an interrupted creation or deletion leaves.
    """
    linked = ids_in_dir(paths.symlink_dir(kind, components), _ext(kind))
    existing = [i for i in linked if paths.main_file(kind, i).exists()]
    for stale in set(linked) - set(existing) if clean else ():
        _unlink(paths.symlink_file(kind, components, stale))
    return existing


def _write_json_atomically(path: Path, text: bytes, *, exclusive: bool) -> None:
    # temp file in the same directory, fsync, rename (link when exclusive), fsync the directory
    atomic.write_bytes(path, text, exclusive=exclusive)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _link_and_write(main_file: Path, link: Path, write: Callable[[Path], None], *, own_link: bool) -> None:
    """Make the symlink of a new object, then its main file with ``write(main_file)``.

    Symlink first, main file second: an interrupted creation leaves only a symlink naming a
    missing file, which every lookup treats as absent (crash safety, RELIABILITY.md).
    ``own_link``: nobody else may make that link (the key's creation lock is held), so it is
    removed if the main file was there first.
    """
    if main_file.exists():
        raise DekerArrayError(
            f"File {main_file} already exists: an object with id {main_file.stem} is stored"
        )
    try:
        make_symlink(main_file, link)
        made = True
    except FileExistsError:  # left by an interrupted creation of this id, or a racing one
        made = False
    try:
        write(main_file)
    except FileExistsError as exc:
        if made and own_link:
            _unlink(link)
        raise DekerArrayError(f"File {main_file} already exists") from exc
    except BaseException:
        if made and not main_file.exists():
            _unlink(link)
        raise


def _create_unique(
    paths: CollectionPaths,
    kind: Kind,
    array_id: str,
    components: tuple[str, ...],
    write: Callable[[Path], None],
    locks: Any,
    equal_keys: Sequence[tuple[str, ...]] = (),
) -> None:
    """Create the main file with ``write(path)`` and its symlink, race-free on the primary key.

    ``equal_keys`` are the other spellings of an equal key (``-0.0`` for ``0.0``) where deker
    1.1.7 may have stored one: an object there refuses the key too.
    """
    main_file = paths.main_file(kind, array_id)
    link = paths.symlink_file(kind, components, array_id)
    if not components:  # no primary key: nothing to be unique
        with storage_errors(main_file):
            _link_and_write(main_file, link, write, own_link=False)
        return
    with storage_errors(main_file), creation_lock(paths.path, _key_lock_name(kind, components), locks):
        taken, existing = components, _live_ids(paths, kind, components, clean=True)
        for other in equal_keys if not existing else ():
            taken, existing = other, _live_ids(paths, kind, other)
            if existing:
                break
        if existing:
            raise DekerValidationError(
                f"File {paths.symlink_dir(kind, taken)} already exists: an object with these primary "
                f"attributes is stored (id {existing[0]}); primary attributes must be unique"
            )
        _link_and_write(main_file, link, write, own_link=True)


def create_record(
    root: Path,
    meta: CollectionMeta,
    kind: Kind,
    array_id: str,
    primary: Mapping[str, Any],
    custom: Mapping[str, Any],
    locks: Any,
) -> tuple[str, ...]:
    """Create an Array (or tile) file or a VArray metadata file with its metadata.

    Returns the symlink components of its primary key (``()`` without one).
    """
    schema = meta.schema if kind == "varray" else array_schema_of(meta)
    paths = CollectionPaths(root, meta.name)
    components = primary_key_components(schema, primary) if primary else ()
    payload = encode_array_meta(array_id, primary, custom)
    write: Callable[[Path], None]
    if kind == "varray":
        write = functools.partial(_write_json_atomically, text=payload, exclusive=True)
    else:
        write = functools.partial(
            HDF5_FILES.create, layout=layout_of(meta), meta=payload, meta_dtype=meta_storage_dtype(payload)
        )
    equal = equal_key_components(schema, primary) if primary else []
    _create_unique(paths, kind, array_id, components, write, locks, equal)
    return components


def write_varray_meta(root: Path, meta: CollectionMeta, array_id: str, payload: bytes) -> None:
    """Replace the metadata file of a VArray atomically."""
    path = CollectionPaths(root, meta.name).main_file("varray", array_id)
    if not path.exists():
        raise DekerInstanceNotExistsError(f"VArray {array_id} does not exist in collection {meta.name}")
    _write_json_atomically(path, payload, exclusive=False)


def _decode(meta: CollectionMeta, kind: Kind, payload: bytes, source: Path) -> ArrayRecord:
    schema = meta.schema if kind == "varray" else array_schema_of(meta)
    try:
        raw = decode_array_meta(payload)
        primary_raw = raw.get("primary_attributes") or {}
        custom_raw = raw.get("custom_attributes") or {}
        prim_schema = [a for a in schema.attributes if a.primary]
        cust_schema = [a for a in schema.attributes if not a.primary]
        primary = deserialize_attributes(primary_raw, prim_schema)
        custom = deserialize_attributes(custom_raw, cust_schema)
        return str(raw["id"]), primary, custom
    except DekerMetaDataError as exc:
        raise DekerMetaDataError(f"Metadata of {source} is invalid: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise DekerMetaDataError(f"Metadata of {source} is invalid: {exc!r}") from exc


def read_record(root: Path, meta: CollectionMeta, kind: Kind, array_id: str, locks: Any) -> ArrayRecord:
    """Read the id and typed attributes of an Array, tile or VArray.

    Raises
    ------
    DekerInstanceNotExistsError
        If the object does not exist.
    """
    paths = CollectionPaths(root, meta.name)
    path = paths.main_file(kind, array_id)
    try:
        if kind == "varray":
            payload = path.read_bytes()
        else:
            with array_read_lock(path.parent, array_id, locks):
                payload = HDF5_FILES.read_meta(path)
    except FileNotFoundError as exc:
        raise DekerInstanceNotExistsError(
            f"{'VArray' if kind == 'varray' else 'Array'} {array_id} does not exist in collection {meta.name}"
        ) from exc
    except DekerLockError:
        raise  # a TimeoutError, hence an OSError: not a storage fault
    except OSError as exc:
        raise DekerStorageError(f"Cannot read {path}: {exc}") from exc
    return _decode(meta, kind, payload, path)


def find_by_primary(root: Path, meta: CollectionMeta, kind: Kind, components: tuple[str, ...]) -> str | None:
    """Return the id stored under a primary key, or ``None``."""
    existing = _live_ids(CollectionPaths(root, meta.name), kind, components)
    if existing:
        return existing[0]
    # A symlink naming a missing file is what an interrupted (or running) creation or deletion
    # leaves: the object does not exist (the next creation of this key removes the link).
    return None


def _key_may_read_back_otherwise(meta: CollectionMeta, kind: Kind) -> bool:
    """Whether a primary key of these objects may spell another folder once read back (a tuple key).

    Tiles (``vid``, ``v_position``) never do: their symlinks are looked for where they are.
    """
    if kind == "array" and isinstance(meta.schema, VArraySchema):
        return False
    schema = meta.schema if kind == "varray" else array_schema_of(meta)
    return any(a.primary and a.dtype is tuple for a in schema.attributes or ())


def _symlink_anywhere(paths: CollectionPaths, kind: Kind, depth: int, array_id: str) -> Path | None:
    """Return the symlink of ``array_id`` in whatever key folder it is (``None`` if in none).

    A key whose values read back as other values (a numpy float32 in a tuple is named
    ``0.1`` but reads back as the float ``0.10000000149011612``) spells another folder than
    the one its symlink was made in.
    """
    name = paths.symlink_file(kind, ("_",) * depth, array_id).name
    level = [str(paths.symlinks_dir(kind))]
    for _ in range(depth):  # (a walk, not a glob: the symlink names a deleted file by now)
        inner: list[str] = []
        for folder in level:
            try:
                with os.scandir(folder) as entries:
                    inner.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
            except OSError:
                continue
        level = inner
    for folder in level:
        candidate = os.path.join(folder, name)
        if os.path.lexists(candidate):
            return Path(candidate)
    return None


def delete_record(
    root: Path, meta: CollectionMeta, kind: Kind, array_id: str, components: tuple[str, ...]
) -> None:
    """Remove the main file of an object, its symlink and the empty directories they leave."""
    paths = CollectionPaths(root, meta.name)
    main = paths.main_file(kind, array_id)
    # Main file first: an interrupted deletion leaves a symlink naming a missing file (absent).
    if kind == "array":
        HDF5_FILES.delete(main)
    else:
        _unlink(main)
        atomic.discard_leftovers(main)
    link = paths.symlink_file(kind, components, array_id)
    if components and _key_may_read_back_otherwise(meta, kind) and not os.path.lexists(link):
        link = _symlink_anywhere(paths, kind, len(components), array_id) or link
    remove_file_and_empty_parents(link, paths.symlinks_dir(kind))
    for leftover in (main.parent / f"{array_id}.lock", main.parent / f"{array_id}.fence"):
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass
    remove_file_and_empty_parents(main.parent / ".none", paths.data_dir(kind))


def tile_ids(
    root: Path, meta: CollectionMeta, vid: str, positions: Iterable[tuple[int, ...]] | None = None
) -> dict[tuple[int, ...], str]:
    """Map the grid position of every existing tile of a VArray to the tile id.

    With ``positions``, only those tiles are looked for (a small read touching a few tiles of a
    big grid does not list the whole grid).
    """
    paths = CollectionPaths(root, meta.name)
    base = paths.symlink_dir("array", (vid,))
    found: dict[tuple[int, ...], str] = {}
    if positions is not None:
        wanted = [(tuple(p), os.path.join(base, position_key(p))) for p in positions]
    else:
        try:
            with os.scandir(base) as it:
                listed = [(entry.name, entry.path) for entry in it]
        except FileNotFoundError:
            return found
        wanted = []
        for name, entry_path in listed:
            try:
                wanted.append((tuple(int(x) for x in name.split("-")), entry_path))
            except ValueError:
                continue
    for position, folder in wanted:
        for tid in ids_in_dir(Path(folder), ARRAY_EXT):
            if os.path.exists(_main_file_str(paths, tid)):
                found[position] = tid
                break
    return found


def _main_file_str(paths: CollectionPaths, object_id: str, kind: Kind = "array") -> str:
    """Return the main file of an id as a string (pathlib's joins cost more than the lookups)."""
    return os.path.join(paths.data_dir(kind), *id_dir_parts(object_id), f"{object_id}{_ext(kind)}")


def tile_custom_attributes(
    vschema: VArraySchema, varray_values: Mapping[str, Any], position: tuple[int, ...]
) -> dict[str, Any]:
    """Return the ``parent.<attr>`` attributes of a tile: the real start of its time axes.

    deker 1.1.7 forgot the tile-size factor (SPEC §8 item 7); the tile at grid index ``k`` of a
    time axis starts at ``start + step * arrays_shape * k``.
    """
    custom: dict[str, Any] = {}
    for i, dim in enumerate(vschema.dimensions):
        if isinstance(dim, TimeDimensionSchema) and isinstance(dim.start_value, str):
            name = dim.start_value[1:]
            start = varray_values.get(name)
            if not isinstance(start, datetime):
                raise DekerValidationError(
                    f"VArray attribute {name!r} must hold the start datetime of {dim.name!r}"
                )
            custom[f"parent.{name}"] = start + dim.step * vschema.arrays_shape[i] * position[i]
    return custom


def create_tile_with(
    root: Path,
    meta: CollectionMeta,
    vid: str,
    position: tuple[int, ...],
    varray_values: Mapping[str, Any],
    locks: Any,
    data: np.ndarray[Any, Any] | np.generic | None,
    claim: Callable[[Path, str], AbstractContextManager[None]] | None = None,
) -> tuple[str, bool]:
    """Return the id of the tile at ``position``, creating it if missing (race-free).

    Parameters
    ----------
    root : Path
        The collections directory.
    meta : CollectionMeta
        The VArray collection.
    vid : str
        The VArray id.
    position : tuple of int
        The tile's grid position.
    varray_values : Mapping
        The VArray's attribute values (for the tile's custom attributes).
    locks : LockSettings
        Lock timeout and polling interval.
    data : numpy.ndarray or numpy scalar, optional
        Every cell of the tile (of its dtype, shaped like the tile, or a scalar): a tile
        created here holds it at once, one file written once instead of a creation and a
        rewrite.  Not written into a tile that exists already.
    claim : callable, optional
        ``claim(main_dir, tile_id)``, a context manager entered around the creation of a new
        tile before anything of it is published (:meth:`VArrayWriteLock.claiming
        <deker.storage.locks.VArrayWriteLock.claiming>`): the creator holds the tile from its
        first moment, so nobody can write it in between.  Not entered for a tile that exists.

    Returns
    -------
    tuple of (str, bool)
        The tile id, and whether this call created the tile with ``data``.

    """
    vschema = varray_schema_of(meta)
    paths = CollectionPaths(root, meta.name)
    components = (vid, position_key(position))
    with creation_lock(paths.path, _key_lock_name("array", components), locks):
        existing = _live_ids(paths, "array", components, clean=True)
        if existing:
            return existing[0], False
        # Checked under the creation lock: a VArray.delete removes the record first and then
        # passes every creation lock (pass_tile_creations), so no tile appears after it.
        if not paths.main_file("varray", vid).exists():
            raise DekerInstanceNotExistsError(
                f"VArray {vid} does not exist in collection {meta.name} (it was deleted): "
                "no tile is created for it"
            )
        tid = str(uuid.uuid4())
        primary = {"vid": vid, "v_position": tuple(position)}
        custom = tile_custom_attributes(vschema, varray_values, position)
        payload = encode_array_meta(tid, primary, custom)

        def write(path: Path) -> None:
            HDF5_FILES.create(path, layout_of(meta), payload, meta_storage_dtype(payload), data)

        main_file = paths.main_file("array", tid)
        with claim(main_file.parent, tid) if claim is not None else contextlib.nullcontext():
            _link_and_write(main_file, paths.symlink_file("array", components, tid), write, own_link=True)
        return tid, data is not None


def pass_tile_creations(
    root: Path, meta: CollectionMeta, vid: str, positions: Iterable[tuple[int, ...]], locks: Any
) -> None:
    """Wait until no tile creation of VArray ``vid`` that began before now is still running.

    Takes and drops the creation lock of each position.  Called by ``VArray.delete`` once the
    VArray's record is gone: a creation that checked the record before then has ended when
    this returns (and its tile can be listed and deleted), and every later one finds the
    record missing under its lock and refuses (:func:`create_tile_with`).

    Parameters
    ----------
    root : Path
        The storage root.
    meta : CollectionMeta
        The collection metadata.
    vid : str
        The VArray id.
    positions : iterable of tuple of int
        The tile positions to pass (those without a tile when the deletion listed them).
    locks : LockSettings
        Lock timeout and polling interval.
    """
    paths = CollectionPaths(root, meta.name)
    for position in positions:
        components = (vid, position_key(position))
        with creation_lock(paths.path, _key_lock_name("array", components), locks):
            pass


def json_dumps(value: Any) -> str:
    """Serialise plain values the way the collection metadata is written."""
    return json.dumps(value)
