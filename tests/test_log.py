"""deker/log.py: ``set_logging_level`` sets the level of the ``deker`` loggers and nothing else.

Covered: every accepted level name (case and surrounding blanks ignored), refusals (unknown
names, non-strings) with :class:`DekerValidationError`, that only the ``deker`` logger changes
(root, ``deker_dask`` and the ``deker.*`` children keep their own levels and handlers), that the
level really filters records of a deker module (a journal rollback's warning), and that
importing every deker module adds no handler and sets no level anywhere (checked in a fresh interpreter).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deker import Client
from deker.errors import DekerValidationError
from deker.log import progress_enabled, set_logging_level
from deker.storage import journal

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_levels() -> Iterator[None]:
    names = ("deker", "deker_dask", "deker.storage.journal", "")
    saved = {n: logging.getLogger(n).level for n in names}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("DEBUG", logging.DEBUG),
        ("debug", logging.DEBUG),
        ("  Info\n", logging.INFO),
        ("WARNING", logging.WARNING),
        ("warn", logging.WARNING),
        ("Error", logging.ERROR),
        ("CRITICAL", logging.CRITICAL),
        ("fatal", logging.CRITICAL),
        ("NOTSET", logging.NOTSET),
    ],
)
def test_every_level_name_is_accepted(name: str, level: int) -> None:
    logging.getLogger("deker").setLevel(logging.INFO if level != logging.INFO else logging.ERROR)
    set_logging_level(name)
    assert logging.getLogger("deker").level == level


@pytest.mark.parametrize("bad", ["verbose", "", "  ", "DEBUG1", "10", "WARNINGS", "trace"])
def test_unknown_names_are_refused(bad: str) -> None:
    logging.getLogger("deker").setLevel(logging.WARNING)
    with pytest.raises(DekerValidationError, match=rf"^Unknown level: {bad!r}; use one of CRITICAL, FATAL,"):
        set_logging_level(bad)
    assert logging.getLogger("deker").level == logging.WARNING  # unchanged


@pytest.mark.parametrize("bad", [10, None, logging.DEBUG, b"DEBUG", ["DEBUG"]])
def test_non_strings_are_refused(bad: object) -> None:
    with pytest.raises(DekerValidationError, match=r"^Unknown level: ") as info:
        set_logging_level(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert repr(bad) in str(info.value)


def test_only_the_deker_logger_changes() -> None:
    root, dask_logger = logging.getLogger(), logging.getLogger("deker_dask")
    child = logging.getLogger("deker.storage.journal")
    root.setLevel(logging.CRITICAL)
    dask_logger.setLevel(logging.CRITICAL)
    child.setLevel(logging.NOTSET)
    handlers = {n: list(logging.getLogger(n).handlers) for n in ("", "deker", "deker_dask", child.name)}
    set_logging_level("DEBUG")
    assert logging.getLogger("deker").level == logging.DEBUG
    assert root.level == logging.CRITICAL and dask_logger.level == logging.CRITICAL
    assert child.level == logging.NOTSET  # children inherit through the hierarchy...
    assert child.getEffectiveLevel() == logging.DEBUG  # ...so they follow
    assert dask_logger.getEffectiveLevel() == logging.CRITICAL  # "deker_dask" is not under "deker"
    assert {n: list(logging.getLogger(n).handlers) for n in handlers} == handlers


def _interrupted_change(target: Path) -> None:
    """Leave a stale undo journal: a change closed without commit or rollback."""
    target.write_bytes(b"old bytes")
    change = journal.UndoJournal(target)
    change.seek(0)
    change.write(b"NEW")
    change.close()  # the journal stays for recovery
    assert target.read_bytes() == b"NEW bytes"


def test_the_level_filters_what_deker_modules_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "f.bin"
    _interrupted_change(target)
    set_logging_level("ERROR")
    assert journal.recover(target)  # logs a warning: filtered out
    assert target.read_bytes() == b"old bytes"
    assert [r for r in caplog.records if r.name.startswith("deker")] == []
    _interrupted_change(target)
    set_logging_level("warning")
    assert journal.recover(target)
    records = [r for r in caplog.records if r.name.startswith("deker")]
    assert [(r.name, r.levelno) for r in records] == [("deker.storage.journal", logging.WARNING)]
    assert records[0].getMessage().startswith(f"rolled back an interrupted write of {target}")


def test_client_loglevel_goes_through_set_logging_level(tmp_path: Path) -> None:
    with Client(tmp_path.as_uri(), loglevel="info"):
        assert logging.getLogger("deker").level == logging.INFO
    with Client(tmp_path.as_uri()):  # the default
        assert logging.getLogger("deker").level == logging.ERROR


def test_importing_deker_adds_no_handler() -> None:
    """In a fresh interpreter: import every module of deker, look at all loggers."""
    code = """
import importlib, json, logging, pkgutil
import deker
for m in pkgutil.walk_packages(deker.__path__, "deker."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
loggers = {n: l for n, l in logging.root.manager.loggerDict.items() if isinstance(l, logging.Logger)}
print(json.dumps({
    "root_handlers": len(logging.root.handlers),
    "root_level": logging.root.level,
    "with_handlers": sorted(n for n, l in loggers.items() if l.handlers),
    "with_level": sorted(n for n, l in loggers.items() if l.level),
    "not_propagating": sorted(n for n, l in loggers.items() if not l.propagate),
    "deker_modules": len([n for n in loggers if n.startswith("deker.")]),
}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    found = json.loads(out.stdout)
    assert found["root_handlers"] == 0
    assert found["root_level"] == logging.WARNING  # Python's default, untouched
    assert found["with_handlers"] == []
    assert found["with_level"] == []
    assert found["not_propagating"] == []
    assert found["deker_modules"] >= 10  # the modules did create their loggers


def test_progress_is_shown_when_asked_or_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert progress_enabled(True) is True and progress_enabled(False) is False

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress_enabled(None) is True
    monkeypatch.setattr(sys, "stderr", None)  # pythonw, a daemon: no stream at all
    assert progress_enabled(None) is False


@pytest.mark.parametrize("bad", ["x", 1, 0, "False", [True]])
def test_a_progress_argument_that_is_not_a_bool_is_refused(bad: object) -> None:
    with pytest.raises(
        DekerValidationError, match=re.escape(f"progress must be True, False or None, not {bad!r}")
    ):
        progress_enabled(bad)  # type: ignore[arg-type]


def test_check_integrity_refuses_a_wrong_progress_before_it_looks_at_anything(tmp_path: Path) -> None:
    with Client(f"file://{tmp_path / 'storage'}") as client:
        report = tmp_path / "report.txt"
        with pytest.raises(DekerValidationError, match="progress must be"):
            client.check_integrity(2, to_file=str(report), progress="yes")  # type: ignore[arg-type]
        assert not report.exists()
