"""`aiki`: see and steer an Aiki server's runs, schedules and workers from a shell.

An application, not a library: its interface is the `aiki` command (`aiki --help`),
and this module exports nothing but its version.
"""

from __future__ import annotations

from aiki_cli.__about__ import __version__

__all__ = ("__version__",)
