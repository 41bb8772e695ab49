"""The replicated key-value state machine the simulator runs on top of the core.

Commands carry a client session ``(client, seq)``: a command whose session was
already applied is skipped, so a proposal the network duplicated (or a client
retried) takes effect once (Raft thesis §6.3). Every replica must apply the
same commands in the same order and reach the same state; ``snapshot`` and
``restore`` carry the whole state, sessions included.
"""

from __future__ import annotations

import msgspec


class Command(msgspec.Struct, frozen=True, array_like=True):
    client: int
    seq: int
    op: str  # "put" or "cas"
    key: str
    value: str
    expected: str | None = None


class Result(msgspec.Struct, frozen=True):
    client: int
    seq: int
    succeeded: bool


class _Image(msgspec.Struct, array_like=True):
    data: dict[str, str]
    applied_ops: list[tuple[int, int]]


_encoder = msgspec.msgpack.Encoder()
_command_decoder = msgspec.msgpack.Decoder(Command)
_image_decoder = msgspec.msgpack.Decoder(_Image)


def encode(command: Command) -> bytes:
    return _encoder.encode(command)


class KVStateMachine:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        # Every session applied so far: the dedup table, and the record that the
        # "no acknowledged write lost" check reads at the end of a run.
        self.applied_ops: set[tuple[int, int]] = set()

    def apply(self, payload: bytes) -> Result | None:
        """Apply one committed command; None when it was a duplicate."""
        cmd = _command_decoder.decode(payload)
        session = (cmd.client, cmd.seq)
        if session in self.applied_ops:
            return None
        self.applied_ops.add(session)
        if cmd.op == "put":
            self.data[cmd.key] = cmd.value
            return Result(cmd.client, cmd.seq, True)
        if self.data.get(cmd.key) == cmd.expected:
            self.data[cmd.key] = cmd.value
            return Result(cmd.client, cmd.seq, True)
        return Result(cmd.client, cmd.seq, False)

    def snapshot(self) -> bytes:
        return _encoder.encode(_Image(dict(sorted(self.data.items())), sorted(self.applied_ops)))

    @classmethod
    def restore(cls, image: bytes) -> KVStateMachine:
        machine = cls()
        if image:
            decoded = _image_decoder.decode(image)
            machine.data = decoded.data
            machine.applied_ops = {(c, s) for c, s in decoded.applied_ops}
        return machine
