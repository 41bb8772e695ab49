"""Errors the core raises to its caller (local errors: the request cannot be taken now)."""

from __future__ import annotations

__all__ = ["DroppedError"]


class DroppedError(Exception):
    """A proposal, read, transfer or membership change was not accepted.

    Nothing was changed; the caller may retry, usually after a new leader is
    known. ``what`` names the request, ``reason`` says why in plain words.
    """

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} dropped: {reason}")
        self.what = what
        self.reason = reason
