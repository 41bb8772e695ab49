"""``RaftNode``: the consensus core driven by asyncio, a journal on disk and a transport.

This module is the Ready recipe of ``quorumfs.raft.rawnode`` and nothing else:

1. persist the Ready (``DiskStorage.save`` + ``sync``, in a worker thread so the
   event loop keeps serving while fsync waits; everything that accumulated
   while the previous sync ran goes into the next one: group commit);
2. send its messages (``Transport.send``, never blocking);
3. apply committed entries to the ``StateMachine`` and answer the proposers;
4. ``advance``.

It also owns the clock: the core counts ticks, and the ticker calls ``tick``
as many times as ``tick_interval`` periods have passed on the monotonic clock,
so a process that was paused (SIGSTOP, a long GC) catches up at once instead
of believing no time passed (which would stretch its leader lease). With
``NodeOptions.lease_log`` set, it has ``lease_log.LeaseLog`` look at the core
after every batch of ticks and every Ready taken (before its messages leave).

Proposals are tagged with a random request id so that the node that proposed
an entry can hand the state machine's result back to the waiting caller. A
caller always gets an answer in bounded time: the result, a refusal
(``NotLeaderError``, ``UnavailableError``), or ``OutcomeUnknownError`` when
leadership was lost or time ran out after the entry may have been replicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from quorumfs.raft import (
    NONE,
    ConfChange,
    Config,
    ConfState,
    DroppedError,
    EntryType,
    Message,
    MessageType,
    RawNode,
    Ready,
    Role,
    SoftState,
    Status,
)

from .clock import WallClock
from .lease_log import LeaseLog
from .wal import DiskStorage

if TYPE_CHECKING:
    from .metrics import NodeMetrics

__all__ = [
    "NodeOptions",
    "NotLeaderError",
    "OutcomeUnknownError",
    "RaftNode",
    "StateMachine",
    "Transport",
    "UnavailableError",
]

logger = logging.getLogger("quorumfs.raft")

T = TypeVar("T")

_LEADER_ONLY_TYPES = frozenset(
    {MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP, MessageType.TIMEOUT_NOW}
)

_PROPOSAL = b"\x01"  # entry payload = _PROPOSAL + 8-byte request id + state machine command
_REQUEST_ID_BYTES = 8


class StateMachine(Protocol):
    """What the log is applied to. Called on the event loop, in log order."""

    def apply(self, index: int, command: bytes) -> object:
        """Apply one committed command; the return value goes to its proposer."""
        ...

    def apply_membership(self, index: int, change: ConfChange, conf: ConfState) -> None:
        """A membership change took effect (keep member addresses, for example)."""
        ...

    def snapshot(self) -> bytes: ...

    def restore(self, image: bytes) -> None: ...


class Transport(Protocol):
    def send(self, messages: Iterable[Message]) -> None: ...


class NotLeaderError(Exception):
    def __init__(self, leader: int) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class UnavailableError(Exception):
    """Nothing was done: no leader, no quorum in time, or the request was refused."""


class OutcomeUnknownError(Exception):
    """The command may or may not have been applied (leadership lost, or timed out)."""


@dataclass(frozen=True)
class NodeOptions:
    tick_interval: float = 0.05
    """Seconds per core tick: with election_tick=10, elections start after 0.5-1.0 s."""
    snapshot_every: int = 10_000
    """Applied entries between two snapshots (the log before a snapshot is dropped)."""
    lease_log: Path | None = None
    """Where to write the lease log (``lease_log``); None: nowhere."""
    wall_clock: WallClock | None = None
    """The wall clock of the lease log's line stamps (the master's, which fault tests
    may shift); None: the host's. Nothing else here reads a wall clock."""


class RaftNode:
    def __init__(
        self,
        config: Config,
        storage: DiskStorage,
        transport: Transport,
        state_machine: StateMachine,
        *,
        options: NodeOptions = NodeOptions(),
        rng: random.Random | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.id = config.id
        self.storage = storage
        self.transport = transport
        self.state_machine = state_machine
        self.options = options
        state_machine.restore(storage.snapshot().data)
        self.raw = RawNode(config, storage, rng or random.Random())
        self._wake = asyncio.Event()
        self._heard_from: dict[int, float] = {}
        """Peer id -> monotonic time its last message arrived."""
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self._clock_origin = time.monotonic()
        self._ticks = 0
        self._proposals: dict[bytes, asyncio.Future[object]] = {}
        self._membership: tuple[ConfChange, asyncio.Future[ConfState]] | None = None
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._soft = SoftState()
        self._soft_waiters: list[asyncio.Future[None]] = []  # woken on every role change
        self._role_listeners: list[Callable[[SoftState, int], None]] = []
        self._lease_log: LeaseLog | None = None
        stored, _ = storage.initial_state()
        self._saved_term_vote = (stored.term, stored.vote)
        self._metrics = metrics
        if metrics is not None:
            metrics.bind(self)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Replay the committed journal, then start ticking and processing."""
        self.replay()
        if self.options.lease_log is not None:
            wall = self.options.wall_clock or WallClock()
            self._lease_log = LeaseLog(
                self.options.lease_log, self.raw.raft, self.options.tick_interval, wall=wall.time
            )
            self._lease_log.observe()
        self._tasks = [
            asyncio.create_task(self._ticker(), name=f"raft-{self.id}-ticker"),
            asyncio.create_task(self._ready_loop(), name=f"raft-{self.id}-ready"),
        ]
        self._wake.set()

    def replay(self) -> None:
        """Apply what the journal already holds as committed, before any peer is heard.

        Synchronous on purpose: whoever starts the node (the master) learns the
        members' addresses from the log before its transport accepts a message.
        """
        while self.raw.has_ready():
            rd = self.raw.ready()
            if rd.must_sync:
                self._persist(rd)
            self.transport.send(rd.messages)
            self._apply(rd)
            self.raw.advance(rd)
            self._release_applied_waiters()

    async def stop(self) -> None:
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_waiters(UnavailableError("the node is shutting down"))
        if self._lease_log is not None:
            self._lease_log.close()
            self._lease_log = None

    def on_role_change(self, listener: Callable[[SoftState, int], None]) -> None:
        """Call ``listener(soft_state, term)`` whenever the role or known leader changes."""
        self._role_listeners.append(listener)

    # -- inputs ------------------------------------------------------------------------

    def receive(self, message: Message) -> None:
        """A message from a peer (the transport's callback)."""
        self._heard_from[message.frm] = time.monotonic()
        with contextlib.suppress(DroppedError):  # e.g. a forwarded proposal, no leader
            self.raw.step(message)
        self._wake.set()

    def last_contact(self, peer: int) -> float | None:
        """Seconds since a message from ``peer`` arrived (None: none since this start)."""
        heard = self._heard_from.get(peer)
        return None if heard is None else time.monotonic() - heard

    def report_unreachable(self, peer: int) -> None:
        self.raw.report_unreachable(peer)

    async def propose(self, command: bytes, timeout: float) -> object:
        """Replicate ``command`` and return what the state machine answered for it."""
        if self._metrics is None:
            return await self._propose(command, timeout)
        started = time.perf_counter()
        try:
            result = await self._propose(command, timeout)
        except BaseException as error:
            self._metrics.proposal_failed(error)
            raise
        self._metrics.proposal_committed(time.perf_counter() - started)
        return result

    async def _propose(self, command: bytes, timeout: float) -> object:
        self._require_leader()
        request_id = os.urandom(_REQUEST_ID_BYTES)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        try:
            self.raw.propose(_PROPOSAL + request_id + command)
        except DroppedError as error:
            raise UnavailableError(error.reason) from error
        self._proposals[request_id] = future
        self._wake.set()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as error:
            raise OutcomeUnknownError(f"not committed within {timeout:g} s") from error
        finally:
            self._proposals.pop(request_id, None)

    async def read_barrier(self, timeout: float) -> None:
        """Return once the local state reflects every write acknowledged before the call."""
        self._catch_up_clock()  # a paused leader must not trust a lease measured in stale ticks
        async with asyncio.timeout(timeout):
            context = os.urandom(_REQUEST_ID_BYTES)
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            try:
                self.raw.read_index(context)
            except DroppedError as error:
                raise UnavailableError(error.reason) from error
            self._reads[context] = future
            self._wake.set()
            try:
                index = await future
            finally:
                self._reads.pop(context, None)
            await self.wait_applied(index)

    async def wait_applied(self, index: int) -> None:
        if self.raw.raft.log.applied >= index:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((index, future))
        await future

    async def change_membership(self, change: ConfChange, timeout: float) -> ConfState:
        """Propose one membership change and wait until it is applied here."""
        self._require_leader()
        if self._membership is not None:
            raise UnavailableError("another membership change is in progress")
        future: asyncio.Future[ConfState] = asyncio.get_running_loop().create_future()
        try:
            self.raw.propose_membership(change)
        except DroppedError as error:
            raise UnavailableError(error.reason) from error
        self._membership = (change, future)
        self._wake.set()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as error:
            raise OutcomeUnknownError(f"membership change not applied in {timeout:g} s") from error
        finally:
            self._membership = None

    async def transfer_leadership(self, target: int, timeout: float) -> int:
        """Hand leadership to ``target``; returns once this node knows it leads (its id).

        Fails (``UnavailableError``, saying why) as soon as the core gives the
        transfer up (after an election timeout: ``target`` did not catch up or
        did not answer), another node wins instead, or ``timeout`` passes.
        """
        if target not in self.raw.raft.conf.voters:
            raise UnavailableError(f"node {target} is not a voter")
        leader_before = self.leader
        try:
            self.raw.transfer_leadership(target)
        except DroppedError as error:
            raise UnavailableError(error.reason) from error
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                while self.leader != target:
                    self._check_transfer(target, leader_before)
                    # The core drops a transfer on a tick, without a role change: look again.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.options.tick_interval):
                            await self._next_role_change()
        except TimeoutError as error:
            raise UnavailableError(
                f"node {target} did not take over within {timeout:g} s "
                f"(the leader is {self.leader or 'unknown'})"
            ) from error
        return target

    def _check_transfer(self, target: int, leader_before: int) -> None:
        raft = self.raw.raft
        if raft.role is Role.LEADER and raft.lead_transferee != target:
            raise UnavailableError(
                f"node {self.id} still leads: the transfer to node {target} was given up "
                "after an election timeout (it did not catch up, or did not answer)"
            )
        if raft.lead not in (NONE, target, leader_before):
            raise UnavailableError(f"node {raft.lead} was elected instead of node {target}")

    async def _next_role_change(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._soft_waiters.append(future)
        await future

    def campaign(self) -> None:
        self.raw.campaign()
        self._wake.set()

    # -- introspection ---------------------------------------------------------------

    def status(self) -> Status:
        return self.raw.status()

    @property
    def leader(self) -> int:
        """The leader as the core knows it now (not as of the last Ready processed)."""
        return self.raw.raft.lead

    def is_leader(self) -> bool:
        return self.raw.raft.role is Role.LEADER

    def leader_term(self) -> int | None:
        """The current term while this node leads (live core state), else None."""
        raft = self.raw.raft
        return raft.term if raft.role is Role.LEADER else None

    def lease_remaining(self) -> float:
        """Seconds the leader lease still holds on the monotonic clock; 0.0 without one."""
        until = self.raw.raft.lease_valid_until()  # a tick: tick k is due at origin + k * interval
        if until is None:
            return 0.0
        ends = self._clock_origin + until * self.options.tick_interval
        return max(0.0, ends - time.monotonic())

    # -- the clock ---------------------------------------------------------------------

    async def _ticker(self) -> None:
        interval = self.options.tick_interval
        while True:
            next_at = self._clock_origin + (self._ticks + 1) * interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            self._catch_up_clock()

    def _catch_up_clock(self) -> None:
        due = int((time.monotonic() - self._clock_origin) / self.options.tick_interval)
        if due > self._ticks:
            for _ in range(due - self._ticks):
                self.raw.tick()
            self._ticks = due
            self._observe_lease(ticked=True)
            self._wake.set()

    def _observe_lease(self, *, ticked: bool) -> None:
        if self._lease_log is not None:
            self._lease_log.observe(ticked=ticked)

    # -- the Ready loop ----------------------------------------------------------------

    async def _ready_loop(self) -> None:
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            while self.raw.has_ready():
                rd = self.raw.ready()
                self._observe_lease(ticked=False)  # see a transfer before its TimeoutNow leaves
                early, late = self._split_messages(rd)
                self.transport.send(early)
                if rd.entries or rd.snapshot is not None or self._vote_changes(rd):
                    await asyncio.to_thread(self._persist, rd)
                elif rd.hard_state is not None:
                    self.storage.save(rd.hard_state, ())  # only the commit index: no fsync due
                self.transport.send(late)
                self._apply(rd)
                self.raw.advance(rd)
                self._release_applied_waiters()
                await self._maybe_snapshot()

    def _vote_changes(self, rd: Ready) -> bool:
        """Does this Ready carry a term or vote not yet on disk (which must be synced first)?"""
        if rd.hard_state is None:
            return False
        return (rd.hard_state.term, rd.hard_state.vote) != self._saved_term_vote

    def _split_messages(self, rd: Ready) -> tuple[list[Message], list[Message]]:
        """Messages that may leave before this Ready is durable, and those that must wait.

        A leader's appends and heartbeats may go out while it writes the same
        entries to its own disk (Raft thesis §10.2.1): the leader counts itself
        towards a commit only once its write is done (``Raft.on_stable``).
        Everything that vouches for our own durable state waits: votes, and
        acknowledgements of entries, and anything sent along with a new term or vote.
        """
        if not self.is_leader() or self._vote_changes(rd):
            return [], rd.messages
        early = [m for m in rd.messages if m.type in _LEADER_ONLY_TYPES]
        late = [m for m in rd.messages if m.type not in _LEADER_ONLY_TYPES]
        return early, late

    def _persist(self, rd: Ready) -> None:
        self.storage.save(rd.hard_state, rd.entries, rd.snapshot)
        self.storage.sync()
        if rd.hard_state is not None:
            self._saved_term_vote = (rd.hard_state.term, rd.hard_state.vote)

    def _apply(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state)
        if rd.snapshot is not None:
            self.state_machine.restore(rd.snapshot.data)
        for entry in rd.committed_entries:
            if entry.type is EntryType.CONF_CHANGE:
                change = ConfChange.decode(entry.data)
                conf = self.raw.apply_conf_change(change)
                self.state_machine.apply_membership(entry.index, change, conf)
                if self._membership is not None and self._membership[0] == change:
                    _resolve(self._membership[1], conf)
            elif entry.data.startswith(_PROPOSAL):
                request_id = entry.data[1 : 1 + _REQUEST_ID_BYTES]
                result = self.state_machine.apply(entry.index, entry.data[1 + _REQUEST_ID_BYTES :])
                future = self._proposals.get(request_id)
                if future is not None:
                    _resolve(future, result)
        for state in rd.read_states:
            read = self._reads.get(state.context)
            if read is not None:
                _resolve(read, state.index)

    def _release_applied_waiters(self) -> None:
        applied = self.raw.raft.log.applied
        waiting = []
        for index, future in self._applied_waiters:
            if index <= applied:
                _resolve(future, None)
            elif not future.done():
                waiting.append((index, future))
        self._applied_waiters = waiting

    def _on_soft_state(self, soft: SoftState) -> None:
        was_leader = self._soft.role is Role.LEADER
        self._soft = soft
        term = self.raw.raft.term
        logger.info(
            "node %d is %s in term %d (leader: %s)", self.id, soft.role.value, term, soft.leader
        )
        if was_leader and soft.role is not Role.LEADER:
            self._fail_waiters(OutcomeUnknownError("leadership was lost before the reply"))
        for listener in self._role_listeners:
            listener(soft, term)
        waiters, self._soft_waiters = self._soft_waiters, []
        for future in waiters:
            _resolve(future, None)

    def _fail_waiters(self, error: Exception) -> None:
        for future in self._proposals.values():
            _fail(future, error)
        for read in self._reads.values():
            _fail(read, UnavailableError(str(error)))
        if self._membership is not None:
            _fail(self._membership[1], error)

    async def _maybe_snapshot(self) -> None:
        applied = self.raw.raft.log.applied
        if applied - self.storage.snapshot().meta.index < self.options.snapshot_every:
            return
        image = self.state_machine.snapshot()
        conf = self.raw.raft.conf
        await asyncio.to_thread(self._write_snapshot, applied, conf, image)

    def _write_snapshot(self, index: int, conf: ConfState, image: bytes) -> None:
        self.storage.create_snapshot(index, conf, image)
        self.storage.compact(index)
        logger.info("node %d: snapshot at %d (%d bytes); log compacted", self.id, index, len(image))

    def _require_leader(self) -> None:
        if not self.is_leader():
            raise NotLeaderError(self.leader)


def _resolve(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
