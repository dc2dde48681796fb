"""The bounded chaos run, on PostgreSQL (two replicas, one crash) and on SQLite.

`chaos_driver.py` says what the run does and `chaos_checks.py` how each invariant
is decided; README.md in this folder explains the figures. Each database's run is
bounded (`Plan.budget`); both together take under 3 minutes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from chaos_driver import Plan, run_scenario

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
async def test_the_engine_keeps_its_promises_under_chaos(database: str, tmp_path: Path) -> None:
    report = await run_scenario(Plan.ci(database), tmp_path / database)
    print(report.render())  # noqa: T201 - the figures, shown with -s or on failure
    assert not report.failures, report.render()
