"""The documentation stands on its own and covers the whole public surface.

- The site builds with every warning an error, and its API reference has an entry for
  every name in the `__all__` of every public module (found by walking the sources,
  so a new public module needs a reference page too).
- No tracked file cites something outside the repository: a design or benchmarking
  note kept elsewhere, a shared folder, a workspace path, or an issue number.
- Every `python` code block of the docs and the READMEs compiles.
"""

from __future__ import annotations

import ast
import importlib
import io
import os
import re
import subprocess
import sys
import textwrap
import tokenize
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(ROOT.glob("packages/*/src"))


def public_modules() -> list[str]:
    """Every importable module of the distributions whose dotted name has no private part.

    `__main__` (a command line) and `__about__` (the version, re-exported) are not API.
    """
    found: list[str] = []
    for src in SOURCES:
        for path in src.rglob("*.py"):
            parts = list(path.relative_to(src).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if any(part.startswith("_") for part in parts):
                continue
            found.append(".".join(parts))
    return sorted(found)


def read_inventory(path: Path) -> set[str]:
    """The object names of a Sphinx `objects.inv` (version 2), as mkdocstrings writes it."""
    header, _, body = path.read_bytes().partition(b"compressed using zlib.\n")
    assert header.startswith(b"# Sphinx inventory version 2"), header[:60]
    lines = zlib.decompress(body).decode().splitlines()
    return {line.split(" ", 1)[0] for line in lines if line}


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Build the site as CI does (`mkdocs build --strict`) and read its inventory."""
    site = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr}"
    return read_inventory(site / "objects.inv")


@pytest.mark.slow
def test_every_public_module_is_found() -> None:
    expected = {
        "aiki_core",
        "aiki_core.wire",
        "aiki_core.sdk",
        "aiki_task",
        "aiki_workflow",
        "aiki_client",
        "aiki_worker",
        "aiki_crypto",
        "aiki_otel",
        "aiki_server",
        "aiki_server.testing",
        "aiki_cli",
    }
    assert expected <= set(public_modules())


@pytest.mark.slow
@pytest.mark.parametrize("module_name", public_modules())
def test_every_public_name_has_a_reference_entry(module_name: str, inventory: set[str]) -> None:
    module = importlib.import_module(module_name)
    assert module_name in inventory, f"no reference page renders `{module_name}`"
    missing = []
    for name in module.__all__:
        if f"{module_name}.{name}" in inventory:
            continue
        # a re-export documented where it lives (the `aiki` facade's names): its home
        # is another public module, whose page has the entry
        home = getattr(getattr(module, name), "__module__", None)
        if home in public_modules() and home != module_name and f"{home}.{name}" in inventory:
            continue
        missing.append(name)
    assert not missing, f"{module_name}: no reference entry for {missing}"


def test_inventory_reader_reads_what_it_is_given(tmp_path: Path) -> None:
    body = b"aiki_task.task py:function 1 reference/aiki_task/#$ -\naiki_task py:module 1 x -\n"
    inv = tmp_path / "objects.inv"
    inv.write_bytes(
        b"# Sphinx inventory version 2\n# Project: x\n# Version: 0\n"
        b"# The remainder of this file is compressed using zlib.\n" + zlib.compress(body)
    )
    assert read_inventory(inv) == {"aiki_task.task", "aiki_task"}


def transition_tables(text: str) -> list[dict[str, set[str]]]:
    """Each `| from | may move to |` table of a page, as {status: statuses it may move to}."""
    tables: list[dict[str, set[str]]] = []
    for block in text.split("| from | may move to |")[1:]:
        table: dict[str, set[str]] = {}
        for row in block.splitlines()[2:]:
            if not row.startswith("| `"):
                break
            source, targets = (cell.strip() for cell in row.strip("|").split("|"))
            table[source.strip("`")] = {t.strip().strip("`") for t in targets.split(",")} - {"none"}
        tables.append(table)
    return tables


def test_the_statuses_page_shows_the_state_machine_of_the_code() -> None:
    from aiki_core.wire import RUN_TRANSITIONS, TASK_TRANSITIONS

    page = (ROOT / "docs" / "concepts" / "statuses.md").read_text(encoding="utf-8")
    runs, tasks = transition_tables(page)
    assert runs == {str(s): {str(t) for t in to} for s, to in RUN_TRANSITIONS.items()}
    assert tasks == {str(s): {str(t) for t in to} for s, to in TASK_TRANSITIONS.items()}


# --- citations of what lies outside the repository -----------------------------------

CITED_SUFFIXES = {".md", ".py", ".toml", ".yml", ".yaml"}

# anywhere in a file, code and strings included; each pattern is written so that its
# own source text does not match it
OUTSIDE = re.compile(
    r"""
      \b(?:DESIGN|BENCHMARKING|STYLE)\.md\b    # notes kept beside the repository
    | (?<![\w-])shared[/]                      # the folder they are kept in
    | [/]work[/]                               # the workspace's absolute paths
    | \bissues?\s+[#]?\d+                      # an issue cited by its number
    | \b(?:PR|pull\s+request)\s+[#]\d+
    """,
    re.IGNORECASE | re.VERBOSE,
)

# a bare issue reference (a hash sign and a number): only in prose, since code and its strings
# carry numbered markers of their own (the replay's call occurrences, `double(1) #0`)
BARE_REFERENCE = re.compile(r"(?<![\w&/#])[#][1-9]\d*\b")

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})")


def tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    paths = [ROOT / name for name in listed.split("\0") if name]
    return [path for path in paths if path.suffix in CITED_SUFFIXES and path.is_file()]


def markdown_prose(text: str) -> str:
    """Markdown without its fenced code blocks and inline code spans."""
    prose: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(2)
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None:
            prose.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(prose)


def python_prose(source: str) -> str:
    """The comments and docstrings of a Python module."""
    comments = [
        token.string
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docstrings = [
        ast.get_docstring(node, clean=False) or ""
        for node in ast.walk(ast.parse(source))
        if isinstance(node, documented)
    ]
    return "\n".join(comments + docstrings)


def prose_of(path: Path, text: str) -> str:
    if path.suffix == ".md":
        return markdown_prose(text)
    if path.suffix == ".py":
        return python_prose(text)
    return text  # TOML and YAML: comments and plain values


def citations(path: Path, text: str) -> list[str]:
    found = [match.group(0) for match in OUTSIDE.finditer(text)]
    found += [match.group(0) for match in BARE_REFERENCE.finditer(prose_of(path, text))]
    return found


def test_no_tracked_file_cites_outside_the_repository() -> None:
    files = tracked_files()
    assert any(path.name == "README.md" for path in files)
    cited = {
        str(path.relative_to(ROOT)): found
        for path in files
        if (found := citations(path, path.read_text(encoding="utf-8")))
    }
    assert not cited


# each sample is cut in two, so this file does not cite what its samples do
@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("a.md", "The rules are in DESIGN" + ".md."),
        ("a.md", "See ../sha" + "red/notes.md for the peers."),
        ("a.md", "Fixed in (#12)."),
        ("a.md", "As iss" + "ue 13 asks."),
        ("a.py", "x = 1  # see #7\n"),
        ("a.py", '"""Closes iss' + 'ue #4."""\n'),
        ("a.toml", "# keep this as in P" + "R #31\n"),
        ("a.yml", "path: /wo" + "rk/notes\n"),
    ],
)
def test_citation_check_finds_a_citation(name: str, text: str) -> None:
    assert citations(Path(name), text)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("a.py", 'assert "double(1) #0" in message\nlabel = "#3"\n'),
        ("a.md", "A heading\n\n```python\nnotes = '#5'\n```\n\nCall `f() #2` is fine.\n"),
        ("a.md", "## 1. Distributions\n\nThe design of the server, in shared memory.\n"),
        ("a.toml", '"bench/**" = ["T201"]  # a benchmark prints its figures\n'),
    ],
)
def test_citation_check_leaves_code_and_prose_alone(name: str, text: str) -> None:
    assert citations(Path(name), text) == []


# --- the code blocks of the docs compile --------------------------------------------

DOCUMENTS = sorted(
    [ROOT / "README.md", *ROOT.glob("packages/*/README.md"), *(ROOT / "docs").rglob("*.md")]
)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Each fenced `python` block of a Markdown text, with the line it starts on."""
    blocks: list[tuple[int, str]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opened = FENCE.match(lines[index])
        if opened and lines[index].strip()[len(opened.group(2)) :].strip() in ("python", "py"):
            start, fence = index + 1, opened.group(2)
            end = start
            while end < len(lines) and not lines[end].strip().startswith(fence):
                end += 1
            blocks.append((start + 1, textwrap.dedent("\n".join(lines[start:end]))))
            index = end
        index += 1
    return blocks


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_python_block_compiles(document: Path) -> None:
    for line, block in python_blocks(document.read_text(encoding="utf-8")):
        # examples may await at top level, as in a notebook or `python -m asyncio`
        compile(block, f"{document}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_python_blocks_are_found() -> None:
    text = "x\n\n```python\nimport a\n```\n\n- item\n\n    ```python\n    b = 1\n    ```\n"
    assert python_blocks(text) == [(4, "import a"), (10, "b = 1")]
    assert any(python_blocks((ROOT / "README.md").read_text(encoding="utf-8")))


def test_the_facade_page_lists_exactly_what_aiki_exports() -> None:
    aiki = importlib.import_module("aiki")
    page = (ROOT / "docs" / "reference" / "aiki.md").read_text()
    listed = set(re.findall(r"^\| `aiki\.(\w+)` \|", page, flags=re.MULTILINE))
    assert listed == set(aiki.__all__) - {"__version__"}
