"""`python -m aiki_server`: the same as the `aiki-server` console script."""

from __future__ import annotations

from aiki_server._cli import main

if __name__ == "__main__":
    main()
