"""Control of deker's loggers.

Every module logs to ``logging.getLogger(__name__)`` (names under ``deker``).  deker adds no
handler and changes no other logger: applications configure logging as they wish.
"""

from __future__ import annotations

import logging

from deker.errors import DekerValidationError

__all__ = ["set_logging_level"]

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
