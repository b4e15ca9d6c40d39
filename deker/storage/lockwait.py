"""Waiting for a lock: the settings every lock is taken with, owner tokens, and the waiting loops.

:class:`LockSettings` say how long a lock of :mod:`deker.storage.locks` may be waited for, how
often to look again, and whether the client may write at all.  A :class:`Waiter` is one
operation's deadline; :func:`hold_waiting` and :func:`acquire_file` take a kernel lock through
:mod:`deker.storage.lockprim`'s registry, trying again until the deadline, and
:func:`lock_timeout` is the error every lock gives up with.  Owner tokens
(:func:`new_token`) name the operation a VArray write marker belongs to.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deker.errors import DekerLockError, DekerReadOnlyError, DekerValidationError
from deker.storage import lockprim

__all__ = [
    "ANY_HOLDER",
    "LockSettings",
    "Waiter",
    "acquire_file",
    "acquire_in",
    "check_token",
    "hold_waiting",
    "lock_timeout",
    "new_token",
    "refuse_read_only",
]

_TOKEN_RE = re.compile(r"^[a-z0-9-]{1,80}$")

#: Who holds a busy array mutex, as a timeout message says it.
ANY_HOLDER = "another deker reader or writer"


@dataclass(frozen=True)
class LockSettings:
    """How long to wait for a lock and how often to look again.

    Parameters
    ----------
    timeout : float
        Seconds to wait before giving up with :class:`DekerLockError`.
    interval : float
        Longest pause between two attempts (attempts start about 1 ms apart and back off
        exponentially up to ``interval``).
    read_only : bool
        Lock as a reader of a storage it may not write (see
        :func:`deker.storage.locks.array_read_lock`): no file is created, changed or removed,
        and every write lock is refused with :class:`DekerReadOnlyError`.  It travels with the
        settings to the tasks of other processes.

    """

    timeout: float = 60.0
    interval: float = 1.0
    read_only: bool = False

    def __post_init__(self) -> None:
        if not self.timeout >= 0:
            raise DekerValidationError(f"Lock timeout must be >= 0 seconds, got {self.timeout!r}")
        if not self.interval > 0:
            raise DekerValidationError(f"Lock check interval must be > 0 seconds, got {self.interval!r}")


def refuse_read_only(settings: LockSettings, what: str) -> None:
    """Raise :class:`DekerReadOnlyError` if ``settings`` are those of a read-only client.

    Parameters
    ----------
    settings : LockSettings
        The lock settings of the operation.
    what : str
        What was asked (for the message), e.g. ``"write array 1234"``.

    Raises
    ------
    DekerReadOnlyError
        If ``settings.read_only``; nothing was touched.

    """
    if settings.read_only:
        raise DekerReadOnlyError(f"Cannot {what}: the client is read-only; nothing was changed")


def new_token() -> str:
    """Return a new owner token (``[a-z0-9-]``, never ending in a digit).

    Returns
    -------
    str
        A unique token.

    """
    return f"{uuid.uuid4().hex}-t"


def check_token(token: str) -> None:
    """Refuse (:class:`DekerValidationError`) an owner token :func:`new_token` could not have made.

    That is one with other characters, too long, or ending in a digit (deker 1.1.7 would take
    a marker ending in ``<its pid>.varraylock`` for its own).
    """
    if not _TOKEN_RE.match(token) or token[-1].isdigit():
        raise DekerValidationError(f"Invalid lock owner token {token!r}: use new_token()")


class Waiter:
    """A deadline with exponential backoff sleeps (one per lock operation).

    Parameters
    ----------
    settings : LockSettings
        The timeout (the deadline is that far from now) and the longest sleep.

    """

    def __init__(self, settings: LockSettings) -> None:
        self.settings = settings
        self.deadline = time.monotonic() + settings.timeout
        self._delay = 0.001

    def sleep(self) -> bool:
        """Sleep before the next attempt; return False (at once) if the deadline has passed."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(self._delay, remaining))
        self._delay = min(self._delay * 2, self.settings.interval)
        return True


def lock_timeout(what: str, path: Path, holder: str, settings: LockSettings) -> DekerLockError:
    """Return the error of a lock that stayed busy until its deadline.

    Parameters
    ----------
    what : str
        The lock (e.g. ``"Array <id> write lock"``).
    path : Path
        The file that stayed busy.
    holder : str
        Who holds it, as far as one can tell.
    settings : LockSettings
        The settings the lock waited with (the message names the timeout).

    Returns
    -------
    DekerLockError
        To raise.

    """
    return DekerLockError(f"{what}: {path} is held by {holder}; gave up after {settings.timeout:g} s")


def hold_waiting(
    path: Path,
    exclusive: bool,
    waiter: Waiter,
    what: str,
    holder: str,
    *,
    create: bool = False,
    readonly: bool = False,
) -> lockprim.Hold:
    """Hold ``path`` through the lock registry, waiting up to the waiter's deadline.

    Parameters
    ----------
    path, exclusive, create, readonly
        What to hold and how, as for :func:`deker.storage.lockprim.hold`.
    waiter : Waiter
        The operation's deadline.
    what, holder : str
        The lock and who may hold it, for the timeout's message.

    Returns
    -------
    Hold
        The hold (release it with :func:`deker.storage.lockprim.release`).

    Raises
    ------
    DekerLockError
        If the file stayed busy until the deadline.
    FileNotFoundError
        If the file does not exist (and ``create`` is False) or its directory is missing.

    """
    held = lockprim.hold(path, exclusive, create=create, readonly=readonly)
    while held is None:
        if not waiter.sleep():
            raise lock_timeout(what, path, holder, waiter.settings)
        held = lockprim.hold(path, exclusive, create=create, readonly=readonly)
    return held


def acquire_file(
    path: Path,
    exclusive: bool,
    waiter: Waiter,
    what: str,
    holder: str = ANY_HOLDER,
    *,
    readonly: bool = False,
) -> lockprim.Hold:
    """Lock a stable lock file, waiting; retry when the file was replaced or unlinked meanwhile.

    The file is created if missing, unless ``readonly`` (then it is opened ``O_RDONLY``).  An
    exclusive lock is every write's first: a filesystem whose locks do not work is refused
    then (:func:`deker.storage.lockprim.check_filesystem`).

    Parameters
    ----------
    path : Path
        The lock file (an array mutex, a creation or collection lock).
    exclusive, waiter, what
        As for :func:`hold_waiting`.
    holder : str, default :data:`ANY_HOLDER`
        As for :func:`hold_waiting`.
    readonly : bool, default False
        A reader that may not write: create nothing (a shared lock only).

    Returns
    -------
    Hold
        The hold on the file that ``path`` names.

    Raises
    ------
    DekerLockError
        If the file stayed busy until the deadline.
    FileNotFoundError
        If its directory is missing (or, with ``readonly``, the file).

    """
    if exclusive:  # every write takes one: refuse a filesystem without working locks up front
        lockprim.check_filesystem(path.parent)
    while True:
        held = hold_waiting(path, exclusive, waiter, what, holder, create=not readonly, readonly=readonly)
        if lockprim.same_file(held, path):
            return held
        lockprim.release(held)  # unlinked by its previous holder (deleted array, released creation lock)


def acquire_in(
    make_dir: Callable[[Path], object], path: Path, waiter: Waiter, what: str, holder: str = ANY_HOLDER
) -> lockprim.Hold:
    """Lock ``path`` exclusively (:func:`acquire_file`) in a directory that ``make_dir`` creates first.

    ``make_dir`` creates the directory it is given (an existing one is fine).  A concurrent
    cleanup may remove the (empty) directory before the lock file is made in it: then the
    directory is made again, five times at most (then the :class:`FileNotFoundError`
    propagates).  The other parameters, the result and the other errors are those of
    :func:`acquire_file`.
    """
    attempt = 0
    while True:
        make_dir(path.parent)
        try:
            return acquire_file(path, True, waiter, what, holder)
        except FileNotFoundError:  # a concurrent cleanup removed the empty directory
            attempt += 1
            if attempt == 5:
                raise
