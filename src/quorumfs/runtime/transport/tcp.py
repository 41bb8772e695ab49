"""``RaftTransport``: Raft messages between masters over authenticated TCP connections.

What it owns: the listening socket; for every peer, one outbound connection
with its bounded queue, its reconnect loop and its counters; and the inbound
connections peers open to us. What it leaves to others: what the messages
mean (the core), who the members are and where they listen (the driver calls
``set_peer``/``remove_peer`` as the configuration changes), and the bytes on
the wire (protocol.py documents the handshake, the frames and the threat
model).

Theory of operation
===================

Connections are one-way (see protocol.py): a node sends to peer P only over
the connection it dialed to P, and receives from P only over the connection
P dialed to it. Each peer has one task that connects, authenticates, then
drains the peer's queue: it takes everything queued, writes all the frames
at once and ``drain()``s once, so a burst costs one system call, not one per
message.

Delivery is at most once and in order per connection, with no promise across
reconnections. The core tolerates loss, duplication and reordering, so the
transport chooses never blocking the driver and bounded memory over delivery:

- ``send`` never awaits: it appends to the peer's queue and wakes its task.
  A full queue drops its OLDEST message (counted in ``dropped``). When a peer
  falls behind, the newest messages (current term, latest commit index,
  latest heartbeat round) are the ones worth delivering; the oldest are the
  likeliest to be obsolete, and a lost append is noticed through the
  follower's rejection, after which the leader probes.
- The queue survives reconnection: what accumulated while a peer was down
  (at most ``queue_limit`` messages, the newest ones) is delivered when it
  is back. The batch being written when a connection fails is lost and
  counted as dropped.
- ``on_unreachable(peer)`` is called when an established connection is lost
  or a write fails, and when a connection attempt fails while messages are
  waiting for that peer: the core then falls back to probing it.
- Reconnection uses exponential backoff from ``backoff[0]`` to ``backoff[1]``
  seconds with "equal jitter" (half the delay fixed, half random), reset by a
  successful handshake.
- A peer's task never ends before the peer is removed or the transport closed:
  any other error in it (a bug) is logged with its traceback and handled as a
  lost connection. A task that died would cut the peer off for good.

Inbound, each accepted connection is authenticated (bounded by
``handshake_timeout``), then every frame is checked and its message handed to
``on_message`` synchronously on the event loop. The first bad frame closes
the connection; the messages before it have been delivered, nothing after.

Bounds: ``connect_timeout``; ``handshake_timeout`` (both sides);
``write_timeout`` (a peer that stops reading is disconnected rather than
allowed to hold the batch forever); ``queue_limit`` messages per peer;
``max_frame_size`` bytes per message (a larger outgoing message is dropped
and logged; a larger incoming frame closes the connection); one
authenticated inbound connection per peer (a newer one replaces the older:
the peer restarted or lost its connection first); at most
``MAX_PENDING_HANDSHAKES`` inbound connections not yet authenticated.

Threading: call every method from the event loop's thread. Callbacks run on
the loop; an exception they raise is logged, never propagated.

Logging (logger ``quorumfs.transport``): WARNING for every refused inbound
connection or frame, naming the remote address and the reason; WARNING for
an outbound failure the first time its reason is seen (repeats go to DEBUG,
so a peer that is down logs once, not once per retry); INFO for connections
established and lost; ERROR, with the traceback, for an unexpected error in a
peer's task.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final, NoReturn, TypeVar

import msgspec

from quorumfs.raft.messages import Message

from .protocol import (
    ACCEPT_SIZE,
    AUTH_SIZE,
    CHALLENGE_SIZE,
    DEFAULT_MAX_FRAME_SIZE,
    FRAME_OVERHEAD,
    HELLO_SIZE,
    LENGTH_SIZE,
    DialerHandshake,
    FrameError,
    FrameOpener,
    FrameSealer,
    ListenerHandshake,
    ProtocolError,
    check_secret,
)

__all__ = [
    "MAX_PENDING_HANDSHAKES",
    "Address",
    "ListenError",
    "PeerConnectionState",
    "RaftTransport",
]

logger = logging.getLogger("quorumfs.transport")

Address = tuple[str, int]

MAX_PENDING_HANDSHAKES: Final = 64
"""Inbound connections allowed to be mid-handshake at once; more are closed at once."""

_T = TypeVar("_T")
_MAX_LENGTH: Final = 2**32 - 1
_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(Message)


class ListenError(OSError):
    """The transport could not listen on its address (most often: the port is taken)."""


@dataclass(frozen=True)
class PeerConnectionState:
    """A snapshot of one peer's outbound connection and counters, for status pages."""

    address: Address
    connected: bool
    """An authenticated outbound connection to the peer is up."""
    since: float
    """``time.monotonic()`` when ``connected`` last changed (or the peer was added)."""
    last_error: str | None
    """Why the latest connection attempt failed or the latest connection ended; ``None``
    until the first failure. Kept after reconnecting: with ``since`` it dates the outage."""
    queued: int
    """Messages waiting for the connection (at most ``queue_limit``)."""
    sent: int
    """Messages written and flushed to the socket (not proof of delivery)."""
    dropped: int
    """Messages discarded: queue overflow, too large to frame, or lost with a failed write."""
    received: int
    """Messages accepted from the peer's inbound connections."""


class _PeerLostError(Exception):
    """An outbound connection attempt failed or a connection ended; ``str`` is the reason."""


class _Peer:
    """The mutable state behind one peer: shared by ``RaftTransport`` and the peer's task."""

    def __init__(self, node_id: int, address: Address, queue_limit: int) -> None:
        self.node_id = node_id
        self.address = address
        self.queue: deque[Message] = deque(maxlen=queue_limit)
        # Invariant: len(queue) <= queue_limit (deque's maxlen drops the oldest on append).
        self.wake = asyncio.Event()
        # Set when the queue gains a message or the connection is found dead.
        self.task: asyncio.Task[None] | None = None
        # Invariant: only this task updates `connected`/`since`/`last_error` (a task that
        # was replaced after an address change may still be unwinding).
        self.connected = False
        self.since = time.monotonic()
        self.last_error: str | None = None
        self.sent = 0
        self.dropped = 0
        self.received = 0


class RaftTransport:
    """Carries ``Message`` values between masters; see the module docstring.

    ``set_peer`` may be called (and ``send`` too: messages queue) before
    ``start``; connections are made once the transport is started.
    """

    def __init__(
        self,
        node_id: int,
        listen: Address,
        secret: bytes,
        *,
        on_message: Callable[[Message], None],
        on_unreachable: Callable[[int], None] | None = None,
        queue_limit: int = 4096,
        connect_timeout: float = 1.0,
        backoff: tuple[float, float] = (0.05, 1.0),
        handshake_timeout: float = 5.0,
        write_timeout: float = 10.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        rng: random.Random | None = None,
    ) -> None:
        check_secret(secret)
        if node_id <= 0:
            raise ValueError(f"node_id must be positive, got {node_id}")
        if queue_limit < 1:
            raise ValueError(f"queue_limit must be at least 1, got {queue_limit}")
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("handshake_timeout", handshake_timeout),
            ("write_timeout", write_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError(f"backoff must be (min, max) with 0 < min <= max, got {backoff}")
        if not 0 < max_frame_size <= _MAX_LENGTH - FRAME_OVERHEAD:
            raise ValueError(f"max_frame_size out of range: {max_frame_size}")
        self.node_id = node_id
        self._listen = listen
        self._secret = bytes(secret)
        self._on_message = on_message
        self._on_unreachable = on_unreachable
        self._queue_limit = queue_limit
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._write_timeout = write_timeout
        self._backoff = backoff
        self._max_frame_size = max_frame_size
        self._rng = rng or random.Random()
        self._peers: dict[int, _Peer] = {}
        self._server: asyncio.Server | None = None
        self._bound: Address | None = None
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self._peer_tasks: set[asyncio.Task[None]] = set()
        # Every peer task not yet finished, including replaced and removed peers' tasks.
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        # Every inbound connection's handler task (asyncio.start_server made it) and socket.
        self._inbound: dict[int, asyncio.StreamWriter] = {}
        # Invariant: at most one authenticated inbound connection per peer.
        self._pending_handshakes = 0
        # Invariant: 0 <= _pending_handshakes <= MAX_PENDING_HANDSHAKES.

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Listen, and start connecting to the known peers.

        Raises ``ListenError`` (an ``OSError``, same errno) if the address cannot
        be bound, e.g. because another process holds the port.
        """
        if self._closing:
            raise RuntimeError("the transport is closed")
        if self._server is not None:
            raise RuntimeError("the transport is already started")
        host, port = self._listen
        try:
            server = await asyncio.start_server(self._accept, host, port)
        except OSError as error:
            reason = f"cannot listen on {_fmt(self._listen)}: {error.strerror or error}"
            if error.errno is None:
                raise ListenError(reason) from error
            raise ListenError(error.errno, reason) from error
        self._server = server
        bound = server.sockets[0].getsockname()
        self._bound = (str(bound[0]), int(bound[1]))
        logger.info("node %d listening on %s", self.node_id, _fmt(self._bound))
        for peer in self._peers.values():
            self._spawn(peer)

    async def close(self) -> None:
        """Stop listening, close every connection and stop every task. Idempotent."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in self._peer_tasks:
            task.cancel()
        await asyncio.gather(*self._peer_tasks, return_exceptions=True)
        # Inbound handlers are not cancelled: Python 3.11's start_server logs an error
        # ("Exception in callback ... CancelledError") for a cancelled handler task.
        # Every await of a handler is on its own socket, so aborting the socket ends it.
        handlers = list(self._connections)
        for writer in self._connections.values():
            writer.transport.abort()
        if handlers:
            _, stuck = await asyncio.wait(handlers, timeout=self._handshake_timeout)
            for task in stuck:  # cannot happen, short of a bug: bound close() anyway
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        for peer in self._peers.values():
            peer.connected = False
        await asyncio.sleep(0)  # let the closed sockets' callbacks run

    @property
    def listen_address(self) -> Address:
        """The address actually bound (with the chosen port when asked for port 0)."""
        if self._bound is None:
            raise RuntimeError("the transport is not listening: call start() first")
        return self._bound

    # -- membership --------------------------------------------------------------------

    def set_peer(self, node_id: int, address: Address) -> None:
        """Add a peer, or change its address (the connection is then remade)."""
        if node_id <= 0 or node_id == self.node_id:
            raise ValueError(f"invalid peer id {node_id} (this node is {self.node_id})")
        address = (str(address[0]), int(address[1]))
        peer = self._peers.get(node_id)
        if peer is None:
            peer = self._peers[node_id] = _Peer(node_id, address, self._queue_limit)
        elif peer.address == address:
            return
        else:
            logger.info("node %d moved from %s to %s", node_id, _fmt(peer.address), _fmt(address))
            peer.address = address
        if self._server is not None and not self._closing:
            self._spawn(peer)

    def remove_peer(self, node_id: int) -> None:
        """Forget a peer: drop its queue and connections, refuse it from now on."""
        peer = self._peers.pop(node_id, None)
        if peer is None:
            return
        if peer.task is not None:
            peer.task.cancel()
            peer.task = None  # its unwinding must not report on a peer that is gone
        writer = self._inbound.pop(node_id, None)
        if writer is not None:
            writer.close()

    # -- sending -----------------------------------------------------------------------

    def send(self, messages: Iterable[Message]) -> None:
        """Queue each message for its ``to`` peer; never blocks.

        A message for an unknown peer is dropped (DEBUG log); a full queue drops
        its oldest message.
        """
        peers = self._peers
        for message in messages:
            peer = peers.get(message.to)
            if peer is None or self._closing:
                logger.debug(
                    "dropped a %s message to node %d: not a peer (or closed)",
                    message.type.name,
                    message.to,
                )
                continue
            queue = peer.queue
            if len(queue) == self._queue_limit:
                peer.dropped += 1
            queue.append(message)
            peer.wake.set()

    def peer_state(self) -> dict[int, PeerConnectionState]:
        """Every peer's connection state and counters (a snapshot)."""
        return {
            node_id: PeerConnectionState(
                address=peer.address,
                connected=peer.connected,
                since=peer.since,
                last_error=peer.last_error,
                queued=len(peer.queue),
                sent=peer.sent,
                dropped=peer.dropped,
                received=peer.received,
            )
            for node_id, peer in self._peers.items()
        }

    # -- outbound: one task per peer ---------------------------------------------------

    def _spawn(self, peer: _Peer) -> None:
        """Start (or restart, after an address change) the peer's connection task."""
        if peer.task is not None:
            peer.task.cancel()
        if peer.connected:
            peer.connected = False
            peer.since = time.monotonic()
        task = asyncio.create_task(
            self._run_peer(peer), name=f"transport-{self.node_id}-to-{peer.node_id}"
        )
        peer.task = task
        self._peer_tasks.add(task)
        task.add_done_callback(self._peer_tasks.discard)

    async def _run_peer(self, peer: _Peer) -> None:
        failures = 0
        while peer.task is asyncio.current_task() and not self._closing:
            connected = False
            try:
                reader, writer, sealer = await self._dial(peer, peer.address)
                connected = True
                self._peer_connected(peer)
                try:
                    await self._pump(peer, reader, writer, sealer)
                finally:
                    writer.close()
            except _PeerLostError as failure:
                reason = str(failure)
            except Exception as error:
                # A bug, but one that must cost a reconnection: a task that died here
                # would cut this peer off until the process restarts.
                logger.exception("node %d: connection task failed", peer.node_id)
                reason = f"internal error: {error!r}"
            self._peer_failed(peer, reason, notify=connected or bool(peer.queue))
            failures = 1 if connected else failures + 1
            await asyncio.sleep(self._backoff_delay(failures))

    def _backoff_delay(self, failures: int) -> float:
        low, high = self._backoff
        delay: float = min(high, low * 2.0 ** min(failures - 1, 32))
        return delay / 2 + self._rng.uniform(0, delay / 2)

    async def _dial(
        self, peer: _Peer, address: Address
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, FrameSealer]:
        where = _fmt(address)
        try:
            reader, writer = await _wait_for(
                asyncio.open_connection(*address), self._connect_timeout
            )
        except TimeoutError:
            raise _PeerLostError(
                f"cannot connect to {where}: timed out after {self._connect_timeout} s"
            ) from None
        except OSError as error:
            raise _PeerLostError(f"cannot connect to {where}: {error.strerror or error}") from None
        handshake = DialerHandshake(self._secret, self.node_id, peer.node_id)
        done = False
        try:
            sealer = await _wait_for(
                self._dialer_handshake(handshake, reader, writer), self._handshake_timeout
            )
            done = True
        except TimeoutError:
            raise _PeerLostError(
                f"handshake with {where} not completed within {self._handshake_timeout} s"
            ) from None
        except asyncio.IncompleteReadError:
            raise _PeerLostError(
                f"{where} closed the connection during the handshake (is node {self.node_id} "
                "a member there, with the same cluster secret? see that master's log)"
            ) from None
        except ProtocolError as error:
            raise _PeerLostError(f"handshake with {where} failed: {error}") from None
        except OSError as error:
            raise _PeerLostError(f"handshake with {where} failed: {error}") from None
        finally:
            if not done:
                writer.close()
        return reader, writer, sealer

    @staticmethod
    async def _dialer_handshake(
        handshake: DialerHandshake, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> FrameSealer:
        _write(writer, handshake.hello())
        await writer.drain()
        _write(writer, handshake.receive_challenge(await reader.readexactly(CHALLENGE_SIZE)))
        await writer.drain()
        return handshake.receive_accept(await reader.readexactly(ACCEPT_SIZE))

    async def _pump(
        self,
        peer: _Peer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sealer: FrameSealer,
    ) -> NoReturn:
        """Send the queue's batches until the connection fails (raises ``_PeerLostError``)."""
        where = _fmt(peer.address)
        lost: list[str] = []
        watcher = asyncio.create_task(self._watch(reader, peer, lost))
        try:
            while True:
                while not peer.queue and not lost:
                    peer.wake.clear()
                    await peer.wake.wait()
                if lost:
                    raise _PeerLostError(f"connection to {where} lost: {lost[0]}")
                batch = list(peer.queue)
                peer.queue.clear()
                frames = []
                for message in batch:
                    payload = _ENCODER.encode(message)
                    if len(payload) > self._max_frame_size:
                        peer.dropped += 1
                        logger.error(
                            "dropped a %s message to node %d: %d bytes encoded, over the "
                            "%d-byte frame limit",
                            message.type.name,
                            peer.node_id,
                            len(payload),
                            self._max_frame_size,
                        )
                        continue
                    frames.append(sealer.seal(payload))
                if not frames:
                    continue
                try:
                    _write(writer, b"".join(frames))
                    await _wait_for(writer.drain(), self._write_timeout)
                except TimeoutError:
                    peer.dropped += len(frames)
                    raise _PeerLostError(
                        f"{where} did not read {len(frames)} messages within "
                        f"{self._write_timeout} s (stalled peer?)"
                    ) from None
                except OSError as error:
                    peer.dropped += len(frames)
                    raise _PeerLostError(f"write to {where} failed: {error}") from None
                peer.sent += len(frames)
        finally:
            watcher.cancel()

    @staticmethod
    async def _watch(reader: asyncio.StreamReader, peer: _Peer, lost: list[str]) -> None:
        """Notice the end of an outbound connection: the listener never sends after ACCEPT."""
        try:
            data = await reader.read(1)
            lost.append("closed by the peer" if not data else "the peer sent unexpected bytes")
        except OSError as error:
            lost.append(str(error) or type(error).__name__)
        peer.wake.set()

    def _peer_connected(self, peer: _Peer) -> None:
        if peer.task is not asyncio.current_task():
            return
        peer.connected = True
        peer.since = time.monotonic()
        logger.info("connected to node %d at %s", peer.node_id, _fmt(peer.address))

    def _peer_failed(self, peer: _Peer, reason: str, *, notify: bool) -> None:
        if peer.task is not asyncio.current_task():
            return  # replaced (address change) or removed: its news is stale
        if peer.connected:
            peer.connected = False
            peer.since = time.monotonic()
            logger.info("node %d: %s", peer.node_id, reason)
        elif reason != peer.last_error:
            logger.warning("node %d: %s", peer.node_id, reason)
        else:
            logger.debug("node %d: %s", peer.node_id, reason)
        peer.last_error = reason
        if notify and self._on_unreachable is not None:
            try:
                self._on_unreachable(peer.node_id)
            except Exception:
                logger.exception("on_unreachable(%d) raised", peer.node_id)

    # -- inbound -----------------------------------------------------------------------

    def _is_member(self, node_id: int) -> bool:
        return node_id in self._peers

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        where = _fmt(writer.get_extra_info("peername"))
        try:
            if self._closing:
                return
            authenticated = await self._authenticate(reader, writer, where)
            if authenticated is None:
                return
            peer_id, opener = authenticated
            previous = self._inbound.get(peer_id)
            if previous is not None:
                logger.info(
                    "node %d reconnected from %s: closing its older connection", peer_id, where
                )
                previous.close()
            self._inbound[peer_id] = writer
            logger.info("accepted connection from node %d at %s", peer_id, where)
            try:
                await self._receive(peer_id, reader, opener, where)
            finally:
                if self._inbound.get(peer_id) is writer:
                    del self._inbound[peer_id]
        finally:
            writer.close()
            del self._connections[task]

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str
    ) -> tuple[int, FrameOpener] | None:
        """Run the listener's handshake; log and return ``None`` if the dialer is refused."""
        if self._pending_handshakes >= MAX_PENDING_HANDSHAKES:
            logger.warning(
                "refused connection from %s: %d handshakes already in progress",
                where,
                self._pending_handshakes,
            )
            return None
        handshake = ListenerHandshake(
            self._secret, self.node_id, self._is_member, max_frame_size=self._max_frame_size
        )
        self._pending_handshakes += 1
        try:
            opener = await _wait_for(
                self._listener_handshake(handshake, reader, writer), self._handshake_timeout
            )
        except TimeoutError:
            logger.warning(
                "refused connection from %s: handshake not completed within %s s",
                where,
                self._handshake_timeout,
            )
            return None
        except ProtocolError as error:
            logger.warning("refused connection from %s: %s", where, error)
            return None
        except asyncio.IncompleteReadError:
            logger.info("connection from %s closed during the handshake", where)
            return None
        except OSError as error:
            logger.info("connection from %s failed during the handshake: %s", where, error)
            return None
        finally:
            self._pending_handshakes -= 1
        assert handshake.peer_id is not None
        if not self._is_member(handshake.peer_id):  # removed while authenticating
            logger.warning(
                "refused connection from %s: node %d is no longer a member",
                where,
                handshake.peer_id,
            )
            return None
        return handshake.peer_id, opener

    @staticmethod
    async def _listener_handshake(
        handshake: ListenerHandshake, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> FrameOpener:
        _write(writer, handshake.receive_hello(await reader.readexactly(HELLO_SIZE)))
        await writer.drain()
        accept, opener = handshake.receive_auth(await reader.readexactly(AUTH_SIZE))
        _write(writer, accept)
        await writer.drain()
        return opener

    async def _receive(
        self, peer_id: int, reader: asyncio.StreamReader, opener: FrameOpener, where: str
    ) -> None:
        """Deliver the frames of an authenticated connection until it ends or misbehaves."""
        read = reader.readexactly
        on_message = self._on_message
        try:
            while True:
                try:
                    prefix = await read(LENGTH_SIZE)
                except asyncio.IncompleteReadError as error:
                    if not self._closing:  # else we closed it
                        mid = " in the middle of a frame" if error.partial else ""
                        logger.info("node %d at %s closed its connection%s", peer_id, where, mid)
                    return
                body = await read(opener.body_size(prefix))
                payload = opener.open(body)
                seq = opener.next_seq - 1
                try:
                    message = _DECODER.decode(payload)
                except msgspec.DecodeError as error:
                    raise FrameError(f"frame {seq}: undecodable message: {error}") from None
                if message.frm != peer_id:
                    raise FrameError(
                        f"frame {seq}: message claims to be from node {message.frm}, but the "
                        f"connection is authenticated as node {peer_id}"
                    )
                if message.to != self.node_id:
                    raise FrameError(
                        f"frame {seq}: message addressed to node {message.to}, "
                        f"but this is node {self.node_id}"
                    )
                peer = self._peers.get(peer_id)
                if peer is not None:
                    peer.received += 1
                try:
                    on_message(message)
                except Exception:
                    logger.exception("on_message raised for a message from node %d", peer_id)
        except FrameError as error:
            logger.warning("closed connection from node %d at %s: %s", peer_id, where, error)
        except asyncio.IncompleteReadError:
            logger.info(
                "node %d at %s closed its connection in the middle of a frame", peer_id, where
            )
        except OSError as error:
            logger.info("connection from node %d at %s failed: %s", peer_id, where, error)


async def _wait_for(awaitable: Awaitable[_T], timeout: float) -> _T:
    """``asyncio.wait_for`` that never swallows a cancellation.

    On Python 3.11, when the task is cancelled just as the awaited operation
    finishes, ``wait_for`` returns the result (or raises its exception) and the
    cancellation is lost: a peer task closed at that moment would go on
    reconnecting forever. ``Task.cancelling()`` still records the request.
    """
    try:
        result = await asyncio.wait_for(awaitable, timeout)
    except BaseException:
        _raise_if_cancelled()
        raise
    _raise_if_cancelled()
    return result


def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    """``writer.write``, raising ``ConnectionResetError`` if the connection is already closed.

    The connection may be closed before ``connection_lost`` has told the reader (and so
    our watcher). asyncio then ignores the write, but uvloop, which the servers run on,
    raises ``RuntimeError``; an ``OSError`` is what every caller treats as a lost peer.
    """
    if writer.is_closing():
        raise ConnectionResetError("the connection is closed")
    writer.write(data)


def _raise_if_cancelled() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _fmt(address: object) -> str:
    """``host:port`` (``[host]:port`` for IPv6) for logs."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
