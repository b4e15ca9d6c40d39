"""The ``deker`` command: look after a storage from a shell.

Usage: ``deker [--json] [--loglevel LEVEL] [--read-only] COMMAND [STORAGE] [options]`` (also
``python -m deker``).  ``STORAGE`` is a ``file://`` URI or a directory path; without it, the environment
variable ``DEKER_STORAGE`` names the storage.  The command never creates a storage.
Commands: ``ls``, ``info NAME``, ``check``, ``size [NAME]``, ``locks``; ``deker --help`` and
``deker COMMAND --help`` explain them.  The older order ``deker STORAGE COMMAND`` still works.
Tables are for humans; ``--json`` prints one JSON document for scripts.  On a storage it cannot
write (a read-only mount, read permission only), or with ``--read-only``, every command but
``locks --clear`` runs and changes nothing there (``check`` only reports).

Exit status: 0 all well; 1 the storage has problems (integrity problems, unreadable
collection metadata, stale locks left); 2 bad command line; 3 the command could not run (not
a deker storage, no such collection, report file cannot be written, ...); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from deker.client import Client
from deker.collection import Collection
from deker.errors import DekerBaseApplicationError, DekerMetaDataError
from deker.integrity import check_integrity
from deker.storage.layout import ARRAY_EXT, VARRAY_EXT, is_scratch_dir_name, iter_ids
from deker.storage.lockinfo import LockInfo

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "STORAGE_ENV", "build_parser", "main"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_ERROR = 3
EXIT_INTERRUPTED = 130

_DESCRIPTION = """\
Look after a deker storage: list its collections, show one, check its integrity, measure it,
and list or clear lock files left behind by dead processes.

STORAGE is the storage: a file:// URI (file:///data/deker) or a directory path (/data/deker)
that already holds a 'collections' directory (the command never creates a storage).  Without
STORAGE, the environment variable DEKER_STORAGE names it.  The older order
'deker STORAGE COMMAND' still works.  On a storage it cannot write (a read-only mount, read
permission only), or with --read-only, every command but 'locks --clear' works and changes
nothing.
"""

_EPILOG = """\
exit status:
  0    all well
  1    the storage has problems: integrity problems found (check), unreadable collection
       metadata (ls, info), stale locks left in place (locks)
  2    bad command line
  3    the command could not run: not a deker storage, no such collection, the report
       file cannot be written, or another error (message on stderr)
  130  interrupted

examples:
  deker ls /data/deker
  deker info file:///data/deker weather
  deker check /data/deker --level 4 --to-file report.txt
  deker --json size /data/deker weather
  export DEKER_STORAGE=/data/deker; deker locks --clear
"""

_CHECK_HELP = """\
Check the integrity of the storage and print the report (the problems found, grouped).
Levels are cumulative:
  1  collections: metadata JSON readable and valid, collection lock files present
  2  + every Array, tile and VArray opens and holds valid metadata; no lock file left
       behind by a dead process
  3  + symlinks: each object has exactly its symlink, pointing at its own file; no
       extra symlinks, duplicate primary keys, misplaced data files, tiles of missing
       VArrays, or temporary files left by interrupted writes
  4  + every stored value is read (finds damaged data files)
Unlike Client.check_integrity, the command reports every problem unless --stop-on-error.
A progress bar is shown on stderr when it is a terminal.
"""

_LOCKS_HELP = """\
List lock files with their kind, array, owner and state.  A lock is 'live' while its owner
holds it and 'stale' when its owner died (deker recovers stale locks by itself, but deker
1.1.7 processes are blocked by them).  Only transient locks (read, VArray write, creation
locks) are listed unless --all, which adds the permanent per-array mutexes, tile fences
and collection lock files.  --clear removes the stale ones; with --force also live ones
(this breaks the protection of operations running now: stop them first).
"""


_STORAGE_HELP = "file:// URI or directory path (default: $DEKER_STORAGE)"

#: The environment variable that names the storage when the command line does not.
STORAGE_ENV = "DEKER_STORAGE"


class _JsonFlag(argparse.Action):
    """``--json`` accepted before and after the command."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("nargs", 0)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, True)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``deker`` command.

    Returns
    -------
    argparse.ArgumentParser
        The parser (``deker --help`` prints its help).
    """
    parser = argparse.ArgumentParser(
        prog="deker",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action=_JsonFlag, default=False, help="print one JSON document for scripts")
    parser.add_argument(
        "--loglevel",
        default="WARNING",
        metavar="LEVEL",
        help="level of deker's log messages on stderr: DEBUG, INFO, WARNING (default), ERROR",
    )
    parser.add_argument(
        "--read-only",
        action="store_true",
        help="only read: create, change and remove no file (chosen by itself on a storage it cannot write)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, summary: str, description: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=description or summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("storage", metavar="STORAGE", nargs="?", help=_STORAGE_HELP)
        sub.add_argument("--json", action=_JsonFlag, default=argparse.SUPPRESS, help="print JSON")
        return sub

    command(
        "ls",
        "list the collections: kind, shape, dtype, number of arrays (tiles) and VArrays",
    )
    info = command("info", "show one collection: schema, options, counts and size on disk")
    info.add_argument("name", metavar="NAME", help="the collection")
    check = command("check", "check the integrity of the storage (levels 1-4)", _CHECK_HELP)
    check.add_argument(
        "--level",
        type=int,
        choices=(1, 2, 3, 4),
        default=1,
        help="how deep to check, 1 (default) to 4, see above",
    )
    check.add_argument("--collection", metavar="NAME", help="check only this collection")
    check.add_argument(
        "--to-file", metavar="PATH", help="also write the report to PATH (its directory must exist)"
    )
    check.add_argument(
        "-x",
        "--stop-on-error",
        action="store_true",
        help="stop at the first problem instead of reporting all",
    )
    check.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    size = command(
        "size",
        "size of the storage (or of one collection): every file, metadata and lock files included",
    )
    size.add_argument(
        "name", metavar="NAME", nargs="?", help="only this collection (needs STORAGE before it)"
    )
    size.add_argument("--collection", metavar="NAME", dest="collection", help="only this collection")
    locks = command("locks", "list lock files; --clear removes those left by dead processes", _LOCKS_HELP)
    locks.add_argument("--collection", metavar="NAME", help="only this collection")
    locks.add_argument(
        "--all", action="store_true", help="also list array mutexes, tile fences and collection lock files"
    )
    locks.add_argument("--clear", action="store_true", help="remove stale locks (owners dead)")
    locks.add_argument(
        "--force", action="store_true", help="with --clear: remove live locks too (breaks running operations)"
    )
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deker")
    except PackageNotFoundError:  # pragma: no cover - not installed
        return "unknown"


class _Failure(Exception):
    """A command cannot run: message on stderr, exit status 3."""


# --------------------------------------------------------------------------------------- output


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str], out: TextIO) -> None:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def _dump(document: Any, out: TextIO) -> None:
    out.write(json.dumps(document, indent=2, default=str) + "\n")


# ------------------------------------------------------------------------------------- commands


def _storage_uri(text: str) -> str:
    """Return the client URI of STORAGE: URIs as they are, plain paths converted."""
    if text.startswith("file:") or "://" in text:
        return text
    return Path(os.path.normpath(Path(text).expanduser().absolute())).as_uri()


def _count(directory: Path, ext: str) -> int:
    return sum(1 for _ in iter_ids(directory, ext))


def _summary(coll: Collection) -> dict[str, Any]:
    varray = coll.varray_schema
    schema = varray if varray is not None else coll.array_schema
    return {
        "name": coll.name,
        "kind": "varray" if varray is not None else "array",
        "shape": list(schema.shape),
        "dtype": schema.dtype.__name__,
        "arrays": _count(coll.path / "array_data", ARRAY_EXT),
        "varrays": _count(coll.path / "varray_data", VARRAY_EXT) if varray is not None else None,
        "error": None,
    }


def _ls(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    rows: list[dict[str, Any]] = []
    # scratch directories are collections being created or deleted (or left by a crash, which
    # check reports), not collections: Client iteration skips them too
    entries = client.root_path.iterdir()
    for entry in sorted(
        p for p in entries if p.is_dir() and not p.is_symlink() and not is_scratch_dir_name(p.name)
    ):
        error: str | None = None
        try:
            coll = client.get_collection(entry.name)
        except (DekerBaseApplicationError, OSError) as exc:
            coll, error = None, str(exc)
        if coll is not None:
            rows.append(_summary(coll))
            continue
        blank = dict.fromkeys(("kind", "shape", "dtype", "arrays", "varrays"))
        rows.append({"name": entry.name, **blank, "error": error or f"no metadata file {entry.name}.json"})
    if args.json:
        _dump(rows, out)
    elif rows:
        _table(
            [
                [
                    r["name"],
                    r["kind"] or "?",
                    "?" if r["shape"] is None else tuple(r["shape"]),
                    r["dtype"] or "?",
                    "?" if r["arrays"] is None else r["arrays"],
                    "-" if r["varrays"] is None else r["varrays"],
                    "" if r["error"] is None else f"error: {r['error']}",
                ]
                for r in rows
            ],
            ["NAME", "KIND", "SHAPE", "DTYPE", "ARRAYS", "VARRAYS", ""],
            out,
        )
    else:
        out.write("no collections\n")
    return EXIT_PROBLEMS if any(r["error"] for r in rows) else EXIT_OK


def _collection(client: Client, name: str) -> Collection:
    try:
        coll = client.get_collection(name)
    except DekerMetaDataError:
        raise
    except DekerBaseApplicationError as exc:
        raise _Failure(str(exc)) from exc
    if coll is None:
        raise _Failure(f"Collection {name} does not exist in {client.root_path}")
    return coll


def _describe_dimension(dim: dict[str, Any]) -> str:
    text = f"{dim['name']}: size {dim['size']}"
    if dim.get("type") == "time":
        step = dim.get("step") or {}
        parts = [f"{k} {v}" for k, v in step.items() if v]
        text += f", time from {dim.get('start_value')} every {', '.join(parts) or '0'}"
    if dim.get("labels") is not None:
        labels = list(dim["labels"])
        shown = ", ".join(map(str, labels[:5])) + (", ..." if len(labels) > 5 else "")
        text += f", labels [{shown}]"
    if dim.get("scale"):
        scale = dim["scale"]
        text += f", scale start {scale.get('start_value')} step {scale.get('step')}"
        if scale.get("name"):
            text += f" ({scale['name']})"
    return text


def _info(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    coll = _collection(client, args.name)
    doc = _summary(coll)
    size = client.calculate_storage_size(coll.name)
    doc.update(path=str(coll.path), size={"bytes": size.bytes, "human": size.human}, metadata=coll.as_dict)
    varray = coll.varray_schema
    if varray is not None:
        doc.update(vgrid=list(varray.vgrid), arrays_shape=list(varray.arrays_shape))
    if args.json:
        _dump(doc, out)
        return EXIT_OK
    schema = doc["metadata"]["schema"]
    lines = [
        f"Collection: {coll.name} ({doc['kind']})",
        f"Path: {coll.path}",
        f"Shape: {tuple(doc['shape'])}",
        f"Dtype: {doc['dtype']}",
        f"Fill value: {schema.get('fill_value') or 'default (NaN for floats, the minimum for integers)'}",
        "Dimensions:",
        *(f"  - {_describe_dimension(d)}" for d in schema["dimensions"]),
    ]
    if varray is not None:
        lines.append(f"VArray grid: {tuple(varray.vgrid)}; tile shape: {tuple(varray.arrays_shape)}")
    attrs = schema.get("attributes") or []
    lines.append("Attributes:" if attrs else "Attributes: none")
    lines += [f"  - {a['name']}: {a['dtype']}{', primary' if a['primary'] else ''}" for a in attrs]
    options = doc["metadata"].get("options")
    lines.append(f"Options: {json.dumps(options) if options else 'none'}")
    if varray is not None:
        lines.append(f"VArrays: {doc['varrays']}; tiles: {doc['arrays']}")
    else:
        lines.append(f"Arrays: {doc['arrays']}")
    lines.append(f"Size on disk: {size.human} ({size.bytes} bytes)")
    out.write("\n".join(lines) + "\n")
    return EXIT_OK


def _check(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    from deker.errors import DekerIntegrityError

    try:
        report = check_integrity(
            client.storage_context,
            args.level,
            stop_on_error=args.stop_on_error,
            to_file=args.to_file or False,
            collection=args.collection,
            progress=False if args.no_progress else None,
            echo=False,
        )
    except DekerIntegrityError as exc:
        if args.json:
            _dump({"ok": False, "level": args.level, "stopped": True, "report": str(exc)}, out)
        else:
            out.write(str(exc))
            out.write("Stopped at the first problem (--stop-on-error).\n")
        return EXIT_PROBLEMS
    if args.json:
        _dump(report.as_dict(), out)
    else:
        out.write(report.text)
        out.write(
            f"Level {report.level}: {len(report.collections)} collection(s), {report.files_checked} data "
            f"file(s) checked, {len(report.problems)} problem(s).\n"
        )
        if report.report_file is not None:
            out.write(f"Report written to {report.report_file}\n")
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _size(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    if args.name is not None and args.collection is not None and args.name != args.collection:
        raise _Failure(f"two collections given: {args.name} and --collection {args.collection}")
    name = args.name if args.name is not None else args.collection
    if name is not None:
        _collection(client, name)
    size = client.calculate_storage_size(name or "")
    if args.json:
        _dump({"collection": name, "bytes": size.bytes, "human": size.human}, out)
    else:
        out.write(f"{size.human} ({size.bytes} bytes)\n")
    return EXIT_OK


# Lock files that stay while their object exists (listed with --all; "held" or "free").
_PERMANENT = ("array mutex", "tile fence", "collection lock")


def _lock_state(info: LockInfo) -> str:
    if info.stale:
        return "stale"
    if info.kind in _PERMANENT:
        return "held" if info.alive else "free"
    return "live"


def _lock_doc(info: LockInfo, base: Path) -> dict[str, Any]:
    try:
        relative = info.path.relative_to(base)
        collection: str | None = relative.parts[1] if len(relative.parts) > 2 else None
    except ValueError:  # pragma: no cover - always below the storage
        relative, collection = info.path, None
    if info.kind == "collection lock":
        collection = info.path.name[: -len(".lock")]
    return {
        "path": str(relative),
        "collection": collection,
        "kind": info.kind,
        "array_id": info.array_id,
        "owner": info.owner,
        "state": _lock_state(info),
    }


def _locks(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    if args.force and not args.clear:
        raise _Failure("--force only goes with --clear")
    if args.collection is not None:
        _collection(client, args.collection)
    base = client.root_path.parent
    removed = client.clear_locks(args.collection, force=args.force) if args.clear else []
    found = client.list_locks(args.collection)
    shown = [i for i in found if args.all or i.kind not in _PERMANENT]
    docs = [_lock_doc(i, base) for i in shown]
    stale = sum(1 for i in found if i.stale)
    if args.json:
        _dump({"locks": docs, "removed": [str(p.relative_to(base)) for p in removed], "stale": stale}, out)
    else:
        if args.clear:
            out.write(f"{len(removed)} lock file(s) removed\n")
            for path in removed:
                out.write(f"  {path.relative_to(base)}\n")
        if docs:
            rows = [[d["path"], d["kind"], d["array_id"] or "-", d["owner"] or "-", d["state"]] for d in docs]
            _table(rows, ["PATH", "KIND", "ARRAY", "OWNER", "STATE"], out)
        elif not args.clear:
            out.write("no lock files\n")
        if stale:
            out.write(f"{stale} stale lock file(s): remove them with 'deker locks --clear {args.storage}'\n")
    return EXIT_PROBLEMS if stale else EXIT_OK


_COMMANDS = {"ls": _ls, "info": _info, "check": _check, "size": _size, "locks": _locks}


# ------------------------------------------------------------------------------------------ main


class _CliHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The command's own handler (added once however often ``main`` runs in one process)."""


def _configure_logging() -> None:
    """Send deker's log records to stderr (the command is an application: it may)."""
    deker_logger = logging.getLogger("deker")
    if not any(isinstance(h, _CliHandler) for h in deker_logger.handlers):
        handler = _CliHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        deker_logger.addHandler(handler)
    deker_logger.propagate = False


_TOP_OPTIONS_WITH_VALUE = ("--loglevel",)


def _conventional_order(argv: list[str]) -> list[str]:
    """Return ``argv`` with ``STORAGE COMMAND`` (the older order) turned into ``COMMAND STORAGE``."""
    positions: list[int] = []
    i = 0
    while i < len(argv) and len(positions) < 2:
        arg = argv[i]
        if arg == "--":
            break
        if arg.startswith("-"):
            i += 2 if arg in _TOP_OPTIONS_WITH_VALUE else 1
            continue
        positions.append(i)
        i += 1
    if len(positions) == 2 and argv[positions[0]] not in _COMMANDS and argv[positions[1]] in _COMMANDS:
        first, second = positions
        argv = list(argv)
        argv[first], argv[second] = argv[second], argv[first]
    return argv


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(_conventional_order(list(sys.argv[1:] if argv is None else argv)))
    if args.command is None:
        parser.error(
            "missing COMMAND and STORAGE: write 'deker COMMAND STORAGE', e.g. 'deker ls /data/deker' "
            f"(commands: {', '.join(_COMMANDS)})"
        )
    if args.storage is None:
        args.storage = os.environ.get(STORAGE_ENV) or None
        if args.storage is None:
            parser.error(
                f"missing STORAGE: write 'deker {args.command} STORAGE' (a file:// URI or a directory "
                f"path), or set {STORAGE_ENV}"
            )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``deker`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default: ``sys.argv[1:]``).  ``COMMAND STORAGE`` and the older
        ``STORAGE COMMAND`` are both accepted; without STORAGE, ``$DEKER_STORAGE`` is used.

    Returns
    -------
    int
        The exit status (see the module docstring).
    """
    args = _parse(argv)
    out = sys.stdout
    try:
        level = str(args.loglevel).upper()
        if logging.getLevelName(level) == f"Level {level}":
            raise _Failure(f"unknown log level {args.loglevel!r}: use DEBUG, INFO, WARNING or ERROR")
        _configure_logging()
        with Client(
            _storage_uri(args.storage), create=False, read_only=args.read_only, loglevel=level
        ) as client:
            return _COMMANDS[args.command](client, args, out)
    except KeyboardInterrupt:
        sys.stderr.write("deker: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of our output went away (e.g. "| head")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except DekerMetaDataError as exc:
        sys.stderr.write(f"deker: {exc}\n")
        return EXIT_PROBLEMS
    except (_Failure, DekerBaseApplicationError, OSError) as exc:
        sys.stderr.write(f"deker: {exc}\n")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
