"""Control of deker's output: its loggers, and whether a progress bar is shown.

Every module logs to ``logging.getLogger(__name__)`` (names under ``deker``).  deker adds no
handler and changes no other logger: applications configure logging as they wish.  Progress
bars (of ``check_integrity`` and of deker_dask's writes) go to stderr when asked for, or by
default when stderr is a terminal (:func:`progress_enabled`).
"""

from __future__ import annotations

import logging
import sys

from deker.errors import DekerValidationError

__all__ = ["progress_enabled", "set_logging_level"]

_LEVELS = ("CRITICAL", "FATAL", "ERROR", "WARNING", "WARN", "INFO", "DEBUG", "NOTSET")


def set_logging_level(level: str) -> None:
    """Set the level of the ``deker`` loggers (and only them).

    Parameters
    ----------
    level : str
        A standard level name, case-insensitive: ``"DEBUG"``, ``"INFO"``, ``"WARNING"``,
        ``"ERROR"``, ``"CRITICAL"`` or ``"NOTSET"``.

    Raises
    ------
    DekerValidationError
        If the name is not a logging level.
    """
    if not isinstance(level, str) or level.strip().upper() not in _LEVELS:
        raise DekerValidationError(f"Unknown level: {level!r}; use one of {', '.join(_LEVELS)}")
    logging.getLogger("deker").setLevel(level.strip().upper())


def progress_enabled(progress: bool | None) -> bool:
    """Return whether a progress bar is shown for the ``progress`` argument of an operation.

    Parameters
    ----------
    progress : bool or None
        True (always), False (never) or None (when stderr is a terminal).

    Returns
    -------
    bool
        Whether to show a bar.

    Raises
    ------
    DekerValidationError
        If ``progress`` is anything else (checked before the operation starts).
    """
    if isinstance(progress, bool):
        return progress
    if progress is not None:
        raise DekerValidationError(f"progress must be True, False or None, not {progress!r}")
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False
