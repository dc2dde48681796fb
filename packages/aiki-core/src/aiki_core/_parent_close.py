"""What the server does with a child run when its parent ends."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ParentClosePolicy"]


class ParentClosePolicy(StrEnum):
    """Chosen per child start; applied when the parent ends in any way.

    Completed, failed, cancelled or timed out: the server applies the policy of each
    live child in the transaction that ends the parent.
    """

    TERMINATE = "terminate"
    """The child ends `cancelled` at once, its own live children by their policies."""
    REQUEST_CANCEL = "request_cancel"
    """The child is cancelled as a client's cancel would cancel it."""
    ABANDON = "abandon"
    """The child lives on, without its parent."""
