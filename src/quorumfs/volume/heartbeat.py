"""A volume server's side of the masters' protocol: heartbeats, and the work they bring back.

Owns what the masters know of this server and when they learned it: the
volume id (``IdentityFile``), the chunks added and removed since the last
acknowledged heartbeat (``ChunkChanges``, recorded by the HTTP handlers and the
task runner), the heartbeat loop itself (``HeartbeatLoop``), and the work the
leader hands out in its answers (``TaskRunner``: deletes, copies from other
volume servers) plus the periodic compaction of the store. Also the bridge
that streams an aiohttp body into the store's worker thread (``StreamSource``;
``http_api`` uses it for uploads larger than ``http_api.SMALL_BODY``). Leaves to
others: finding the leader and riding through a failover (the ``MasterLink``, in
production ``quorumfs.client.AsyncMasterClient``), serving chunks
(``http_api``), and storing them (``store``). The shapes are ``quorumfs.wire``'s.

Theory of operation (``HeartbeatLoop.beat``):

- Every pulse (1 s until the leader's ``pulse_ms`` says otherwise) the loop
  sends a ``Heartbeat`` with the store's numbers. Its deadline is one pulse
  (plus a second per 200,000 chunks for a full report, up to ``FULL_REPORT_EXTRA``), so a dead
  or hung leader is given up within one interval and the next heartbeat goes
  to another master (the link follows its 307 to the new leader): a server
  never keeps calling a leader that is gone.
- A *full report* (every chunk in ``added``, every corrupt chunk) is sent on
  the first heartbeat, after any heartbeat that failed, and when the answer
  said ``need_full_report``. Otherwise the heartbeat carries the delta since
  the last acknowledged one. ``ChunkChanges`` keeps, for every chunk whose
  state the masters may not know, its current state; a delta that was sent and
  acknowledged is dropped from it only where nothing changed since it was
  taken, so a lost answer loses nothing (the next heartbeat is full anyway).
- Changes are recorded after the store operation returned (in the worker
  thread that did it, so a cancelled request still records its write), and the
  snapshot of changes is taken before the store's chunk list: a full report
  may then mention a change twice (once listed, once in the next delta), which
  is harmless, but never misses one.
- The first volume id the leader assigns is written to ``identity.json``
  (atomically, fsynced) before it is used; a restarted server sends it. An
  answer naming another id than the stored one is refused (the heartbeat counts
  as failed, with a warning): this server belongs to another cluster, or its
  directory was copied.
- Write tokens expire on the leader's wall clock, and this server judges them
  by that clock, not its own (``leader_now_unix_ms``): every acknowledged
  answer carries the leader's time (``leader_time_unix_ms``), and the loop
  keeps ``leader_clock_offset_ms``, that time minus this server's wall clock
  when the answer arrived (0 before the first, and after an answer without
  it). A leader whose clock is an hour off thus neither fails every write
  (401) nor makes tokens live an hour longer; this server's clock may jump
  too, the next heartbeat measures the offset again. The offset trails the
  leader by the answer's transit time, under one pulse: a token may live
  that much longer, never less. A large change of the offset is a warning.
- Tasks in an answer run in the background (``TaskRunner``): deletes as one
  batch with one fsync, copies two at a time, each from its sources in order,
  checked against the size and CRC-32C the leader gave. A copy that fails on
  every source is reported in ``failed``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import aiohttp

from quorumfs.client import parse_address, parse_masters
from quorumfs.runtime.wal.fileio import Durability, atomic_write
from quorumfs.wire import (
    CHECKSUM_HEADER,
    MAX_CHUNK_SIZE,
    Heartbeat,
    HeartbeatResponse,
    ReplicateTask,
    VolumeStatus,
)

from .errors import (
    ChecksumMismatchError,
    ChunkNotFoundError,
    SourceSizeError,
    StoreError,
)
from .store import DEFAULT_GARBAGE_RATIO, ChunkStore, CompactionResult

__all__ = [
    "DEFAULT_COMPACTION_INTERVAL",
    "DEFAULT_PULSE",
    "REPLICATION_CONCURRENCY",
    "ChunkChanges",
    "HeartbeatLoop",
    "IdentityFile",
    "MasterLink",
    "MasterList",
    "Pending",
    "StreamSource",
    "TaskRunner",
    "TransferError",
    "measure",
    "run_on_loop",
]

logger = logging.getLogger("quorumfs.volume")

T = TypeVar("T")

DEFAULT_PULSE: Final = 1.0
"""Seconds between heartbeats until the leader's ``pulse_ms`` replaces it."""
DEFAULT_COMPACTION_INTERVAL: Final = 60.0
"""Seconds between looks for volumes worth compacting."""
FULL_REPORT_EXTRA: Final = 10.0
"""At most this many seconds more than a pulse for a heartbeat carrying the full chunk
list: one more second per 200,000 chunks (a small store's report gets one pulse)."""
REPLICATION_CONCURRENCY: Final = 2
"""Copies from other volume servers that run at once."""
_MIN_PULSE: Final = 0.05
_MAX_PULSE: Final = 60.0
"""Bounds on the leader's ``pulse_ms``: neither a busy loop nor a server that seems dead."""
_BODY_TIMEOUT: Final = 30.0
"""Seconds a streamed body may stall before the transfer is given up."""
CLOCK_OFFSET_WARNING_MS: Final = 5_000
"""A change of ``leader_clock_offset_ms`` by more than this (milliseconds) is logged as a
warning: the leader's clock (or this server's) jumped, or another leader's differs."""


class MasterLink(Protocol):
    """The way to the leader: ``quorumfs.client.AsyncMasterClient`` is one."""

    @property
    def leader(self) -> str | None:
        """The master believed to lead (the one the last heartbeat reached), if known."""
        ...

    async def heartbeat(self, beat: Heartbeat, *, deadline: float) -> HeartbeatResponse:
        """Send ``beat`` to the leader within ``deadline`` seconds; ``OSError`` when it
        could not be delivered (``quorumfs.client`` errors are ``OSError``s)."""
        ...


# ------------------------------------------------------------------ small pieces


class MasterList:
    """A ``quorumfs.client.MasterSource``: the masters given (``--mserver``), then the
    others the leader named in its last answer (so a master added later is found)."""

    def __init__(self, configured: str | Sequence[str]) -> None:
        self._configured = parse_masters(configured)
        self._learned: tuple[str, ...] = ()
        """Masters the leader named that were not configured; replaced by each answer."""

    @property
    def current(self) -> tuple[str, ...]:
        return self._configured + self._learned

    async def addresses(self) -> Sequence[str]:
        return self.current

    def learn(self, masters: Sequence[str]) -> None:
        learned: list[str] = []
        for text in masters:
            try:
                address = parse_address(text)
            except ValueError:
                continue  # "" for a master whose address the leader does not know
            if address not in self._configured and address not in learned:
                learned.append(address)
        if tuple(learned) != self._learned:
            self._learned = tuple(learned)
            logger.info("masters: %s", ", ".join(self.current))

    def __repr__(self) -> str:
        return f"MasterList({','.join(self.current)!r})"


class IdentityFile:
    """``identity.json``: the volume id the leader assigned, kept forever."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self._durability = Durability(fsync)

    def load(self) -> int:
        """The stored volume id; 0 when none was assigned yet. ``ValueError`` if unreadable."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return 0
        try:
            volume_id = json.loads(text)["volume_id"]
            if not isinstance(volume_id, int) or isinstance(volume_id, bool) or volume_id < 1:
                raise TypeError(f"volume_id is {volume_id!r}, not a positive integer")
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{self.path} is unreadable ({error}); restore it, or move it aside to register "
                "this server again under a new id (its chunks are then re-reported)"
            ) from error
        return volume_id

    def save(self, volume_id: int) -> None:
        """Store ``volume_id`` durably (temp file, fsync, rename, fsync the directory)."""
        text = json.dumps({"volume_id": volume_id}) + "\n"
        atomic_write(self.path, text.encode(), self._durability)


@dataclass(frozen=True)
class Pending:
    """A snapshot of ``ChunkChanges``: what one heartbeat reports."""

    states: Mapping[int, bool]
    """Chunk id -> held (True: added, False: removed)."""
    failed: frozenset[int]

    @property
    def added(self) -> list[int]:
        return sorted(c for c, held in self.states.items() if held)

    @property
    def removed(self) -> list[int]:
        return sorted(c for c, held in self.states.items() if not held)


class ChunkChanges:
    """Changes the masters have not acknowledged yet. Thread-safe: recorded from worker
    threads right after the store operation returned."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[int, bool] = {}
        """Chunk id -> held, for each chunk whose state the masters may not know."""
        self._failed: set[int] = set()
        """Replication tasks that failed and were not reported in an acknowledged heartbeat."""

    def added(self, chunk_id: int) -> None:
        with self._lock:
            self._states[chunk_id] = True
            self._failed.discard(chunk_id)

    def removed(self, chunk_id: int) -> None:
        with self._lock:
            self._states[chunk_id] = False

    def failed(self, chunk_id: int) -> None:
        with self._lock:
            self._failed.add(chunk_id)

    def pending(self) -> Pending:
        with self._lock:
            return Pending(dict(self._states), frozenset(self._failed))

    def acknowledge(self, sent: Pending) -> None:
        """The masters applied ``sent``: forget what has not changed since."""
        with self._lock:
            for chunk_id, held in sent.states.items():
                if self._states.get(chunk_id) == held:
                    del self._states[chunk_id]
            self._failed -= sent.failed


class TransferError(Exception):
    """A streamed body broke off: the connection dropped, or it stalled too long."""


class StreamSource:
    """An aiohttp body as the ``Readable`` that ``ChunkStore.write_chunk`` reads in a worker
    thread: each ``read(n)`` runs ``readexactly(n)`` on the event loop and waits for it.

    A body that ends early gives its last bytes and then ``b""`` (the store then refuses
    the short chunk with ``SourceSizeError``); one that stalls for ``timeout`` seconds or
    whose connection drops raises ``TransferError``. Never call it from the loop's thread.
    """

    def __init__(
        self,
        stream: aiohttp.StreamReader,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout: float = _BODY_TIMEOUT,
    ) -> None:
        self._stream = stream
        self._loop = loop
        self._timeout = timeout
        self.received = 0
        """Bytes read so far."""

    def read(self, n: int = -1, /) -> bytes:
        if n < 0:
            raise ValueError("StreamSource reads in bounded pieces: give n >= 0")
        try:
            piece = run_on_loop(self._loop, self._read(n), self._timeout)
        except (OSError, aiohttp.ClientError, RuntimeError) as exc:  # RuntimeError: loop closed
            raise TransferError(
                f"the body broke off after {self.received} bytes ({exc or type(exc).__name__})"
            ) from exc
        self.received += len(piece)
        return piece

    async def _read(self, n: int) -> bytes:
        try:
            return await self._stream.readexactly(n)
        except asyncio.IncompleteReadError as short:
            return short.partial


def run_on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], timeout: float) -> T:
    """Run ``coro`` on ``loop`` from a worker thread and wait for its result; on a timeout
    the coroutine is cancelled and ``TimeoutError`` raised."""
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise TimeoutError(f"no progress within {timeout:g} s") from None


def measure(store: ChunkStore, directory: Path) -> tuple[int | None, int, int, int]:
    """(capacity, used, free, chunk count) as a heartbeat reports them: ``free`` is the
    lesser of the capacity left and the disk's free space, 0 once writes are refused."""
    usage = store.usage()
    disk = os.statvfs(directory)
    free = disk.f_bavail * disk.f_frsize
    if usage.free_bytes is not None:
        free = min(free, usage.free_bytes)
    if not store.writable:
        free = 0
    return usage.max_bytes, usage.total_bytes, free, usage.chunk_count


# ------------------------------------------------------------------ task runner


class _SourceError(Exception):
    """A replication source that cannot give the chunk (the next one is tried)."""


class TaskRunner:
    """Runs the leader's tasks and the store's compaction in the background.

    ``submit`` never waits; ``wait_idle`` waits until everything submitted is done.
    A chunk with a task queued or running is not given a second one.
    """

    def __init__(
        self,
        store: ChunkStore,
        changes: ChunkChanges,
        *,
        concurrency: int = REPLICATION_CONCURRENCY,
        body_timeout: float = _BODY_TIMEOUT,
    ) -> None:
        self._store = store
        self._changes = changes
        self._slots = asyncio.Semaphore(concurrency)
        self._body_timeout = body_timeout
        self._busy: set[int] = set()
        """Chunk ids with a task queued or running."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        """For copies; opened at the first one."""
        self.copies_done = 0
        """Chunks copied here from another server (for metrics, like the two below)."""
        self.copies_failed = 0
        """Copies that failed on every source."""
        self.chunks_deleted = 0
        """Chunks deleted as the leader asked."""

    def submit(self, deletes: Sequence[int], copies: Sequence[ReplicateTask]) -> None:
        fresh = [c for c in dict.fromkeys(deletes) if c not in self._busy]
        if fresh:
            self._start(fresh, self._delete(fresh))
        for task in copies:
            if task.chunk_id not in self._busy:
                self._start([task.chunk_id], self._replicate(task))

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def close(self) -> None:
        """Cancel what is running and close the connections."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _start(self, chunk_ids: list[int], work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                logger.exception("a task for chunks %s failed", chunk_ids)
            finally:
                self._busy.difference_update(chunk_ids)

        self._busy.update(chunk_ids)
        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- deletes

    async def _delete(self, chunk_ids: list[int]) -> None:
        try:
            await asyncio.to_thread(self._delete_all, chunk_ids)
        except StoreError as exc:
            logger.error("could not delete chunks %s: %s", chunk_ids, exc)
        else:
            self.chunks_deleted += len(chunk_ids)

    def _delete_all(self, chunk_ids: list[int]) -> None:
        """Delete every chunk with one fsync; a chunk not held counts as removed too."""
        for chunk_id in chunk_ids:
            self._store.delete_chunk(chunk_id, sync=False)
        self._store.sync()
        for chunk_id in chunk_ids:
            self._changes.removed(chunk_id)
        logger.debug("deleted chunks %s", chunk_ids)

    # -- copies

    async def _replicate(self, task: ReplicateTask) -> None:
        async with self._slots:
            if await asyncio.to_thread(self._holds, task):
                self._changes.added(task.chunk_id)
                return
            reasons: list[str] = []
            for source in task.sources:
                try:
                    await self._copy_from(source, task)
                except (
                    _SourceError,
                    ChecksumMismatchError,
                    SourceSizeError,
                    TransferError,
                ) as exc:
                    reasons.append(f"{source}: {exc}")
                except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
                    reasons.append(f"{source}: {exc or type(exc).__name__}")
                except StoreError as exc:  # full or failed: no other source can help
                    reasons.append(f"this server: {exc}")
                    break
                else:
                    logger.info("copied chunk %d from %s", task.chunk_id, source)
                    self.copies_done += 1
                    return
        logger.warning(
            "could not copy chunk %d (%s): %s",
            task.chunk_id,
            "no source given" if not task.sources else "every source failed",
            "; ".join(reasons),
        )
        self.copies_failed += 1
        self._changes.failed(task.chunk_id)

    def _holds(self, task: ReplicateTask) -> bool:
        """Whether a sound copy with the wanted checksum is here already."""
        try:
            info = self._store.stat(task.chunk_id)
        except ChunkNotFoundError:
            return False
        return info.crc == task.checksum and task.chunk_id not in self._store.corrupt_chunks()

    async def _copy_from(self, source: str, task: ReplicateTask) -> None:
        if not 0 <= task.size <= MAX_CHUNK_SIZE:
            raise _SourceError(f"the task's size {task.size} is not a chunk's")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(sock_connect=5, sock_read=self._body_timeout)
            )
        async with self._session.get(f"http://{source}/chunks/{task.chunk_id}") as response:
            if response.status != 200:
                raise _SourceError(f"answered HTTP {response.status}")
            if response.content_length != task.size:
                raise _SourceError(
                    f"has {response.content_length} bytes, not the expected {task.size}"
                )
            crc = response.headers.get(CHECKSUM_HEADER)
            if crc is not None and crc != str(task.checksum):
                raise _SourceError(f"has CRC-32C {crc}, not the expected {task.checksum}")
            body = StreamSource(
                response.content, asyncio.get_running_loop(), timeout=self._body_timeout
            )
            await asyncio.to_thread(self._store_copy, task, body)

    def _store_copy(self, task: ReplicateTask, body: StreamSource) -> None:
        self._store.write_chunk(task.chunk_id, body, task.size, expected_crc=task.checksum)
        self._changes.added(task.chunk_id)

    # -- compaction

    async def compact(self, min_garbage_ratio: float = DEFAULT_GARBAGE_RATIO) -> list[int]:
        """Compact every volume with enough garbage; the volumes compacted."""
        done: list[int] = []
        for volume_id in await asyncio.to_thread(
            self._store.compaction_candidates, min_garbage_ratio
        ):
            try:
                result = await asyncio.to_thread(self._store.compact, volume_id)
            except StoreError as exc:
                logger.error("could not compact volume %d: %s", volume_id, exc)
                continue
            self._dropped(result)
            done.append(volume_id)
        return done

    async def compact_forever(self, interval: float = DEFAULT_COMPACTION_INTERVAL) -> None:
        """``compact()`` every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.compact()
            except Exception:  # a bug, or the disk: keep the server up, try again later
                logger.exception("compaction failed")

    def _dropped(self, result: CompactionResult) -> None:
        """Corrupt chunks a compaction dropped are no longer held (the store keeps them
        in ``corrupt_chunks``, so heartbeats report them as corrupt too)."""
        for chunk_id in result.corrupt_dropped:
            self._changes.removed(chunk_id)


# --------------------------------------------------------------- heartbeat loop


@dataclass(frozen=True)
class _Survey:
    """The store as one heartbeat describes it."""

    capacity: int | None
    used: int
    free: int
    chunk_count: int
    chunks: list[int]
    """Every chunk id (a full report only, else empty)."""
    corrupt: frozenset[int]


class HeartbeatLoop:
    """Keeps the leader informed of this server, and runs what it asks (see the module
    docstring). ``run()`` beats every pulse until cancelled; ``beat()`` is one heartbeat."""

    def __init__(
        self,
        store: ChunkStore,
        link: MasterLink,
        *,
        address: str,
        directory: Path,
        identity: IdentityFile,
        masters: MasterList | None = None,
        pulse: float = DEFAULT_PULSE,
    ) -> None:
        self.store = store
        self.address = address
        self.directory = directory
        """The server's directory: shown in its status, and where the disk's free space
        is measured."""
        self.pulse = pulse
        """Seconds between heartbeats, and each heartbeat's deadline."""
        self.changes = ChunkChanges()
        self.tasks = TaskRunner(store, self.changes)
        self._link = link
        self._identity = identity
        self._masters = masters
        self._volume_id = identity.load()
        """0 until the leader assigned an id (and it was stored)."""
        self._full_needed = True
        """The next heartbeat is a full report (the first, after a failure, when asked)."""
        self._reported_corrupt: frozenset[int] = frozenset()
        """Corrupt chunks the masters acknowledged hearing of."""
        self._leader: tuple[str | None, int] | None = None
        """(master, term) of the last acknowledged heartbeat."""
        self._last_ack: float | None = None
        """``time.monotonic()`` of the last acknowledged heartbeat."""
        self.leader_clock_offset_ms = 0
        """The leader's wall clock minus this server's, in milliseconds, as the last
        acknowledged heartbeat found it (0 before the first): ``leader_now_unix_ms``."""
        self._failures = 0
        """Heartbeats failed in a row."""
        self.acknowledged_total = 0
        """Heartbeats the leader acknowledged, ever (for metrics)."""
        self.failed_total = 0
        """Heartbeats that failed, ever (for metrics)."""

    @property
    def volume_id(self) -> int:
        """This server's id; 0 until the leader assigned one (writes are refused till then)."""
        return self._volume_id

    @property
    def full_report_due(self) -> bool:
        return self._full_needed

    def leader_now_unix_ms(self) -> int:
        """The time on the leader's wall clock (ms since the epoch), as far as this server
        knows it: its own clock plus ``leader_clock_offset_ms``. Write tokens' expiries
        are checked against this."""
        return time.time_ns() // 1_000_000 + self.leader_clock_offset_ms

    def since_acknowledged(self) -> float | None:
        """Seconds since the last acknowledged heartbeat; None before the first."""
        return None if self._last_ack is None else time.monotonic() - self._last_ack

    async def run(self) -> None:
        """Beat every pulse until cancelled."""
        while True:
            started = time.monotonic()
            was_full = self._full_needed
            try:
                acknowledged = await self.beat()
            except Exception:  # a bug: keep beating, the next heartbeat is a full report
                logger.exception("heartbeat failed unexpectedly")
                self._full_needed = True
                acknowledged = False
            if acknowledged and self._full_needed and not was_full:
                # A new leader asked for the full list: until it has it, this server takes
                # no new chunks there, so send it now rather than a pulse later.
                continue
            await asyncio.sleep(max(0.0, started + self.pulse - time.monotonic()))

    async def beat(self) -> bool:
        """Send one heartbeat and act on its answer; whether the leader acknowledged it."""
        full = self._full_needed
        pending = self.changes.pending()  # before the chunk list: see the module docstring
        survey = await asyncio.to_thread(self._survey, full)
        corrupt = survey.corrupt if full else survey.corrupt - self._reported_corrupt
        beat = Heartbeat(
            address=self.address,
            volume_id=self._volume_id,
            capacity=survey.capacity,
            used=survey.used,
            free=survey.free,
            chunk_count=survey.chunk_count,
            full_report=full,
            added=survey.chunks if full else pending.added,
            removed=[] if full else pending.removed,
            corrupt=sorted(corrupt),
            failed=sorted(pending.failed),
        )
        try:
            # A full report of a big store takes longer to send and to apply than a delta.
            extra = min(FULL_REPORT_EXTRA, len(beat.added) / 200_000) if full else 0.0
            deadline = self.pulse + extra
            answer = await self._link.heartbeat(beat, deadline=deadline)
        except OSError as exc:
            self._failed(str(exc) or type(exc).__name__)
            return False
        received_ms = time.time_ns() // 1_000_000
        if not await self._register(answer.volume_id):
            return False
        self._acknowledged(answer, received_ms)
        if answer.need_full_report:
            self._full_needed = True
        else:
            self._full_needed = False
            self.changes.acknowledge(pending)
            self._reported_corrupt = survey.corrupt
        self.tasks.submit(answer.delete, answer.replicate)
        return True

    def _survey(self, full: bool) -> _Survey:
        capacity, used, free, count = measure(self.store, self.directory)
        chunks = [info.chunk_id for info in self.store.chunks()] if full else []
        corrupt = frozenset(self.store.corrupt_chunks())
        return _Survey(capacity, used, free, count, chunks, corrupt)

    async def _register(self, volume_id: int) -> bool:
        """Take the id the leader answered: stored first if it is the first one."""
        if volume_id == self._volume_id != 0:
            return True
        if volume_id < 1:
            self._failed(f"the leader answered volume id {volume_id}, which is not an id")
            return False
        if self._volume_id != 0:
            self._failed(
                f"the leader answered volume id {volume_id}, but this server is "
                f"{self._volume_id} (stored in {self._identity.path}); is it pointed at "
                "another cluster's masters?"
            )
            return False
        try:
            await asyncio.to_thread(self._identity.save, volume_id)
        except OSError as exc:
            self._failed(f"cannot store the volume id {volume_id} in {self._identity.path}: {exc}")
            return False
        self._volume_id = volume_id
        logger.info("registered with the masters as volume server %d (%s)", volume_id, self.address)
        return True

    def _acknowledged(self, answer: HeartbeatResponse, received_ms: int) -> None:
        if self._failures:
            logger.info("heartbeats reach the leader again (%d failed in a row)", self._failures)
        self._failures = 0
        self.acknowledged_total += 1
        self._last_ack = time.monotonic()
        leader = (self._link.leader, answer.leader_term)
        if leader != self._leader:
            logger.info("heartbeats go to the leader %s (term %d)", *leader)
            self._leader = leader
        if answer.pulse_ms > 0:
            self.pulse = min(max(answer.pulse_ms / 1000, _MIN_PULSE), _MAX_PULSE)
        if self._masters is not None and answer.masters:
            self._masters.learn(answer.masters)
        self._leader_clock(answer.leader_time_unix_ms, received_ms)

    def _leader_clock(self, leader_ms: int | None, received_ms: int) -> None:
        """Keep the leader's clock offset from an answer received at ``received_ms``
        (this server's wall clock); an answer without the leader's time means 0."""
        offset = 0 if leader_ms is None else leader_ms - received_ms
        previous, self.leader_clock_offset_ms = self.leader_clock_offset_ms, offset
        if abs(offset - previous) > CLOCK_OFFSET_WARNING_MS:
            logger.warning(
                "the leader's wall clock is %+.1f s from this server's (was %+.1f s); write "
                "tokens are judged by the leader's clock",
                offset / 1000,
                previous / 1000,
            )

    def _failed(self, reason: str) -> None:
        """A heartbeat that did not get through: warn once per outage, not every pulse."""
        self._full_needed = True
        self._failures += 1
        self.failed_total += 1
        if self._failures == 1:
            logger.warning(
                "heartbeat failed: %s; retrying every %g s (with a full report)", reason, self.pulse
            )
        else:
            logger.debug("heartbeat %d in a row failed: %s", self._failures, reason)

    async def status(self) -> VolumeStatus:
        capacity, used, free, count = await asyncio.to_thread(measure, self.store, self.directory)
        return VolumeStatus(
            volume_id=self._volume_id,
            address=self.address,
            directory=str(self.directory),
            capacity=capacity,
            used=used,
            free=free,
            chunks=count,
            corrupt=len(self.store.corrupt_chunks()),
            masters=list(self._masters.current) if self._masters is not None else [],
            leader=None if self._leader is None else self._leader[0],
            last_heartbeat_ms=(
                None
                if self._last_ack is None
                else round((time.monotonic() - self._last_ack) * 1000)
            ),
            writable=self.store.writable,
            leader_clock_offset_ms=self.leader_clock_offset_ms,
        )
