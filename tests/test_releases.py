"""Releases, one package at a time (RELEASING.md): `scripts/release.py`, run for real.

`prepare` runs in a committed copy of the repo, so `git diff` shows exactly what a
release changes; `check` runs on the tree itself, which is what makes CI fail when a
package's version and its CHANGELOG disagree.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path("scripts") / "release.py"


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _release(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, repo / SCRIPT, *args], cwd=repo, capture_output=True, text=True
    )


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the tree (tracked and untracked files, less the ignored), committed."""
    files = _git(ROOT, "ls-files", "--cached", "--others", "--exclude-standard", "-z")
    copy = tmp_path / "repo"
    for name in filter(None, files.split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    _git(copy, "init", "--quiet")
    _git(copy, "config", "user.name", "test")
    _git(copy, "config", "user.email", "test@localhost")
    _git(copy, "add", "--all")
    _git(copy, "commit", "--quiet", "--message", "copy")
    return copy


def test_every_version_agrees_with_its_changelog() -> None:
    done = _release(ROOT, "check")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("file", "old", "new", "problem"),
    [
        (
            "src/aiki_worker/__about__.py",
            '"0.1.0"',
            '"0.1.1"',
            "__version__ is 0.1.1 but CHANGELOG.md has no release",
        ),
        (
            "CHANGELOG.md",
            "## Unreleased\n",
            "## Unreleased\n\n## 0.3.0 (2026-01-02)\n",
            "__version__ is 0.1.0 but the newest release in CHANGELOG.md is 0.3.0",
        ),
        ("CHANGELOG.md", "## Unreleased", "## Next", "the first `## ` heading must be"),
        (
            "CHANGELOG.md",
            "## Unreleased\n",
            "## Unreleased\n\n## 0.1.0 (2026-01-02)\n\n## 0.2.0 (2026-01-01)\n",
            "'## 0.2.0 (2026-01-01)' is not older than the section above it",
        ),
        (
            "CHANGELOG.md",
            "## Unreleased\n",
            "## Unreleased\n\n## 0.1.0 - 2026-01-02\n",
            "heading '## 0.1.0 - 2026-01-02' is not `## X.Y.Z (YYYY-MM-DD)`",
        ),
    ],
)
def test_check_fails_when_version_and_changelog_disagree(
    repo: Path, file: str, old: str, new: str, problem: str
) -> None:
    path = repo / "packages" / "aiki-worker" / file
    path.write_text(path.read_text().replace(old, new, 1))
    done = _release(repo, "check")
    assert done.returncode == 1
    assert done.stderr.startswith(f"aiki-worker: {problem}"), done.stderr
    assert done.stderr.count("\n") == 1, "only the edited package disagrees"


@pytest.mark.slow
def test_prepare_releases_one_package_and_touches_no_other(repo: Path) -> None:
    changelog = repo / "packages" / "aiki-task" / "CHANGELOG.md"
    before = changelog.read_text()
    notes = before.split("## Unreleased\n", 1)[1]

    done = _release(repo, "prepare", "aiki-task", "0.2.0")

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2] == "tag: aiki-task-v0.2.0"
    changed = _git(repo, "diff", "--name-only").split()
    assert changed == [
        "packages/aiki-task/CHANGELOG.md",
        "packages/aiki-task/src/aiki_task/__about__.py",
    ]
    assert _git(repo, "status", "--porcelain", "--untracked-files=all").split("\n")[:-1] == [
        f" M {name}" for name in changed
    ]
    about = (repo / "packages" / "aiki-task" / "src" / "aiki_task" / "__about__.py").read_text()
    assert '__version__ = "0.2.0"' in about
    assert changelog.read_text() == before.replace(
        "## Unreleased\n", f"## Unreleased\n\n## 0.2.0 ({_today()})\n", 1
    )
    assert changelog.read_text().endswith(notes)

    dist = repo / "dist" / "aiki-task"
    assert sorted(path.name for path in (repo / "dist").iterdir()) == ["aiki-task"]
    # uv writes a `.gitignore` beside what it builds
    assert sorted(path.name for path in dist.glob("aiki*")) == [
        "aiki_task-0.2.0-py3-none-any.whl",
        "aiki_task-0.2.0.tar.gz",
    ]
    metadata = zipfile.ZipFile(dist / "aiki_task-0.2.0-py3-none-any.whl").read(
        "aiki_task-0.2.0.dist-info/METADATA"
    )
    assert re.search(rb"^Version: 0\.2\.0$", metadata, re.MULTILINE)
    assert _release(repo, "check").returncode == 0

    # released: the same version again, then one with nothing under Unreleased
    again = _release(repo, "prepare", "aiki-task", "0.2.0")
    assert again.returncode == 1
    assert "aiki-task is at 0.2.0: the new version must be greater, not 0.2.0" in again.stderr
    empty = _release(repo, "prepare", "aiki-task", "0.2.1")
    assert empty.returncode == 1
    assert "the `## Unreleased` section is empty" in empty.stderr
    assert _git(repo, "diff", "--name-only").split() == changed


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("aiki-tasks", "0.2.0"), "unknown package 'aiki-tasks'; one of: aiki, aiki-"),
        (("aiki-task", "0.2"), "version '0.2' is not MAJOR.MINOR.PATCH"),
        (("aiki-task", "v0.2.0"), "version 'v0.2.0' is not MAJOR.MINOR.PATCH"),
        (("aiki-task", "0.0.9"), "aiki-task was never released: its first version must be 0.1.0"),
        # digits of another script: `int()` reads "1\u0660" as 10, the tag would not
        (("aiki-task", "0.2.1\u0660"), "version '0.2.1\u0660' is not MAJOR.MINOR.PATCH"),
        (("aiki-task", "0.2.0\n"), "version '0.2.0\\n' is not MAJOR.MINOR.PATCH"),
    ],
)
def test_prepare_refuses_bad_input_and_changes_nothing(
    repo: Path, args: tuple[str, str], problem: str
) -> None:
    done = _release(repo, "prepare", *args)
    assert done.returncode == 1
    assert done.stderr.startswith(f"release refused: {problem}"), done.stderr
    assert _git(repo, "status", "--porcelain", "--untracked-files=all") == ""


def test_prepare_refuses_a_changelog_without_unreleased(repo: Path) -> None:
    changelog = repo / "packages" / "aiki-task" / "CHANGELOG.md"
    changelog.write_text(changelog.read_text().replace("## Unreleased\n", "", 1))
    _git(repo, "commit", "-qam", "no Unreleased")
    done = _release(repo, "prepare", "aiki-task", "0.2.0")
    assert done.returncode == 1
    assert "no `## Unreleased` section on top to release" in done.stderr
    assert _git(repo, "status", "--porcelain", "--untracked-files=all") == ""


@pytest.mark.slow
def test_a_failed_build_leaves_the_package_as_it_was(repo: Path) -> None:
    pyproject = repo / "packages" / "aiki-task" / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n[this is not toml\n")
    _git(repo, "commit", "-qam", "a package that does not build")

    done = _release(repo, "prepare", "aiki-task", "0.2.0")

    assert done.returncode == 1
    assert done.stderr.startswith("release refused: building aiki-task failed"), done.stderr
    # nothing half-released: fixed, the same release can simply be run again
    assert _git(repo, "status", "--porcelain") == ""
