r"""The integrity check of a storage (SPEC §6.3, with the defects of §8 item 12 fixed).

Four cumulative levels; each runs everything the lower ones do:

1. **collections**: every collection directory has a readable, valid ``<name>.json`` and its
   collection lock file ``<name>.lock``; no lock file names a missing collection.
2. **arrays, VArrays and locks**: every Array (or tile) file opens and holds valid metadata
   naming its own id, every VArray ``.json`` is valid; no lock marker was left behind by a
   dead process (live locks of running operations are not problems).
3. **paths**: every object has exactly its symlink, pointing at its own data file (a symlink
   naming the right file under another storage root, as after copying a storage, is fine);
   no extra symlinks or files in the symlink trees; no duplicate primary keys (equal keys
   in other folders too: ``-0.0`` and ``0.0``, which deker 1.1.7 kept apart); no data file
   outside its id's place; no tile of a missing VArray or outside the grid; no temporary file
   or undo journal left by an interrupted write (``.<name>.<hex>.tmp``, ``.<name>.journal``:
   nobody holds its ``flock`` and it has not changed for 10 s).
4. **data**: every stored value of every Array and tile is read (chunk by chunk), and the
   ``empty_cells`` counter, shape and dtype of the data are checked.

Levels 2 to 4 look at every data file through one module-level task per file
(:func:`check_array_file`), run on the client's executor: threads, processes or Dask workers.

Problems are grouped under headings; the report text is, per heading, ``"<heading>\\n\\t-
<problem>\\n..."`` as in deker 1.1.7.  :class:`IntegrityReport` also gives them as data
(the report and its file live in :mod:`deker.integrity_report`; they are imported from here).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deker.attributes import canonical_key_components, check_collection_name, primary_key_components
from deker.context import StorageContext
from deker.errors import (
    DekerCollectionNotExistsError,
    DekerIntegrityError,
    DekerLockError,
    DekerMetaDataError,
    DekerValidationError,
)
from deker.integrity_report import IntegrityProblem, IntegrityReport, report_file_name, report_path
from deker.log import progress_enabled
from deker.meta import CollectionMeta, decode_array_meta, decode_collection_meta, deserialize_attributes
from deker.records import array_schema_of
from deker.schemas import ArraySchema, VArraySchema
from deker.storage.atomic import SCRATCH_MIN_AGE, find_scratch_dirs
from deker.storage.inspection import (
    ArrayFileCheck,
    inspect_array_file,
    scan_data_tree,
    scan_symlink_tree,
    stale_leftovers,
)
from deker.storage.layout import ARRAY_EXT, VARRAY_EXT, CollectionPaths, is_scratch_dir_name
from deker.storage.lockinfo import KIND_CREATION, KIND_READ, KIND_VARRAY, is_locked, list_locks
from deker.storage.locks import LockSettings, array_read_lock
from deker.storage.mounts import is_local_filesystem
from deker.tasks import resolve_root

__all__ = ["IntegrityProblem", "IntegrityReport", "check_array_file", "check_integrity", "report_file_name"]

logger = logging.getLogger(__name__)

LEVELS = (1, 2, 3, 4)

_LOCK_HEADINGS = {
    KIND_CREATION: "array creation locks",
    KIND_READ: "array read locks",
    KIND_VARRAY: "varray write locks",
}


# ---------------------------------------------------------------------------------------- recorder


class _Stop(Exception):
    """Raised internally at the first problem when ``stop_on_error``."""


class _Recorder:
    def __init__(self, report: IntegrityReport, stop_on_error: bool) -> None:
        self.report = report
        self.stop_on_error = stop_on_error

    def add(
        self,
        level: int,
        kind: str,
        heading: str,
        message: str,
        collection: str | None = None,
        path: Path | str | None = None,
    ) -> None:
        problem = IntegrityProblem(
            level, kind, heading, message, collection, None if path is None else os.fspath(path)
        )
        self.report.problems.append(problem)
        logger.info("integrity problem: %s %s", heading, message)
        if self.stop_on_error:
            raise _Stop()


# ------------------------------------------------------------------------------------ file tasks


def check_array_file(
    root: str,
    collection: str,
    array_id: str,
    shape: tuple[int, ...],
    dtype: str,
    locks: LockSettings,
    verify_data: bool,
) -> ArrayFileCheck:
    """Inspect one Array or tile file under its read lock (a task: plain arguments only).

    Parameters
    ----------
    root : str
        The collections directory as the coordinator sees it (remapped with
        ``DEKER_ROOT_MAP`` on workers, see :func:`deker.tasks.resolve_root`).
    collection : str
        The collection name.
    array_id : str
        The Array or tile id.
    shape : tuple of int
        The array shape of the collection.
    dtype : str
        The numpy dtype string of the collection.
    locks : LockSettings
        How long to wait for a writer holding the file.
    verify_data : bool
        Read every stored value (level 4).

    Returns
    -------
    ArrayFileCheck
        The metadata bytes or why they could not be read, and data problems.
    """
    main = CollectionPaths(resolve_root(root), collection).main_file("array", array_id)
    try:
        with array_read_lock(main.parent, array_id, locks):
            return inspect_array_file(main, shape, dtype, verify_data)
    except FileNotFoundError:
        return ArrayFileCheck(vanished=True)
    except DekerLockError as exc:
        return ArrayFileCheck(meta_error=f"could not be checked: {exc}")


# --------------------------------------------------------------------------------------- checker


@dataclass
class _Record:
    array_id: str
    primary: dict[str, Any]
    components: tuple[str, ...] | None  # None: the symlink place cannot be computed
    key: tuple[str, ...] | None = None  # the key without -0.0: equal keys, equal values


class _Progress:
    """A tqdm bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self._bar: Any = None
        if enabled and total:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, file=sys.stderr, unit="file", leave=False)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _Checker:
    def __init__(self, ctx: StorageContext, level: int, recorder: _Recorder, progress: bool) -> None:
        self.ctx = ctx
        self.root = ctx.root
        self.level = level
        self.rec = recorder
        self.progress = progress
        self.name = ""  # the collection being checked

    def add(self, level: int, kind: str, heading: str, message: str, path: Path | str | None) -> None:
        self.rec.add(level, kind, heading, message, self.name or None, path)

    # ---------------------------------------------------------------- level 1
    def collections(self, only: str | None) -> list[CollectionMeta]:
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            entries = []
        dirs = [
            e.name for e in entries if e.is_dir(follow_symlinks=False) and not is_scratch_dir_name(e.name)
        ]
        locks = {e.name[: -len(".lock")] for e in entries if e.name.endswith(".lock") and e.is_file()}
        names = [only] if only is not None else dirs
        self.rec.report.collections = list(names)
        metas: list[CollectionMeta] = []
        for name in names:
            self.name = name
            meta_file = CollectionPaths(self.root, name).meta_file
            heading = "Collections initialization errors:"
            try:
                meta = decode_collection_meta(meta_file.read_bytes())
            except FileNotFoundError:
                msg = f"Collection {name}: metadata file {meta_file} not found"
                self.add(1, "collection-metadata", heading, msg, meta_file)
                continue
            except (OSError, DekerMetaDataError) as exc:
                self.add(1, "collection-metadata", heading, f"Collection {name}: {exc}", meta_file)
                continue
            if meta.name != name:
                msg = f"Collection {name}: its metadata {meta_file} names collection {meta.name!r}"
                self.add(1, "collection-metadata", heading, msg, meta_file)
                continue
            metas.append(meta)
        heading = "Collections locks errors:"
        for name in names:
            self.name = name
            lock = CollectionPaths(self.root, name).lock_file
            if name not in locks:
                msg = f"BaseLock for {name} not found: {lock} is missing"
                self.add(1, "collection-lock-missing", heading, msg, lock)
        for name in sorted(locks - set(dirs)) if only is None else ():
            self.name = name
            lock = CollectionPaths(self.root, name).lock_file
            if is_locked(lock) or CollectionPaths(self.root, name).path.is_dir():
                continue  # a creation at work holds it (or has made its directory since)
            msg = (
                f"Collection with lock {name} not found: {lock} names no collection directory "
                "(left by an interrupted creation or deletion; client.clear_locks removes it)"
            )
            self.add(1, "collection-lock-orphan", heading, msg, lock)
        self.name = ""
        heading = "Collections interrupted operations:"
        for path in find_scratch_dirs(self.root, SCRATCH_MIN_AGE):
            if only is None or path.parent.name == only:
                msg = (
                    f"Directory {path} was left by an interrupted collection creation, deletion or clear "
                    "(it can be deleted; client.clear_locks does)"
                )
                self.add(1, "scratch-dir", heading, msg, path)
        return metas

    # ---------------------------------------------------------------- level 2
    def stale_locks(self, paths: CollectionPaths) -> None:
        for info in list_locks(paths.path):
            if info.stale:
                heading = (
                    f"Collection {self.name} stale {_LOCK_HEADINGS[info.kind]} (their owners are dead). "
                    "Use client.clear_locks:"
                )
                msg = f"{info.path} (owner {info.owner or 'unknown'} is gone)"
                self.add(2, "stale-lock", heading, msg, info.path)

    @staticmethod
    def _decode(meta: CollectionMeta, kind: str, array_id: str, payload: bytes) -> _Record:
        schema: ArraySchema | VArraySchema = meta.schema if kind == "varray" else array_schema_of(meta)
        raw = decode_array_meta(payload)
        if raw["id"] != array_id:
            raise DekerMetaDataError(f"its metadata names id {raw['id']!r}, not its own id {array_id}")
        primary_attrs = [a for a in schema.attributes if a.primary]
        primary = deserialize_attributes(raw["primary_attributes"], primary_attrs)
        deserialize_attributes(raw["custom_attributes"], [a for a in schema.attributes if not a.primary])
        components: tuple[str, ...] | None
        key: tuple[str, ...] | None
        try:
            components = primary_key_components(schema, primary) if primary_attrs else ()
            key = canonical_key_components(schema, primary) if primary_attrs else None
        except DekerValidationError:
            components = key = None
        return _Record(array_id, primary, components, key)

    def varray_records(
        self, meta: CollectionMeta, paths: CollectionPaths
    ) -> tuple[dict[str, _Record], set[str]]:
        heading = f"Collection {meta.name} varrays initialization errors:"
        records: dict[str, _Record] = {}
        failed: set[str] = set()
        for vid in scan_data_tree(paths.data_dir("varray"), VARRAY_EXT).ids:
            source = paths.main_file("varray", vid)
            try:
                records[vid] = self._decode(meta, "varray", vid, source.read_bytes())
            except FileNotFoundError:
                continue
            except (OSError, DekerMetaDataError) as exc:
                failed.add(vid)
                self.add(2, "varray-metadata", heading, f"VArray {vid} at {source}: {exc}", source)
        return records, failed

    def _calls(self, meta: CollectionMeta, ids: Sequence[str]) -> list[tuple[Any, ...]]:
        schema = array_schema_of(meta)
        shape = tuple(int(s) for s in schema.shape)
        dtype = np.dtype(schema.dtype).str
        root, locks, verify = str(self.root), self.ctx.locks, self.level >= 4
        return [(root, meta.name, array_id, shape, dtype, locks, verify) for array_id in ids]

    def _array_result(
        self, meta: CollectionMeta, source: Path, array_id: str, result: ArrayFileCheck | BaseException
    ) -> _Record | None:
        # deker 1.1.7's heading; naming the kind ("tiles") read "Collection tiles tiles ..." for
        # a collection named like it
        heading = f"Collection {meta.name} (V)Arrays initialization errors:"
        if isinstance(result, BaseException):
            msg = f"Array {array_id} could not be checked: {result!r}"
            self.add(2, "array-metadata", heading, msg, source)
            return None
        record = None
        if result.meta is None:
            self.add(
                2, "array-metadata", heading, f"Array {array_id} at {source} {result.meta_error}", source
            )
        else:
            try:
                record = self._decode(meta, "array", array_id, result.meta)
            except DekerMetaDataError as exc:
                self.add(2, "array-metadata", heading, f"Array {array_id} at {source}: {exc}", source)
        for error in result.data_errors:
            heading = f"Collection {meta.name} data errors:"
            self.add(4, "corrupted-data", heading, f"Array {array_id} {error}", source)
        return record

    def array_records(
        self, meta: CollectionMeta, paths: CollectionPaths
    ) -> tuple[dict[str, _Record], set[str]]:
        ids = scan_data_tree(paths.data_dir("array"), ARRAY_EXT).ids
        records: dict[str, _Record] = {}
        failed: set[str] = set()
        runner = self.ctx.runner
        workers = runner.workers
        chunk = max(16, 8 * workers)  # results are looked at (and a stop honoured) chunk by chunk
        batch = 1 if runner.in_process else max(1, chunk // (2 * workers))
        limit = runner.suggest_parallelism(cheap_files=is_local_filesystem(paths.root))
        bar = _Progress(self.progress, len(ids), f'Checking collection "{meta.name}"')
        try:
            for start in range(0, len(ids), chunk):
                part = ids[start : start + chunk]
                calls = self._calls(meta, part)
                results = runner.run_all(check_array_file, calls, batch_size=batch, max_parallel=limit)
                for array_id, result in zip(part, results, strict=True):
                    if not isinstance(result, BaseException) and result.vanished:
                        continue  # deleted meanwhile
                    self.rec.report.files_checked += 1
                    record = self._array_result(meta, paths.main_file("array", array_id), array_id, result)
                    if record is None:
                        failed.add(array_id)
                    else:
                        records[array_id] = record
                bar.update(len(part))
        finally:
            bar.close()
        return records, failed

    # ---------------------------------------------------------------- level 3
    def _link(self, heading: str, label: str, link: Path, main: Path, array_id: str) -> None:
        if not os.path.lexists(link):
            self.add(3, "missing-symlink", heading, f"Symlink {link} of {label} {array_id} not found", link)
        elif not link.is_symlink():
            self.add(3, "wrong-symlink", heading, f"Incorrect symlink {link}: it is not a symlink", link)
        else:
            target = os.readlink(link)
            if not _names_file(link, target, self.root, main):
                msg = f"Incorrect symlink {link}: it points to {target}, not to {main}"
                self.add(3, "wrong-symlink", heading, msg, link)

    def links(self, paths: CollectionPaths, kind: str, records: dict[str, _Record], failed: set[str]) -> None:
        heading = f"Collection {self.name} {kind}s integrity errors:"
        label = "VArray" if kind == "varray" else "Array"
        ext = VARRAY_EXT if kind == "varray" else ARRAY_EXT
        expected: dict[Path, str] = {}
        by_dir: dict[Path, list[str]] = {}
        for array_id, record in records.items():
            main = paths.main_file(kind, array_id)
            if record.components is None:
                msg = f"{label} {array_id}: its primary attributes {record.primary} cannot name a directory"
                self.add(3, "missing-symlink", heading, msg, main)
                continue
            link = paths.symlink_file(kind, record.components, array_id)
            expected[link] = array_id
            by_dir.setdefault(link.parent, []).append(array_id)
            if main.exists():  # (else deleted while the check ran: its symlink goes with it)
                self._link(heading, label, link, main, array_id)
        for directory, ids in by_dir.items():
            if len(ids) > 1 and directory != paths.symlinks_dir(kind):
                msg = f"{label}s {', '.join(sorted(ids))} have the same primary attributes ({directory})"
                self.add(3, "duplicate-primary-key", heading, msg, directory)
        by_key: dict[tuple[str, ...], list[str]] = {}
        for array_id, record in records.items():
            if record.key is not None and record.components is not None:
                by_key.setdefault(record.key, []).append(array_id)
        for ids in by_key.values():
            places = sorted({paths.symlink_dir(kind, records[i].components or ()) for i in ids})
            if len(places) > 1:  # equal keys spelt apart (0.0 and -0.0, as deker 1.1.7 stored them)
                where = ", ".join(str(p) for p in places)
                msg = f"{label}s {', '.join(sorted(ids))} have equal primary attributes ({where})"
                self.add(3, "duplicate-primary-key", heading, msg, places[0])
        for entry in scan_symlink_tree(paths.symlinks_dir(kind)):
            if entry.path in expected:
                continue
            name = entry.path.name
            link_id = name[: -len(ext)] if name.endswith(ext) else None
            if link_id is not None and link_id in failed:
                continue  # its metadata is unreadable: where it belongs is unknown (reported above)
            if (
                entry.is_symlink
                and link_id is not None
                and link_id not in records
                and _stored(paths, kind, link_id)
            ):
                continue  # created while the check ran, after the data files were listed
            where = f"There are unnecessary files in directory {entry.path.parent}: {name}"
            if not entry.is_symlink:
                msg = f"{where} is not a symlink"
            elif link_id in records:
                msg = f"{where} ({label} {link_id} has its symlink elsewhere)"
            else:
                msg = f"Symlink {entry.path} names no stored {label} (it points to {entry.target})"
            self.add(3, "extra-symlink", heading, msg, entry.path)

    def files(self, meta: CollectionMeta, paths: CollectionPaths) -> None:
        heading = f"Collection {meta.name} files integrity errors:"
        for kind in ("array", "varray") if meta.kind == "varray" else ("array",):
            ext = VARRAY_EXT if kind == "varray" else ARRAY_EXT
            for path in scan_data_tree(paths.data_dir(kind), ext).misplaced:
                msg = (
                    f"File {path} does not belong there: a {ext} file must be named after its id and sit "
                    f"at the id's place under {paths.data_dir(kind)}"
                )
                self.add(3, "orphan-file", heading, msg, path)
        for left in stale_leftovers(paths.path):
            if left.kind == "journal":
                msg = (
                    f"Undo journal {left.path} of an interrupted write to {left.target}: the file stays "
                    "in its old state for readers until a writer rolls it back"
                )
                self.add(3, "interrupted-write", heading, msg, left.path)
            else:
                msg = f"Temporary file {left.path} was left by an interrupted write (it can be deleted)"
                self.add(3, "temp-file", heading, msg, left.path)

    def tiles(
        self, meta: CollectionMeta, tiles: dict[str, _Record], varrays: dict[str, _Record], bad: set[str]
    ) -> None:
        schema = meta.schema
        assert isinstance(schema, VArraySchema)
        paths = CollectionPaths(self.root, meta.name)
        heading = f"Collection {meta.name} tiles integrity errors:"
        vgrid = tuple(int(g) for g in (schema.vgrid or ()))
        for tile_id, record in tiles.items():
            vid, position = record.primary.get("vid"), record.primary.get("v_position")
            main = paths.main_file("array", tile_id)
            if vid in bad:
                continue
            if vid not in varrays:
                if isinstance(vid, str) and _stored(paths, "varray", vid):
                    continue  # the VArray was created while the check ran, after the VArrays were listed
                msg = f"Tile {tile_id} belongs to VArray {vid}, which does not exist"
                self.add(3, "orphan-tile", heading, msg, main)
            elif not (
                isinstance(position, tuple)
                and len(position) == len(vgrid)
                and all(isinstance(p, int) and 0 <= p < g for p, g in zip(position, vgrid, strict=True))
            ):
                msg = f"Tile {tile_id} of VArray {vid} has position {position}, outside the grid {vgrid}"
                self.add(3, "orphan-tile", heading, msg, main)

    # ---------------------------------------------------------------- driver
    def collection(self, meta: CollectionMeta) -> None:
        self.name = meta.name
        paths = CollectionPaths(self.root, meta.name)
        self.stale_locks(paths)
        varrays: dict[str, _Record] = {}
        bad_varrays: set[str] = set()
        if meta.kind == "varray":
            varrays, bad_varrays = self.varray_records(meta, paths)
        arrays, bad_arrays = self.array_records(meta, paths)
        if self.level >= 3:
            self.links(paths, "array", arrays, bad_arrays)
            if meta.kind == "varray":
                self.links(paths, "varray", varrays, bad_varrays)
                self.tiles(meta, arrays, varrays, bad_varrays)
            self.files(meta, paths)
        self.name = ""


def _stored(paths: CollectionPaths, kind: str, array_id: str) -> bool:
    """Whether the main file of ``array_id`` exists now (``False`` for a string that is no id)."""
    try:
        return paths.main_file(kind, array_id).is_file()
    except DekerValidationError:
        return False


def _names_file(link: Path, target: str, root: Path, main: Path) -> bool:
    """Whether a symlink target names ``main``, possibly under another storage root.

    deker writes absolute targets; a storage copied or mounted elsewhere keeps the old root in
    them.  The target is right when its trailing components are the data file's path below the
    collections directory (``<collection>/array_data/<fan-out>/<id>.hdf5``).
    """
    full = target if os.path.isabs(target) else os.path.join(link.parent, target)
    parts = Path(os.path.normpath(full)).parts
    relative = main.relative_to(root).parts
    return parts[-len(relative) :] == relative


# ------------------------------------------------------------------------------------------- entry


def check_integrity(
    ctx: StorageContext,
    level: int = 1,
    stop_on_error: bool = True,
    to_file: bool | str | os.PathLike[str] = False,
    collection: str | None = None,
    *,
    progress: bool | None = None,
    echo: bool = True,
) -> IntegrityReport:
    """Check a storage; print the report, optionally write it to a file.

    Parameters
    ----------
    ctx : StorageContext
        The storage (from an open client).
    level : {1, 2, 3, 4}
        How deep to check (each level includes the lower ones, see the module docstring).
    stop_on_error : bool
        Raise :class:`DekerIntegrityError` at the first problem.
    to_file : bool, str or Path
        Also write the report: ``True`` to ``./deker_integrity_report_<YYYY-MM-DDTHH:MM:SS>.txt``,
        or to the path given (its directory must exist).  Written whether or not problems were
        found, and also when ``stop_on_error`` stops the check.
    collection : str, optional
        Check only this collection.
    progress : bool, optional
        Show a progress bar on stderr (default: only when stderr is a terminal).
    echo : bool
        Print the report to stdout (``False`` for callers that present it themselves).

    Returns
    -------
    IntegrityReport
        What was found.

    Raises
    ------
    DekerIntegrityError
        With ``stop_on_error``, at the first problem; the message is the report so far.
    DekerCollectionNotExistsError
        If ``collection`` names no collection.
    DekerValidationError
        If ``level`` is not 1 to 4 or ``to_file`` names an impossible place.
    """
    if isinstance(level, bool) or not isinstance(level, int) or level not in LEVELS:
        raise DekerValidationError(f"Integrity check level shall be 1, 2, 3 or 4; got {level!r}")
    show_progress = progress_enabled(progress)
    ctx.check_open()
    path = report_path(to_file)
    if collection is not None:
        if not isinstance(collection, str):
            raise DekerValidationError(f"collection shall be a collection name; got {collection!r}")
        check_collection_name(collection)
        if not CollectionPaths(ctx.root, collection).path.is_dir():
            raise DekerCollectionNotExistsError(f"Collection {collection} does not exist")
    report = IntegrityReport(level=level)
    checker = _Checker(ctx, level, _Recorder(report, bool(stop_on_error)), show_progress)
    stopped = False
    try:
        metas = checker.collections(collection)
        if level >= 2:
            for meta in metas:
                checker.collection(meta)
    except _Stop:
        stopped = True
    if path is not None:
        path.write_text(report.text)
        report.report_file = path
    if stopped:
        raise DekerIntegrityError(report.text)
    if echo:
        print(report.text, end="")
        if path is not None:
            print(f"Integrity check logged {'errors' if report.problems else 'its report'} in {path}")
    return report
