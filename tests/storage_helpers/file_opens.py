"""Which files were opened, seen by the kernel (Linux inotify through ctypes), by any process.

``with FileOpens(paths) as watch: ...; watch.opened()`` returns the watched paths that some
process opened since the watch began (or since the previous call).  The kernel queues the event
inside ``open()`` itself, so once the call that opened a file has returned, the event is there:
no waiting.  Nothing is replaced or faked: this is how a tool like ``inotifywait`` sees opens.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

IN_OPEN = 0x00000020
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


def available() -> bool:
    """Whether inotify can be used here (Linux)."""
    return sys.platform.startswith("linux")


class FileOpens:
    """Watch files for ``open()`` by any process.

    Parameters
    ----------
    paths : iterable of path
        Existing files to watch.
    """

    def __init__(self, paths: Iterable[os.PathLike[str] | str]) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._fd = fd
        self._paths: dict[int, Path] = {}
        for path in paths:
            wd = self._libc.inotify_add_watch(fd, os.fsencode(os.fspath(path)), IN_OPEN)
            if wd < 0:
                self.close()
                raise OSError(ctypes.get_errno(), f"inotify_add_watch failed for {path}")
            self._paths[wd] = Path(path)

    def opened(self) -> set[Path]:
        """Return the watched files opened since the last call (or the start)."""
        seen: set[Path] = set()
        while True:
            try:
                buffer = os.read(self._fd, 65536)
            except BlockingIOError:
                return seen
            offset = 0
            while offset < len(buffer):
                wd, mask, _cookie, length = _EVENT.unpack_from(buffer, offset)
                offset += _EVENT.size + length
                if mask & IN_OPEN and wd in self._paths:
                    seen.add(self._paths[wd])

    def close(self) -> None:
        """Stop watching."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileOpens:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
