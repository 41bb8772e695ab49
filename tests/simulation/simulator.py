"""A deterministic simulator for the consensus core: many nodes, one seed, every fault.

Everything that varies comes from one ``random.Random(seed)``: message delays
and order, drops and duplicates, partitions, crashes (including crashes in the
middle of persisting a Ready), membership changes, leadership transfers and
client operations. Running the same seed twice gives the same run, so any
failure is replayed with ``python tests/simulation/replay.py --seed N``.

Time is counted in *steps*; every node ticks once per ``STEPS_PER_TICK``
steps, each at its own phase, and a message takes between one step and a few
ticks to arrive.

Checked while running (``SafetyViolationError`` at the first breach):
- at most one leader per term;
- no leader is elected while another node still holds a valid leader lease;
- a new leader's log holds every entry already applied anywhere
  (leader completeness);
- the same entry is applied at the same index on every node
  (state machine safety), which also covers log matching for applied entries;
- logs agree on every common prefix ending in a matching entry (log matching),
  checked at the end of a run.
Checked at the end, after healing every fault:
- every node that is still a member converges (liveness);
- every acknowledged write is in the final state (no acknowledged write lost);
- the client history is linearizable (``quorumfs.verify.linearizability``).
"""

from __future__ import annotations

import contextlib
import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from kv import Command, KVStateMachine, encode

from quorumfs.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    Config,
    DroppedError,
    EntryType,
    MemoryStorage,
    Message,
    RawNode,
    ReadOnlyOption,
    Ready,
    Role,
    TestingKnobs,
    bootstrap_log,
)
from quorumfs.raft.storage import CompactedError, UnavailableError
from quorumfs.verify.linearizability import (
    Cas,
    CasOk,
    CheckResult,
    Get,
    GetOk,
    KVModel,
    Operation,
    Put,
    PutOk,
    check,
)

STEPS_PER_TICK = 10


class SafetyViolationError(AssertionError):
    pass


@dataclass(frozen=True)
class Faults:
    """How hostile the environment is. Probabilities are per message or per tick."""

    drop: float = 0.0
    duplicate: float = 0.0
    max_delay_steps: int = 3
    partitions: bool = False
    crashes: bool = False
    torn_writes: bool = False  # crash while persisting a Ready, keeping a prefix
    crash_before_send: float = 0.0  # a leader dies after persisting a Ready, before sending it
    membership: bool = False
    transfers: bool = False
    nemesis_every_ticks: int = 40  # mean ticks between fault actions
    max_down_ticks: int = 40  # a crashed node restarts within this many ticks
    partition_kinds: tuple[str, ...] = ("split", "one-way", "isolate-leader", "bridge")

    def describe(self) -> str:
        names = [
            name
            for name in ("partitions", "crashes", "torn_writes", "membership", "transfers")
            if getattr(self, name)
        ]
        if self.crash_before_send:
            names.append(f"crash-before-send={self.crash_before_send:.2f}")
        if self.drop:
            names.append(f"drop={self.drop:.2f}")
        if self.duplicate:
            names.append(f"dup={self.duplicate:.2f}")
        if self.max_delay_steps > STEPS_PER_TICK:
            names.append(f"delay<={self.max_delay_steps}")
        return ",".join(names) or "none"


@dataclass(frozen=True)
class SimConfig:
    seed: int
    voters: int = 3
    max_nodes: int = 6
    ticks: int = 600
    clients: int = 4
    keys: int = 3
    election_tick: int = 10
    heartbeat_tick: int = 1
    read_only: ReadOnlyOption = ReadOnlyOption.SAFE
    pre_vote: bool = True
    check_quorum: bool = True
    snapshot_every: int = 40  # applied entries between snapshots
    snapshot_chunk_bytes: int = 64
    max_size_per_msg: int = 512  # payload bytes per append: a handful of entries
    faults: Faults = field(default_factory=Faults)
    knobs: TestingKnobs = field(default_factory=TestingKnobs)
    check_linearizability: bool = True
    heal_ticks: int = 300  # bound on convergence once faults stop

    @staticmethod
    def randomized(seed: int, **overrides: object) -> SimConfig:
        """A configuration drawn from the seed: cluster size, read mode and a fault mix."""
        rng = random.Random(seed ^ 0x5EED)
        faults = Faults(
            drop=rng.choice([0.0, 0.02, 0.1]),
            duplicate=rng.choice([0.0, 0.03]),
            max_delay_steps=rng.choice([3, 12, 30]),
            partitions=rng.random() < 0.7,
            crashes=rng.random() < 0.6,
            torn_writes=rng.random() < 0.4,
            crash_before_send=rng.choice([0.0, 0.0, 0.02]),
            membership=rng.random() < 0.4,
            transfers=rng.random() < 0.4,
            nemesis_every_ticks=rng.choice([20, 40, 80]),
        )
        base = SimConfig(
            seed=seed,
            voters=rng.choice([3, 3, 5]),
            read_only=rng.choice([ReadOnlyOption.SAFE, ReadOnlyOption.LEASE]),
            faults=faults,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]


@dataclass
class _PendingOp:
    client: int
    seq: int
    input: Put | Get | Cas
    call: int
    node: int


FAULT_COUNTERS = (
    "messages_dropped",
    "messages_duplicated",
    "partitions",
    "crashes",
    "torn_crashes",
    "membership_changes",
    "transfers",
    "snapshots_sent",
)
"""The ``Stats`` fields that count injected faults (and the snapshots they force)."""


@dataclass
class Stats:
    steps: int = 0
    messages_sent: int = 0
    messages_dropped: int = 0
    messages_duplicated: int = 0
    partitions: int = 0
    crashes: int = 0
    torn_crashes: int = 0
    membership_changes: int = 0
    transfers: int = 0
    snapshots_sent: int = 0
    leader_changes: int = 0
    ops_ok: int = 0
    ops_unknown: int = 0
    ops_failed: int = 0


class SimNode:
    """One node: its durable storage survives crashes; everything else does not."""

    def __init__(self, node_id: int, sim: Simulation, storage: MemoryStorage) -> None:
        self.id = node_id
        self.sim = sim
        self.storage = storage
        self.raw: RawNode | None = None
        self.kv = KVStateMachine()
        self.pending_writes: dict[tuple[int, int], _PendingOp] = {}
        self.pending_reads: dict[bytes, _PendingOp] = {}
        self.read_waiting: list[tuple[int, bytes]] = []
        self.phase = sim.rng.randrange(STEPS_PER_TICK)
        self.start()

    @property
    def alive(self) -> bool:
        return self.raw is not None

    def start(self) -> None:
        cfg = self.sim.config
        self.raw = RawNode(
            Config(
                id=self.id,
                election_tick=cfg.election_tick,
                heartbeat_tick=cfg.heartbeat_tick,
                read_only=cfg.read_only,
                pre_vote=cfg.pre_vote,
                check_quorum=cfg.check_quorum,
                max_size_per_msg=cfg.max_size_per_msg,
                max_inflight_msgs=8,
                snapshot_chunk_bytes=cfg.snapshot_chunk_bytes,
                knobs=cfg.knobs,
            ),
            self.storage,
            self.sim.rng,
        )
        self.kv = KVStateMachine.restore(self.storage.snapshot().data)

    def crash(self) -> None:
        self.raw = None
        self.pending_writes.clear()
        self.pending_reads.clear()
        self.read_waiting.clear()

    def handle_ready(self) -> None:
        raw = self.raw
        while raw is not None and raw.has_ready():
            rd = raw.ready()
            if not self._persist(rd):
                return  # crashed half-way through persisting
            if self._dies_before_sending(rd):
                return
            for m in rd.messages:
                self.sim.send(m)
            self._apply(rd)
            raw.advance(rd)
            self._serve_reads()
            self._maybe_snapshot()
            raw = self.raw

    def _persist(self, rd: Ready) -> bool:
        sim = self.sim
        torn = sim.config.faults.torn_writes and not sim.healing and sim.rng.random() < 0.002
        if rd.snapshot is not None:
            self.storage.apply_snapshot(rd.snapshot)
        if torn:
            # Power fails mid-write: a prefix of the entries reached the disk, the
            # hard state (written last) did not, and nothing was sent.
            kept = sim.rng.randrange(len(rd.entries) + 1)
            self.storage.append(rd.entries[:kept])
            sim.stats.torn_crashes += 1
            sim.crash(self.id, reason="mid-write")
            return False
        self.storage.append(rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)
        return True

    def _dies_before_sending(self, rd: Ready) -> bool:
        sim = self.sim
        chance = 0.0 if sim.healing else sim.config.faults.crash_before_send
        raw = self.raw
        if not chance or raw is None or raw.raft.role is not Role.LEADER or not rd.messages:
            return False
        if sim.rng.random() >= chance:
            return False
        sim.crash(self.id, reason="after persisting, before sending")
        return True

    def _apply(self, rd: Ready) -> None:
        raw = self.raw
        assert raw is not None
        sim = self.sim
        if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
            sim.on_new_leader(self)
        if rd.snapshot is not None:
            self.kv = KVStateMachine.restore(rd.snapshot.data)
            sim.stats.snapshots_sent += 1
        for entry in rd.committed_entries:
            sim.check_applied(self.id, entry.index, entry.term, entry.data)
            if entry.type is EntryType.CONF_CHANGE:
                raw.apply_conf_change(ConfChange.decode(entry.data))
            elif entry.data:
                result = self.kv.apply(entry.data)
                if result is not None:
                    op = self.pending_writes.pop((result.client, result.seq), None)
                    if op is not None:
                        output = PutOk() if isinstance(op.input, Put) else CasOk(result.succeeded)
                        sim.complete(op, output)
        for state in rd.read_states:
            self.read_waiting.append((state.index, state.context))

    def _serve_reads(self) -> None:
        raw = self.raw
        if raw is None or not self.read_waiting:
            return
        applied = raw.raft.log.applied
        still: list[tuple[int, bytes]] = []
        for index, context in self.read_waiting:
            if index > applied:
                still.append((index, context))
                continue
            op = self.pending_reads.pop(context, None)
            if op is not None:
                assert isinstance(op.input, Get)
                self.sim.complete(op, GetOk(self.kv.data.get(op.input.key)))
        self.read_waiting = still

    def _maybe_snapshot(self) -> None:
        raw = self.raw
        assert raw is not None
        applied = raw.raft.log.applied
        snap_index = self.storage.snapshot().meta.index
        if applied - snap_index < self.sim.config.snapshot_every:
            return
        self.storage.create_snapshot(applied, raw.raft.conf, self.kv.snapshot())
        keep = self.sim.rng.randrange(0, 10)
        compact_to = max(self.storage.first_index(), applied - keep)
        if compact_to > self.storage.first_index() - 1:
            self.storage.compact(compact_to)


class Simulation:
    def __init__(self, config: SimConfig, trace: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.trace = trace
        self.stats = Stats()
        self.now = 0  # steps
        self.healing = False  # once set, no new fault of any kind is injected
        self._queue: list[tuple[int, float, Message]] = []  # (deliver at, tie-break, message)
        self._blocked: set[tuple[int, int]] = set()  # directed pairs (from, to) cut off
        self._heal_partition_at = -1
        self._restart_at: dict[int, int] = {}
        self.nodes: dict[int, SimNode] = {}
        self.retired: set[int] = set()  # removed node ids: never reused
        self.leaders_by_term: dict[int, int] = {}
        self.applied_log: dict[int, tuple[int, bytes]] = {}  # index -> (term, data)
        self.history: list[Operation] = []  # type: ignore[type-arg]
        self.acked_writes: set[tuple[int, int]] = set()
        self._client_busy: dict[int, _PendingOp | None] = dict.fromkeys(
            range(1, config.clients + 1)
        )
        self._client_seq: dict[int, int] = dict.fromkeys(range(1, config.clients + 1), 0)
        self._last_leader = NONE
        self._learners_to_promote: set[int] = set()
        self._written: dict[str, list[str]] = {f"k{i}": [] for i in range(config.keys)}

        entries, hard_state = bootstrap_log(range(1, config.voters + 1))
        for node_id in range(1, config.voters + 1):
            storage = MemoryStorage()
            storage.append(entries)
            storage.set_hard_state(hard_state)
            self.nodes[node_id] = SimNode(node_id, self, storage)

    # -- the network --------------------------------------------------------------

    def send(self, m: Message) -> None:
        faults = self.config.faults
        self.stats.messages_sent += 1
        if (m.frm, m.to) in self._blocked:
            self.stats.messages_dropped += 1
            return
        if faults.drop and self.rng.random() < faults.drop:
            self.stats.messages_dropped += 1
            return
        copies = 1
        if faults.duplicate and self.rng.random() < faults.duplicate:
            copies = 2
            self.stats.messages_duplicated += 1
        for _ in range(copies):
            delay = self.rng.randint(1, faults.max_delay_steps)
            heapq.heappush(self._queue, (self.now + delay, self.rng.random(), m))

    def _deliver_due(self) -> None:
        while self._queue and self._queue[0][0] <= self.now:
            _, _, m = heapq.heappop(self._queue)
            node = self.nodes.get(m.to)
            if node is None or node.raw is None or (m.frm, m.to) in self._blocked:
                continue
            # A forwarded proposal may reach a node that has just lost leadership.
            with contextlib.suppress(DroppedError):
                node.raw.step(m)
            node.handle_ready()

    # -- checks -------------------------------------------------------------------------

    def _violation(self, what: str) -> SafetyViolationError:
        return SafetyViolationError(f"seed {self.config.seed} at step {self.now}: {what}")

    def on_new_leader(self, node: SimNode) -> None:
        raw = node.raw
        assert raw is not None
        term = raw.raft.term
        other = self.leaders_by_term.setdefault(term, node.id)
        if other != node.id:
            raise self._violation(f"two leaders in term {term}: {other} and {node.id}")
        for rival in self.nodes.values():
            if rival is node or rival.raw is None:
                continue
            remaining = rival.raw.raft.lease_remaining()
            if remaining > 0:
                raise self._violation(
                    f"node {node.id} elected in term {term} while node {rival.id} "
                    f"(term {rival.raw.raft.term}) holds a lease for {remaining} more ticks"
                )
        if node.id != self._last_leader:
            self.stats.leader_changes += 1
            self._last_leader = node.id
        self._log(f"node {node.id} leads term {term}")
        log = raw.raft.log
        first = log.first_index()
        for index, (entry_term, _) in self.applied_log.items():
            if index < first:
                continue  # inside the leader's snapshot
            if index > log.last_index() or log.term(index) != entry_term:
                raise self._violation(
                    f"leader {node.id} (term {term}) lacks applied entry {index}/{entry_term}"
                )

    def check_applied(self, node_id: int, index: int, term: int, data: bytes) -> None:
        seen = self.applied_log.setdefault(index, (term, data))
        if seen != (term, data):
            raise self._violation(
                f"node {node_id} applied {index}/{term} but {index}/{seen[0]} was applied before"
            )

    def check_log_matching(self) -> None:
        logs = []
        for node in self.nodes.values():
            if node.raw is None:
                continue
            log = node.raw.raft.log
            entries = {}
            for index in range(log.first_index(), log.last_index() + 1):
                entries[index] = (log.term(index), log.slice(index, index + 1)[0].data)
            logs.append((node.id, entries))
        for i, (a_id, a) in enumerate(logs):
            for b_id, b in logs[i + 1 :]:
                common = sorted(set(a) & set(b), reverse=True)
                matched = False
                for index in common:
                    if not matched and a[index][0] == b[index][0]:
                        matched = True
                    if matched and a[index][0] != b[index][0]:
                        raise self._violation(
                            f"logs of {a_id} and {b_id} match at a later index "
                            f"but differ at {index}"
                        )

    # -- clients ------------------------------------------------------------------------

    def complete(self, op: _PendingOp, output: PutOk | GetOk | CasOk) -> None:
        if self._client_busy.get(op.client) is not op:
            return  # already timed out: it stays "unknown" in the history
        self._client_busy[op.client] = None
        self.history.append(Operation(op.client, op.input, output, op.call, self.now))
        self.stats.ops_ok += 1
        if not isinstance(op.input, Get):
            self.acked_writes.add((op.client, op.seq))

    def _client_steps(self, issuing: bool) -> None:
        timeout = 6 * self.config.election_tick * STEPS_PER_TICK
        for client, op in self._client_busy.items():
            if op is not None:
                if self.now - op.call > timeout:
                    self._client_busy[client] = None
                    if not isinstance(op.input, Get):  # a read that never returned did nothing
                        self.history.append(Operation(client, op.input, None, op.call, math.inf))
                        self.stats.ops_unknown += 1
                continue
            if issuing and self.rng.random() < 0.15:
                self._issue(client)

    def _issue(self, client: int) -> None:
        live = [n for n in self.nodes.values() if n.raw is not None]
        if not live:
            return
        node = self.rng.choice(live)
        assert node.raw is not None
        known_leader = self.nodes.get(node.raw.raft.lead)
        if known_leader is not None and known_leader.raw is not None and self.rng.random() < 0.7:
            node = known_leader
        raw = node.raw
        assert raw is not None
        self._client_seq[client] += 1
        seq = self._client_seq[client]
        key = f"k{self.rng.randrange(self.config.keys)}"
        roll = self.rng.random()
        value = f"{client}.{seq}"
        op_input: Put | Get | Cas
        if roll < 0.4:
            op_input = Get(key)
        elif roll < 0.75:
            op_input = Put(key, value)
        else:
            expected = self.rng.choice([None, *self._written[key][-3:]])
            op_input = Cas(key, expected, value)
        if not isinstance(op_input, Get):
            self._written.setdefault(key, []).append(value)
        op = _PendingOp(client, seq, op_input, self.now, node.id)
        try:
            if isinstance(op_input, Get):
                context = f"{client}:{seq}".encode()
                raw.read_index(context)
                node.pending_reads[context] = op
            else:
                if isinstance(op_input, Cas):
                    command = Command(client, seq, "cas", key, value, op_input.expected)
                else:
                    command = Command(client, seq, "put", key, value)
                raw.propose(encode(command))
                node.pending_writes[(client, seq)] = op
        except DroppedError:
            self.stats.ops_failed += 1  # definitely not done: leave it out of the history
            return
        self._client_busy[client] = op
        node.handle_ready()

    # -- the nemesis --------------------------------------------------------------------

    def _leader(self) -> SimNode | None:
        for node in self.nodes.values():
            if node.raw is not None and node.raw.raft.role is Role.LEADER:
                return node
        return None

    def _nemesis(self) -> None:
        faults = self.config.faults
        if self.now == self._heal_partition_at:
            self._blocked.clear()
            self._log("partition healed")
        for node_id, at in list(self._restart_at.items()):
            if self.now >= at:
                del self._restart_at[node_id]
                self.nodes[node_id].start()
                self._log(f"node {node_id} restarted")
        self._promote_learners()
        if self.now % STEPS_PER_TICK or self.rng.random() >= 1 / faults.nemesis_every_ticks:
            return
        actions: list[Callable[[], None]] = []
        if faults.partitions and not self._blocked:
            actions.append(self._partition)
        if faults.crashes:
            actions.append(self._random_crash)
        if faults.membership:
            actions.append(self._membership_change)
        if faults.transfers:
            actions.append(self._transfer)
        if actions:
            self.rng.choice(actions)()

    def _members(self) -> list[int]:
        return sorted(n for n in self.nodes if n not in self.retired)

    def _partition(self) -> None:
        members = self._members()
        leader = self._leader()
        kind = self.rng.choice(self.config.faults.partition_kinds)
        if kind in ("isolate-leader", "bridge") and leader is not None:
            alone = {leader.id}
        else:
            alone = set(self.rng.sample(members, self.rng.randint(1, max(1, len(members) // 2))))
        rest = [n for n in self.nodes if n not in alone]
        if kind == "bridge":
            # Cut the leader from one follower only: the others still reach both.
            rest = [self.rng.choice(rest)] if rest else []
        for a in alone:
            for b in rest:
                self._blocked.add((a, b))
                if kind != "one-way":
                    self._blocked.add((b, a))
        self._heal_partition_at = self.now + self.rng.randint(5, 60) * STEPS_PER_TICK
        self.stats.partitions += 1
        self._log(f"partition {kind}: {sorted(alone)} | {sorted(rest)}")

    def _random_crash(self) -> None:
        live = [n for n in self.nodes.values() if n.raw is not None]
        if not live:
            return
        leader = self._leader()
        victim = leader if leader is not None and self.rng.random() < 0.5 else self.rng.choice(live)
        self.crash(victim.id)

    def crash(self, node_id: int, *, reason: str = "") -> None:
        self.nodes[node_id].crash()
        down = self.rng.randint(1, self.config.faults.max_down_ticks)
        self._restart_at[node_id] = self.now + down * STEPS_PER_TICK
        self.stats.crashes += 1
        self._log(f"node {node_id} crashed {reason}".rstrip())

    def _membership_change(self) -> None:
        leader = self._leader()
        if leader is None or leader.raw is None:
            return
        voters = sorted(leader.raw.raft.conf.voters)
        fresh = [n for n in range(1, self.config.max_nodes + 1) if n not in self.nodes]
        if fresh and (len(voters) <= 3 or self.rng.random() < 0.5):
            change = ConfChange(ConfChangeType.ADD_LEARNER, fresh[0])
        elif len(voters) > 3:
            change = ConfChange(ConfChangeType.REMOVE_NODE, self.rng.choice(voters))
        else:
            return
        try:
            leader.raw.propose_membership(change)
        except DroppedError:
            return
        if change.type is ConfChangeType.ADD_LEARNER:
            storage = MemoryStorage()  # a brand-new, empty node
            self.nodes[change.node_id] = SimNode(change.node_id, self, storage)
            self._learners_to_promote.add(change.node_id)
        else:
            self.retired.add(change.node_id)
            self._learners_to_promote.discard(change.node_id)
        self.stats.membership_changes += 1
        self._log(f"propose {change.type.name} {change.node_id}")
        leader.handle_ready()

    def _promote_learners(self) -> None:
        if not self._learners_to_promote or self.now % STEPS_PER_TICK:
            return
        leader = self._leader()
        if leader is None or leader.raw is None:
            return
        status = leader.raw.status()
        for node_id in sorted(self._learners_to_promote):
            peer = status.peers.get(node_id)
            if peer is None or not peer.is_learner or peer.match + 5 < status.last_index:
                continue
            try:
                leader.raw.propose_membership(ConfChange(ConfChangeType.ADD_VOTER, node_id))
            except DroppedError:
                return
            self._learners_to_promote.discard(node_id)
            self._log(f"propose ADD_VOTER {node_id}")
            leader.handle_ready()
            return

    def _transfer(self) -> None:
        leader = self._leader()
        if leader is None or leader.raw is None:
            return
        voters = [v for v in leader.raw.raft.conf.voters if v != leader.id]
        if not voters:
            return
        target = self.rng.choice(sorted(voters))
        try:
            leader.raw.transfer_leadership(target)
        except DroppedError:
            return
        self.stats.transfers += 1
        self._log(f"transfer leadership {leader.id} -> {target}")
        leader.handle_ready()

    def _log(self, text: str) -> None:
        if self.trace is not None:
            self.trace(f"[{self.now // STEPS_PER_TICK:5d}.{self.now % STEPS_PER_TICK}] {text}")

    # -- running --------------------------------------------------------------------------

    def step(self, *, issuing: bool = True, nemesis: bool = True) -> None:
        self.now += 1
        for node in list(self.nodes.values()):
            if node.raw is not None and self.now % STEPS_PER_TICK == node.phase:
                node.raw.tick()
                node.handle_ready()
        self._deliver_due()
        if nemesis:
            self._nemesis()
        else:
            self._heal_now()
        self._client_steps(issuing)

    def _heal_now(self) -> None:
        self._blocked.clear()
        for node_id in list(self._restart_at):
            del self._restart_at[node_id]
            self.nodes[node_id].start()

    def run(self) -> Stats:
        end = self.config.ticks * STEPS_PER_TICK
        while self.now < end:
            self.step()
        self._log("faults stop; healing")
        self.healing = True
        self._converge()
        self.check_log_matching()
        self._check_acked_writes()
        if self.config.check_linearizability:
            result = self.check_history()
            if result.ok is False:
                raise self._violation("history is not linearizable:\n" + result.explain(KVModel()))
        self.stats.steps = self.now
        return self.stats

    def _converge(self) -> None:
        deadline = self.now + self.config.heal_ticks * STEPS_PER_TICK
        while self.now < deadline:
            self.step(issuing=False, nemesis=False)
            if self.now % STEPS_PER_TICK == 0 and self._converged():
                return
        raise self._violation(
            f"no convergence {self.config.heal_ticks} ticks after healing:\n" + self.describe()
        )

    def describe(self) -> str:
        """One line per node: what a stuck run looks like."""
        lines = []
        for node in self.nodes.values():
            if node.raw is None:
                lines.append(f"  node {node.id}: down")
                continue
            st = node.raw.status()
            peers = " ".join(
                f"{p.id}:{p.state.value}/{p.match}/{p.next}" for p in st.peers.values()
            )
            lines.append(
                f"  node {node.id}: {st.role.value} term={st.term} lead={st.leader} "
                f"commit={st.commit} applied={st.applied} last={st.last_index} "
                f"voters={sorted(st.conf.voters)} {peers}"
            )
        busy = [op for op in self._client_busy.values() if op is not None]
        lines.append(f"  clients waiting: {busy}")
        return "\n".join(lines)

    def _converged(self) -> bool:
        if any(op is not None for op in self._client_busy.values()):
            return False
        leader = self._leader()
        if leader is None or leader.raw is None:
            return False
        log = leader.raw.raft.log
        if log.committed != log.last_index() or not leader.raw.raft.committed_in_current_term():
            return False
        for node_id in leader.raw.raft.conf.members():
            node = self.nodes.get(node_id)
            if node is None or node.raw is None or node.raw.raft.log.applied != log.committed:
                return False
        return True

    def _check_acked_writes(self) -> None:
        leader = self._leader()
        assert leader is not None
        missing = self.acked_writes - leader.kv.applied_ops
        if missing:
            raise self._violation(f"acknowledged writes lost: {sorted(missing)[:5]}")

    def check_history(self) -> CheckResult[Put | Get | Cas, PutOk | GetOk | CasOk]:
        return check(KVModel(), self.history)


def describe_failure(config: SimConfig, error: BaseException) -> str:
    return (
        f"{error}\nreplay: .venv/bin/python tests/simulation/replay.py --seed {config.seed} --trace"
    )


def run_seed(config: SimConfig, trace: Callable[[str], None] | None = None) -> Stats:
    sim = Simulation(config, trace)
    try:
        return sim.run()
    except (CompactedError, UnavailableError) as error:
        raise SafetyViolationError(f"seed {config.seed} at step {sim.now}: {error!r}") from error
