"""`python -m aiki_cli`: the `aiki` command."""

from __future__ import annotations

from aiki_cli._app import main

if __name__ == "__main__":
    main()
