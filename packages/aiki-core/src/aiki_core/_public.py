"""Show each public class and function under the public module that re-exports it."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["show_public_path"]


def show_public_path(module: str, names: Iterable[str], namespace: Mapping[str, object]) -> None:
    """Set `__module__` of the exported classes and functions to the public `module`.

    Reprs, pickles and docs then name `aiki_core.wire.ClaimedRun`, not
    `aiki_core._api.ClaimedRun`. Constants and `NewType` ids keep theirs.
    """
    for name in names:
        value = namespace[name]
        if (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__.startswith(
            "aiki_core._"
        ):
            value.__module__ = module
