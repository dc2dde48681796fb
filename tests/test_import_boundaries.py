"""The one dependency rule is enforced: a sibling import breaks the lint contracts.

The contracts live in the root pyproject.toml and run in CI as `lint-imports`. Here
they run against a copy of every package's sources, first as they are (the
contracts hold), then with one forbidden import planted (they break, naming it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _copy_sources(dest: Path) -> Path:
    for src in sorted((ROOT / "packages").glob("*/src/*")):
        if src.is_dir():
            shutil.copytree(src, dest / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _lint_imports(sources: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH puts the copies ahead of the editable installs of the real packages
    env = {**os.environ, "PYTHONPATH": str(sources)}
    return subprocess.run(
        [LINT_IMPORTS, "--config", ROOT / "pyproject.toml", "--no-cache"],
        cwd=sources,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_contracts_hold_on_the_tree(tmp_path: Path) -> None:
    done = _lint_imports(_copy_sources(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("aiki_task", "aiki_workflow"),
        ("aiki_worker", "aiki_client"),
        ("aiki_server", "aiki_crypto"),
        ("aiki_core", "aiki_task"),
        ("aiki_client", "aiki"),
        ("aiki", "aiki_server"),
        ("aiki_server", "aiki_core.sdk"),
    ],
)
def test_a_sibling_import_breaks_a_contract(tmp_path: Path, importer: str, imported: str) -> None:
    sources = _copy_sources(tmp_path)
    (sources / importer / "_violation.py").write_text(
        f"from __future__ import annotations\n\nimport {imported}\n"
    )
    done = _lint_imports(sources)
    assert done.returncode != 0
    assert f"{importer}._violation -> {imported}" in done.stdout, done.stdout
