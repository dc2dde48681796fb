"""Run the chaos test by hand: `hatch run chaos:full` (the README's figures) or `chaos:ci`.

    PYTHONPATH=tests python tests/chaos/run_chaos.py [--full] [--db postgresql|sqlite|both]
        [--seed N] [--runs N] [--seconds S] [--dir DIR]

Prints each database's figures and the invariants it broke, with their evidence;
exits 1 if any was broken. The files (ledger, timeline, client logs, process logs)
stay in `--dir` (default: a new temporary directory) for a second look.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import anyio
from chaos_driver import Plan, run_scenario


async def _main(args: argparse.Namespace) -> int:
    databases = ["postgresql", "sqlite"] if args.db == "both" else [args.db]
    root: Path = args.dir or Path(tempfile.mkdtemp(prefix="aiki-chaos-"))
    broken = 0
    for database in databases:
        plan = (Plan.full if args.full else Plan.ci)(database, seed=args.seed)
        if args.runs is not None:
            plan = replace(plan, runs=args.runs)
        if args.seconds is not None:
            plan = replace(plan, chaos_seconds=args.seconds)
        report = await run_scenario(plan, root / database)
        print(report.render(), flush=True)  # noqa: T201 - the figures are the output
        broken += len(report.failures)
    return 1 if broken else 0


def main() -> None:
    """Parse the command line and run the chaos on each database asked for."""
    parser = argparse.ArgumentParser(description="The chaos run of the Aiki engine.")
    parser.add_argument("--full", action="store_true", help="the full run (else the CI one)")
    parser.add_argument("--db", choices=["postgresql", "sqlite", "both"], default="both")
    parser.add_argument("--seed", type=int, default=1, help="seeds every random choice")
    parser.add_argument("--runs", type=int, help="how many runs (default: the plan's)")
    parser.add_argument("--seconds", type=float, help="seconds of chaos (default: the plan's)")
    parser.add_argument("--dir", type=Path, help="where the run's files go")
    sys.exit(anyio.run(_main, parser.parse_args()))


if __name__ == "__main__":
    main()
