"""Release one distribution of the monorepo, and check that versions and changelogs agree.

    python scripts/release.py prepare aiki-task 0.2.0   (hatch run release:prepare ...)
    python scripts/release.py check                     (hatch run release:check)

`prepare` bumps the package's `__about__.py`, moves its CHANGELOG's `## Unreleased`
section under `## 0.2.0 (YYYY-MM-DD)` (a fresh, empty `Unreleased` stays on top),
builds that package's wheel and sdist into `dist/<package>/`, and prints the tag to
push (`aiki-task-v0.2.0`). It touches no other package's files.

`check` holds every package to the rule of RELEASING.md: the CHANGELOG opens with
`## Unreleased`, released sections follow newest first as `## X.Y.Z (YYYY-MM-DD)`, and
the newest of them is the package's `__version__`; a package never released is at
0.1.0.

Only the standard library and the `uv` binary (to build) are used, so the script
runs in a bare environment.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNRELEASED = "## Unreleased"
INITIAL_VERSION = (0, 1, 0)
# ASCII digits only: `\d` alone takes any script's digits, which `int()` reads too
_VERSION = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)", re.ASCII)
_RELEASED = re.compile(rf"## ({_VERSION.pattern}) \((\d{{4}}-\d{{2}}-\d{{2}})\)", re.ASCII)
_ABOUT_VERSION = re.compile(r'^__version__ = "([^"]*)"$', re.MULTILINE)

Version = tuple[int, int, int]


class ReleaseError(Exception):
    """Input or repository state the release refuses; the message says what to fix."""


def parse_version(text: str) -> Version:
    """`"0.2.0"` as `(0, 2, 0)`; anything but MAJOR.MINOR.PATCH is refused."""
    match = _VERSION.fullmatch(text)
    if match is None:
        raise ReleaseError(f"version {text!r} is not MAJOR.MINOR.PATCH (e.g. 0.2.0)")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def show(version: Version) -> str:
    """`(0, 2, 0)` as `"0.2.0"`."""
    return ".".join(map(str, version))


@dataclass(frozen=True)
class Package:
    """One distribution under packages/: its name, version file and changelog."""

    name: str
    path: Path

    @property
    def about(self) -> Path:
        """`src/aiki_x/__about__.py`, where the version lives."""
        return self.path / "src" / self.name.replace("-", "_") / "__about__.py"

    @property
    def changelog(self) -> Path:
        """The package's CHANGELOG.md."""
        return self.path / "CHANGELOG.md"

    def version(self) -> Version:
        """The `__version__` of `__about__.py`."""
        match = _ABOUT_VERSION.search(self.about.read_text())
        if match is None:
            raise ReleaseError(f'{self.about}: no line `__version__ = "X.Y.Z"`')
        return parse_version(match.group(1))


def packages(root: Path) -> dict[str, Package]:
    """Every distribution under `root/packages`, by name."""
    found = (
        Package(path.name, path)
        for path in sorted((root / "packages").iterdir())
        if (path / "pyproject.toml").is_file()
    )
    return {package.name: package for package in found}


@dataclass(frozen=True)
class Changelog:
    """A CHANGELOG.md cut at its `## ` headings."""

    head: str
    """Everything before the first `## ` heading (title and preamble)."""
    sections: list[tuple[str, str]]
    """Each `## ` heading line and the text under it, in file order."""

    @classmethod
    def parse(cls, text: str) -> Changelog:
        """Cut `text` at each line that starts with `## `."""
        parts = re.split(r"^(## .*)$", text, flags=re.MULTILINE)
        head, rest = parts[0], parts[1:]
        return cls(head, list(zip(rest[::2], rest[1::2], strict=True)))

    def render(self) -> str:
        """The text again."""
        return self.head + "".join(heading + body for heading, body in self.sections)

    def released(self) -> list[Version]:
        """The versions of the released sections, in file order.

        Raises `ReleaseError` unless the first section is `## Unreleased` and every
        other one is `## X.Y.Z (YYYY-MM-DD)`, newest first.
        """
        headings = [heading.rstrip() for heading, _ in self.sections]
        if not headings or headings[0] != UNRELEASED:
            raise ReleaseError(f"the first `## ` heading must be `{UNRELEASED}`")
        versions: list[Version] = []
        for heading in headings[1:]:
            match = _RELEASED.fullmatch(heading)
            if match is None:
                raise ReleaseError(f"heading {heading!r} is not `## X.Y.Z (YYYY-MM-DD)`")
            version = parse_version(match.group(1))
            if versions and version >= versions[-1]:
                raise ReleaseError(f"{heading!r} is not older than the section above it")
            versions.append(version)
        return versions


def check(package: Package) -> None:
    """Raise `ReleaseError` if the package's version and changelog disagree."""
    released = Changelog.parse(package.changelog.read_text()).released()
    version = package.version()
    if released and released[0] != version:
        raise ReleaseError(
            f"__version__ is {show(version)} but the newest release in CHANGELOG.md "
            f"is {show(released[0])}"
        )
    if not released and version != INITIAL_VERSION:
        raise ReleaseError(
            f"__version__ is {show(version)} but CHANGELOG.md has no release; "
            f"a package never released is at {show(INITIAL_VERSION)}"
        )


def prepare(root: Path, name: str, new_text: str, today: str) -> list[Path]:
    """Bump, move the changelog's Unreleased section, build; the built artifacts."""
    known = packages(root)
    if name not in known:
        raise ReleaseError(f"unknown package {name!r}; one of: {', '.join(known)}")
    package = known[name]
    new = parse_version(new_text)
    changelog = Changelog.parse(package.changelog.read_text())
    if not changelog.sections or changelog.sections[0][0].rstrip() != UNRELEASED:
        raise ReleaseError(f"{package.changelog}: no `{UNRELEASED}` section on top to release")
    check(package)
    released = changelog.released()
    if released and new <= released[0]:
        raise ReleaseError(
            f"{name} is at {show(released[0])}: the new version must be greater, not {new_text}"
        )
    if not released and new < INITIAL_VERSION:
        raise ReleaseError(
            f"{name} was never released: its first version must be "
            f"{show(INITIAL_VERSION)} or greater, not {new_text}"
        )
    notes = changelog.sections[0][1]
    if not notes.strip():
        raise ReleaseError(f"{package.changelog}: the `{UNRELEASED}` section is empty")

    fresh = Changelog(
        changelog.head,
        [(UNRELEASED, "\n\n"), (f"## {new_text} ({today})", notes), *changelog.sections[1:]],
    )
    before = {path: path.read_bytes() for path in (package.changelog, package.about)}
    package.changelog.write_text(fresh.render())
    about = package.about.read_text()
    package.about.write_text(_ABOUT_VERSION.sub(f'__version__ = "{new_text}"', about, count=1))
    try:
        return build(root, package, new_text)
    except BaseException:  # no half release: the package is left as it was, to try again
        for path, content in before.items():
            path.write_bytes(content)
        raise


def build(root: Path, package: Package, version: str) -> list[Path]:
    """Build the package's wheel and sdist into `dist/<package>/`; their paths."""
    out = root / "dist" / package.name
    module = package.name.replace("-", "_")
    artifacts = [out / f"{module}-{version}-py3-none-any.whl", out / f"{module}-{version}.tar.gz"]
    for stale in artifacts:
        stale.unlink(missing_ok=True)
    done = subprocess.run(
        [_uv(), "build", "--wheel", "--sdist", "--quiet", "--out-dir", out, package.path],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ReleaseError(f"building {package.name} failed:\n{done.stderr}")
    missing = [path.name for path in artifacts if not path.is_file()]
    if missing:
        raise ReleaseError(f"the build did not produce {', '.join(missing)}")
    return artifacts


def _uv() -> str:
    try:
        from uv import find_uv_bin  # the release environment's uv
    except ImportError:
        found = shutil.which("uv")
        if found is None:
            raise ReleaseError("uv is needed to build; run `hatch run release:prepare`") from None
        return found
    return find_uv_bin()


def main(argv: list[str] | None = None) -> int:
    """The command line; 0 on success, 1 on a refusal (its reason on stderr)."""
    parser = argparse.ArgumentParser(description="Release one package; check every one.")
    commands = parser.add_subparsers(dest="command", required=True)
    release = commands.add_parser("prepare", help="release one package")
    release.add_argument("package", help="a distribution under packages/, e.g. aiki-task")
    release.add_argument("version", help="the new version, MAJOR.MINOR.PATCH")
    commands.add_parser("check", help="every package's version agrees with its CHANGELOG")
    args = parser.parse_args(argv)

    if args.command == "check":
        problems = []
        for package in packages(ROOT).values():
            try:
                check(package)
            except ReleaseError as exc:
                problems.append(f"{package.name}: {exc}")
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0

    today = datetime.now(UTC).date().isoformat()
    try:
        artifacts = prepare(ROOT, args.package, args.version, today)
    except ReleaseError as exc:
        print(f"release refused: {exc}", file=sys.stderr)
        return 1
    tag = f"{args.package}-v{args.version}"
    package = packages(ROOT)[args.package]
    print(f"{args.package} {args.version} ({today})")
    for path in (package.about, package.changelog):
        print(f"  changed {path.relative_to(ROOT)}")
    for path in artifacts:
        print(f"  built   {path.relative_to(ROOT)}")
    print(f"tag: {tag}")
    print(f"commit the two changed files, then: git tag {tag} && git push origin {tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
