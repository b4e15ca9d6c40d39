"""Static checks as tests: ruff (lint and format), mypy (strict on the packages), import-linter.

They run in the suite so that the README's single test command (and CI) covers them.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGETS = [p for p in ("deker", "deker_dask", "tests", "examples", "benchmarks") if (ROOT / p).exists()]


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: install the 'test' extra")
    return found


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"


def test_ruff_check() -> None:
    _run(_tool("ruff"), "check", *TARGETS)


def test_ruff_format() -> None:
    _run(_tool("ruff"), "format", "--check", *TARGETS)


def test_mypy_strict() -> None:
    _run(_tool("mypy"))


def test_import_layers() -> None:
    # --no-cache: a cache written before a change may report the contracts kept after it
    _run(_tool("lint-imports"), "--no-cache")


def test_import_layers_count_typing_imports() -> None:
    # An import under TYPE_CHECKING is still a dependency: it may not hide a cycle of layers.
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config.getboolean("importlinter", "exclude_type_checking_imports") is False


MAX_MODULE_LINES = 700


def test_no_source_module_is_over_700_lines() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for package in ("deker", "deker_dask")
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert sizes, "no source module found"
    assert {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_source_module_names_are_unique_across_the_packages() -> None:
    # One module per concept: no two modules of one name in deker and deker_dask (deker 1.1.7's
    # types.private/types.public shells are the only packages, and hold one module each).
    names: dict[str, list[str]] = {}
    for package in ("deker", "deker_dask"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name != "__init__.py":
                names.setdefault(path.stem, []).append(str(path.relative_to(ROOT)))
    assert {n: p for n, p in names.items() if len(p) > 1} == {}


def test_the_suite_needs_nothing_beside_the_checkout() -> None:
    # A fresh clone alone must pass: no test, helper or CI script may read the project's
    # reference folder beside the checkout (``../shared``), nor anything else outside it.
    offenders = []
    for base in ("tests", ".ci"):
        for path in sorted((ROOT / base).rglob("*")):
            if path.is_file() and path.suffix in {".py", ".sh", ""} and path.stat().st_size < 1_000_000:
                text = path.read_text(errors="replace")
                if "../shared" in text or '"shared"' in text or 'parent / "shared"' in text:
                    offenders.append(str(path.relative_to(ROOT)))
    offenders.remove("tests/test_quality.py")
    assert not offenders, f"these read files from beside the checkout: {offenders}"


def test_test_modules_have_unique_names() -> None:
    # tests/ has no packages: two modules of one basename make pytest stop at collection
    names: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        names.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert not {n: p for n, p in names.items() if len(p) > 1}


def _test_module_names(module: Path) -> list[str]:
    """The test modules that may hold the tests of ``module``: its own, or its package's."""
    parts = module.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "deker_dask":
        return [f"dask/test_{parts[-1]}.py"]
    inner = parts[1:]
    return [f"test_{'_'.join(inner[:n])}.py" for n in range(len(inner), 0, -1)]


def test_every_source_module_has_a_test_module() -> None:
    # deker/storage/locks.py -> tests/test_storage_locks.py (or a test module of its package,
    # as tests/test_types.py for the 1.1.7 import paths under deker/types/);
    # deker_dask/lazy.py -> tests/dask/test_lazy.py
    missing = []
    for package in ("deker", "deker_dask"):
        for module in sorted((ROOT / package).rglob("*.py")):
            if module.name in {"__init__.py", "__main__.py"}:
                continue
            if not any((ROOT / "tests" / name).is_file() for name in _test_module_names(module)):
                missing.append(f"{module.relative_to(ROOT)} (tests/{_test_module_names(module)[0]})")
    assert not missing, f"source modules without a test module: {missing}"
