"""The nemesis's sequential model: a directory of small files with put, read,
create-exclusive and rename.

``quorumfs.verify.linearizability.KVModel`` checks each key on its own. A rename touches
two keys, so here a partition is one *group* of keys (the files a round uses in one
epoch, ``<root>/e<epoch>-k<n>``, which renames stay within) and the state is the whole
group: a sorted tuple of ``(key, value)`` for the files present. Put, read and
create-exclusive behave as in ``KVModel``; ``Rename(key, dst)`` moves ``key``'s value to
``dst`` (replacing it, as POSIX rename does) and leaves ``key`` absent, or, when ``key``
is absent, changes nothing and answers ``RenameOk(False)`` (the client's ``NotFound``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from quorumfs.verify.linearizability import (
    KVInput,
    KVModel,
    KVOutput,
    Model,
    Operation,
)


@dataclass(frozen=True, slots=True)
class Rename:
    """Move ``key`` to ``dst`` (both in one group, never equal)."""

    key: str
    dst: str


@dataclass(frozen=True, slots=True)
class RenameOk:
    """The reply to a ``Rename``: whether ``key`` existed and was moved."""

    moved: bool


DirInput = KVInput | Rename
DirOutput = KVOutput | RenameOk
DirState = tuple[tuple[str, str], ...]
"""The group's files that exist, with their values, sorted by key."""


def group_of(key: str) -> str:
    """The group a key belongs to: its name without the ``-k<n>`` suffix."""
    return key.rsplit("-k", 1)[0]


class DirModel(Model[DirState, DirInput, DirOutput]):
    """Files of one group as a single object; see the module docstring."""

    _kv = KVModel()

    def init(self) -> DirState:
        return ()

    def step(self, state: DirState, input: DirInput, output: DirOutput | None) -> list[DirState]:
        files = dict(state)
        if isinstance(input, Rename):
            if output is not None and not isinstance(output, RenameOk):
                raise TypeError(f"Rename answered with {output!r}")
            moved = input.key in files
            if output is not None and output.moved != moved:
                return []
            if moved:
                files[input.dst] = files.pop(input.key)
            return [tuple(sorted(files.items()))]
        # One file's operation: the key-value model on that file's value.
        after = self._kv.step(files.get(input.key), input, output)  # type: ignore[arg-type]
        states = []
        for value in after:
            changed = dict(files)
            if value is None:
                changed.pop(input.key, None)
            else:
                changed[input.key] = value
            states.append(tuple(sorted(changed.items())))
        return states

    def partition(
        self, history: Sequence[Operation[DirInput, DirOutput]]
    ) -> list[list[Operation[DirInput, DirOutput]]]:
        by_group: dict[str, list[Operation[DirInput, DirOutput]]] = {}
        for op in history:
            by_group.setdefault(group_of(op.input.key), []).append(op)
        return list(by_group.values())

    def describe(self, op: Operation[DirInput, DirOutput]) -> str:
        if isinstance(op.input, Rename):
            shown = "? (unknown)" if op.output is None else repr(op.output)
            return f"mv({op.input.key!r} -> {op.input.dst!r}) -> {shown}"
        return self._kv.describe(op)  # type: ignore[arg-type]
