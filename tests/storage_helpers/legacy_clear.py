"""Child process imitating deker 1.1.7's ``VSubset.clear`` of one whole tile (SPEC §3.5, §4.5, §2.7).

Usage: ``python legacy_clear.py MAIN_FILE SYMLINK``.  The steps are 1.1.7's: exclusive
non-blocking ``flock`` on the tile file, marker ``<tile>.hdf5:<pid>.varraylock`` created; then
(once a line arrives on stdin) the tile is deleted: file, symlink, empty symlink parents; then
released: the flock first, the marker after.  Prints ``ACQUIRED`` and ``RELEASED``.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path


def main() -> int:
    main_file, symlink = Path(sys.argv[1]), Path(sys.argv[2])
    # On an NFS client 1.1.7's flock is a POSIX record lock: under the suite's posix primitive
    # (DEKER_LOCK_PRIMITIVE=posix, inherited) imitate that, as another host's process would.
    posix = os.environ.get("DEKER_LOCK_PRIMITIVE") == "posix"
    fd = os.open(main_file, os.O_RDWR if posix else os.O_RDONLY)
    if posix:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    marker = main_file.parent / f"{main_file.name}:{os.getpid()}.varraylock"
    marker.touch()
    print("ACQUIRED", flush=True)
    sys.stdin.readline()
    os.unlink(main_file)
    os.unlink(symlink)
    parent = symlink.parent
    while parent.name != "array_symlinks" and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    if posix:
        fcntl.lockf(fd, fcntl.LOCK_UN)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    marker.unlink()
    print("RELEASED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
