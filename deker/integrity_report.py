"""The integrity check's results: its problems, its report and where the report is written.

:mod:`deker.integrity` walks a storage and records what it finds as :class:`IntegrityProblem`
items of an :class:`IntegrityReport`; this module owns those records, the report text (grouped
under headings as in deker 1.1.7) and the report file's name and place.  It reads no storage.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deker.errors import DekerValidationError

__all__ = ["IntegrityProblem", "IntegrityReport", "report_file_name", "report_path"]


@dataclass(frozen=True)
class IntegrityProblem:
    """One problem found by the integrity check.

    Parameters
    ----------
    level : int
        The lowest check level that finds it.
    kind : str
        What is wrong, for scripts: ``"collection-metadata"``, ``"collection-lock-missing"``,
        ``"collection-lock-orphan"``, ``"stale-lock"``, ``"array-metadata"``,
        ``"varray-metadata"``, ``"missing-symlink"``, ``"wrong-symlink"``, ``"extra-symlink"``,
        ``"duplicate-primary-key"``, ``"orphan-file"``, ``"orphan-tile"``, ``"temp-file"``,
        ``"interrupted-write"`` or ``"corrupted-data"``.
    heading : str
        The report heading it is listed under.
    message : str
        What is wrong and where, in words.
    collection : str or None
        The collection concerned.
    path : str or None
        The file or directory concerned.
    """

    level: int
    kind: str
    heading: str
    message: str
    collection: str | None = None
    path: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the problem as a JSON-ready dict."""
        return {
            "level": self.level,
            "kind": self.kind,
            "heading": self.heading,
            "message": self.message,
            "collection": self.collection,
            "path": self.path,
        }


@dataclass
class IntegrityReport:
    """The result of an integrity check.

    Parameters
    ----------
    level : int
        The level checked.
    collections : list of str
        The collections looked at.
    problems : list of IntegrityProblem
        What was found, in the order found.
    files_checked : int
        Array and tile files opened (levels 2 to 4).
    report_file : Path or None
        Where the report was written, if anywhere.
    """

    level: int
    collections: list[str] = field(default_factory=list)
    problems: list[IntegrityProblem] = field(default_factory=list)
    files_checked: int = 0
    report_file: Path | None = None

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not self.problems

    @property
    def errors(self) -> dict[str, list[str]]:
        """The problem messages grouped under their headings (in the order first seen)."""
        grouped: dict[str, list[str]] = {}
        for problem in self.problems:
            grouped.setdefault(problem.heading, []).append(problem.message)
        return grouped

    @property
    def text(self) -> str:
        r"""The report: ``"<heading>\\n\\t- <problem>\\n"`` per heading, or the all-clear line."""
        if self.ok:
            return "Integrity check found no errors\n"
        return "".join(
            heading + "\n" + "".join(f"\t- {message}\n" for message in messages)
            for heading, messages in self.errors.items()
        )

    def as_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        return {
            "ok": self.ok,
            "level": self.level,
            "collections": list(self.collections),
            "files_checked": self.files_checked,
            "problems": [p.as_dict() for p in self.problems],
            "report_file": None if self.report_file is None else str(self.report_file),
        }

    def __str__(self) -> str:
        return self.text


def report_file_name(now: _dt.datetime | None = None) -> str:
    """Return the default report file name ``deker_integrity_report_<YYYY-MM-DDTHH:MM:SS>.txt``.

    Parameters
    ----------
    now : datetime, optional
        The time to name (default: now, local time).

    Returns
    -------
    str
        The file name (written in the current directory when ``to_file=True``).
    """
    stamp = (now or _dt.datetime.now()).strftime("%Y-%m-%dT%H:%M:%S")
    return f"deker_integrity_report_{stamp}.txt"


def report_path(to_file: bool | str | os.PathLike[str] | None) -> Path | None:
    """Return where ``check_integrity(to_file=...)`` writes its report, checked before the run.

    Parameters
    ----------
    to_file : bool, str, Path or None
        ``False`` or ``None``: nowhere; ``True``: :func:`report_file_name` in the current
        directory; a str or Path: that file (``~`` expanded, made absolute).

    Returns
    -------
    Path or None
        The report file, or None when no report is written.

    Raises
    ------
    DekerValidationError
        If ``to_file`` is of another type or empty, names a directory or a file in a missing
        directory.
    """
    if to_file is None or to_file is False:
        return None
    if to_file is True:
        path = Path.cwd() / report_file_name()
    elif isinstance(to_file, (str, os.PathLike)) and os.fspath(to_file):
        path = Path(os.fspath(to_file)).expanduser().absolute()
    else:
        raise DekerValidationError(f"to_file shall be a bool, a str or a Path; got {to_file!r}")
    if path.is_dir():
        raise DekerValidationError(f"Cannot write the integrity report to {path}: it is a directory")
    if not path.parent.is_dir():
        raise DekerValidationError(
            f"Cannot write the integrity report to {path}: directory {path.parent} does not exist"
        )
    return path
