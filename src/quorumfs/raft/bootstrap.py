"""The first entries of a new group's log: its initial membership.

The founding voters are written into the log itself, as committed
CONF_CHANGE entries at indexes 1..n of term 1 (as etcd's ``Bootstrap``), not
only into a snapshot. A member added later then learns the whole membership
history by replaying the log from index 1, exactly as every other member did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .messages import ConfChange, ConfChangeType, Entry, EntryType, HardState

__all__ = ["bootstrap_log"]


def bootstrap_log(
    voters: Iterable[int], contexts: Mapping[int, bytes] | None = None
) -> tuple[list[Entry], HardState]:
    """Entries and hard state to persist before starting each founding member.

    ``contexts`` gives each voter's ``ConfChange.context`` (the master keeps
    addresses there); every founding member must be given the same.
    """
    ids = sorted(set(voters))
    if not ids or any(v <= 0 for v in ids):
        raise ValueError("a group needs at least one voter, each with a positive id")
    contexts = contexts or {}
    entries = [
        Entry(
            index,
            1,
            EntryType.CONF_CHANGE,
            ConfChange(ConfChangeType.ADD_VOTER, node, contexts.get(node, b"")).encode(),
        )
        for index, node in enumerate(ids, start=1)
    ]
    return entries, HardState(term=1, commit=len(entries))
