"""A coordinator process of the fault tests: a deker client whose executor is a Dask cluster.

Usage: ``python coordinator.py JSON_ARGS`` with ``scheduler`` (address), ``uri``, ``collection``,
``vid``, ``updates`` (a list of ``[bounds, value]``, bounds a list of ``[start, stop]``).  For
each update it prints ``START <n>`` before and ``ACK <n>`` once deker said it succeeded (or
``FAIL <n> <error>``), then ``END``.  The tests kill it (SIGKILL) in the middle.
"""

from __future__ import annotations

import json
import sys

from distributed import Client as DaskClient

from deker import Client


def main() -> int:
    args = json.loads(sys.argv[1])
    with (
        DaskClient(args["scheduler"], set_as_default=False, timeout=60) as dask_client,
        Client(args["uri"], executor=dask_client, write_lock_timeout=args.get("timeout", 30)) as client,
    ):
        coll = client.get_collection(args["collection"])
        assert coll is not None
        varray = coll.filter({"id": args["vid"]}).last()
        print("READY", flush=True)
        for n, (bounds, value) in enumerate(args["updates"]):
            print(f"START {n}", flush=True)
            try:
                varray[tuple(slice(a, b) for a, b in bounds)].update(value)
            except Exception as exc:  # reported to the test, which decides
                print(f"FAIL {n} {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
                continue
            print(f"ACK {n}", flush=True)
    print("END", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
