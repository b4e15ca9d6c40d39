"""Cleaning a storage of what interrupted work left behind (``Client.clear_locks``).

It stands above the two sides of the storage layer, the crash-safe writes of array files
(:mod:`deker.storage.atomic`, :mod:`deker.storage.journal`) and the lockfile protocol
(:mod:`deker.storage.locks`), which know nothing of each other: a stale journal is rolled back
under its array's write lock, like any writer would.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from deker.storage import atomic
from deker.storage.atomic import discard_leftovers, find_leftovers, find_scratch_dirs, remove_stale_temp
from deker.storage.journal import recover
from deker.storage.layout import ARRAY_EXT
from deker.storage.locks import LockSettings, array_write_lock

__all__ = ["clean_storage"]

logger = logging.getLogger(__name__)


def clean_storage(directory: Path, settings: LockSettings) -> list[Path]:
    """Deal with every stale leftover under ``directory`` (``Client.clear_locks`` calls it).

    Temporary files nobody holds are deleted, and so are scratch directories of collection
    creations and deletions unchanged for :data:`deker.storage.atomic.SCRATCH_MIN_AGE`
    seconds.  A stale journal is rolled back under its array's write lock (waiting for it like
    any writer); the journal of a file that no longer exists is just deleted.  Live ones (their
    writer still works) are left alone.

    Parameters
    ----------
    directory : Path
        A storage, collections or collection directory.
    settings : LockSettings
        How long to wait for an array's write lock.

    Returns
    -------
    list of Path
        The leftovers removed (journals: after the rollback), sorted.

    """
    done: list[Path] = []
    for item in find_leftovers(directory):
        if item.alive or item.target is None:  # (find_leftovers names a target for each)
            continue
        if item.kind == "temp":
            if remove_stale_temp(item.path, item.target):
                done.append(item.path)
            continue
        name = item.target.name
        try:
            if not name.endswith(ARRAY_EXT):
                raise FileNotFoundError(item.target)  # we journal array files only
            with array_write_lock(item.target.parent, name[: -len(ARRAY_EXT)], settings):
                if recover(item.target):
                    done.append(item.path)
        except FileNotFoundError:  # the file is gone: its journal has nothing to restore
            done.extend(discard_leftovers(item.target))
    for scratch in find_scratch_dirs(directory, atomic.SCRATCH_MIN_AGE):  # read at each call
        shutil.rmtree(scratch, ignore_errors=True)
        done.append(scratch)
    done.sort(key=str)
    for path in done:
        logger.info("removed the leftover %s of an interrupted write", path)
    return done
