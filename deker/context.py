"""The storage context every handle carries: where the storage is and how to reach it.

A :class:`StorageContext` is made by :class:`deker.Client` and shared by the collections,
arrays and subsets it creates.  It holds plain settings (storage root, lock timing, memory
limit), the task runner, and the open/closed state of its client.  Handles pickle without it:
on the other side they rebuild a detached context from the same settings (see
:meth:`StorageContext.__reduce__`), so an ``Array`` can travel to a worker process.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deker.errors import DekerClientError, DekerReadOnlyError
from deker.executors import TaskRunner
from deker.storage.identity import ensure_storage_id, read_storage_id
from deker.storage.locks import LockSettings

__all__ = ["ContextSettings", "StorageContext"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContextSettings:
    """The picklable part of a context.

    Parameters
    ----------
    root : str
        The collections directory (``<storage path>/collections``) as this process sees it.
    locks : LockSettings
        Lock timeout and polling interval.
    memory_limit : int
        The effective memory limit in bytes.
    skip_collection_create_memory_check : bool
        Whether collection creation skips the memory check.
    read_only_reason : str or None
        Why the client is read-only (``locks.read_only`` is then True); None for a writable one.
    """

    root: str
    locks: LockSettings
    memory_limit: int
    skip_collection_create_memory_check: bool = False
    read_only_reason: str | None = None


class StorageContext:
    """Settings, task runner and open state shared by the objects of one client session.

    Parameters
    ----------
    settings : ContextSettings
        Where the storage is and how to lock it.
    runner : TaskRunner or None
        Runs per-tile tasks; ``None`` makes a private thread pool on first use.
    """

    def __init__(self, settings: ContextSettings, runner: TaskRunner | None = None) -> None:
        self.settings = settings
        self._runner = runner
        self._closed = False
        self._lock = threading.Lock()
        self._storage_id: str | None = None
        self._storage_id_read = False

    @property
    def root(self) -> Path:
        """The collections directory."""
        return Path(self.settings.root)

    @property
    def storage_id(self) -> str | None:
        """The id of the storage (None: a storage without an identity file, e.g. deker 1.1.7's).

        Read once, when first asked (tasks carry it to prove they see this storage).
        """
        if not self._storage_id_read:
            try:
                found = read_storage_id(self.root)
            except OSError:
                found = None
            with self._lock:
                self._storage_id = self._storage_id or found
                self._storage_id_read = True
        return self._storage_id

    @property
    def read_only(self) -> bool:
        """Whether this client may only read (it creates, changes and removes no file)."""
        return self.settings.locks.read_only

    def check_writable(self, what: str) -> None:
        """Raise :class:`DekerReadOnlyError` before a write if the client is read-only.

        Parameters
        ----------
        what : str
            What was asked, for the message (e.g. ``"update VArray 1234"``).

        Raises
        ------
        DekerReadOnlyError
            If the client is read-only; nothing was touched.
        """
        if self.read_only:
            reason = self.settings.read_only_reason or "read_only=True"
            raise DekerReadOnlyError(
                f"Cannot {what}: the client of {Path(self.settings.root).parent} is read-only ({reason}); "
                "nothing was changed.  Open a writable Client to write."
            )

    def ensure_storage_id(self) -> str | None:
        """Give the storage an identity file if it has none (before this client first writes it).

        Returns
        -------
        str or None
            The id; None if the file can be neither read nor made (a read-only storage: the write
            that follows reports its own error).
        """
        current = self.storage_id
        if current is not None or self.read_only:
            return current
        try:
            made = ensure_storage_id(self.root)
        except OSError as exc:
            logger.debug("storage %s has no identity file and cannot get one: %s", self.root, exc)
            return None
        with self._lock:
            self._storage_id = made
        return made

    @property
    def locks(self) -> LockSettings:
        """Lock timeout and polling interval."""
        return self.settings.locks

    @property
    def memory_limit(self) -> int:
        """The effective memory limit in bytes."""
        return self.settings.memory_limit

    @property
    def runner(self) -> TaskRunner:
        """The task runner (created lazily for detached contexts)."""
        self.check_open()
        if self._runner is None:
            with self._lock:
                if self._runner is None:
                    self._runner = TaskRunner.create(None, None)
        return self._runner

    @property
    def is_closed(self) -> bool:
        """Whether the client of this context was closed."""
        return self._closed

    def check_open(self) -> None:
        """Raise :class:`DekerClientError` if the client was closed."""
        if self._closed:
            raise DekerClientError("Client is closed")

    def close(self) -> None:
        """Mark closed and shut down an owned runner (idempotent)."""
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.shutdown(wait=True)

    def __reduce__(self) -> tuple[Any, ...]:
        # A context travels as its settings; the receiving process gets its own runner.
        return (StorageContext, (self.settings, None))
