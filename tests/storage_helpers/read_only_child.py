"""Build a small archive; exercise every read and write of a client on it (test_scenarios_read_only).

``python read_only_child.py URI [--read-only] [--threads]`` runs :func:`exercise` and prints its JSON result:
the process may run in a private mount namespace where the storage is a read-only bind mount,
or as an unprivileged user with read permission only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from deker import ArraySchema, AttributeSchema, Client, DimensionSchema, VArraySchema
from deker.errors import DekerReadOnlyError

DIMS = [DimensionSchema("y", 8), DimensionSchema("x", 6)]
TORN_ROWS = 3  # rows 0..2 of the "torn" array: written by a writer killed before its commit


def build(root: Path) -> dict[str, Any]:
    """Make the archive: an Array collection, a VArray collection (one tile absent), a torn write.

    Returns the ids.
    """
    with Client(root.as_uri()) as client:
        plain = client.create_collection(
            "plain",
            ArraySchema(
                dtype=np.float32,
                dimensions=DIMS,
                attributes=[
                    AttributeSchema("k", int, primary=True),
                    AttributeSchema("note", str, primary=False),
                ],
            ),
        )
        first = plain.create({"k": 1}, {"note": "first"})
        first[:].update(np.arange(48, dtype=np.float32).reshape(8, 6))
        torn = plain.create({"k": 2}, {"note": "torn"})
        torn[:].update(np.full((8, 6), 5, np.float32))
        grid = client.create_collection(
            "grid", VArraySchema(dtype=np.int32, dimensions=DIMS, vgrid=(2, 2), fill_value=-1)
        )
        varray = grid.create()
        varray[:4, :].update(np.arange(24, dtype=np.int32).reshape(4, 6))  # tiles (1, *) absent
        ids = {"first": first.id, "torn": torn.id, "varray": varray.id}
    # A writer killed inside its in-place change: the file holds its new bytes, the undo journal
    # the old ones (what a crashed writer whose undo was not applied leaves).
    script = textwrap.dedent(
        f"""
        import os
        import numpy as np
        from deker import Client
        from deker.storage import journal
        journal.UndoJournal.commit = lambda self: os._exit(0)
        client = Client({root.as_uri()!r})
        torn = client.get_collection("plain").filter({{"k": 2}}).last()
        torn[:{TORN_ROWS}, :].update(np.full(({TORN_ROWS}, 6), 99, np.float32))
        raise SystemExit("the write committed")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    return ids


def expected() -> dict[str, Any]:
    """What a correct reader reads (the torn write never happened)."""
    varray = np.full((8, 6), -1, np.int32)
    varray[:4, :] = np.arange(24, dtype=np.int32).reshape(4, 6)
    return {
        "first": np.arange(48, dtype=np.float32).reshape(8, 6).tolist(),
        "torn": np.full((8, 6), 5, np.float32).tolist(),
        "varray": varray.tolist(),
    }


def snapshot(root: Path) -> dict[str, Any]:
    """Names, kinds, sizes, modification times and content hashes of everything under ``root``."""
    found: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", st.st_mtime_ns, st.st_mode)
            else:
                found[rel] = (
                    "file",
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_mode,
                    hashlib.sha256(path.read_bytes()).hexdigest(),
                )
    return found


def _refused(action: Any) -> str:
    try:
        action()
    except DekerReadOnlyError as exc:
        assert isinstance(exc, PermissionError)
        return "refused"
    except Exception as exc:  # reported to the test
        return f"{type(exc).__name__}: {exc}"
    return "done"


def run_cli(*args: str, read_only: bool = False) -> tuple[int, str]:
    """Run ``deker ARGS`` in this process; return its status and output (logging left as it was)."""
    import logging

    from deker.cli import main

    deker_logger = logging.getLogger("deker")
    saved = (list(deker_logger.handlers), deker_logger.propagate, deker_logger.level)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main((["--read-only"] if read_only else []) + list(args))
    finally:  # the command configures deker's loggers for a shell: undo it
        deker_logger.handlers[:] = saved[0]
        deker_logger.propagate = saved[1]
        deker_logger.setLevel(saved[2])
    return code, out.getvalue() + err.getvalue()


def exercise(uri: str, *, read_only: bool = False, scheduler: Any = "processes") -> dict[str, Any]:
    """Open ``uri``, read everything, try every write; return what happened (JSON-able)."""
    import deker_dask

    result: dict[str, Any] = {}
    # (read_only passed only when asked, and the attributes read last, so that on a deker
    # without read-only clients the reads themselves are what fails)
    client = Client(uri, create=False, write_lock_timeout=5, **({"read_only": True} if read_only else {}))
    plain = client.get_collection("plain")
    grid = client.get_collection("grid")
    assert plain is not None and grid is not None
    first = plain.filter({"k": 1}).last()
    torn = plain.filter({"k": 2}).last()
    varray = next(iter(grid))
    result["reads"] = {
        "first": first[:].read().tolist(),
        "torn": torn[:].read().tolist(),
        "varray": varray[:].read().tolist(),
    }
    result["window"] = varray[2:6, 1:5].read().tolist()
    result["describe"] = str(first[1:3, 2].describe())
    result["xarray"] = float(first[:].read_xarray().sum())
    result["attributes"] = first.custom_attributes
    import xarray as xr

    opened = {"read_only": True} if read_only else {}
    with xr.open_dataset(uri, engine="deker", group="grid", chunks={}, **opened) as ds:
        result["backend"] = float(ds["grid"].sum().compute(scheduler=scheduler))
    with xr.open_dataset(uri, engine="deker", group="plain", filter={"k": 1}, **opened) as ds:
        result["backend_one"] = float(ds["plain"].sum())
    result["dask"] = {
        "varray": deker_dask.to_dask(varray).compute(scheduler=scheduler).tolist(),
        "collection": float(deker_dask.from_collection(plain).sum().compute(scheduler=scheduler)),
        "xarray": float(deker_dask.to_xarray(varray).sum().compute(scheduler=scheduler)),
    }
    report = client.check_integrity(4, stop_on_error=False, progress=False)
    result["check"] = sorted(p.kind for p in report.problems)
    result["locks"] = sorted({info.kind for info in client.list_locks()})
    result["size"] = client.calculate_storage_size().bytes
    result["read_only"] = client.read_only
    result["reason"] = client.read_only_reason
    result["cli"] = {
        " ".join(args[:1]): run_cli(*args, read_only=read_only)[0]
        for args in (("ls", uri), ("info", uri, "grid"), ("size", uri), ("locks", uri, "--all"))
    }
    result["cli_check"] = [
        run_cli("check", uri, "--level", str(level), "--no-progress", read_only=read_only)[0]
        for level in (1, 2, 3, 4)
    ]
    code, text = run_cli("locks", uri, "--clear", read_only=read_only)
    result["cli_clear"] = (code, "read-only" in text)
    schema = ArraySchema(dtype=float, dimensions=DIMS)
    writes = {
        "create_collection": lambda: client.create_collection("new", schema),
        "create_array": lambda: plain.create({"k": 3}),
        "create_varray": lambda: grid.create(),
        "update": lambda: first[0, 0].update(7.0),
        "clear": lambda: first[0, :].clear(),
        "delete": lambda: first.delete(),
        "attributes": lambda: first.update_custom_attributes({"note": "changed"}),
        "varray_update": lambda: varray[:, :].update(1),
        "varray_clear": lambda: varray[:4, :].clear(),
        "varray_delete": lambda: varray.delete(),
        "varray_attributes": lambda: varray.update_custom_attributes({}),
        "collection_clear": lambda: grid.clear(),
        "collection_delete": lambda: grid.delete(),
        "clear_locks": lambda: client.clear_locks(),
        "dask_store": lambda: deker_dask.store(np.zeros((8, 6), np.int32), varray, scheduler="sync"),
    }
    result["writes"] = {name: _refused(action) for name, action in writes.items()}
    client.close()
    return result


if __name__ == "__main__":
    if sys.argv[1] == "build":
        print(json.dumps(build(Path(sys.argv[2]))))
    else:
        scheduler = "threads" if "--threads" in sys.argv[2:] else "processes"
        print(json.dumps(exercise(sys.argv[1], read_only="--read-only" in sys.argv[2:], scheduler=scheduler)))
