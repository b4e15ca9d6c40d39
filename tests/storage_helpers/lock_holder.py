"""Child-process entry point for the lock tests (run as a script, driven over stdin/stdout).

Usage: ``python lock_holder.py MODE JSON_ARGS``.  The child takes the lock named by MODE,
prints ``ACQUIRED``, waits for a line on stdin (or EOF), releases, prints ``RELEASED``.  A
lock timeout prints ``TIMEOUT <message>`` and exits with status 3.

Modes: ``read``, ``write`` (args: main_dir, array_id), ``varray`` (args: tiles, token),
``creation`` (args: lock_dir, key, target: create ``target`` once under the lock, print
``CREATED`` or ``EXISTS``), ``collection`` (args: root, name), ``guard`` (args: main_dir,
array_id, token: print ``OK`` or ``LOST``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from deker.errors import DekerLockError
from deker.storage import locks


def _settings(args: dict[str, Any]) -> locks.LockSettings:
    return locks.LockSettings(timeout=args.get("timeout", 2.0), interval=args.get("interval", 0.05))


@contextmanager
def _varray(args: dict[str, Any]) -> Iterator[None]:
    with locks.VArrayWriteLock(_settings(args), args["token"]) as lock:
        lock.acquire([(Path(d), i) for d, i in args["tiles"]])
        yield


def _lock(mode: str, args: dict[str, Any]) -> AbstractContextManager[None]:
    settings = _settings(args)
    if mode == "read":
        return locks.array_read_lock(Path(args["main_dir"]), args["array_id"], settings)
    if mode == "write":
        return locks.array_write_lock(Path(args["main_dir"]), args["array_id"], settings)
    if mode == "varray":
        return _varray(args)
    if mode == "creation":
        return locks.creation_lock(Path(args["lock_dir"]), args["key"], settings)
    if mode == "collection":
        return locks.collection_lock(Path(args["root"]), args["name"], settings)
    raise SystemExit(f"unknown mode {mode}")


def main() -> int:
    mode, args = sys.argv[1], json.loads(sys.argv[2])
    if mode == "guard":
        try:
            with locks.tile_write_guard(Path(args["main_dir"]), args["array_id"], args["token"]):
                print("OK", flush=True)
        except DekerLockError:
            print("LOST", flush=True)
        return 0
    if args.get("wait_go"):
        sys.stdin.readline()
    try:
        with _lock(mode, args):
            if mode == "creation":
                target = Path(args["target"])
                if target.exists():
                    print("EXISTS", flush=True)
                else:
                    time.sleep(0.2)  # widen the race window
                    target.write_text("x")
                    print("CREATED", flush=True)
                return 0
            print("ACQUIRED", flush=True)
            sys.stdin.readline()
    except DekerLockError as exc:
        print(f"TIMEOUT {exc}", flush=True)
        return 3
    print("RELEASED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
