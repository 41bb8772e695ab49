"""The masters' side of the data path: heartbeats, chunk allocation, commits, reads, repair.

``DataService`` sits beside ``RaftMasterService`` and uses it through the
``MasterService`` contract (``execute``, ``read_barrier``, the namespace). It
owns the leader's ``Topology`` (rebuilt in each term from heartbeats), the
range of chunk ids the leader reserved, the write-token key, and the repair
loop. ``data_api`` turns HTTP into calls on it; the wire shapes are
``quorumfs.wire``'s.

Theory of operation:

- **Chunk ids** are reserved on the leader in ranges of 4,096
  (``AllocateChunkIds``, one Raft entry per range) and handed out from memory,
  so an allocation costs no Raft round. Ids of a range a leader did not hand
  out before it lost leadership are never used: ids are plentiful.
- **Allocation** places each chunk (``Topology.place``) and signs a write
  token per target (``tokens.WriteTokenKey``, valid ``token_ttl``).
- **Clock**: token expiries, the mtime of a commit that gives none, and the
  leader's time in every heartbeat answer (``leader_time_unix_ms``, by which
  volume servers judge the expiries) come from the master's ``WallClock``,
  the one fault tests may shift. Liveness, placement and repair timing use
  the monotonic clock.
- **Commit** is one ``CommitContent`` entry (with ``create`` for a put). A
  commit naming a chunk this leader collected as an orphan is refused
  (ECONFLICT): the upload took longer than the orphan grace.
- **Released chunks** (a commit that replaced content, a delete, a rename
  over a file) reach the topology through the state machine's apply listener,
  on the leader only; their servers delete them with their next heartbeat.
  A released chunk a new leader never heard of is collected as an orphan.
- **Repair**: a background task scans the namespace when something changed
  (a server died or came back, a corrupt copy was reported, a commit landed
  with fewer copies than its goal) and at least every ``scan_interval``;
  it commits replica lists (``ReplaceChunkReplicas``) as copies complete.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from quorumfs.runtime.clock import WallClock
from quorumfs.tokens import WriteGrant, WriteTokenKey, volume_token
from quorumfs.wire import (
    AllocateRequest,
    AllocateResponse,
    ChunkGrant,
    ChunkLocation,
    CommitRequest,
    CommitResponse,
    FileContent,
    Heartbeat,
    HeartbeatResponse,
    VolumesResponse,
    WriteTarget,
)

from .commands import (
    DEFAULT_FILE_MODE,
    DEFAULT_REPLICATION,
    AllocateChunkIds,
    Chunk,
    Command,
    CommitContent,
    RegisterVolume,
)
from .contract import MasterService, NotLeaderError, ServiceUnavailableError
from .namespace import MAX_CHUNK_IDS_PER_ALLOCATION, Namespace
from .results import (
    ContentCommitted,
    Deleted,
    ErrorCode,
    NamespaceError,
    RefusedError,
    RegisteredVolume,
    Renamed,
    ReplicasReplaced,
    Result,
)
from .topology import RepairPlan, Topology, TopologyOptions

__all__ = ["DataOptions", "DataService"]

logger = logging.getLogger("quorumfs.master.data")

_SCAN_SLICE: Final = 5_000
"""Chunks looked at between two yields to the event loop during a repair scan."""


@dataclass(frozen=True)
class DataOptions:
    pulse: float = 1.0
    """Seconds between a volume server's heartbeats (told to them in every answer)."""
    token_ttl: float = 120.0
    """Seconds a write token stays valid."""
    scan_interval: float = 10.0
    """The longest time between two repair scans (a change triggers one sooner)."""
    scan_min_gap: float = 0.5
    """The shortest time between two repair scans."""
    writable_wait: float = 1.5
    """Seconds an allocation waits for a volume server to become writable (after a
    leader change) before answering 503."""
    topology: TopologyOptions = field(default_factory=TopologyOptions)


class DataService:
    def __init__(
        self,
        service: MasterService,
        *,
        secret: bytes,
        leader_term: Callable[[], int | None],
        masters: Callable[[], list[str]],
        options: DataOptions | None = None,
        clock: WallClock | None = None,
    ) -> None:
        self.service = service
        self.options = options or DataOptions()
        self.clock = clock or WallClock()
        """This master's wall clock: token expiries, mtimes, the time told to volume servers."""
        self._leader_term = leader_term
        """The current term while this master leads, else None."""
        self._masters = masters
        self._token_key = WriteTokenKey(secret)
        self._volume_token = volume_token(secret)
        self._random = random.Random()
        self._topology: Topology | None = None
        self._term: int | None = None
        # Invariant: ids in [_next_id, _end_id) were allocated in term _ids_term and not handed out.
        self._next_id = self._end_id = 0
        self._ids_term: int | None = None
        self._ids_lock = asyncio.Lock()
        self._writable = asyncio.Condition()
        """Notified when a volume server may have become writable (a full report)."""
        self._register_lock = asyncio.Lock()
        self._repair_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        """Replica commits started from heartbeats (kept referenced until done)."""
        self._wake = asyncio.Event()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._repair_task = asyncio.create_task(self._repair_loop(), name="quorumfs-repair")

    async def close(self) -> None:
        tasks = [*self._background, *([self._repair_task] if self._repair_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def volume_token_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self._volume_token)

    def topology(self) -> Topology:
        """This leadership's topology (a fresh one in a new term); NotLeaderError elsewhere."""
        term = self._leader_term()
        if term is None:
            raise NotLeaderError(self.service.leader_http())
        if self._topology is None or self._term != term:
            self._topology = Topology(self.options.topology, started=time.monotonic())
            self._term = term
            self._wake.set()
            logger.info("leading term %d: rebuilding the volume picture from heartbeats", term)
        return self._topology

    def current_topology(self) -> Topology | None:
        """This leadership's topology if it exists, else None; unlike ``topology()`` it
        starts nothing (for metrics: reading it changes no state)."""
        term = self._leader_term()
        if term is None or self._term != term:
            return None
        return self._topology

    def on_applied(self, command: Command, result: Result[Any]) -> None:
        """The state machine's apply listener: released and committed chunks, leader only."""
        if self._topology is None or self._leader_term() != self._term or result.value is None:
            return
        value = result.value
        if isinstance(value, Deleted | Renamed | ContentCommitted):
            self._topology.release(value.released_chunks)
        elif isinstance(value, ReplicasReplaced):
            self._topology.drop_copies(value.chunk.chunk_id, value.dropped)
        if isinstance(command, CommitContent) and isinstance(value, ContentCommitted):
            self._topology.committed(command.chunks, time.monotonic())
            if any(len(c.volume_ids) < value.stat.replication for c in command.chunks):
                self._wake.set()

    # --------------------------------------------------------------- heartbeats

    async def heartbeat(self, beat: Heartbeat) -> HeartbeatResponse:
        topology = self.topology()
        term = self._term
        assert term is not None
        volume_id = await self._register(beat)
        now = time.monotonic()
        need_full, deletes, tasks, plan = topology.heartbeat(
            beat, volume_id, self.service.namespace, now
        )
        if topology.dirty:
            self._wake.set()
        if beat.full_report:  # this server may have become writable
            async with self._writable:
                self._writable.notify_all()
        if plan.commits:
            task = asyncio.create_task(self._commit_replicas(plan))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return HeartbeatResponse(
            volume_id=volume_id,
            leader_term=term,
            pulse_ms=round(self.options.pulse * 1000),
            need_full_report=need_full,
            delete=deletes,
            replicate=tasks,
            masters=self._masters(),
            leader_time_unix_ms=self.clock.time_ms(),
        )

    async def _register(self, beat: Heartbeat) -> int:
        """The server's volume id, registering it (or its new address) first if needed."""
        namespace = self.service.namespace
        if beat.volume_id and namespace.volume_address(beat.volume_id) == beat.address:
            return beat.volume_id
        async with self._register_lock:
            if beat.volume_id and namespace.volume_address(beat.volume_id) == beat.address:
                return beat.volume_id
            result = await self.service.execute(
                RegisterVolume(address=beat.address, volume_id=beat.volume_id)
            )
        registered = result.unwrap()
        assert isinstance(registered, RegisteredVolume)
        if beat.volume_id == 0:
            logger.info("registered volume server %d at %s", registered.volume_id, beat.address)
        else:
            logger.info("volume server %d moved to %s", registered.volume_id, beat.address)
        return registered.volume_id

    # --------------------------------------------------------------- allocation

    async def allocate(self, request: AllocateRequest) -> AllocateResponse:
        topology = self.topology()
        namespace = self.service.namespace
        replication = request.replication or DEFAULT_REPLICATION
        existing = namespace.stat(request.path)
        if existing.value is not None and existing.value.replication:
            replication = existing.value.replication
        if topology.writable_count(time.monotonic()) == 0:
            await self._wait_for_writable(topology)
        now = time.monotonic()
        placements = topology.place(request.count, replication, now, self._random)
        if not placements or not placements[0]:
            known = len(namespace.volumes())
            raise ServiceUnavailableError(
                f"no volume server can take writes now ({known} registered, "
                f"{topology.writable_count(now)} writable: alive, fully reported to this "
                "leader and not full); after a failover they report within a heartbeat",
                retry_after=self.options.pulse,
            )
        chunk_ids = await self._take_chunk_ids(request.count)
        expires = self.clock.time_ms() + round(self.options.token_ttl * 1000)
        grants = []
        for chunk_id, servers in zip(chunk_ids, placements, strict=True):
            targets = [
                WriteTarget(
                    volume_id=server.volume_id,
                    address=server.address,
                    token=self._token_key.sign(WriteGrant(chunk_id, server.volume_id, expires)),
                )
                for server in servers
            ]
            grants.append(ChunkGrant(chunk_id=chunk_id, targets=targets))
        return AllocateResponse(chunks=grants, replication=replication, expires_unix_ms=expires)

    async def _wait_for_writable(self, topology: Topology) -> None:
        """Hold an allocation briefly while no server is writable: right after a leader
        change the servers become writable with their next heartbeat, and an answer of
        "retry after 1 s" (Retry-After is whole seconds) would cost the client more."""
        try:
            async with self._writable, asyncio.timeout(self.options.writable_wait):
                await self._writable.wait_for(lambda: topology.writable_count(time.monotonic()) > 0)
        except TimeoutError:
            pass

    async def _take_chunk_ids(self, count: int) -> list[int]:
        async with self._ids_lock:
            term = self._term
            if self._ids_term != term or self._end_id - self._next_id < count:
                result = await self.service.execute(
                    AllocateChunkIds(count=MAX_CHUNK_IDS_PER_ALLOCATION)
                )
                allocated = result.unwrap().chunk_ids
                self._next_id, self._end_id = allocated[0], allocated[-1] + 1
                self._ids_term = term
            first = self._next_id
            self._next_id += count
            return list(range(first, first + count))

    # ------------------------------------------------------------------ commits

    async def commit(self, request: CommitRequest) -> CommitResponse:
        topology = self.topology()
        for chunk in request.chunks:
            if topology.was_collected(chunk.chunk_id):
                raise RefusedError(
                    NamespaceError(
                        ErrorCode.EINVAL,
                        f"chunk {chunk.chunk_id} was deleted as an orphan before this commit "
                        "(the upload took longer than the orphan grace): upload the content "
                        "again",
                        request.path,
                    )
                )
        command = CommitContent(
            path=request.path,
            chunks=tuple(request.chunks),
            size=request.size,
            mtime=request.mtime if request.mtime is not None else self.clock.time_ns(),
            expected_version=request.expected_version,
            expected_inode=request.expected_inode,
            create=request.create,
            mode=request.mode if request.mode is not None else DEFAULT_FILE_MODE,
            owner=request.owner or "root",
            replication=request.replication or DEFAULT_REPLICATION,
        )
        result = await self.service.execute(command)
        committed = result.unwrap()
        assert isinstance(committed, ContentCommitted)
        return CommitResponse(stat=committed.stat, released_chunks=len(committed.released_chunks))

    # -------------------------------------------------------------------- reads

    async def file_content(self, path: str) -> Result[FileContent]:
        await self.service.read_barrier()
        namespace = self.service.namespace
        found = namespace.lookup_chunks(path)
        if found.error is not None:
            return Result(error=found.error)
        content = found.value
        assert content is not None
        stat = namespace.stat(path).unwrap()
        addresses = namespace.volumes()
        topology = self._topology if self._leader_term() == self._term else None
        now = time.monotonic()
        chunks = []
        for chunk in content.chunks:
            volume_ids = (
                topology.order_for_reading(chunk.volume_ids, now)
                if topology is not None
                else list(chunk.volume_ids)
            )
            chunks.append(
                ChunkLocation(
                    chunk_id=chunk.chunk_id,
                    offset=chunk.offset,
                    size=chunk.size,
                    checksum=chunk.checksum,
                    volume_ids=volume_ids,
                    addresses=[addresses.get(v, "") for v in volume_ids],
                )
            )
        return Result(
            value=FileContent(
                inode=content.inode,
                version=content.version,
                size=content.size,
                mtime=stat.mtime,
                chunks=chunks,
            )
        )

    def report_bad_chunk(self, chunk_id: int, volume_id: int, reason: str) -> None:
        logger.warning(
            "a client reports chunk %d on volume %d bad: %s", chunk_id, volume_id, reason
        )
        topology = self.topology()
        topology.report_bad(chunk_id, volume_id)
        self._wake.set()

    def volumes(self) -> VolumesResponse:
        topology = self.topology()
        return VolumesResponse(
            volumes=topology.infos(self.service.namespace.volumes(), time.monotonic()),
            under_replicated=topology.under_replicated,
            repairs_in_flight=len(topology.repairs),
        )

    # ------------------------------------------------------------------- repair

    async def _repair_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.options.scan_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                topology = self.topology()
            except NotLeaderError:
                self._topology = None
                continue
            try:
                await self._scan(topology)
            except Exception:
                logger.exception("repair scan failed; retrying at the next one")
            await asyncio.sleep(self.options.scan_min_gap)

    async def _scan(self, topology: Topology) -> None:
        namespace = self.service.namespace
        chunk_ids = namespace.chunk_ids()
        plan = RepairPlan()
        now = time.monotonic()
        for start in range(0, len(chunk_ids), _SCAN_SLICE):
            if topology is not self._topology:
                return  # leadership changed meanwhile
            part = topology.scan(
                _committed(namespace, chunk_ids[start : start + _SCAN_SLICE]), now, self._random
            )
            plan.commits.extend(part.commits)
            plan.lost.extend(part.lost)
            plan.under_replicated += part.under_replicated
            await asyncio.sleep(0)
        topology.under_replicated = plan.under_replicated
        if plan.lost:
            logger.warning(
                "%d chunks have no live copy (first: %s); they come back when their volume "
                "servers do",
                len(plan.lost),
                plan.lost[:5],
            )
        await self._commit_replicas(plan)

    async def _commit_replicas(self, plan: RepairPlan) -> None:
        for command in plan.commits:
            try:
                result = await self.service.execute(command)
            except (NotLeaderError, ServiceUnavailableError) as error:
                logger.info(
                    "replica change for chunk %d not committed: %s", command.chunk_id, error
                )
                return
            if result.error is not None:
                logger.info(
                    "replica change for chunk %d refused: %s",
                    command.chunk_id,
                    result.error.message,
                )
                continue
            logger.info("chunk %d is now on volumes %s", command.chunk_id, list(command.volume_ids))


def _committed(namespace: Namespace, chunk_ids: Sequence[int]) -> Iterator[tuple[Chunk, int]]:
    yield from namespace.chunks_by_id(chunk_ids).values()
