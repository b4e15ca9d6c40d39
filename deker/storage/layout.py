"""Every path of a local storage (SPEC §2): collection files, the id fan-out, symlink folders.

Paths of data files are always built from the id (SPEC §2.2), never from a symlink's target: a
storage copied or mounted elsewhere has dangling absolute symlinks and must still work.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from deker.errors import DekerValidationError

__all__ = [
    "ARRAY_DATA",
    "ARRAY_EXT",
    "ARRAY_SYMLINKS",
    "COLLECTIONS_DIR",
    "JOURNAL_SUFFIX",
    "Leftover",
    "TEMP_SUFFIX",
    "VARRAY_DATA",
    "VARRAY_EXT",
    "VARRAY_SYMLINKS",
    "CollectionPaths",
    "Kind",
    "ensure_dir",
    "id_dir_parts",
    "ids_in_dir",
    "is_scratch_dir_name",
    "iter_ids",
    "journal_file_name",
    "leftover_target",
    "make_symlink",
    "remove_empty_parents",
    "remove_file_and_empty_parents",
    "scratch_dir_name",
    "temp_file_name",
    "walk_storage",
]

COLLECTIONS_DIR = "collections"
ARRAY_DATA = "array_data"
ARRAY_SYMLINKS = "array_symlinks"
VARRAY_DATA = "varray_data"
VARRAY_SYMLINKS = "varray_symlinks"
ARRAY_EXT = ".hdf5"
VARRAY_EXT = ".json"

Kind = str  # "array" or "varray" (checked at run time)

# Crash-safe writes (deker.storage.atomic) work next to their target file ``<name>``:
#   ``.<name>.<32 hex>.tmp``  a new version being built (flock-held by its writer while alive);
#   ``.<name>.journal``        the undo journal of an in-place change (flock-held while alive).
# A leftover temp file is garbage (delete it when nobody holds a flock on it).  A leftover
# journal means an interrupted in-place write: it must be rolled back (atomic.recover), never
# just deleted, or the target keeps a half-written state.
TEMP_SUFFIX = ".tmp"
JOURNAL_SUFFIX = ".journal"
_LEFTOVER_RE = re.compile(r"^\.(?P<target>.+?)(?:\.(?P<nonce>[0-9a-f]{32})\.tmp|\.journal)$")

# Whole directories are replaced or removed by renames, so that a crash leaves the old state or
# the new one: a new collection is built as ``.<32 hex>.new`` and renamed to its name; a deleted
# collection (or the data of a cleared one) is first renamed to ``.<32 hex>.trash``, then
# deleted.  Such scratch directories hold nothing anyone reads: tree walks skip them, and
# ``cleanup.clean_storage`` deletes the ones a crash left behind.
_SCRATCH_DIR_RE = re.compile(r"^\.[0-9a-f]{32}\.(?:trash|new)$")

_DATA_DIRS = {"array": ARRAY_DATA, "varray": VARRAY_DATA}
_SYMLINK_DIRS = {"array": ARRAY_SYMLINKS, "varray": VARRAY_SYMLINKS}
_EXTS = {"array": ARRAY_EXT, "varray": VARRAY_EXT}


def id_dir_parts(array_id: str) -> tuple[str, ...]:
    """Return the directory levels of an id's main directory (SPEC §2.2).

    Each character before the first ``-`` is one level; the remainder (dashes included) is the
    last level: ``"f61df9c1-c07a-48c3-bd57-8a470c80939a"`` gives
    ``("f", "6", "1", "d", "f", "9", "c", "1", "c07a-48c3-bd57-8a470c80939a")``.

    Parameters
    ----------
    array_id : str
        An Array or VArray id (UUID formatted).

    Returns
    -------
    tuple of str
        The directory names, outermost first.

    Raises
    ------
    DekerValidationError
        If the id cannot name a directory (no ``-``, empty groups, ``/``, NUL, ``:`` or ``..``).

    """
    head, sep, rest = array_id.partition("-")
    if (
        not sep
        or not head
        or not rest
        or rest in (".", "..")
        or any(bad in array_id for bad in ("/", "\x00", ":"))
        or "." in head
    ):
        raise DekerValidationError(f"Invalid id {array_id!r}: expected a UUID formatted string")
    return (*head, rest)


def temp_file_name(target_name: str) -> str:
    """Return a new temporary file name for a version of ``target_name`` (``.<name>.<hex>.tmp``).

    Parameters
    ----------
    target_name : str
        The name of the file the temporary file will replace or become.

    Returns
    -------
    str
        A unique hidden name in the same directory.

    """
    return f".{target_name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"


def journal_file_name(target_name: str) -> str:
    """Return the undo-journal name of ``target_name`` (``.<name>.journal``).

    Parameters
    ----------
    target_name : str
        The name of the file changed in place.

    Returns
    -------
    str
        The hidden journal name in the same directory.

    """
    return f".{target_name}{JOURNAL_SUFFIX}"


@dataclass(frozen=True)
class Leftover:
    """A temporary file or undo journal of a crash-safe write, found on disk.

    Parameters
    ----------
    path : Path
        The file itself.
    kind : str
        ``"temp"`` (an unfinished new version: garbage) or ``"journal"`` (an interrupted
        in-place change: its target must be rolled back, see :mod:`deker.storage.atomic`).
    target : Path or None
        The file it belongs to, in the same directory; None when its name names none (the
        temporary file of a lock marker).
    alive : bool, default False
        Whether its writer still holds it (then it is no leftover yet).

    """

    path: Path
    kind: str
    target: Path | None
    alive: bool = False


def leftover_target(name: str) -> tuple[str, str] | None:
    """Classify a file name left by a crash-safe write.

    Parameters
    ----------
    name : str
        A file name.

    Returns
    -------
    tuple of (str, str) or None
        ``("temp", target name)`` for ``.<target>.<32 hex>.tmp``, ``("journal", target name)``
        for ``.<target>.journal``, ``None`` for any other name (lock-marker temporaries
        ``.<marker>.<12 hex>.tmp`` included).

    """
    match = _LEFTOVER_RE.match(name)
    if match is None:
        return None
    return ("temp" if match.group("nonce") else "journal", match.group("target"))


def scratch_dir_name(purpose: str) -> str:
    """Return a new hidden scratch directory name (``.<32 hex>.trash`` or ``.<32 hex>.new``).

    Parameters
    ----------
    purpose : {"trash", "new"}
        ``"trash"`` for a tree being deleted, ``"new"`` for a tree being built.

    Returns
    -------
    str
        A unique name, recognised by :func:`is_scratch_dir_name`.

    """
    if purpose not in ("trash", "new"):
        raise ValueError(f"purpose shall be 'trash' or 'new', got {purpose!r}")
    return f".{uuid.uuid4().hex}.{purpose}"


def is_scratch_dir_name(name: str) -> bool:
    """Return whether ``name`` is a scratch directory of a directory rename (see above).

    Parameters
    ----------
    name : str
        A directory entry name.

    Returns
    -------
    bool
        ``True`` for ``.<32 hex>.trash`` and ``.<32 hex>.new``.

    """
    return _SCRATCH_DIR_RE.match(name) is not None


def walk_storage(directory: Path) -> Iterator[tuple[str, list[str]]]:
    """Yield ``(directory path, file names)`` under ``directory``, skipping scratch directories.

    Like :func:`os.walk` (top-down, symlinks to directories not followed, vanished directories
    skipped) except that the trees of :func:`is_scratch_dir_name` directories are not entered.

    Parameters
    ----------
    directory : Path
        Where to start.

    Yields
    ------
    tuple of (str, list of str)
        A directory and the names of the non-directory entries in it.

    """
    for dirpath, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not is_scratch_dir_name(d)]
        yield dirpath, files


def _check_kind(kind: str) -> None:
    if kind not in _DATA_DIRS:
        raise DekerValidationError(f"Invalid storage kind {kind!r}: expected 'array' or 'varray'")


@dataclass(frozen=True)
class CollectionPaths:
    """Paths of one collection.

    The methods' ``kind`` (``"array"`` or ``"varray"``) says which objects' paths they give;
    any other kind raises :class:`~deker.errors.DekerValidationError`.

    Parameters
    ----------
    root : Path
        The collections directory (``<storage path>/collections``).
    name : str
        The collection name.

    """

    root: Path
    name: str

    @property
    def path(self) -> Path:
        """The collection directory."""
        return self.root / self.name

    @property
    def meta_file(self) -> Path:
        """The collection metadata file ``<path>/<name>.json``."""
        return self.path / f"{self.name}.json"

    @property
    def lock_file(self) -> Path:
        """The collection lock file ``<root>/<name>.lock``."""
        return self.root / f"{self.name}.lock"

    def data_dir(self, kind: Kind) -> Path:
        """Return ``array_data`` or ``varray_data`` of the collection.

        Returns
        -------
        Path
            The data root of that kind.

        """
        _check_kind(kind)
        return self.path / _DATA_DIRS[kind]

    def symlinks_dir(self, kind: Kind) -> Path:
        """Return ``array_symlinks`` or ``varray_symlinks`` of the collection.

        Returns
        -------
        Path
            The symlink root of that kind.

        """
        _check_kind(kind)
        return self.path / _SYMLINK_DIRS[kind]

    def main_dir(self, kind: Kind, object_id: str) -> Path:
        """Return the main directory of an id (the 8-level fan-out plus the remainder).

        Parameters
        ----------
        object_id : str
            The id, split into levels by :func:`id_dir_parts` (which raises for an id that
            cannot name a directory).

        Returns
        -------
        Path
            The directory that holds the object's file (and its lock files).

        """
        return Path(os.path.join(self.data_dir(kind), *id_dir_parts(object_id)))  # one Path: pathlib is slow

    def main_file(self, kind: Kind, object_id: str) -> Path:
        """Return the data file of an id (``<main_dir>/<id>.hdf5`` or ``.json``).

        Parameters
        ----------
        object_id : str
            The id, as for :meth:`main_dir`.

        Returns
        -------
        Path
            The data (Array) or metadata (VArray) file.

        """
        return self.main_dir(kind, object_id) / f"{object_id}{_EXTS[kind]}"

    def symlink_dir(self, kind: Kind, components: Sequence[str]) -> Path:
        """Return the symlink directory for already encoded primary-key components.

        Components are joined textually (SPEC §2.5: a ``/`` inside a component makes extra
        levels and an empty component collapses), but a component can never make the path
        absolute.  Encoding values safely is the caller's business.

        Parameters
        ----------
        components : sequence of str
            One encoded value per primary attribute, in schema order.

        Returns
        -------
        Path
            The directory that holds the symlink(s).

        """
        base = self.symlinks_dir(kind)
        if not components:
            return base
        return Path(f"{base}/{'/'.join(components)}")

    def symlink_file(self, kind: Kind, components: Sequence[str], object_id: str) -> Path:
        """Return the symlink of an object (``<symlink_dir>/<id><ext>``).

        Parameters
        ----------
        components : sequence of str
            Encoded primary-key values.
        object_id : str
            The id.

        Returns
        -------
        Path
            The symlink path.

        """
        return self.symlink_dir(kind, components) / f"{object_id}{_EXTS[kind]}"


def ids_in_dir(directory: Path, ext: str) -> list[str]:
    """Return the ids named by the entries ``<id><ext>`` of a symlink directory.

    Links are not followed (they may dangle); sub-directories and lock files are skipped.

    Parameters
    ----------
    directory : Path
        A symlink directory.
    ext : str
        ``".hdf5"`` or ``".json"``.

    Returns
    -------
    list of str
        Sorted ids; empty if the directory does not exist.

    """
    found: list[str] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                name = entry.name
                if not name.endswith(ext) or name.startswith(".") or ":" in name or len(name) == len(ext):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    continue
                found.append(name[: -len(ext)])
    except (FileNotFoundError, NotADirectoryError):
        return []
    found.sort()
    return found


def iter_ids(data_dir: Path, ext: str) -> Iterator[str]:
    """Walk an id fan-out (``array_data`` or ``varray_data``) and yield the ids of its files.

    Temporary files (names starting with ``.``), lock files and markers are skipped; each
    directory's entries are visited in sorted order so the result is deterministic.

    Parameters
    ----------
    data_dir : Path
        The data root.
    ext : str
        The extension of the data files.

    Yields
    ------
    str
        One id per data file.

    """
    try:
        with os.scandir(data_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:  # pragma: no cover - vanished meanwhile
            continue
        if is_dir:
            yield from iter_ids(Path(entry.path), ext)
        elif name.endswith(ext) and ":" not in name and len(name) > len(ext):
            yield name[: -len(ext)]


def make_symlink(target: Path, link: Path) -> None:
    """Create ``link`` pointing at the absolute form of ``target`` (parents created).

    Parameters
    ----------
    target : Path
        The file the link names.
    link : Path
        The link to create.

    Raises
    ------
    FileExistsError
        If ``link`` already exists.

    """
    absolute = os.path.abspath(target)
    for attempt in range(5):
        ensure_dir(link.parent)
        try:
            os.symlink(absolute, link)
            return
        except FileNotFoundError:  # a concurrent cleanup removed an empty parent: make it again
            if attempt == 4:
                raise


def ensure_dir(directory: Path) -> None:
    """Create ``directory`` and its parents, despite concurrent removals of empty directories.

    Deletions remove the directories they leave empty (:func:`remove_empty_parents`); another
    process may remove an ancestor while ``mkdir -p`` runs, which makes it fail with
    :class:`FileNotFoundError` (or with :class:`FileExistsError`, when the directory is removed
    between pathlib's ``mkdir`` and its ``is_dir`` check).  This retries; the caller still
    retries its own file operation if the directory vanishes again before it uses it.

    Parameters
    ----------
    directory : Path
        The directory to create (existing is fine).

    """
    for attempt in range(20):
        try:
            os.makedirs(directory, exist_ok=True)
            return
        except (FileNotFoundError, FileExistsError):  # FileExistsError: a file is there, or a race
            if attempt == 19:
                raise


def remove_file_and_empty_parents(path: Path, stop_at: Path) -> None:
    """Remove a file, then its parent directories while they are empty, never ``stop_at``.

    A missing file is not an error.  Directories outside ``stop_at`` are never touched.

    Parameters
    ----------
    path : Path
        The file (or symlink) to remove.
    stop_at : Path
        The directory where the upward cleanup stops (e.g. ``array_data``).

    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    remove_empty_parents(path.parent, stop_at)


def remove_empty_parents(directory: Path, stop_at: Path) -> None:
    """Remove ``directory`` and its ancestors while they are empty, stopping below ``stop_at``.

    Parameters
    ----------
    directory : Path
        The innermost directory to try.
    stop_at : Path
        An ancestor of ``directory`` that is never removed.

    """
    stop = Path(os.path.abspath(stop_at))
    current = Path(os.path.abspath(directory))
    if stop not in current.parents:
        return
    while current != stop:
        try:
            os.rmdir(current)
        except FileNotFoundError:
            pass
        except OSError:  # not empty (or not removable): stop here
            return
        current = current.parent
