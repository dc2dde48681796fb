"""Types flow end to end: mypy --strict rejects wrong payloads and wrong uses of results.

The well-typed side is `examples/`, which `hatch run types:check` checks. Here mypy
runs on `typing_cases/misuse.py`, whose every error line is marked `# error`, and
must report an error on exactly those lines.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mypy import api

CASES = Path(__file__).parent / "typing_cases"
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_rejects_exactly_the_marked_misuses() -> None:
    case = CASES / "misuse.py"
    expected = {
        number
        for number, line in enumerate(case.read_text().splitlines(), start=1)
        if "# error:" in line
    }
    stdout, stderr, _status = api.run(
        [
            "--strict",
            "--no-incremental",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            str(case),
        ]
    )
    reported = {
        int(match.group(1))
        for match in re.finditer(rf"{re.escape(case.name)}:(\d+): error", stdout)
    }
    assert expected, "the case file marks no error"
    assert reported == expected, stdout + stderr
