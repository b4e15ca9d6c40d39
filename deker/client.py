"""The entry point: :class:`Client` opens a ``file://`` storage."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlparse

from deker.attributes import check_collection_name, check_new_collection_name
from deker.collection import Collection, meta_stamp
from deker.context import ContextSettings, StorageContext
from deker.errors import (
    DekerClientError,
    DekerCollectionAlreadyExistsError,
    DekerCollectionNotExistsError,
    DekerMetaDataError,
    DekerStorageError,
    DekerURIError,
    DekerValidationError,
)
from deker.executors import TaskRunner
from deker.integrity import IntegrityReport, check_integrity
from deker.log import set_logging_level
from deker.meta import (
    CURRENT_METADATA_VERSION,
    CollectionMeta,
    decode_collection_meta,
    encode_collection_meta,
)
from deker.options import HDF5Options, check_fill_value_supported
from deker.records import array_schema_of
from deker.schemas import ArraySchema, VArraySchema
from deker.sizes import check_memory, effective_memory_limit, human_size, parse_memory_limit
from deker.storage.atomic import build_directory
from deker.storage.cleanup import clean_storage
from deker.storage.hdf5 import check_filter_available
from deker.storage.inspection import tree_size
from deker.storage.layout import COLLECTIONS_DIR, CollectionPaths, is_scratch_dir_name
from deker.storage.lockinfo import LockInfo, clear_locks, list_locks, remove_orphan_collection_locks
from deker.storage.locks import LockSettings, collection_lock
from deker.storage.writable import write_problem
from deker.tasks import storage_errors
from deker.types import StorageSize

__all__ = ["Client"]

logger = logging.getLogger(__name__)

_ADAPTER = "HDF5StorageAdapter"


#: How a storage URI is written, for error messages.
URI_RULE = (
    "a storage URI is 'file://' followed by an absolute path ('file:///data/deker'), or 'file:' "
    "followed by a path relative to the working directory ('file:data/deker')"
)


def _suggest(path: str) -> str:
    return Path(os.path.normpath(Path(path).expanduser().absolute())).as_uri()


def _storage_path(uri: Any) -> Path:
    """Return the absolute storage directory a URI names (the one rule of :class:`Client`)."""
    if not isinstance(uri, str):
        raise DekerURIError(f"Invalid uri type: {type(uri).__name__}; {URI_RULE}")
    text = uri.strip()
    if not text:
        raise DekerURIError(f"Empty uri passed; {URI_RULE}")
    parsed = urlparse(text)
    if parsed.scheme == "":
        raise DekerURIError(f"Invalid uri {uri!r}: it has no scheme; write {_suggest(text)!r} ({URI_RULE})")
    if parsed.scheme != "file":
        raise DekerURIError(
            f"Invalid uri {uri!r}: {parsed.scheme} is not supported, only file:// storages are; "
            "mount the storage and write 'file:///<mount point>/<path>'"
        )
    if parsed.netloc not in ("", "localhost"):
        raise DekerURIError(
            f"Invalid uri {uri!r}: {parsed.netloc!r} would be a host name, and file URIs name no host; "
            f"write {_suggest(unquote(parsed.netloc + parsed.path))!r} ({URI_RULE})"
        )
    raw = unquote(parsed.path)
    if not raw:
        raise DekerURIError(f"Invalid uri {uri!r}: it names no path; {URI_RULE}")
    path = Path(os.path.normpath(Path(raw).absolute()))
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise DekerURIError(f"Invalid uri {uri!r}: {probe} is a file, not a directory")
    return path


def _check_number(name: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DekerValidationError(
            f"'{name}' setting has wrong type: {type(value).__name__}; a number of seconds"
        )
    if value < 0 or (positive and value == 0):
        raise DekerValidationError(
            f"'{name}' must be {'positive' if positive else 'non-negative'}; got {value}"
        )
    return float(value)


class Client:
    """Open a deker storage.

    Parameters
    ----------
    uri : str
        ``"file:///path/to/storage"``, or ``"file:path"`` relative to the working directory
        (made absolute).  Anything else raises :class:`~deker.errors.DekerURIError` saying
        what to write instead.
    create : bool, default True
        Create the storage (its ``collections`` directory) if it does not exist, as deker
        1.1.7 always did.  ``False`` refuses: a mistyped path raises
        :class:`~deker.errors.DekerClientError` naming it instead of creating an empty storage.
    read_only : bool, default False
        Only read: the client creates, changes and removes no file (no lock file, no read
        marker, no identity file, no clean-up), and every write raises
        :class:`~deker.errors.DekerReadOnlyError` before touching anything.  A client becomes
        read-only by itself when it cannot write the storage (a read-only mount, a user with
        read permission only): see :attr:`read_only` and :attr:`read_only_reason`.  A
        read-only client never creates the storage.
    executor : concurrent.futures.Executor or distributed.Client, optional
        Runs the per-tile tasks of VArrays.  By default the client owns a thread pool of
        ``workers`` threads.  A user executor is never shut down by deker; a Dask distributed
        client runs the tasks on its workers (which must see the same filesystem); their
        results come back through the scheduler one task at a time, or straight from the
        workers (in requests of about 64 MiB) when that client was made with
        ``direct_to_workers=True`` or leaves it at ``None`` while every worker listens on this
        host.
    workers : int, optional
        Threads of the client's own pool (default ``cpu_count() + 4``).  On a local
        filesystem no more tile tasks of one VArray read, update or clear (or tile creations,
        or file checks of :meth:`check_integrity`) run at once than the cores this process may
        use, in this pool or in a given ``ThreadPoolExecutor``: the others wait (there the
        tasks are CPU-bound).
    write_lock_timeout : int, default 60
        Seconds a writer (or reader) waits for a lock before :class:`DekerLockError`.
    write_lock_check_interval : int, default 1
        Longest pause between two lock checks, in seconds.
    loglevel : str, default "ERROR"
        Level of the ``deker`` loggers.
    memory_limit : int or str, default 0
        Bytes, or ``"512M"``, ``"4G"``...; ``<= 0`` means RAM + swap.
    **kwargs
        ``skip_collection_create_memory_check=True`` skips the memory check at collection creation.
    """

    def __init__(
        self,
        uri: str = "",
        *,
        create: bool = True,
        read_only: bool = False,
        executor: Any = None,
        workers: int | None = None,
        write_lock_timeout: int = 60,
        write_lock_check_interval: int = 1,
        loglevel: str = "ERROR",
        memory_limit: int | str = 0,
        **kwargs: Any,
    ) -> None:
        self._uri = uri
        self._path = _storage_path(uri)
        if not isinstance(create, bool):
            raise DekerValidationError(f"'create' must be a bool; got {create!r}")
        self._create_storage = create
        if not isinstance(read_only, bool):
            raise DekerValidationError(f"'read_only' must be a bool; got {read_only!r}")
        reason = self._read_only_reason(read_only)
        if not isinstance(loglevel, str):
            raise DekerClientError(f"Unknown level: {loglevel!r}")
        try:
            set_logging_level(loglevel.upper())
        except DekerValidationError as exc:
            raise DekerClientError(f"Unknown level: {loglevel!r}") from exc
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise DekerValidationError(f"'workers' must be a positive int; got {workers!r}")
        timeout = _check_number("write_lock_timeout", write_lock_timeout, positive=False)
        interval = _check_number("write_lock_check_interval", write_lock_check_interval, positive=True)
        skip = kwargs.pop("skip_collection_create_memory_check", False)
        if not isinstance(skip, bool):
            raise DekerValidationError(
                "'skip_collection_create_memory_check' setting has wrong type: bool expected"
            )
        self._settings = ContextSettings(
            root=str(self._path / COLLECTIONS_DIR),
            locks=LockSettings(timeout=timeout, interval=interval, read_only=reason is not None),
            memory_limit=effective_memory_limit(parse_memory_limit(memory_limit)),
            skip_collection_create_memory_check=skip,
            read_only_reason=reason,
        )
        self._executor = executor
        self._workers = workers
        self._extra = kwargs
        self._ctx: StorageContext | None = None
        self._open()

    # ------------------------------------------------------------------ state
    def _read_only_reason(self, requested: bool) -> str | None:
        """Why this client is read-only (asked for, or the storage cannot be written), or None."""
        root = self._path / COLLECTIONS_DIR
        if requested:
            return "read_only=True"
        if not root.is_dir():
            return None  # a new storage: created writable (or its creation fails)
        problem = write_problem(root)
        if problem is not None:
            logger.info("storage %s cannot be written (%s): the client is read-only", self._path, problem)
        return problem

    def _open(self) -> None:
        if self._ctx is not None and not self._ctx.is_closed:
            return
        root = Path(self._settings.root)
        if self._settings.locks.read_only and not root.is_dir():
            raise DekerClientError(
                f"No deker storage at {self._path}: it has no '{COLLECTIONS_DIR}' directory, and a "
                "read-only client creates nothing"
            )
        if not self._create_storage and not root.is_dir():
            raise DekerClientError(
                f"No deker storage at {self._path}: it has no '{COLLECTIONS_DIR}' directory "
                "(nothing was created)"
            )
        runner = TaskRunner.create(self._executor, self._workers)  # (refuses before anything is made)
        created = not root.is_dir()
        if created:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DekerClientError(f"Cannot open storage {self._path}: {exc}") from exc
        self._ctx = StorageContext(self._settings, runner)
        if created:  # a new storage gets its identity file (deker.storage.identity) at once
            self._ctx.ensure_storage_id()
        logger.debug("opened storage %s", self._path)

    @property
    def storage_context(self) -> StorageContext:
        """The storage context of the open client (for deker's layers: the CLI, extensions).

        Raises
        ------
        DekerClientError
            If the client is closed.
        """
        if self._ctx is None or self._ctx.is_closed:
            raise DekerClientError("Client is closed")
        return self._ctx

    def _check_open(self) -> None:
        if self._ctx is None or self._ctx.is_closed:
            raise DekerClientError("Client is closed")

    @property
    def is_open(self) -> bool:
        """Whether the client is open."""
        return self._ctx is not None and not self._ctx.is_closed

    @property
    def is_closed(self) -> bool:
        """Whether the client is closed."""
        return not self.is_open

    @property
    def read_only(self) -> bool:
        """Whether the client only reads (asked with ``read_only=True``, or chosen by itself).

        A read-only client creates, changes and removes no file; its writes raise
        :class:`~deker.errors.DekerReadOnlyError`.
        """
        return self._settings.locks.read_only

    @property
    def read_only_reason(self) -> str | None:
        """Why the client is read-only: ``"read_only=True"`` when asked, else what the probe found.

        For a client that chose it by itself: the storage's filesystem is mounted read-only
        (``EROFS``), or this user may not write in its collections directory (``EACCES``).
        ``None`` for a writable client.
        """
        return self._settings.read_only_reason

    @property
    def meta_version(self) -> str:
        """The metadata version this client writes (``"0.2"``)."""
        return CURRENT_METADATA_VERSION

    @property
    def root_path(self) -> Path:
        """The collections directory (``<storage>/collections``)."""
        return Path(self._settings.root)

    def close(self) -> None:
        """Close the client (idempotent); its objects stop working, the client can be re-entered."""
        if self._ctx is not None:
            self._ctx.close()

    def __enter__(self) -> Client:
        self._open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __repr__(self) -> str:
        mode = ", read-only" if self.read_only else ""
        return f"Client(uri={self._uri!r}, {'open' if self.is_open else 'closed'}{mode})"

    # ------------------------------------------------------------ collections
    def _paths(self, name: str) -> CollectionPaths:
        return CollectionPaths(self.root_path, name)

    def _create(self, meta: CollectionMeta) -> Collection:
        ctx = self.storage_context
        ctx.check_writable(f"create collection {meta.name}")
        if is_scratch_dir_name(meta.name):
            raise DekerValidationError(
                f"Collection name {meta.name!r} has the form of deker's scratch directories; choose another"
            )
        check_new_collection_name(meta.name)
        if any(a.primary and a.name == "id" for a in meta.schema.attributes):
            raise DekerValidationError(
                f"Collection {meta.name}: a primary attribute cannot be named 'id': filter({{'id': ...}}) "
                "looks an array up by its id, so arrays could never be found by it; rename the attribute"
            )
        paths = self._paths(meta.name)
        if paths.lock_file.is_dir():  # a collection "<name>.lock" that deker 1.1.7 made
            raise DekerValidationError(
                f"Collection {meta.name} cannot be created in this storage: its lock file {paths.lock_file} "
                f"is a directory (the collection {paths.lock_file.name!r} of deker 1.1.7, or a stray one); "
                "choose another name"
            )
        schema_of_arrays = array_schema_of(meta)
        check_fill_value_supported(meta.options, schema_of_arrays.dtype, schema_of_arrays.fill_value)
        if meta.options is not None:  # refused now, not at every write: a chunk shape of another
            meta.options.h5py_dataset_kwargs(schema_of_arrays.shape)  # rank, an unknown filter
            check_filter_available(meta.options.compression_opts.compression)
        ctx.ensure_storage_id()  # a storage made by deker 1.1.7 gets its identity file at its first write
        # A full disk, a read-only or failing storage: DekerStorageError naming the path.
        with storage_errors(paths.lock_file), collection_lock(self.root_path, meta.name, ctx.locks):
            try:
                self._build(meta, paths)
            except BaseException:
                # Nothing was created: drop the lock file, which would outlive the failure
                # (unlinked while held, as a released creation lock is: waiters retry).
                if not paths.meta_file.exists():
                    with contextlib.suppress(OSError):
                        os.unlink(paths.lock_file)
                raise
        return Collection(ctx, meta)

    def _build(self, meta: CollectionMeta, paths: CollectionPaths) -> None:
        """Create the directory of a new collection (the caller holds its lock)."""
        ctx = self.storage_context
        if not ctx.settings.skip_collection_create_memory_check:
            schema = array_schema_of(meta)
            import numpy as np

            check_memory(tuple(schema.shape), np.dtype(schema.dtype), ctx.memory_limit)
        # The directory appears with its metadata inside, at once: a crash leaves no
        # collection directory without metadata behind (which would block the name).
        payload = encode_collection_meta(meta).encode()
        try:
            build_directory(paths.root, meta.name, {paths.meta_file.name: payload})
        except FileExistsError as exc:
            if paths.path.is_dir() and not paths.meta_file.exists():
                raise DekerCollectionAlreadyExistsError(
                    f"Collection {meta.name} cannot be created: {paths.path} exists and holds files "
                    f"but no metadata file {paths.meta_file.name}; move that directory away first"
                ) from exc
            raise DekerCollectionAlreadyExistsError(f"Collection {meta.name} already exists") from exc

    def create_collection(
        self,
        name: str,
        schema: ArraySchema | VArraySchema,
        collection_options: HDF5Options | None = None,
        storage_adapter_type: str | None = None,
    ) -> Collection:
        """Create a collection.

        Parameters
        ----------
        name : str
            A name usable as a directory name (no ``/``, not ``.``/``..``, not empty), not
            ending with ``.lock`` (the lock file of a collection ``x`` is ``x.lock``).
        schema : ArraySchema or VArraySchema
            The schema of its arrays or VArrays.
        collection_options : HDF5Options, optional
            Chunking and compression of every data file.
        storage_adapter_type : str, optional
            Only ``"HDF5StorageAdapter"`` exists.

        Returns
        -------
        Collection

        Raises
        ------
        DekerReadOnlyError
            If the client is read-only (nothing is created).
        """
        if not isinstance(name, str) or not name.strip():
            raise DekerValidationError(f"Collection invalid name: {name!r}; a non-empty string is expected")
        check_collection_name(name)
        if not isinstance(schema, (ArraySchema, VArraySchema)):
            raise DekerValidationError(
                f"Invalid schema type: {type(schema)}; ArraySchema or VArraySchema expected"
            )
        if collection_options is not None and not isinstance(collection_options, HDF5Options):
            raise DekerValidationError(
                f"Invalid collection_options type: {type(collection_options)}; HDF5Options"
            )
        if storage_adapter_type not in (None, _ADAPTER):
            raise DekerStorageError(f"There is no adapter for {storage_adapter_type}")
        return self._create(CollectionMeta(name=name, schema=schema, options=collection_options))

    def collection_from_dict(self, collection_data: dict[str, Any]) -> Collection:
        """Create a collection on disk from its metadata dict (as ``Collection.as_dict`` gives)."""
        meta = decode_collection_meta(collection_data)
        check_collection_name(meta.name)
        return self._create(CollectionMeta(name=meta.name, schema=meta.schema, options=meta.options))

    def _load(self, name: str) -> Collection | None:
        path = self._paths(name).meta_file
        try:
            with open(path, "rb") as file:  # (the stamp of the very file read: see Collection)
                stamp = meta_stamp(os.fstat(file.fileno()))
                text = file.read().decode()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeError) as exc:
            raise DekerMetaDataError(f'Collection "{name}" metadata cannot be read: {exc}') from exc
        try:
            meta = decode_collection_meta(text)
        except DekerMetaDataError as exc:
            raise DekerMetaDataError(f'Collection "{name}" metadata file {path} is invalid: {exc}') from exc
        return Collection(self.storage_context, meta, stamp)

    def get_collection(self, name: str) -> Collection | None:
        """Return the collection named ``name``, or ``None``."""
        self._check_open()
        if not isinstance(name, str) or not name.strip():
            raise DekerValidationError(f"Collection invalid name: {name!r}")
        check_collection_name(name)
        return self._load(name)

    def __iter__(self) -> Iterator[Collection]:
        self._check_open()
        for entry in sorted(os.scandir(self.root_path), key=lambda e: e.name):
            if not entry.is_dir(follow_symlinks=False) or is_scratch_dir_name(entry.name):
                continue
            try:
                coll = self._load(entry.name)
            except DekerMetaDataError as exc:
                logger.warning("skipping collection directory %s: %s", entry.path, exc)
                continue
            if coll is None:
                logger.warning("skipping %s: it holds no %s.json", entry.path, entry.name)
                continue
            yield coll

    def _collection_dir(self, name: str | None) -> Path:
        if not name:
            return self.root_path
        check_collection_name(name)
        path = self._paths(name).path
        if not path.is_dir():
            raise DekerCollectionNotExistsError(f"Collection {name} does not exist")
        return path

    # ------------------------------------------------------------- operations
    def calculate_storage_size(self, collection_name: str = "") -> StorageSize:
        """Return the size of every file of the storage (or of one collection).

        Every regular file counts: data files and tiles, VArray metadata, collection metadata,
        lock files.  Symlinks are not followed (the file they name is counted once, where it
        lives).  Unlike deker 1.1.7 this prints and warns nothing.

        Parameters
        ----------
        collection_name : str, optional
            Limit to this collection (its directory).

        Returns
        -------
        StorageSize
            ``(bytes, human)``, e.g. ``StorageSize(5697, "5.56 KB")``.

        Raises
        ------
        DekerCollectionNotExistsError
            If ``collection_name`` names no collection.
        """
        self._check_open()
        total = tree_size(self._collection_dir(collection_name))
        return StorageSize(total, human_size(total))

    def check_integrity(
        self,
        level: int = 1,
        stop_on_error: bool = True,
        to_file: bool | str | os.PathLike[str] = False,
        collection: str | None = None,
        *,
        progress: bool | None = None,
    ) -> IntegrityReport:
        r"""Check the storage, print the report as deker 1.1.7 did, and return it.

        Printed on stdout, as in deker 1.1.7: ``Integrity check found no errors``, or the
        problems grouped under headings (``Collection <name> arrays integrity errors:`` then
        one ``\t- <problem>`` line each), then ``Integrity check logged ... in <path>`` when
        ``to_file`` wrote it.  Returned: the same report as an :class:`IntegrityReport`
        (``ok``, ``problems``, ``text``, ``as_dict()``), where 1.1.7 returned ``None``.  With
        ``stop_on_error`` the first problem raises instead, and nothing is printed.

        Levels are cumulative: 1 collections (metadata, collection locks); 2 Arrays, tiles and
        VArrays open with valid metadata, no lock left behind by a dead process; 3 symlinks,
        misplaced or temporary files, orphan tiles; 4 every stored value is read.  Levels 2-4
        run one task per data file on the client's executor (Dask workers too).

        Parameters
        ----------
        level : {1, 2, 3, 4}
            How deep to check.
        stop_on_error : bool, default True
            Raise :class:`~deker.errors.DekerIntegrityError` at the first problem; otherwise
            check everything and report all problems.
        to_file : bool, str or Path, default False
            Also write the report: ``True`` writes
            ``./deker_integrity_report_<YYYY-MM-DDTHH:MM:SS>.txt``, a path writes there (its
            directory must exist).
        collection : str, optional
            Check only this collection.
        progress : bool, optional
            Progress bar on stderr; by default only when stderr is a terminal.

        Returns
        -------
        IntegrityReport
            The problems found, also as data (deker 1.1.7 returned ``None``).

        Raises
        ------
        DekerIntegrityError
            With ``stop_on_error``, at the first problem (the message is the report).
        DekerCollectionNotExistsError
            If ``collection`` names no collection.
        """
        self._check_open()
        return check_integrity(
            self.storage_context, level, stop_on_error, to_file, collection, progress=progress, echo=True
        )

    def list_locks(self, collection_name: str | None = None) -> list[LockInfo]:
        """List the lock files of the storage (or of one collection) with their owners and state.

        Returns
        -------
        list of LockInfo
            Each with ``path``, ``kind``, ``array_id``, ``owner``, ``alive`` and ``stale``.
        """
        self._check_open()
        return list_locks(self._collection_dir(collection_name))

    def clear_locks(self, collection_name: str | None = None, *, force: bool = False) -> list[Path]:
        """Remove lock files whose owners are dead (all of them with ``force``), and crash leftovers.

        Read markers, VArray write markers and creation locks left behind by dead processes
        are removed; those of running operations are kept unless ``force`` (which breaks the
        protection of those operations).  Locks of existing collections and array mutexes are never
        removed.
        What killed writers left is cleaned too (``force`` does not change that): undo journals
        of interrupted in-place writes are rolled back (under each array's write lock, waiting
        for it like a writer), temporary files are deleted, and so are the scratch directories
        of interrupted collection creations and deletions (unchanged for 10 s), and, for the
        whole storage, collection lock files that name no collection and nobody holds.

        Parameters
        ----------
        collection_name : str, optional
            Limit to this collection.
        force : bool, default False
            Remove live locks too.

        Returns
        -------
        list of Path
            The removed files, journals rolled back and scratch directories, sorted (each is
            also logged at INFO level).

        Raises
        ------
        DekerReadOnlyError
            If the client is read-only (nothing is removed).
        """
        self._check_open()
        self.storage_context.check_writable("clear locks")
        directory = self._collection_dir(collection_name)
        # markers first: the write locks that roll journals back sweep the stale markers they
        # meet, which then went unlisted
        removed = clear_locks(directory, force=force)
        removed += clean_storage(directory, self.storage_context.locks)
        if directory == self.root_path:
            removed += remove_orphan_collection_locks(directory)
        removed.sort(key=str)
        return removed
