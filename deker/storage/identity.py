"""The identity of a storage: a small file that proves a path really holds *this* storage.

On a cluster, absence is not evidence: a worker whose mount of the shared filesystem failed sees
an empty directory at the storage path, where every tile file is "missing".  A task therefore
reads a missing tile as fill only after it has seen the storage's identity file at the root it
uses, holding the id the coordinator expects.

The file is ``<storage>/collections/.deker-storage`` (beside the collection directories and
``<name>.lock`` files): one line, ``deker-storage <uuid4>``.  deker 1.1.7 lists only the
directories of ``collections/`` as collections and ignores other files, so it reads and writes
such a storage as before.  The file is made when deker creates a storage, and the first time this
deker writes a storage made without one (by deker 1.1.7); readers never write it, and cope without
it by checking the collection's metadata file instead.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from deker.storage import atomic

__all__ = ["STORAGE_ID_FILE", "ensure_storage_id", "read_storage_id", "storage_problem"]

logger = logging.getLogger(__name__)

#: Name of the identity file, in the collections directory.
STORAGE_ID_FILE = ".deker-storage"
_PREFIX = "deker-storage "


def read_storage_id(root: Path) -> str | None:
    """Return the id of the storage whose collections directory is ``root`` (None: no id file).

    Parameters
    ----------
    root : Path
        The collections directory.

    Returns
    -------
    str or None
        The id, or None when the file is missing or unreadable as an id.

    Raises
    ------
    OSError
        When the file exists but cannot be read (other than missing).
    """
    try:
        text = (root / STORAGE_ID_FILE).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    line = text.strip()
    if not line.startswith(_PREFIX):
        return None
    return line[len(_PREFIX) :].strip() or None


def ensure_storage_id(root: Path) -> str:
    """Return the id of the storage at ``root``, giving it one first if it has none.

    Two processes giving one storage an id at once agree: the file is created exclusively and
    the loser reads the winner's.

    Parameters
    ----------
    root : Path
        The collections directory (it must exist).

    Returns
    -------
    str
        The id the storage had, or the uuid4 string it was given.

    Raises
    ------
    OSError
        If the file can be neither read nor created.
    """
    found = read_storage_id(root)
    if found is not None:
        return found
    new = str(uuid.uuid4())
    try:
        atomic.write_bytes(root / STORAGE_ID_FILE, f"{_PREFIX}{new}\n".encode(), exclusive=True)
    except FileExistsError:
        found = read_storage_id(root)
        if found is None:
            raise
        return found
    logger.debug("storage %s got its identity %s", root, new)
    return new


def storage_problem(root: Path, expected: str | None, collection: str) -> str | None:
    """Say why ``root`` does not hold the expected storage (None: it does).

    Parameters
    ----------
    root : Path
        The collections directory as this process sees it.
    expected : str or None
        The storage id the coordinator knows; None for a storage without an identity file
        (then the collection's metadata file is what must be there).
    collection : str
        The collection the work is about.

    Returns
    -------
    str or None
        A description of the problem, or None.
    """
    if expected is not None:
        try:
            found = read_storage_id(root)
        except OSError as exc:
            return f"its identity file {root / STORAGE_ID_FILE} cannot be read ({exc})"
        if found is None:
            if not root.is_dir():
                return f"{root} is not a directory here"
            return f"its identity file {root / STORAGE_ID_FILE} is missing (a storage that is not mounted?)"
        if found != expected:
            return f"{root} holds another storage (id {found}, expected {expected})"
        return None
    meta = root / collection / f"{collection}.json"
    try:
        if meta.is_file():
            return None
    except OSError as exc:
        return f"the collection's metadata file {meta} cannot be reached ({exc})"
    return f"the collection's metadata file {meta} is missing (a storage that is not mounted?)"
