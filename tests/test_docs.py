"""The documentation in docs/ cannot drift from the code: its code blocks run, its references exist.

Conventions (also explained in docs/index.md, "How these pages are tested"):

- Every fenced block of a page whose language is ``python`` or ``bash`` runs.  The blocks of one
  page run in order as one Python script (bash blocks through ``bash -euo pipefail -c``), in a
  fresh subprocess whose working directory is an empty temporary folder and whose ``PATH``
  starts with this interpreter's ``bin`` folder (so ``deker`` is the checkout's command).
- A block whose info string says ``file=NAME`` (```` ```python file=job.py ````) is written to
  ``NAME`` in the working directory instead of being run; a later bash block runs it.
- A block whose info string says ``no-run`` is skipped; it must give the reason after it
  (```` ```bash no-run (needs a SLURM cluster) ````).  Other languages (``text``, ``ini``...) are
  not code.
- A ``text`` block right after the line ``<!-- output -->`` is the exact output of the bash
  block before it (compared line by line, trailing blanks ignored).
- In docs/cli.md a ``text`` block right after ``<!-- deker-help: COMMAND -->`` must equal
  ``deker [STORAGE COMMAND] --help`` (at 100 columns).  Regenerate them with
  ``python tests/test_docs.py --update-cli``.
- Every ``tests/<file>.py::<test>`` named in docs/migration.md exists, and every row of its
  deviation tables names at least one.
- The API reference command of docs/index.md builds without a warning.
- Relative links between README.md and the pages point at files (and headings) that exist.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
RUNNABLE = ("python", "bash")
_FENCE = re.compile(r"^(\s*)```(.*)$")
_HELP_MARK = re.compile(r"^<!--\s*deker-help:\s*(.*?)\s*-->\s*$")
_TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
_HELP_COLUMNS = "100"
OUTPUT_MARK = "<!-- output -->"  # before a ```text block: the exact output of the bash block before it


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the first code line
    lang: str
    info: str  # the whole info string after the backticks
    code: str
    before: str  # the last non-blank line before the opening fence

    @property
    def no_run(self) -> bool:
        return re.search(r"\bno-run\b", self.info) is not None

    @property
    def file(self) -> str | None:
        """The file name of a ``file=NAME`` block (written to the working directory, not run)."""
        match = re.search(r"\bfile=([\w.-]+)", self.info)
        return match.group(1) if match else None

    @property
    def runs(self) -> bool:
        return self.lang in RUNNABLE and not self.no_run

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Return the fenced blocks of a Markdown page, in order."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    last_text = ""
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            if lines[i].strip():
                last_text = lines[i].strip()
            i += 1
            continue
        indent, info = match.group(1), match.group(2).strip()
        start = i + 1
        j = start
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        if j == len(lines):
            raise AssertionError(f"{page.relative_to(ROOT)}:{i + 1}: unclosed code fence")
        code = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines[start:j])
        lang = info.split()[0] if info else ""
        found.append(Block(page, start + 1, lang, info, code + "\n", last_text))
        last_text = ""
        i = j + 1
    return found


# ------------------------------------------------------------------------------ running pages

_PRELUDE = """\
import subprocess as _docs_subprocess


def _docs_write(_name, _text):
    with open(_name, "w") as _fh:
        _fh.write(_text)


def _docs_bash(_script, _where, _expected=None):
    print(f"--- bash block {_where}", flush=True)
    if _expected is None:
        _docs_subprocess.run(["bash", "-euo", "pipefail", "-c", _script], check=True)
        return
    _out = _docs_subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _script], check=True, capture_output=True, text=True
    ).stdout
    print(_out, flush=True)
    _got = [_line.rstrip() for _line in _out.rstrip().splitlines()]
    _want = [_line.rstrip() for _line in _expected.rstrip().splitlines()]
    assert _got == _want, f"the output of the bash block {_where} is not what the page shows"


"""


def page_script(page: Path) -> tuple[str, list[tuple[int, Block]]]:
    """Return the script of a page and, for each block, the script line where it starts."""
    parts = [_PRELUDE]
    starts: list[tuple[int, Block]] = []
    line = _PRELUDE.count("\n") + 1
    found = blocks(page)
    for n, block in enumerate(found):
        if not block.runs:
            continue
        header = f"# --- {block.where}\n"
        after = found[n + 1] if n + 1 < len(found) else None
        expected = after.code if after is not None and after.before == OUTPUT_MARK else None
        if block.file is not None:
            body = f"_docs_write({block.file!r}, {block.code!r})\n"
        elif block.lang == "python":
            body = block.code
        else:
            body = f"_docs_bash({block.code!r}, {block.where!r}, {expected!r})\n"
        starts.append((line + 1, block))
        parts.append(header + body + "\n")
        line += (header + body + "\n").count("\n")
    return "".join(parts), starts


def _locate(starts: list[tuple[int, Block]], script_line: int) -> str:
    where = "?"
    for first, block in starts:
        if script_line >= first:
            where = f"{block.page.relative_to(ROOT)}:{block.line + script_line - first}"
    return where


def _runnable_pages() -> list[Path]:
    return [p for p in PAGES if any(b.runs for b in blocks(p))]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("COLUMNS", None)
    return env


@pytest.mark.timeout(240)
@pytest.mark.parametrize("page", _runnable_pages(), ids=lambda p: p.name)
def test_page_code_runs(page: Path, tmp_path: Path) -> None:
    script, starts = page_script(page)
    path = tmp_path / f"{page.stem}_page.py"
    path.write_text(script)
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, str(path)], cwd=work, env=_env(), capture_output=True, text=True, timeout=200
    )
    if proc.returncode != 0:
        lines = [int(n) for n in re.findall(rf'File "{re.escape(str(path))}", line (\d+)', proc.stderr)]
        where = _locate(starts, lines[-1]) if lines else "?"
        pytest.fail(
            f"a code block of {page.name} failed near {where}:\n{proc.stderr[-4000:]}\n"
            f"--- stdout:\n{proc.stdout[-2000:]}",
            pytrace=False,
        )


def test_blocks_are_found_and_run() -> None:
    """Every page with Python code runs some of it (a broken fence would silently skip a page)."""
    for page in PAGES:
        found = blocks(page)
        python = [b for b in found if b.lang == "python"]
        if python:
            assert any(b.runs for b in python), f"{page.name}: no Python block runs"


def test_no_run_blocks_say_why_and_stay_rare() -> None:
    skipped = [b for p in PAGES for b in blocks(p) if b.lang in RUNNABLE and b.no_run]
    for block in skipped:
        reason = block.info.split("no-run", 1)[1].strip(" :-()")
        assert reason, f"{block.where}: a no-run block must say why (```{block.lang} no-run (reason))"
    ran = [b for p in PAGES for b in blocks(p) if b.runs]
    assert len(skipped) <= max(8, len(ran) // 3), f"too many no-run blocks: {[b.where for b in skipped]}"


# ------------------------------------------------------------------------------ the CLI reference


_HELP_SCRIPT = """
import contextlib, io, json, sys
from deker.cli import build_parser
out = {}
for command in json.loads(sys.argv[1]):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
        build_parser().parse_args(["--help"] if not command else [command, "--help"])
    out[command] = buffer.getvalue()
print(json.dumps(out))
"""


def deker_help(commands: list[str]) -> dict[str, str]:
    """Return ``deker [COMMAND] --help`` of each command, at the reference width."""
    import json

    env = _env()
    env["COLUMNS"] = _HELP_COLUMNS
    proc = subprocess.run(
        [sys.executable, "-c", _HELP_SCRIPT, json.dumps(commands)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    texts: dict[str, str] = json.loads(proc.stdout)
    return {c: "\n".join(line.rstrip() for line in t.rstrip().splitlines()) + "\n" for c, t in texts.items()}


def _help_blocks() -> list[tuple[str, Block]]:
    page = DOCS / "cli.md"
    out = []
    for block in blocks(page):
        match = _HELP_MARK.match(block.before)
        if match is not None:
            assert block.lang == "text", f"{block.where}: a help block is a ```text block"
            out.append((match.group(1), block))
    return out


def _commands() -> list[str]:
    from deker.cli import build_parser

    parser = build_parser()
    subparsers = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return ["", *sorted(subparsers[0].choices)]  # type: ignore[attr-defined]


def test_cli_reference_shows_every_command_help() -> None:
    documented = _help_blocks()
    assert sorted(c for c, _ in documented) == _commands(), "docs/cli.md must show the help of every command"
    helps = deker_help([c for c, _ in documented])
    for command, block in documented:
        expected = helps[command]
        got = "\n".join(line.rstrip() for line in block.code.rstrip().splitlines()) + "\n"
        assert got == expected, (
            f"{block.where}: the help of 'deker {command}' changed; run "
            "`python tests/test_docs.py --update-cli` and review the page"
        )


def update_cli_page() -> None:
    """Rewrite the help blocks of docs/cli.md from the current ``deker`` command."""
    page = DOCS / "cli.md"
    lines = page.read_text().splitlines()
    documented = _help_blocks()
    helps = deker_help([c for c, _ in documented])
    for command, block in reversed(documented):
        code = helps[command].splitlines()
        first = block.line - 1
        last = first + len(block.code.rstrip("\n").splitlines())
        lines[first:last] = code
    page.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------ migration table


def _defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")
    }


def _deviation_rows() -> list[tuple[int, str]]:
    rows = []
    inside = False
    for n, line in enumerate((DOCS / "migration.md").read_text().splitlines(), start=1):
        if line.startswith("## "):
            inside = line.lower().startswith("## what behaves differently")
        elif inside and line.startswith("|") and not re.match(r"^\|[\s:|-]+\|$", line):
            rows.append((n, line))
    return rows


def test_migration_table_names_existing_tests() -> None:
    text = (DOCS / "migration.md").read_text()
    refs = _TEST_REF.findall(text)
    assert len(refs) >= 20, "the migration guide names the tests that assert each deviation"
    cache: dict[str, set[str]] = {}
    missing = []
    for file, name in refs:
        path = ROOT / file
        if not path.is_file():
            missing.append(f"{file} (no such file)")
            continue
        if file not in cache:
            cache[file] = _defined_tests(path)
        if name not in cache[file]:
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/migration.md names tests that do not exist: {missing}"


def test_every_deviation_row_names_a_test() -> None:
    rows = _deviation_rows()
    assert len(rows) >= 20, "docs/migration.md: the deviation tables were not found"
    headers = [(n, r) for n, r in rows if "old behaviour" in r.lower()]
    bare = [f"docs/migration.md:{n}" for n, r in rows if (n, r) not in headers and not _TEST_REF.search(r)]
    assert not bare, f"deviation rows without a test: {bare}"


# ------------------------------------------------------------------------------ API reference


def api_command() -> str:
    """Return the API reference command documented in docs/index.md."""
    for block in blocks(DOCS / "index.md"):
        for line in block.code.splitlines():
            if "pdoc" in line and " -o docs/api " in line:
                return line.strip()
    raise AssertionError("docs/index.md documents no pdoc command writing to docs/api")


def test_readme_documents_the_same_api_command() -> None:
    assert api_command() in (ROOT / "README.md").read_text()


@pytest.mark.timeout(240)
def test_api_reference_builds_without_warnings(tmp_path: Path) -> None:
    import importlib.util

    assert importlib.util.find_spec("pdoc") is not None, (
        "pdoc is in the 'test' extra: pip install -e '.[test]'"
    )
    command = api_command()
    tokens = shlex.split(command)
    env = _env()
    while tokens and re.match(r"^[A-Z_]+=", tokens[0]):
        key, value = tokens.pop(0).split("=", 1)
        env[key] = value
    assert tokens[0].endswith("pdoc"), command
    out = tmp_path / "api"
    shell = " ".join(tokens[1:]).replace("-o docs/api", f"-o {shlex.quote(str(out))}")
    proc = subprocess.run(
        ["bash", "-c", f"{shlex.quote(sys.executable)} -m pdoc {shell}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Warn" not in output and "Error" not in output, output
    for page in ("deker.html", "deker/client.html", "deker/errors.html", "deker_dask.html", "index.html"):
        assert (out / page).is_file(), f"{page} was not generated"
    client_page = (out / "deker/client.html").read_text()
    assert "create_collection" in client_page and "check_integrity" in client_page


# ------------------------------------------------------------------------------ links

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = page.read_text()
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return {_anchor(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        missing_anchor = (
            bool(anchor) and dest.suffix == ".md" and dest.exists() and anchor not in _anchors(dest)
        )
        if not dest.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_readme_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in (
        "index.md",
        "quickstart.md",
        "concepts.md",
        "cluster.md",
        "concurrency.md",
        "migration.md",
        "cli.md",
    ):
        assert f"docs/{name}" in readme, f"README.md does not link docs/{name}"
    first_commands = readme.split("## Two commands", 1)[1].split("## ", 1)[0]
    assert "pip install -q -e '.[all]'" in first_commands and "pytest -q" in first_commands


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    if sys.argv[1:] == ["--update-cli"]:
        update_cli_page()
        print("docs/cli.md help blocks updated")
    else:
        print("usage: python tests/test_docs.py --update-cli")
        sys.exit(2)
