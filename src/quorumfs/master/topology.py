"""The leader's picture of the volume servers: liveness, what each holds, placement, repair.

Owned by the leader alone and rebuilt by every new leader from heartbeats
(``wire.Heartbeat``): nothing here is replicated. What *is* replicated lives
in the namespace: which volumes each committed chunk is on
(``Chunk.volume_ids``) and every volume server's address (``RegisterVolume``).
This module turns heartbeats plus that namespace into decisions:

- **Placement** (``place``): each chunk goes to ``min(replication, writable)``
  distinct volume servers, chosen at random weighted by free space, preferring
  distinct hosts. The replication code is a MooseFS-style *goal*: a number of
  copies per file, set when the file is created (default 2). A server is
  *writable* when it is alive (a heartbeat within ``dead_after``), has sent a
  full chunk report to this leader (``reported_full``: right after a failover
  a server is "temporarily not writable" until its first full report), and has
  room for a whole chunk.
- **Repair** (``scan``): a committed chunk's copy on volume V is *good* when V
  is alive, reported the chunk and did not report it corrupt; *bad* when V
  reported it corrupt, or reported fully without it (once the report is newer
  than the commit), or has been silent longer than ``replication_delay``;
  *unknown* otherwise (silent for less than that, or no full report yet).
  When good + unknown copies fall short of the goal, one copy is made from a
  good source to a writable server that lacks it (a ``ReplicateTask``, handed
  out with that server's next heartbeat answer); once the target reports the
  chunk, the leader commits the new replica list (``ReplaceChunkReplicas``,
  a compare-and-set). Bad copies are dropped from the list once good +
  unknown copies meet the goal without them.
- **Garbage** (``heartbeat``): a reported chunk that no file holds is deleted
  at once if this leader saw it released, else after ``orphan_grace`` (it may
  belong to an upload not yet committed). A copy of a committed chunk on a
  volume the namespace does not list is adopted when the chunk is short of
  its goal, else deleted as surplus.

Pure: times are parameters (monotonic seconds), randomness comes from the
``random.Random`` it is given, and nothing here does I/O. ``data_service``
drives it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from quorumfs.wire import Heartbeat, ReplicateTask, VolumeInfo

from .commands import Chunk, ReplaceChunkReplicas
from .namespace import Namespace

__all__ = ["RepairPlan", "Topology", "TopologyOptions", "VolumeServer"]

_MAX_TASKS_PER_ANSWER: Final = 16
"""Replication tasks handed to one server per heartbeat (it runs 2 at a time)."""
_MAX_DELETES_PER_ANSWER: Final = 10_000
_REMEMBERED: Final = 100_000
"""How many released chunks, and collected orphans, a leader remembers."""


@dataclass(frozen=True)
class TopologyOptions:
    dead_after: float = 5.0
    """Seconds without a heartbeat after which a server is not alive (nor writable)."""
    replication_delay: float = 60.0
    """Seconds a server must be silent before its copies count as lost and are re-made."""
    orphan_grace: float = 3600.0
    """Seconds an uncommitted chunk may sit on a server before it is deleted: longer than
    any upload takes from its first chunk to its commit."""
    repair_timeout: float = 120.0
    """Seconds after which a replication task that did not complete is given up."""
    min_free: int = 64 * 1024 * 1024
    """A server with less free space than this is not chosen for new chunks."""


@dataclass(eq=False)
class VolumeServer:
    """One volume server as this leader knows it."""

    volume_id: int
    address: str
    last_heartbeat: float | None = None
    """Monotonic time of its last heartbeat to this leader; None: none yet."""
    capacity: int | None = None
    used: int = 0
    free: int = 0
    reported_full: bool = False
    """A full report reached this leader; only then are ``chunks`` complete."""
    reported_at: float | None = None
    """When its chunk picture was last brought up to date (the last heartbeat applied)."""
    chunks: set[int] = field(default_factory=set)
    corrupt: set[int] = field(default_factory=set)
    orphans_seen: dict[int, float] = field(default_factory=dict)
    """Chunk ids no file holds -> when first seen here (for ``orphan_grace``)."""
    to_delete: set[int] = field(default_factory=set)
    to_replicate: dict[int, ReplicateTask] = field(default_factory=dict)

    def alive(self, now: float, options: TopologyOptions) -> bool:
        return self.last_heartbeat is not None and now - self.last_heartbeat < options.dead_after

    def writable(self, now: float, options: TopologyOptions) -> bool:
        return self.alive(now, options) and self.reported_full and self.free >= options.min_free

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0]


@dataclass
class _Repair:
    chunk_id: int
    target: int
    started: float


@dataclass
class RepairPlan:
    """What a scan (or a heartbeat) found: replica lists to commit, and counts to show."""

    commits: list[ReplaceChunkReplicas] = field(default_factory=list)
    under_replicated: int = 0
    lost: list[int] = field(default_factory=list)
    """Chunks with no good or unknown copy left anywhere."""


class Topology:
    """The leader's volume servers for one term (a new leader starts a new one)."""

    def __init__(self, options: TopologyOptions, *, started: float) -> None:
        self.options = options
        self.started = started
        """When this leadership began (monotonic): silence is counted from here for servers
        that have not reported to this leader yet."""
        self.servers: dict[int, VolumeServer] = {}
        self.repairs: dict[int, _Repair] = {}
        """Chunk id -> the copy being made (one at a time per chunk)."""
        self.committed_at: dict[int, float] = {}
        """Chunks committed during this leadership -> when; a server's report older than
        that may not list them yet."""
        self.released: dict[int, None] = {}
        """Chunks this leader saw released: garbage at once wherever reported (insertion-
        ordered, the newest ``_REMEMBERED`` kept; one forgotten is collected as an orphan)."""
        self.collected: dict[int, None] = {}
        """Orphans deleted by this leader (insertion-ordered, the newest ``_REMEMBERED``)."""
        self.under_replicated = 0
        self.dirty = True
        """Something changed that a repair scan should look at."""

    # ------------------------------------------------------------ heartbeats

    def heartbeat(
        self, beat: Heartbeat, volume_id: int, namespace: Namespace, now: float
    ) -> tuple[bool, list[int], list[ReplicateTask], RepairPlan]:
        """Take a heartbeat from ``volume_id``; returns (need a full report, chunks for it
        to delete, copies for it to make, replica lists to commit)."""
        server = self.servers.get(volume_id)
        if server is None:
            server = self.servers[volume_id] = VolumeServer(volume_id, beat.address)
            self.dirty = True
        was_alive = server.alive(now, self.options)
        server.address = beat.address
        server.last_heartbeat = now
        server.capacity, server.used, server.free = beat.capacity, beat.used, beat.free
        if not was_alive:
            self.dirty = True
        for chunk_id in beat.failed:
            repair = self.repairs.get(chunk_id)
            if repair is not None and repair.target == volume_id:
                del self.repairs[chunk_id]
                self.dirty = True

        need_full = False
        if beat.full_report:
            server.chunks = set(beat.added)
            server.corrupt = set(beat.corrupt)
            server.orphans_seen = {
                c: t for c, t in server.orphans_seen.items() if c in server.chunks
            }
            server.reported_full = True
            self.dirty = True
        elif server.reported_full:
            server.chunks.difference_update(beat.removed)
            server.chunks.update(beat.added)
            server.corrupt.difference_update(beat.removed)
            server.corrupt.update(beat.corrupt)
            if beat.corrupt or beat.removed:
                self.dirty = True
        else:
            need_full = True  # a delta against a picture this leader never had
        plan = RepairPlan()
        if not need_full:
            server.reported_at = now
            reported = beat.added if beat.full_report else [*beat.added, *beat.corrupt]
            committed = namespace.chunks_by_id(reported)
            for chunk_id in reported:
                self._check_reported(server, chunk_id, committed.get(chunk_id), now, plan)
            self._collect_orphans(server, now)
        deletes = sorted(server.to_delete)[:_MAX_DELETES_PER_ANSWER]
        server.to_delete.difference_update(deletes)
        tasks = list(server.to_replicate.values())[:_MAX_TASKS_PER_ANSWER]
        for task in tasks:
            del server.to_replicate[task.chunk_id]
        return need_full, deletes, tasks, plan

    def _check_reported(
        self,
        server: VolumeServer,
        chunk_id: int,
        found: tuple[Chunk, int] | None,
        now: float,
        plan: RepairPlan,
    ) -> None:
        """A chunk ``server`` says it holds: garbage, a finished repair, or surplus?"""
        if found is None:
            if chunk_id in self.released:
                server.to_delete.add(chunk_id)
            else:
                server.orphans_seen.setdefault(chunk_id, now)
            return
        chunk, replication = found
        if server.volume_id in chunk.volume_ids:
            return
        repair = self.repairs.get(chunk_id)
        if repair is not None and repair.target == server.volume_id:
            if chunk_id in server.corrupt:
                del self.repairs[chunk_id]
                self.dirty = True
                return
            del self.repairs[chunk_id]
            self._adopt(chunk, server.volume_id, replication, now, plan)
            return
        if repair is None and chunk_id not in server.corrupt:
            kept = self._classify(chunk, now)[0:2]
            if len(kept[0]) + len(kept[1]) < replication:
                self._adopt(chunk, server.volume_id, replication, now, plan)
                return
        server.to_delete.add(chunk_id)  # a surplus copy

    def _adopt(
        self, chunk: Chunk, volume_id: int, replication: int, now: float, plan: RepairPlan
    ) -> None:
        good, unknown, _bad = self._classify(chunk, now)
        keep = [*good, *unknown][: max(replication - 1, 0)] or [*good, *unknown][:1]
        new = (*keep, volume_id)
        if new != chunk.volume_ids:
            plan.commits.append(
                ReplaceChunkReplicas(
                    chunk_id=chunk.chunk_id, expected=chunk.volume_ids, volume_ids=new
                )
            )

    def _collect_orphans(self, server: VolumeServer, now: float) -> None:
        for chunk_id, first_seen in list(server.orphans_seen.items()):
            if now - first_seen >= self.options.orphan_grace:
                del server.orphans_seen[chunk_id]
                server.to_delete.add(chunk_id)
                _remember(self.collected, chunk_id)

    # -------------------------------------------------------------- events

    def committed(self, chunks: Iterable[Chunk], now: float) -> None:
        for chunk in chunks:
            self.committed_at[chunk.chunk_id] = now
            for server in self.servers.values():
                server.orphans_seen.pop(chunk.chunk_id, None)
        self.dirty = True  # a chunk may have fewer copies than its goal

    def release(self, chunks: Iterable[Chunk]) -> None:
        """Chunks no file holds any more: tell their servers to delete them."""
        for chunk in chunks:
            _remember(self.released, chunk.chunk_id)
            self.repairs.pop(chunk.chunk_id, None)
            for volume_id in chunk.volume_ids:
                server = self.servers.get(volume_id)
                if server is not None:
                    server.to_delete.add(chunk.chunk_id)

    def drop_copies(self, chunk_id: int, volume_ids: Iterable[int]) -> None:
        """Copies a replica change dropped from the namespace: surplus, to delete."""
        for volume_id in volume_ids:
            server = self.servers.get(volume_id)
            if server is not None:
                server.to_delete.add(chunk_id)

    def report_bad(self, chunk_id: int, volume_id: int) -> None:
        """A client found ``volume_id``'s copy of ``chunk_id`` bad."""
        server = self.servers.get(volume_id)
        if server is not None and chunk_id in server.chunks:
            server.corrupt.add(chunk_id)
            self.dirty = True

    def was_collected(self, chunk_id: int) -> bool:
        return chunk_id in self.collected

    # ------------------------------------------------------------- placement

    def place(
        self, count: int, replication: int, now: float, rng: random.Random
    ) -> list[list[VolumeServer]]:
        """Volume servers for ``count`` new chunks: ``min(replication, writable)`` distinct
        ones each (an empty list for each when none is writable)."""
        writable = [s for s in self.servers.values() if s.writable(now, self.options)]
        return [_choose(writable, replication, rng) for _ in range(count)]

    def writable_count(self, now: float) -> int:
        return sum(s.writable(now, self.options) for s in self.servers.values())

    # ---------------------------------------------------------------- repair

    def _classify(self, chunk: Chunk, now: float) -> tuple[list[int], list[int], list[int]]:
        """The chunk's listed copies as (good, unknown, bad) volume ids, in list order."""
        good: list[int] = []
        unknown: list[int] = []
        bad: list[int] = []
        committed_at = self.committed_at.get(chunk.chunk_id)
        for volume_id in chunk.volume_ids:
            server = self.servers.get(volume_id)
            silent_since = (
                server.last_heartbeat
                if server is not None and server.last_heartbeat is not None
                else self.started
            )
            if server is not None and chunk.chunk_id in server.corrupt:
                bad.append(volume_id)
            elif server is None or not server.alive(now, self.options):
                lost = now - silent_since >= self.options.replication_delay
                (bad if lost else unknown).append(volume_id)
            elif not server.reported_full:
                unknown.append(volume_id)
            elif chunk.chunk_id in server.chunks:
                good.append(volume_id)
            elif (
                committed_at is not None
                and server.reported_at is not None
                and server.reported_at <= committed_at + 1.0
            ):
                unknown.append(volume_id)  # its report may predate the upload
            else:
                bad.append(volume_id)
        return good, unknown, bad

    def scan(
        self, chunks: Iterable[tuple[Chunk, int]], now: float, rng: random.Random
    ) -> RepairPlan:
        """Look at every committed chunk (with its file's replication) and plan repairs."""
        self.dirty = False
        plan = RepairPlan()
        for repair in list(self.repairs.values()):
            if now - repair.started > self.options.repair_timeout:
                del self.repairs[repair.chunk_id]
                self.dirty = True
        writable = [s for s in self.servers.values() if s.writable(now, self.options)]
        for chunk, replication in chunks:
            self._plan_chunk(
                chunk, replication=replication, writable=writable, now=now, rng=rng, plan=plan
            )
        self.under_replicated = plan.under_replicated
        return plan

    def _plan_chunk(
        self,
        chunk: Chunk,
        *,
        replication: int,
        writable: list[VolumeServer],
        now: float,
        rng: random.Random,
        plan: RepairPlan,
    ) -> None:
        good, unknown, bad = self._classify(chunk, now)
        if not good and not unknown:
            plan.lost.append(chunk.chunk_id)
            return
        if len(good) + len(unknown) >= replication:
            if bad and good:
                plan.commits.append(
                    ReplaceChunkReplicas(
                        chunk_id=chunk.chunk_id,
                        expected=chunk.volume_ids,
                        volume_ids=(*good, *unknown),
                    )
                )
            return
        plan.under_replicated += 1
        if not good or chunk.chunk_id in self.repairs:
            return
        holders = set(chunk.volume_ids)
        candidates = [
            s
            for s in writable
            if s.volume_id not in holders and chunk.chunk_id not in s.to_replicate
        ]
        if not candidates:
            return
        (target,) = _choose(candidates, 1, rng)
        sources = [self.servers[v].address for v in good]
        target.to_replicate[chunk.chunk_id] = ReplicateTask(
            chunk_id=chunk.chunk_id, size=chunk.size, checksum=chunk.checksum, sources=sources
        )
        self.repairs[chunk.chunk_id] = _Repair(chunk.chunk_id, target.volume_id, now)

    # ----------------------------------------------------------------- views

    def infos(self, registered: dict[int, str], now: float) -> list[VolumeInfo]:
        """Every registered volume server, whether or not it reported to this leader."""
        infos = []
        for volume_id, address in sorted(registered.items()):
            server = self.servers.get(volume_id)
            if server is None:
                infos.append(
                    VolumeInfo(
                        volume_id=volume_id,
                        address=address,
                        alive=False,
                        writable=False,
                        last_heartbeat_ms=None,
                        capacity=None,
                        used=0,
                        free=0,
                        chunks=0,
                        corrupt=0,
                    )
                )
                continue
            last = server.last_heartbeat
            infos.append(
                VolumeInfo(
                    volume_id=volume_id,
                    address=server.address,
                    alive=server.alive(now, self.options),
                    writable=server.writable(now, self.options),
                    last_heartbeat_ms=None if last is None else int((now - last) * 1000),
                    capacity=server.capacity,
                    used=server.used,
                    free=server.free,
                    chunks=len(server.chunks),
                    corrupt=len(server.corrupt),
                )
            )
        return infos

    def order_for_reading(self, volume_ids: Iterable[int], now: float) -> list[int]:
        """``volume_ids`` with the servers alive here first (stable otherwise)."""
        ids = list(volume_ids)
        return sorted(
            ids, key=lambda v: not (v in self.servers and self.servers[v].alive(now, self.options))
        )


def _remember(memory: dict[int, None], chunk_id: int) -> None:
    memory[chunk_id] = None
    if len(memory) > _REMEMBERED:
        del memory[next(iter(memory))]


def _choose(candidates: list[VolumeServer], count: int, rng: random.Random) -> list[VolumeServer]:
    """Up to ``count`` distinct servers, weighted by free space, distinct hosts first."""
    pool = list(candidates)
    chosen: list[VolumeServer] = []
    hosts: set[str] = set()
    while pool and len(chosen) < count:
        fresh = [s for s in pool if s.host not in hosts] or pool
        weights = [max(s.free, 1) for s in fresh]
        pick = rng.choices(fresh, weights=weights)[0]
        chosen.append(pick)
        hosts.add(pick.host)
        pool.remove(pick)
    return chosen
