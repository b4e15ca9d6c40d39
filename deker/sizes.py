"""Memory limits, human-readable sizes (SPEC §6.1, §6.2), cores and coding threads.

The cores this process may use, and how many of them code one compressed region
(:func:`coding_threads`).

``memory_limit`` is given to the client as bytes or as a string such as ``"512M"``;
:func:`check_memory` refuses to allocate a result larger than that limit or than the memory the
machine has free at the moment of the call.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import psutil

from deker.errors import DekerMemoryError, DekerValidationError

__all__ = [
    "THREADS_ENV",
    "check_memory",
    "coding_threads",
    "effective_memory_limit",
    "human_size",
    "parse_memory_limit",
    "total_memory",
    "usable_cores",
]

logger = logging.getLogger(__name__)

_SUFFIXES = {"k": 1, "m": 2, "g": 3, "t": 4}
_UNITS = ("B", "KB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def _invalid(value: Any) -> DekerValidationError:
    return DekerValidationError(
        f"invalid memory_limit value: {value!r}; give a number of bytes (int) or a string of a whole "
        "non-negative number with an optional suffix k, m, g or t (powers of 1024), e.g. '512M' or '8G'"
    )


def parse_memory_limit(value: int | str) -> int:
    """Convert a ``memory_limit`` setting to bytes.

    Parameters
    ----------
    value : int or str
        An int (used as is; ``<= 0`` means "no limit but the machine's"), or a string holding an
        int, optionally followed by ``k``, ``m``, ``g`` or ``t`` (any case; powers of 1024).

    Returns
    -------
    int
        The limit in bytes.

    Raises
    ------
    DekerValidationError
        For any other value: floats, fractions such as ``"1.5G"``, unknown suffixes such as
        ``"5X"``, negative numbers in strings, empty strings, other types.

    Examples
    --------
    >>> parse_memory_limit("512M")
    536870912
    >>> parse_memory_limit(0)
    0

    """
    if isinstance(value, (int, np.integer)):  # bool is an int (deker 1.1.7 accepts it)
        return int(value)
    if not isinstance(value, str):
        raise _invalid(value)
    text = value.strip()
    multiplier = 1
    if text and text[-1].lower() in _SUFFIXES:
        multiplier = 1024 ** _SUFFIXES[text[-1].lower()]
        text = text[:-1]
    if not text or not all("0" <= ch <= "9" for ch in text):
        raise _invalid(value)
    return int(text) * multiplier


def total_memory() -> int:
    """Return the machine's total RAM plus total swap, in bytes.

    Returns
    -------
    int
        ``virtual_memory().total + swap_memory().total``.

    """
    return int(psutil.virtual_memory().total) + int(psutil.swap_memory().total)


def usable_cores() -> int:
    """Return how many CPUs this process may run on (its affinity, else the machine's count).

    Returns
    -------
    int
        At least 1.

    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: The environment variables that cap a process's coding threads, the first set one winning:
#: deker's own, read when it is needed, then OpenMP's, read from the environment the process
#: started with (a forked child has its parent's: Dask's fork start method is not covered).
#: Dask's nanny starts every worker process with ``OMP_NUM_THREADS=1``
#: (``distributed.nanny.pre-spawn-environ``): there the worker's task threads are the
#: parallelism, and each splitting its regions over every core made n processes run n x cores
#: threads.  (The nanny also sets it in its own, running process before it starts a worker:
#: that later change is not the process's start.)
THREADS_ENV = ("DEKER_CODEC_THREADS", "OMP_NUM_THREADS")
_refused: set[tuple[str, str]] = set()
_started_with: dict[str, str] | None = None


def _initial_environment() -> dict[str, str]:
    """Return the environment this process started with (Linux; else the current one)."""
    global _started_with
    if _started_with is None:
        try:
            with open("/proc/self/environ", "rb") as handle:
                entries = handle.read().split(b"\0")
        except OSError:  # pragma: no cover - not Linux
            _started_with = dict(os.environ)
        else:
            pairs = (e.decode(errors="replace").partition("=") for e in entries if b"=" in e)
            _started_with = {name: value for name, _, value in pairs}
    return _started_with


def coding_threads() -> int:
    """Return how many threads decode (or encode) the chunks of one region at most.

    The cores this process may run on, capped by the first of :data:`THREADS_ENV` that is set
    to a positive integer (a value that is not is logged once and passed over):
    ``DEKER_CODEC_THREADS`` as the process has it now, ``OMP_NUM_THREADS`` as it started with.

    Returns
    -------
    int
        At least 1.

    """
    cores = usable_cores()
    for name in THREADS_ENV:
        environ = os.environ if name == THREADS_ENV[0] else _initial_environment()
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        try:
            wanted = int(raw)
        except ValueError:
            wanted = 0
        if wanted >= 1:
            return min(wanted, cores)
        if (name, raw) not in _refused:
            _refused.add((name, raw))
            logger.warning("%s=%r is not a positive number of threads: passed over", name, raw)
    return cores


def effective_memory_limit(limit: int) -> int:
    """Return the limit a client applies for a parsed ``memory_limit``.

    Parameters
    ----------
    limit : int
        Bytes, from :func:`parse_memory_limit`.

    Returns
    -------
    int
        ``limit``, or the machine's total RAM + swap when ``limit <= 0`` or larger than that.

    """
    total = total_memory()
    return total if limit <= 0 or limit >= total else int(limit)


# Results up to this size skip the free-memory probe (psutil reads /proc: ~0.3 ms per call);
# the memory_limit still applies to them.
_UNCHECKED_BYTES = 4 * 1024 * 1024


def _available_memory() -> int:
    return int(psutil.virtual_memory().available) + int(psutil.swap_memory().free)


def check_memory(shape: Sequence[int], dtype: Any, limit: int) -> None:
    """Refuse to go on when an array of ``shape`` and ``dtype`` would not fit in memory.

    Parameters
    ----------
    shape : sequence of int
        The shape of the array about to be allocated.
    dtype : numpy.dtype or dtype-like
        Its dtype.
    limit : int
        The client's effective memory limit in bytes (``<= 0``: only free memory counts).

    Raises
    ------
    DekerMemoryError
        If ``itemsize * prod(shape)`` exceeds ``min(limit, available RAM + free swap)``, the free
        memory being measured now (results of at most 4 MiB are checked against ``limit`` only).

    """
    np_dtype = np.dtype(dtype)
    dims = tuple(int(s) for s in shape)
    needed = np_dtype.itemsize * math.prod(dims)
    if needed <= _UNCHECKED_BYTES and (limit <= 0 or needed <= limit):
        return  # asking the kernel costs more than the read of a small subset itself
    available = _available_memory()
    allowed = available if limit <= 0 else min(int(limit), available)
    if needed <= allowed:
        return
    if limit > 0 and limit <= available:
        fix = (
            f"read a smaller subset, or raise the client's memory_limit (now {human_size(int(limit))}) "
            "if the machine has the memory"
        )
    else:
        fix = "read a smaller subset or free memory: the machine's free RAM + swap is the bound now"
    raise DekerMemoryError(
        f"Can not allocate {human_size(needed)} for array/subset with shape {dims} and dtype {np_dtype}. "
        f"Current available free memory per array/subset is {human_size(allowed)} ({allowed} bytes). "
        f"To fix: {fix}."
    )


def human_size(n: int) -> str:
    """Format a number of bytes with a binary unit, as deker 1.1.7 does.

    Parameters
    ----------
    n : int
        A number of bytes, ``>= 0``.

    Returns
    -------
    str
        ``"0 B"`` for 0, else the value in the largest unit not above it (1024-based), rounded
        to two decimals: ``"1.0 MB"``, ``"5.56 KB"``.

    Raises
    ------
    ValueError
        If ``n`` is negative.

    Examples
    --------
    >>> human_size(5697)
    '5.56 KB'

    """
    if n < 0:
        raise ValueError(f"a size cannot be negative: {n!r}")
    if n == 0:
        return "0 B"
    exponent = 0
    while exponent < len(_UNITS) - 1 and n >= 1024 ** (exponent + 1):
        exponent += 1
    return f"{round(n / 1024**exponent, 2)} {_UNITS[exponent]}"
