"""deker.sizes: memory_limit parsing, human sizes, the memory check."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import numpy as np
import psutil
import pytest

from deker import sizes
from deker.errors import DekerMemoryError, DekerValidationError
from deker.sizes import check_memory, effective_memory_limit, human_size, parse_memory_limit, total_memory


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (-1, -1),
        (1000, 1000),
        (True, 1),
        (np.int64(7), 7),
        ("0", 0),
        ("123", 123),
        ("512M", 512 * 1024**2),
        ("512m", 512 * 1024**2),
        ("1024k", 1024**2),
        ("1024K", 1024**2),
        ("8G", 8 * 1024**3),
        ("1T", 1024**4),
        ("1t", 1024**4),
        (" 2g ", 2 * 1024**3),
    ],
)
def test_parse(value: Any, expected: int) -> None:
    assert parse_memory_limit(value) == expected


@pytest.mark.parametrize(
    "value", ["1.5G", "5X", "", "G", "-1", "-1G", "1 G", "1GB", "abc", 1.5, 2.0, None, [1], b"1G"]
)
def test_parse_invalid(value: Any) -> None:
    with pytest.raises(DekerValidationError, match="invalid memory_limit value"):
        parse_memory_limit(value)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1, "1.0 B"),
        (1023, "1023.0 B"),
        (1024, "1.0 KB"),
        (5697, "5.56 KB"),
        (1052810, "1.0 MB"),
        (1536 * 1024, "1.5 MB"),
        (1024**3, "1.0 GB"),
        (1024**4, "1.0 TB"),
        (1024**5, "1.0 PB"),
        (1024**6, "1.0 EB"),
        (1024**7, "1.0 ZB"),
        (1024**8, "1.0 YB"),
        (1024**9, "1024.0 YB"),
    ],
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


def test_human_size_negative() -> None:
    with pytest.raises(ValueError):
        human_size(-1)


def test_effective_limit() -> None:
    total = total_memory()
    assert total == psutil.virtual_memory().total + psutil.swap_memory().total
    assert effective_memory_limit(0) == total
    assert effective_memory_limit(-5) == total
    assert effective_memory_limit(total) == total
    assert effective_memory_limit(total * 10) == total
    assert effective_memory_limit(1024) == 1024


def test_check_memory_passes() -> None:
    check_memory((10, 10), np.float64, 800)
    check_memory((), "int8", 1)
    check_memory((1000,), np.dtype("complex128"), 0)


def test_check_memory_over_limit() -> None:
    with pytest.raises(DekerMemoryError) as info:
        check_memory((10, 10), np.float64, 799)
    message = str(info.value)
    assert "800.0 B" in message and "(10, 10)" in message and "float64" in message
    assert "799 bytes" in message and "memory_limit" in message and "smaller subset" in message
    assert isinstance(info.value, MemoryError)


def test_check_memory_over_machine() -> None:
    # Far beyond any machine: Python ints do not overflow, the free memory is the bound.
    shape = (2**40, 2**40, 2**40)
    with pytest.raises(DekerMemoryError) as info:
        check_memory(shape, np.float64, total_memory())
    message = str(info.value)
    assert str(shape) in message and "YB" in message and "free" in message
    with pytest.raises(DekerMemoryError):
        check_memory(shape, np.int8, 0)


def test_coding_threads_are_capped_by_the_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """DEKER_CODEC_THREADS (now), else OMP_NUM_THREADS (at the start), caps the cores used."""
    monkeypatch.setattr(sizes, "usable_cores", lambda: 8)
    monkeypatch.setattr(sizes, "_refused", set())  # (what was logged before)
    monkeypatch.setattr(sizes, "_started_with", {})
    monkeypatch.delenv("DEKER_CODEC_THREADS", raising=False)
    assert sizes.coding_threads() == 8
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # set after the start: not OpenMP's setting
    assert sizes.coding_threads() == 8
    monkeypatch.setattr(sizes, "_started_with", {"OMP_NUM_THREADS": "1"})
    assert sizes.coding_threads() == 1
    monkeypatch.setenv("DEKER_CODEC_THREADS", "3")  # deker's own comes first
    assert sizes.coding_threads() == 3
    monkeypatch.setenv("DEKER_CODEC_THREADS", "64")  # never more than the cores
    assert sizes.coding_threads() == 8
    monkeypatch.setenv("DEKER_CODEC_THREADS", "many")  # passed over, logged once
    with caplog.at_level(logging.WARNING, logger=sizes.__name__):
        assert sizes.coding_threads() == 1
        assert sizes.coding_threads() == 1
    assert [r.getMessage() for r in caplog.records] == [
        "DEKER_CODEC_THREADS='many' is not a positive number of threads: passed over"
    ]


@pytest.mark.parametrize(
    ("started_with", "later", "expected"),
    [({"OMP_NUM_THREADS": "1"}, {}, "1"), ({}, {"OMP_NUM_THREADS": "1"}, "cores")],
)
def test_omp_num_threads_counts_as_the_process_started_with_it(
    started_with: dict[str, str], later: dict[str, str], expected: str
) -> None:
    """A real process: Dask's nanny sets the variable in its own running process, which keeps its cores."""
    code = (
        "import os, sys; os.environ.update(eval(sys.argv[1])); from deker import sizes; "
        "print(sizes.coding_threads(), sizes.usable_cores())"
    )
    env = {k: v for k, v in os.environ.items() if k not in sizes.THREADS_ENV} | started_with
    done = subprocess.run(
        [sys.executable, "-c", code, repr(later)], env=env, capture_output=True, text=True, check=True
    )
    threads, cores = done.stdout.split()
    assert threads == (cores if expected == "cores" else expected)
