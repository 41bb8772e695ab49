"""RaftTransport end to end over loopback TCP: delivery, backpressure, reconnection, refusals.

Each test drives its own event loop with ``asyncio.run`` under a hard deadline.
Nothing waits by sleeping: tests wait for an ``asyncio.Event`` (a message
delivered, a callback called, a log line emitted, a socket closed), always
under ``asyncio.wait_for``. The "raw" tests play a peer by hand with the
protocol module, so they can complete a genuine handshake and then break the
rules frame by frame.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest
import uvloop

from quorumfs.raft.messages import (
    ConfState,
    Entry,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from quorumfs.runtime.transport import ListenError, RaftTransport
from quorumfs.runtime.transport.protocol import DialerHandshake, FrameSealer

SECRET = b"the cluster secret: 32 bytes...."
LOOPBACK = ("127.0.0.1", 0)
DEADLINE = 5.0
"""Seconds any single wait may take before the test fails."""


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 15))


async def until(condition: Callable[[], bool], event: asyncio.Event) -> None:
    """Wait, under DEADLINE, until ``condition()`` holds; ``event`` is set on every change."""

    async def wait() -> None:
        while not condition():
            event.clear()
            await event.wait()

    await asyncio.wait_for(wait(), DEADLINE)


async def poll(condition: Callable[[], bool]) -> None:
    """Wait, under DEADLINE, until ``condition()`` holds, checking every 10 ms (for state
    that has no event to wait on)."""

    async def wait() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), DEADLINE)


class Inbox:
    """An ``on_message`` callback that records what it was given."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.changed = asyncio.Event()

    def __call__(self, message: Message) -> None:
        self.messages.append(message)
        self.changed.set()

    async def wait_for(self, count: int) -> list[Message]:
        await until(lambda: len(self.messages) >= count, self.changed)
        return self.messages


class Unreachable:
    """An ``on_unreachable`` callback that records the peers it was told about."""

    def __init__(self) -> None:
        self.peers: list[int] = []
        self.changed = asyncio.Event()

    def __call__(self, peer: int) -> None:
        self.peers.append(peer)
        self.changed.set()

    async def wait_for(self, peer: int) -> None:
        await until(lambda: peer in self.peers, self.changed)


class LogWatch(logging.Handler):
    """Records the transport's log lines and lets a test wait for one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.changed.set()

    def matching(self, text: str, level: int = logging.WARNING) -> list[str]:
        return [
            r.getMessage() for r in self.records if r.levelno == level and text in r.getMessage()
        ]

    async def wait_for(self, text: str, level: int = logging.WARNING) -> str:
        await until(lambda: bool(self.matching(text, level)), self.changed)
        return self.matching(text, level)[0]


@contextmanager
def watch_log() -> Iterator[LogWatch]:
    logger = logging.getLogger("quorumfs.transport")
    handler = LogWatch()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def make(node_id: int, inbox: Inbox, **kw: Any) -> RaftTransport:
    kw.setdefault("backoff", (0.01, 0.05))
    kw.setdefault("listen", LOOPBACK)
    return RaftTransport(
        node_id, kw.pop("listen"), kw.pop("secret", SECRET), on_message=inbox, **kw
    )


def heartbeat(frm: int, to: int, round_: int) -> Message:
    return Message(type=MessageType.HEARTBEAT, frm=frm, to=to, term=3, index=round_, commit=7)


def append(frm: int, to: int, first: int, count: int = 100, size: int = 100) -> Message:
    entries = tuple(Entry(i, 3, data=bytes([i % 256]) * size) for i in range(first, first + count))
    return Message(
        type=MessageType.APP,
        frm=frm,
        to=to,
        term=3,
        log_term=3,
        index=first - 1,
        entries=entries,
        commit=first - 1,
    )


def snapshot(frm: int, to: int) -> Message:
    meta = SnapshotMeta(index=500, term=2, conf_state=ConfState(voters=frozenset({1, 2, 3})))
    return Message(
        type=MessageType.SNAP,
        frm=frm,
        to=to,
        term=3,
        snapshot=Snapshot(meta=meta, data=b"\x00image\xff" * 1000),
        snap_done=True,
    )


async def closing(*transports: RaftTransport) -> None:
    for t in transports:
        await t.close()


# -- delivery ------------------------------------------------------------------------------


def test_two_transports_exchange_exactly_what_was_sent() -> None:
    async def main() -> None:
        inbox1, inbox2 = Inbox(), Inbox()
        t1, t2 = make(1, inbox1), make(2, inbox2)
        await t1.start()
        await t2.start()
        try:
            t1.set_peer(2, t2.listen_address)
            t2.set_peer(1, t1.listen_address)
            to2 = [heartbeat(1, 2, 1), append(1, 2, first=1), snapshot(1, 2), heartbeat(1, 2, 2)]
            to1 = [
                Message(type=MessageType.APP_RESP, frm=2, to=1, term=3, index=i) for i in range(50)
            ]
            t1.send(to2)
            t2.send(to1)
            assert await inbox2.wait_for(len(to2)) == to2
            assert await inbox1.wait_for(len(to1)) == to1
            state = t1.peer_state()[2]
            assert (state.connected, state.sent, state.dropped, state.queued) == (True, 4, 0, 0)
            assert t2.peer_state()[1].received == 4
        finally:
            await closing(t1, t2)
        assert len(inbox2.messages) == len(to2), "nothing duplicated"

    run(main())


def test_three_transports_all_to_all_in_order() -> None:
    async def main() -> None:
        inboxes = {i: Inbox() for i in (1, 2, 3)}
        nodes = {i: make(i, inboxes[i]) for i in (1, 2, 3)}
        for t in nodes.values():
            await t.start()
        try:
            for i, t in nodes.items():
                for j, other in nodes.items():
                    if i != j:
                        t.set_peer(j, other.listen_address)
            sent: dict[tuple[int, int], list[Message]] = {}
            for i, t in nodes.items():
                for j in nodes:
                    if i != j:
                        batch = [heartbeat(i, j, r) for r in range(30)] + [append(i, j, 1, 10)]
                        sent[i, j] = batch
                        t.send(batch)
            for j, inbox in inboxes.items():
                await inbox.wait_for(62)
                for i in nodes:
                    if i != j:
                        assert [m for m in inbox.messages if m.frm == i] == sent[i, j]
                assert len(inbox.messages) == 62
        finally:
            await closing(*nodes.values())

    run(main())


def test_message_to_unknown_peer_is_dropped_and_others_flow() -> None:
    async def main() -> None:
        inbox2 = Inbox()
        t1, t2 = make(1, Inbox()), make(2, inbox2)
        await t2.start()
        t2.set_peer(1, ("127.0.0.1", 9))
        t1.set_peer(2, t2.listen_address)
        t1.send([heartbeat(1, 9, 1), heartbeat(1, 2, 2)])  # queued before start: fine
        await t1.start()
        try:
            assert await inbox2.wait_for(1) == [heartbeat(1, 2, 2)]
            assert set(t1.peer_state()) == {2}
        finally:
            await closing(t1, t2)

    run(main())


# -- a peer that is down, then up ------------------------------------------------------------


def reserve_port() -> socket.socket:
    """A loopback port that refuses connections (bound, not listening) until closed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(LOOPBACK)
    return sock


def test_down_peer_bounded_queue_drops_oldest_then_delivers() -> None:
    async def main() -> None:
        unreachable = Unreachable()
        inbox2 = Inbox()
        t1 = make(1, Inbox(), queue_limit=5, on_unreachable=unreachable)
        placeholder = reserve_port()
        address2 = placeholder.getsockname()
        await t1.start()
        t1.set_peer(2, address2)
        try:
            began = time.monotonic()
            t1.send(heartbeat(1, 2, r) for r in range(1, 10_001))
            assert time.monotonic() - began < 1.0, "send() must not wait for the peer"
            state = t1.peer_state()[2]
            assert (state.queued, state.dropped, state.sent) == (5, 9_995, 0)

            await unreachable.wait_for(2)
            assert not t1.peer_state()[2].connected
            assert "cannot connect to" in (t1.peer_state()[2].last_error or "")

            placeholder.close()
            t2 = make(2, inbox2, listen=address2)
            t2.set_peer(1, t1.listen_address)
            await t2.start()
            # Drop-oldest: the five newest survived the outage, in order.
            assert [m.index for m in await inbox2.wait_for(5)] == [
                9_996,
                9_997,
                9_998,
                9_999,
                10_000,
            ]
            t1.send([heartbeat(1, 2, 20_000)])
            assert (await inbox2.wait_for(6))[-1].index == 20_000
            state = t1.peer_state()[2]
            assert (state.connected, state.sent, state.dropped) == (True, 6, 9_995)
            await t2.close()
        finally:
            placeholder.close()
            await t1.close()

    run(main())


def test_reconnects_after_receiver_restarts_on_same_port() -> None:
    async def main() -> None:
        unreachable = Unreachable()
        first, second = Inbox(), Inbox()
        t1 = make(1, Inbox(), on_unreachable=unreachable)
        t2 = make(2, first)
        await t1.start()
        await t2.start()
        address2 = t2.listen_address
        t1.set_peer(2, address2)
        t2.set_peer(1, t1.listen_address)
        t1.send([heartbeat(1, 2, 1)])
        await first.wait_for(1)
        connected_since = t1.peer_state()[2].since

        await t2.close()
        await unreachable.wait_for(2)
        assert not t1.peer_state()[2].connected

        t2 = make(2, second, listen=address2)
        t2.set_peer(1, t1.listen_address)
        await t2.start()
        try:
            t1.send([heartbeat(1, 2, 2)])
            assert await second.wait_for(1) == [heartbeat(1, 2, 2)]
            state = t1.peer_state()[2]
            assert state.connected and state.since > connected_since
        finally:
            await closing(t1, t2)
        assert first.messages == [heartbeat(1, 2, 1)]

    run(main())


def test_connection_closed_before_its_loss_is_noticed_is_redialed_on_uvloop() -> None:
    """Found by the nemesis: a follower SIGKILLed under load resets the leader's connection;
    uvloop closes the socket at once but tells the reader one callback later. A send in
    between woke the peer's task, whose write raised (uvloop refuses writes to a closed
    socket) and ended the task: the leader never dialed the restarted follower again."""

    async def main() -> None:
        inbox = Inbox()
        t1, t2 = make(1, Inbox()), make(2, inbox)
        for t in (t1, t2):
            await t.start()
        t1.set_peer(2, t2.listen_address)
        t2.set_peer(1, t1.listen_address)
        try:
            t1.send([heartbeat(1, 2, 1)])
            await inbox.wait_for(1)
            # `sent` is counted after the drain: at 1, the task waits for more to send.
            await poll(lambda: t1.peer_state()[2].sent == 1)
            task = t1._peers[2].task
            assert task is not None
            # The outbound socket is the peer task's own; reach it through its frame.
            writer = task.get_coro().cr_frame.f_locals["writer"]  # type: ignore[union-attr]
            before = t1.peer_state()[2].since
            writer.transport.abort()  # closed now; the reader hears of it a callback later
            t1.send([heartbeat(1, 2, 2)])  # wakes the task before that callback

            await poll(lambda: t1.peer_state()[2].connected and t1.peer_state()[2].since > before)
            assert not task.done()
            t1.send([heartbeat(1, 2, 3)])
            assert (await inbox.wait_for(2))[-1] == heartbeat(1, 2, 3)
        finally:
            await closing(t1, t2)

    uvloop.run(asyncio.wait_for(main(), 15))


def test_address_change_reconnects_to_the_new_address() -> None:
    async def main() -> None:
        old, new = Inbox(), Inbox()
        t1, t2a, t2b = make(1, Inbox()), make(2, old), make(2, new)
        for t in (t1, t2a, t2b):
            await t.start()
            if t is not t1:
                t.set_peer(1, t1.listen_address)
        try:
            t1.set_peer(2, t2a.listen_address)
            t1.send([heartbeat(1, 2, 1)])
            await old.wait_for(1)
            t1.set_peer(2, t2b.listen_address)
            t1.send([heartbeat(1, 2, 2)])
            assert await new.wait_for(1) == [heartbeat(1, 2, 2)]
            assert old.messages == [heartbeat(1, 2, 1)]
        finally:
            await closing(t1, t2a, t2b)

    run(main())


def test_port_taken_raises_listen_error() -> None:
    async def main() -> None:
        t1 = make(1, Inbox())
        await t1.start()
        try:
            t2 = make(2, Inbox(), listen=t1.listen_address)
            with pytest.raises(ListenError, match=r"cannot listen on 127\.0\.0\.1:") as caught:
                await t2.start()
            assert isinstance(caught.value, OSError) and caught.value.errno is not None
        finally:
            await t1.close()
            await t1.close()  # idempotent
        t1.send([heartbeat(1, 2, 1)])  # after close: dropped, never raises

    run(main())


def test_construction_refuses_short_secret() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        RaftTransport(1, LOOPBACK, b"too short", on_message=lambda m: None)


def test_oversized_outgoing_message_is_dropped_and_counted() -> None:
    async def main() -> None:
        inbox2 = Inbox()
        t1 = make(1, Inbox(), max_frame_size=1000)
        t2 = make(2, inbox2)
        await t1.start()
        await t2.start()
        t1.set_peer(2, t2.listen_address)
        t2.set_peer(1, t1.listen_address)
        try:
            t1.send([append(1, 2, 1, count=20, size=100), heartbeat(1, 2, 1)])
            assert await inbox2.wait_for(1) == [heartbeat(1, 2, 1)]
            state = t1.peer_state()[2]
            assert (state.sent, state.dropped) == (1, 1)
        finally:
            await closing(t1, t2)

    run(main())


def test_an_unexpected_error_costs_a_reconnection_not_the_peer() -> None:
    """A bug in the peer's task (here: a message msgspec cannot encode) is logged with its
    traceback; the task reconnects and later messages flow."""

    async def main() -> None:
        inbox2 = Inbox()
        t1, t2 = make(1, Inbox()), make(2, inbox2)
        await t1.start()
        await t2.start()
        t1.set_peer(2, t2.listen_address)
        t2.set_peer(1, t1.listen_address)
        unencodable = msgspec.structs.replace(heartbeat(1, 2, 1), context=object())
        with watch_log() as log:
            try:
                t1.send([heartbeat(1, 2, 1)])
                await inbox2.wait_for(1)
                t1.send([unencodable])
                await log.wait_for("connection task failed", logging.ERROR)
                t1.send([heartbeat(1, 2, 2)])
                assert (await inbox2.wait_for(2))[-1] == heartbeat(1, 2, 2)
            finally:
                await closing(t1, t2)

    run(main())


# -- refusals --------------------------------------------------------------------------------


def test_wrong_secret_is_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        inbox2 = Inbox()
        t1 = make(1, Inbox(), secret=b"a different secret, also long...")
        t2 = make(2, inbox2)
        await t1.start()
        await t2.start()
        t1.set_peer(2, t2.listen_address)
        t2.set_peer(1, t1.listen_address)
        try:
            with watch_log() as log:
                t1.send([heartbeat(1, 2, 1)])
                line = await log.wait_for("wrong cluster secret")
                await until(lambda: t1.peer_state()[2].last_error is not None, log.changed)
            assert line.startswith("refused connection from 127.0.0.1:")
            assert "claims node 1 but failed authentication" in line
            assert "closed the connection during the handshake" in str(
                t1.peer_state()[2].last_error
            )
            assert not t1.peer_state()[2].connected
            assert inbox2.messages == []
        finally:
            await closing(t1, t2)

    run(main())
    assert any(
        r.name == "quorumfs.transport"
        and r.levelno == logging.WARNING
        and "wrong cluster secret" in r.getMessage()
        for r in caplog.records
    )


def test_unknown_node_id_is_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        inbox2 = Inbox()
        t7, t2 = make(7, Inbox()), make(2, inbox2)
        await t7.start()
        await t2.start()
        t7.set_peer(2, t2.listen_address)  # but node 2 does not know node 7
        try:
            with watch_log() as log:
                t7.send([heartbeat(7, 2, 1)])
                line = await log.wait_for("which is not a member")
            assert line.startswith("refused connection from 127.0.0.1:")
            assert "claims node 7, which is not a member" in line
            assert inbox2.messages == []
        finally:
            await closing(t7, t2)

    run(main())
    assert any("claims node 7, which is not a member" in r.getMessage() for r in caplog.records)


def test_removed_peer_is_disconnected_and_refused() -> None:
    async def main() -> None:
        unreachable = Unreachable()
        inbox2 = Inbox()
        t1, t2 = make(1, Inbox(), on_unreachable=unreachable), make(2, inbox2)
        await t1.start()
        await t2.start()
        t1.set_peer(2, t2.listen_address)
        t2.set_peer(1, t1.listen_address)
        try:
            t1.send([heartbeat(1, 2, 1)])
            await inbox2.wait_for(1)
            with watch_log() as log:
                t2.remove_peer(1)
                await unreachable.wait_for(2)
                await log.wait_for("claims node 1, which is not a member")
            assert set(t2.peer_state()) == set()
        finally:
            await closing(t1, t2)

    run(main())


# -- a hand-played peer: genuine handshake, then broken frames --------------------------------


async def raw_dial(
    address: tuple[str, int], node_id: int = 1, peer_id: int = 2, secret: bytes = SECRET
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, FrameSealer]:
    reader, writer = await asyncio.open_connection(*address)
    handshake = DialerHandshake(secret, node_id, peer_id)
    writer.write(handshake.hello())
    writer.write(handshake.receive_challenge(await reader.readexactly(32)))
    return reader, writer, handshake.receive_accept(await reader.readexactly(32))


def encode(message: Message) -> bytes:
    return msgspec.msgpack.encode(message)


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


Frames = Callable[[FrameSealer], list[bytes]]
GOOD = encode(heartbeat(1, 2, 1))

BROKEN_FRAMES: list[tuple[str, Frames, int, str]] = [
    # (name, frames to send after the handshake, messages delivered, reason logged)
    ("forged tag", lambda s: [flip(s.seal(GOOD), -1)], 0, "frame 0: bad MAC (forged or tampered"),
    ("tampered payload", lambda s: [flip(s.seal(GOOD), 20)], 0, "frame 0: bad MAC"),
    ("replayed frame", lambda s: [f := s.seal(GOOD), f], 1, "replayed frame: sequence number 0"),
    ("reordered frames", lambda s: [(s.seal(GOOD), s.seal(GOOD))[1]], 0, "out of order"),
    (
        "frm of another node",
        lambda s: [s.seal(GOOD), s.seal(encode(heartbeat(3, 2, 2)))],
        1,
        "frame 1: message claims to be from node 3, but the connection is authenticated as node 1",
    ),
    (
        "to another node",
        lambda s: [s.seal(encode(heartbeat(1, 3, 2)))],
        0,
        "message addressed to node 3, but this is node 2",
    ),
    ("undecodable payload", lambda s: [s.seal(b"\xc1garbage")], 0, "undecodable message"),
    (
        "oversized frame",
        lambda s: [s.seal(GOOD), struct.pack("!I", 2**31) + b"\x00" * 64],
        1,
        "frame 1: payload of 2147483624 bytes exceeds the 4096-byte frame limit",
    ),
    (
        "frame just over the limit",
        lambda s: [s.seal(encode(append(1, 2, 1, count=50, size=100)))],
        0,
        "exceeds the 4096-byte frame limit",
    ),
]


@pytest.mark.parametrize(
    ("frames", "delivered", "reason"),
    [case[1:] for case in BROKEN_FRAMES],
    ids=[case[0] for case in BROKEN_FRAMES],
)
def test_broken_frame_closes_the_connection(
    frames: Frames, delivered: int, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        inbox2 = Inbox()
        t2 = make(2, inbox2, max_frame_size=4096)
        await t2.start()
        t2.set_peer(1, ("127.0.0.1", 9))
        try:
            with watch_log() as log:
                reader, writer, sealer = await raw_dial(t2.listen_address)
                for frame in frames(sealer):
                    writer.write(frame)
                line = await log.wait_for(reason)
                # The transport closed the connection: we read end-of-file.
                assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
                writer.close()
            local = writer.get_extra_info("sockname")
            assert line.startswith(f"closed connection from node 1 at {local[0]}:{local[1]}: ")
            assert inbox2.messages == [heartbeat(1, 2, 1)] * delivered
        finally:
            await t2.close()

    run(main())
    assert any(
        r.name == "quorumfs.transport" and r.levelno == logging.WARNING and reason in r.getMessage()
        for r in caplog.records
    )


def test_silent_connection_is_closed_after_the_handshake_timeout() -> None:
    async def main() -> None:
        t2 = make(2, Inbox(), handshake_timeout=0.2)
        await t2.start()
        try:
            with watch_log() as log:
                reader, writer = await asyncio.open_connection(*t2.listen_address)
                assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
                line = await log.wait_for("handshake not completed within 0.2 s")
                writer.close()
            local = writer.get_extra_info("sockname")
            assert line == (
                f"refused connection from {local[0]}:{local[1]}: "
                "handshake not completed within 0.2 s"
            )
        finally:
            await t2.close()

    run(main())


def test_dialer_with_stale_address_is_refused() -> None:
    async def main() -> None:
        t2 = make(2, Inbox())
        await t2.start()
        t2.set_peer(1, ("127.0.0.1", 9))
        try:
            with watch_log() as log:
                reader, writer = await asyncio.open_connection(*t2.listen_address)
                writer.write(DialerHandshake(SECRET, 1, 5).hello())
                assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
                await log.wait_for("dialed node 5, but this is node 2")
                writer.close()
        finally:
            await t2.close()

    run(main())
