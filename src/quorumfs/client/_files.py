"""The client's data path: a file's bytes between the caller and the volume servers.

Owns cutting a file into chunks, streaming each chunk to every volume server the
leader chose (``PUT /chunks/{id}``), reading chunks back from their replicas
(``GET /chunks/{id}``, ranged), checking lengths and CRC-32C, failing over between
replicas and reporting bad ones, and the read-modify-write of a partial change
(append, write at an offset, truncate) as a compare-and-set commit. The protocol
is ``quorumfs.wire``'s. The master calls (allocate, commit, file_content,
report_bad_chunk, stat) are ``AsyncMasterClient``'s, reached through ``Masters``:
it finds the leader and retries them through a failover, so this module never
talks to a master itself. Where chunks go, when orphans are collected and how
missing copies are repaired is the leader's business.

Theory of operation.

Writing (``put``, and the new bytes of every change):

1. The source is cut into spans of ``chunk_size`` bytes. Bytes in memory and
   seekable files are read where they lie, as often as needed (a chunk written
   again is read again) and several spans at once. A stream (a pipe, an async
   iterable) cannot be read twice: it is read into one chunk buffer at a time.
2. Each span takes a grant (chunk id, targets, write tokens) from a pool that
   ``allocate`` fills in batches (at most ``wire.MAX_ALLOCATE``) just before use:
   tokens expire, so a pooled grant close to its expiry is dropped. A small put
   (one chunk, from bytes or a seekable file) first tries the client's *spare
   grants* (``_Spares``), which saves it the allocate round trip; see "Spare
   grants" below.
3. A span in memory of at most ``IO_SIZE`` bytes (bytes given to ``put``, a
   buffered stream chunk) is sent as one body to every target at once. Any other
   span is sent to each target by a reader of its own (``_SpanReader``: the span
   read again in pieces of ``IO_SIZE``, from the page cache or the buffer), never
   through one shared feed: a volume server admits one streaming write at a time,
   and a feed shared by two servers would let two uploads that each wait for a
   server the other holds stall each other until a timeout (seen with several
   chunks in flight). The CRC-32C is computed on the way by each reader, and
   compared with each target's ``ChunkWritten``; it is also sent up front
   (``X-Quorumfs-Crc32c``) when the span was checksummed before sending (bytes in
   memory, a buffered stream chunk).
4. A target that fails (no connection, 5xx, 507, 401 for an expired token, a
   wrong checksum or size in its answer) makes the chunk be written again under a
   fresh grant (a new chunk id), up to ``chunk_attempts`` times; a 4xx refusal
   (``ECHECKSUM``, ``E2BIG``...) fails the write at once. When the last attempt
   stored some copies but not all, the chunk is kept with those: the leader adds
   the missing copies later, as for a grant with fewer targets than wanted.
5. ``in_flight`` chunks are written at once (one for a stream, plus the one being
   buffered); then one commit makes them the file's content, atomically.

Spare grants. A grant is not tied to a path: it is a chunk id, volume servers and
tokens. What the path decides is how many copies (an existing file's
``replication`` wins over the request's). So when a small put has to allocate, it
asks for ``grant_pool`` more grants than it needs and keeps them, per number of
copies, for the client's next small puts, but only when the leader answered the
copies the put wanted (``replication``, else the master's default): the path did
not exist or had that replication. A later small put that wants the same number of
copies takes one (if its tokens have ``grant_pool_margin`` seconds left) instead of
calling ``allocate``. It commits as any put does; the commit's answer states the
file's replication, and if the file already existed and wants more copies than the
spare grant had, the put is done again the ordinary way (allocate for the path,
upload, commit) before it returns, so an acknowledged put always has the copies its
file wants (the first commit's chunks are released and deleted). A file that wants
fewer copies just holds a surplus copy, which the leader removes. Spare grants that
are never used cost nothing: their ids are never committed. Grants naming a volume
server that just failed, or whose token a volume server refused, are dropped.

Reading: one ``file_content`` gives a consistent chunk list; the range is cut
into pieces of chunks and holes (zeros). A piece is fetched into memory (at most
one chunk) from the replicas in the order given until one serves the right
length and, for a whole chunk, the right CRC-32C, so only verified bytes reach
the caller; ``read_ahead`` more chunks are fetched meanwhile. A replica that
serves corrupt bytes, a wrong length or 500 ``ECORRUPT`` is reported with
``report_bad_chunk`` (best effort, bounded by ``report_timeout``). When every
replica answers 404 and the file's version has moved on, the file was replaced
under the reader: ``FileChanged``, never bytes of two versions.

Changing part of a file (``append``, ``write_at``, ``truncate``): read
``file_content``; keep every chunk outside the changed range as it is; a chunk
the change cuts through is rewritten: its surviving bytes (read whole, so that
its checksum is verified before they get a new one) and the new bytes become new
chunks. The new list is committed with ``expected_version``/``expected_inode``.
When another writer was first (``Conflict``) it starts again from the read, up to
``commit_attempts`` times; an append's new chunks do not depend on the old
content, so they are uploaded once and only moved. A compare-and-set commit whose
answer was lost (``OutcomeUnknown``) is settled by reading the file: it took
effect if the file holds the new chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
)
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePath
from typing import BinaryIO, Final, NamedTuple, Protocol, TypeAlias

import aiohttp
import msgspec
from crc32c import crc32c

from quorumfs import __version__
from quorumfs.master.commands import DEFAULT_REPLICATION, Chunk
from quorumfs.master.http_api import ErrorResponse
from quorumfs.master.results import Stat
from quorumfs.wire import (
    CHECKSUM_HEADER,
    DEFAULT_CHUNK_SIZE,
    MAX_ALLOCATE,
    MAX_CHUNK_SIZE,
    TOKEN_HEADER,
    AllocateResponse,
    ChunkGrant,
    ChunkLocation,
    ChunkWritten,
    CommitRequest,
    CommitResponse,
    FileContent,
    VolumeErrorCode,
    WriteTarget,
)

from .errors import (
    Conflict,
    DataUnavailable,
    FileChanged,
    InvalidArgument,
    NotFound,
    OutcomeUnknown,
    QuorumfsError,
    WriteFailed,
)

__all__ = [
    "IO_SIZE",
    "DataPath",
    "Masters",
    "Progress",
    "Sink",
    "Source",
    "TransferPolicy",
    "describe_failure",
]

logger = logging.getLogger("quorumfs.client")

IO_SIZE: Final = 1024 * 1024
"""Bytes read from a source, or written to a sink, at a time."""
_ZEROS: Final = bytes(IO_SIZE)
"""Pieces queued per target: the reader runs at most this far ahead of the slowest one."""

Source: TypeAlias = bytes | bytearray | memoryview | PurePath | BinaryIO | AsyncIterable[bytes]
"""What ``put`` and ``append`` upload: bytes, a local file (``pathlib.Path``), a binary
file object (read from its current position; a pipe is fine), or an async iterable of bytes."""
Sink: TypeAlias = PurePath | BinaryIO
"""Where ``get`` writes: a local file (``pathlib.Path``, replaced only once the whole
content arrived) or a binary file object."""
Progress: TypeAlias = Callable[[int, int | None], object]
"""``progress(done_bytes, total_bytes)``: total is None when unknown (a stream). After a
chunk is written again, ``done_bytes`` goes back by what that chunk had counted."""


@dataclass(frozen=True, kw_only=True)
class TransferPolicy:
    """How the client moves file bytes to and from the volume servers."""

    connect_timeout: float = 2.0
    """Seconds to open a connection to a volume server (a dead one is skipped this fast)."""
    read_timeout: float = 30.0
    """Seconds of silence from a volume server in the middle of a request. Not a bound on
    a whole transfer, which takes as long as its bytes need."""
    in_flight: int = 3
    """Chunks uploaded at once (a stream: one, plus the one being buffered)."""
    read_ahead: int = 1
    """Chunks fetched ahead of the one being consumed. A read holds ``read_ahead + 1``
    chunks (or pieces of them) in memory."""
    chunk_attempts: int = 3
    """Grants tried per chunk before a write fails."""
    commit_attempts: int = 5
    """Read-modify-write rounds of a partial change before it gives up to other writers."""
    allocate_batch: int = 16
    """Grants asked for at once (at most ``wire.MAX_ALLOCATE``)."""
    token_margin: float = 10.0
    """Seconds: a pooled grant whose tokens expire sooner is not used."""
    grant_pool: int = 16
    """Spare grants a client keeps per number of copies for its next small puts (one
    chunk), asked for along with a put's own; 0: none (every put allocates)."""
    grant_pool_margin: float = 30.0
    """Seconds: a spare grant whose tokens expire sooner is not used."""
    report_timeout: float = 2.0
    """Seconds a read waits for its reports of bad replicas to reach the leader."""

    def __post_init__(self) -> None:
        for name in (
            "connect_timeout",
            "read_timeout",
            "token_margin",
            "grant_pool_margin",
            "report_timeout",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value > 0):
                raise ValueError(f"TransferPolicy.{name} must be a positive number, not {value!r}")
        for name in ("in_flight", "chunk_attempts", "commit_attempts", "allocate_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransferPolicy.{name} must be at least 1")
        if self.read_ahead < 0:
            raise ValueError("TransferPolicy.read_ahead must be at least 0")
        if self.grant_pool < 0:
            raise ValueError("TransferPolicy.grant_pool must be at least 0")


class Masters(Protocol):
    """The master calls the data path needs (``AsyncMasterClient`` has them)."""

    async def allocate(
        self, path: str, count: int = 1, *, replication: int | None = None
    ) -> AllocateResponse: ...

    async def commit(self, request: CommitRequest) -> CommitResponse: ...

    async def file_content(self, path: str) -> FileContent: ...

    async def report_bad_chunk(self, chunk_id: int, volume_id: int, reason: str) -> None: ...

    async def stat(self, path: str) -> Stat: ...


class DataPath:
    """File bytes to and from the volume servers, for ``AsyncMasterClient``; see the module
    docstring. Owns one aiohttp session for the volume servers (no master headers, no
    admin token), closed by ``close``."""

    def __init__(self, masters: Masters, policy: TransferPolicy) -> None:
        self._masters = masters
        self._policy = policy
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=policy.connect_timeout, sock_read=policy.read_timeout
        )
        self._session: aiohttp.ClientSession | None = None
        self._spares = _Spares(policy)

    @property
    def policy(self) -> TransferPolicy:
        return self._policy

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        # Created on first use, always after a master call (which checks the loop and
        # that the client is open).
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": f"quorumfs-client/{__version__}"},
                connector=aiohttp.TCPConnector(limit=100),
            )
        return self._session

    # ------------------------------------------------------------- whole files

    async def put(
        self,
        path: str,
        source: Source,
        *,
        replication: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: Progress | None = None,
    ) -> Stat:
        """Make ``source`` the content of ``path`` (created if missing, replaced if not)."""
        _check_chunk_size(chunk_size)
        async with _open_source(source) as opened:
            meter = _Meter(progress, opened.size)
            small = isinstance(opened, _RandomAccess) and 0 < opened.size <= chunk_size
            if small and self._policy.grant_pool:
                grants = self._grants(path, opened, replication, chunk_size, spares=True)
                chunks, size = await self._upload(path, opened, grants, chunk_size, meter)
                stat = await self._commit_put(path, chunks, size, replication)
                if grants.borrowed is None or stat.replication <= grants.borrowed:
                    return stat
                logger.debug(
                    "%s wants %d copies, its spare grant had %d: writing it again",
                    path,
                    stat.replication,
                    grants.borrowed,
                )
                meter.add(-size)
            grants = self._grants(path, opened, replication, chunk_size)
            chunks, size = await self._upload(path, opened, grants, chunk_size, meter)
        return await self._commit_put(path, chunks, size, replication)

    async def _commit_put(
        self, path: str, chunks: list[Chunk], size: int, replication: int | None
    ) -> Stat:
        request = CommitRequest(
            path=path, chunks=chunks, size=size, create=True, replication=replication
        )
        try:
            return (await self._masters.commit(request)).stat
        except FileChanged as stale:
            if not stale.retried_after_unknown:
                raise
            # A retry after a lost answer names chunks released since, or held by another
            # file: the first attempt was applied, and another write has replaced it or a
            # rename has moved it. The put took effect then; committing them again would
            # point the file at deleted chunks, or two files at one chunk.
            logger.debug("%s: the commit was applied before its answer was lost", path)
            try:
                return await self._masters.stat(path)
            except NotFound:  # applied, then renamed or removed: no Stat to give
                raise FileChanged(
                    f"{path}: the put took effect, then the file was renamed or removed "
                    f"before its answer arrived ({stale.message})",
                    path=path,
                    retried_after_unknown=True,
                ) from None

    def iter_read(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The bytes of ``path`` from ``offset`` (``length`` of them, or to the end), in
        pieces of at most a chunk, each verified before it is handed out."""
        _check_range(offset, length)
        return self._iter_read(path, offset, length)

    async def read(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """The bytes of ``path`` from ``offset`` (``length`` of them, or to the end)."""
        return b"".join([piece async for piece in self.iter_read(path, offset, length)])

    async def get(
        self,
        path: str,
        sink: Sink,
        *,
        offset: int = 0,
        length: int | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Write the bytes of ``path`` (from ``offset``, ``length`` of them or to the end)
        to ``sink``; the number of bytes written. A ``Path`` sink is written to a temporary
        file beside it, renamed over it once complete: a failed get leaves no half file."""
        _check_range(offset, length)
        content = await self._masters.file_content(path)
        start, stop = _clamp(content.size, offset, length)
        meter = _Meter(progress, stop - start)
        async with (
            _open_sink(sink) as write,
            contextlib.aclosing(self._pieces(path, content, start, stop)) as pieces,
        ):
            async for data in pieces:
                view = memoryview(data)
                for at in range(0, len(view), IO_SIZE):
                    piece = view[at : at + IO_SIZE]
                    await write(piece)
                    meter.add(len(piece))
        return stop - start

    # ------------------------------------------------------------ partial changes

    async def append(
        self,
        path: str,
        source: Source,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: Progress | None = None,
    ) -> Stat:
        """Add ``source`` at the end of ``path`` (created if missing). The new bytes are
        uploaded once; a commit that lost to another writer is placed after its bytes."""
        _check_chunk_size(chunk_size)
        async with _open_source(source) as opened:
            meter = _Meter(progress, opened.size)
            grants = self._grants(path, opened, None, chunk_size)
            added, added_size = await self._upload(path, opened, grants, chunk_size, meter)

        async def appended(content: FileContent | None) -> _Edit:
            end = 0 if content is None else content.size
            moved = [_moved(chunk, end) for chunk in added]
            return _Edit(
                [*_kept(content), *moved], end + added_size, frozenset(c.chunk_id for c in added)
            )

        return await self._change(path, appended, create=True)

    async def write_at(
        self,
        path: str,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Stat:
        """Overwrite ``len(data)`` bytes of ``path`` at ``offset`` (``pwrite``): writing past
        the end extends the file, and a gap before ``offset`` reads as zeros. A missing file
        is created. Writing nothing changes nothing."""
        _check_chunk_size(chunk_size)
        _check_range(offset, None)
        view = memoryview(data).cast("B")
        if not view:
            return await self._masters.stat(path)

        async def spliced(content: FileContent | None) -> _Edit:
            size = max(offset + len(view), 0 if content is None else content.size)
            return await self._splice(
                path, content, offset=offset, data=view, size=size, chunk_size=chunk_size
            )

        return await self._change(path, spliced, create=True)

    async def truncate(self, path: str, size: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Stat:
        """Cut ``path`` to ``size`` bytes, or extend it with zeros (a hole) to ``size``."""
        _check_chunk_size(chunk_size)
        _check_range(size, None)

        async def spliced(content: FileContent | None) -> _Edit:
            return await self._splice(
                path, content, offset=size, data=memoryview(b""), size=size, chunk_size=chunk_size
            )

        return await self._change(path, spliced, create=False)

    async def _change(
        self,
        path: str,
        plan: Callable[[FileContent | None], Awaitable[_Edit]],
        *,
        create: bool,
    ) -> Stat:
        """Read the file, ``plan`` its new chunk list, commit it as a compare-and-set; again
        from the read when another writer was first."""
        attempts = self._policy.commit_attempts
        for attempt in range(1, attempts + 1):
            content: FileContent | None
            try:
                content = await self._masters.file_content(path)
            except NotFound:
                if not create:
                    raise
                content = None  # created by the commit, unless someone else is first
            edit = await plan(content)
            request = CommitRequest(
                path=path,
                chunks=edit.chunks,
                size=edit.size,
                expected_version=0 if content is None else content.version,
                expected_inode=None if content is None else content.inode,
                create=content is None,
            )
            try:
                return (await self._masters.commit(request)).stat
            except Conflict as conflict:
                reason = conflict.message
            except OutcomeUnknown as unknown:
                if await self._took_effect(request, edit, unknown):
                    return await self._masters.stat(path)
                reason = (
                    f"the commit's answer was lost and it did not take effect ({unknown.reason})"
                )
            logger.debug("%s: commit attempt %d of %d lost: %s", path, attempt, attempts, reason)
        raise Conflict(
            f"cannot change {path}: another writer changed it before each of {attempts} "
            "commits; try again when it is quieter",
            path=path,
        )

    async def _took_effect(
        self, request: CommitRequest, edit: _Edit, unknown: OutcomeUnknown
    ) -> bool:
        """Whether a compare-and-set commit whose answer was lost was applied: the file holds
        its new chunks (or, for a change without new chunks, is exactly what it committed)."""
        try:
            now = await self._masters.file_content(request.path)
        except NotFound:
            return False
        except QuorumfsError:
            raise unknown from None
        if edit.new_ids:
            return edit.new_ids <= {chunk.chunk_id for chunk in now.chunks}
        return (
            now.version == (request.expected_version or 0) + 1
            and now.size == request.size
            and [c.chunk_id for c in now.chunks] == [c.chunk_id for c in request.chunks]
        )

    async def _splice(
        self,
        path: str,
        content: FileContent | None,
        *,
        offset: int,
        data: memoryview,
        size: int,
        chunk_size: int,
    ) -> _Edit:
        """The chunk list of ``content`` with ``data`` at ``offset``, cut or extended to
        ``size``: chunks outside the change are kept, a chunk it cuts through is rewritten
        with its surviving bytes, and the new chunks are uploaded."""
        end = offset + len(data)
        kept: list[Chunk] = []
        head = tail = b""
        start, stop = offset, end
        """The region written as new chunks: the change, widened to the chunks it cuts."""
        for location in () if content is None else content.chunks:
            first, last = location.offset, location.offset + location.size
            if first >= size:
                continue  # cut off by the new size
            if last <= offset or first >= end:
                kept.append(_chunk(location))
                continue
            keeps_head = first < offset
            keeps_tail = last > end and end < size
            if keeps_head or keeps_tail:
                assert content is not None
                whole = await self._fetch(path, content, location, 0, location.size)
                if keeps_head:
                    head, start = whole[: offset - first], first
                if keeps_tail:
                    stop = min(last, size)
                    tail = whole[end - first : stop - first]
        region = b"".join((head, data, tail))
        assert len(region) == stop - start, "the region is the change widened to whole chunks"
        new: list[Chunk] = []
        if region:
            async with _open_source(region) as opened:
                grants = self._grants(path, opened, None, chunk_size)
                uploaded, _ = await self._upload(
                    path, opened, grants, chunk_size, _Meter(None, None)
                )
            new = [_moved(chunk, start) for chunk in uploaded]
        chunks = sorted([*kept, *new], key=_offset_of)
        return _Edit(chunks, size, frozenset(chunk.chunk_id for chunk in new))

    # ------------------------------------------------------------------ writing

    def _grants(
        self,
        path: str,
        source: _Source,
        replication: int | None,
        chunk_size: int,
        *,
        spares: bool = False,
    ) -> _Grants:
        """The grants of one upload of ``source`` (borrowing the client's spare grants
        first with ``spares``)."""
        return _Grants(
            self._masters,
            path,
            replication=replication,
            chunk_size=chunk_size,
            policy=self._policy,
            wanted=None if source.size is None else -(-source.size // chunk_size),
            spares=self._spares if spares else None,
        )

    async def _upload(
        self,
        path: str,
        source: _Source,
        grants: _Grants,
        chunk_size: int,
        meter: _Meter,
    ) -> tuple[list[Chunk], int]:
        """Store ``source`` as chunks (offsets from its start) under ``grants``,
        ``in_flight`` at a time; the chunks and the bytes they hold. Nothing is committed."""
        window = self._policy.in_flight if source.size is not None else 1
        chunks: list[Chunk] = []
        pending: set[asyncio.Task[Chunk]] = set()
        size = 0
        try:
            async with contextlib.aclosing(source.spans(chunk_size)) as spans:
                async for span in spans:
                    size = span.offset + span.size
                    while len(pending) >= window:
                        pending = await _collect(pending, chunks)
                    pending.add(asyncio.create_task(self._store(path, grants, span, meter)))
            while pending:
                pending = await _collect(pending, chunks)
        except _SourceShrankError as shrank:
            raise WriteFailed(
                f"cannot write {path}: the source ended after {shrank.offset} of its "
                f"{source.size} bytes (it changed while it was being read); nothing was "
                "committed",
                path=path,
            ) from None
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        chunks.sort(key=_offset_of)
        return chunks, size

    async def _store(self, path: str, grants: _Grants, span: _Span, meter: _Meter) -> Chunk:
        """Write one span to every target of a grant; under a fresh grant when a target
        fails, up to ``chunk_attempts`` times."""
        attempts = self._policy.chunk_attempts
        failures: list[str] = []
        for attempt in range(1, attempts + 1):
            grant = await grants.take()
            checksum, outcomes, fed = await self._replicate(path, grant, span, meter)
            stored: list[int] = []
            failed: list[int] = []
            broken: list[int] = []
            """Failed for a reason of their own (not a token that expired)."""
            for target, outcome in zip(grant.targets, outcomes, strict=True):
                problem = (
                    outcome.reason
                    if isinstance(outcome, _TargetFailed)
                    else _mismatch(outcome, grant.chunk_id, span.size, checksum)
                )
                if problem is None:
                    stored.append(target.volume_id)
                    continue
                failed.append(target.volume_id)
                failures.append(
                    f"chunk {grant.chunk_id} on {target.address} (volume {target.volume_id}): "
                    f"{problem}"
                )
                if isinstance(outcome, _TargetFailed) and outcome.token_refused:
                    grants.drop_pool()
                else:
                    broken.append(target.volume_id)
            if not grant.targets:
                failures.append(f"chunk {grant.chunk_id}: the leader named no volume server")
            if stored and (not failed or attempt == attempts):
                if failed:
                    logger.warning(
                        "%s: chunk %d at offset %d stored on %d of %d volume servers (the "
                        "leader adds the missing copies): %s",
                        path,
                        grant.chunk_id,
                        span.offset,
                        len(stored),
                        len(grant.targets),
                        "; ".join(failures[-len(failed) :]),
                    )
                assert checksum is not None, "a target stored the whole span"
                return Chunk(grant.chunk_id, span.offset, span.size, checksum, tuple(stored))
            meter.add(-fed)
            grants.avoid(broken)
            logger.debug("%s: chunk at offset %d, attempt %d failed", path, span.offset, attempt)
        raise WriteFailed(
            f"cannot write {path}: the {span.size} bytes at offset {span.offset} could not be "
            f"stored in {attempts} attempts ({'; '.join(failures)}); check that the volume "
            "servers are up and have space. Nothing was committed",
            path=path,
            failures=tuple(failures),
        )

    async def _replicate(
        self, path: str, grant: ChunkGrant, span: _Span, meter: _Meter
    ) -> tuple[int | None, list[ChunkWritten | _TargetFailed], int]:
        """One attempt: the span to every target of ``grant`` at once. The span's CRC-32C
        (None unless every target's reader read it all, alike), each target's outcome,
        and the bytes counted as progress."""
        if span.whole is not None:  # in memory and small: one body for every target
            readers = None
            meter.add(span.size)
            bodies: list[_Body] = [span.whole] * len(grant.targets)
        else:
            readers = [
                _SpanReader(span, meter if i == 0 else None) for i in range(len(grant.targets))
            ]
            bodies = [reader.body() for reader in readers]
        puts = [
            asyncio.create_task(self._put(path, grant.chunk_id, target, span, body=body))
            for target, body in zip(grant.targets, bodies, strict=True)
        ]
        try:
            done, _ = await asyncio.wait(puts, return_when=asyncio.FIRST_EXCEPTION)
            source_error = next((r.error for r in readers or () if r.error is not None), None)
            for task in puts:  # the source's failure first, then a volume server's refusal
                error = source_error or (task.exception() if task in done else None)
                if error is not None:
                    meter.add(-(span.size if readers is None else readers[0].fed))
                    raise error
        finally:
            for task in puts:
                task.cancel()
            await asyncio.gather(*puts, return_exceptions=True)
        outcomes = [put.result() for put in puts]
        if readers is None:
            return span.checksum, outcomes, span.size
        checksums = {reader.checksum for reader in readers}
        checksum = checksums.pop() if len(checksums) == 1 else None
        return checksum, outcomes, readers[0].fed if readers else 0

    async def _put(
        self,
        path: str,
        chunk_id: int,
        target: WriteTarget,
        span: _Span,
        *,
        body: _Body,
    ) -> ChunkWritten | _TargetFailed:
        """``PUT /chunks/{id}`` to one target with ``body``: its answer, or why it failed
        in a way a fresh grant may fix. ``WriteFailed`` for a refusal it cannot fix."""
        headers = {
            TOKEN_HEADER: target.token,
            "Content-Length": str(span.size),
            "Content-Type": "application/octet-stream",
        }
        if span.checksum is not None:
            headers[CHECKSUM_HEADER] = str(span.checksum)
        url = f"http://{target.address}/chunks/{chunk_id}"
        try:
            async with self._http().put(
                url, data=body, headers=headers, timeout=self._timeout
            ) as response:
                status, answer = response.status, await response.read()
        except (aiohttp.ClientError, OSError) as exc:
            return _TargetFailed(describe_failure(exc, self._policy.read_timeout))
        if status == 201:
            try:
                return msgspec.json.decode(answer, type=ChunkWritten)
            except msgspec.MsgspecError:
                return _TargetFailed("it answered 201 with an unexpected body")
        code, message = _volume_error(answer, status)
        if status == 401 or status >= 500:
            return _TargetFailed(f"{code}: {message}", token_refused=status == 401)
        hints: dict[str, str] = {
            VolumeErrorCode.ECHECKSUM: "the bytes it received do not match their checksum "
            "(changed in transit, or the source changed while it was read)",
            VolumeErrorCode.E2BIG: "the chunk is larger than it accepts: use a smaller chunk size",
        }
        hint = hints.get(code, "it will not accept this chunk")
        raise WriteFailed(
            f"cannot write {path}: volume server {target.address} refused chunk {chunk_id} "
            f"({code}: {message}): {hint}. Nothing was committed",
            code=code,
            path=path,
        )

    # ------------------------------------------------------------------ reading

    async def _iter_read(
        self, path: str, offset: int, length: int | None
    ) -> AsyncGenerator[bytes, None]:
        content = await self._masters.file_content(path)
        start, stop = _clamp(content.size, offset, length)
        async with contextlib.aclosing(self._pieces(path, content, start, stop)) as pieces:
            async for piece in pieces:
                yield piece

    async def _pieces(
        self, path: str, content: FileContent, start: int, stop: int
    ) -> AsyncGenerator[bytes, None]:
        """Bytes ``start:stop`` of ``content``: fetched chunk pieces (``read_ahead`` ahead)
        and zeros for holes, in order."""
        regions = list(_regions(content.chunks, start, stop))
        upcoming = deque(i for i, region in enumerate(regions) if region.location is not None)
        fetching: dict[int, asyncio.Task[bytes]] = {}
        try:
            for index, region in enumerate(regions):
                if region.location is None:
                    for at in range(0, region.size, IO_SIZE):
                        yield _ZEROS[: min(IO_SIZE, region.size - at)]
                    continue
                while upcoming and len(fetching) <= self._policy.read_ahead:
                    ahead = upcoming.popleft()
                    fetching[ahead] = asyncio.create_task(
                        self._fetch_region(path, content, regions[ahead])
                    )
                yield await fetching.pop(index)
        finally:
            for task in fetching.values():
                task.cancel()
            await asyncio.gather(*fetching.values(), return_exceptions=True)

    async def _fetch_region(self, path: str, content: FileContent, region: _Region) -> bytes:
        assert region.location is not None, "holes are not fetched"
        return await self._fetch(
            path, content, region.location, region.start, region.start + region.size
        )

    async def _fetch(
        self, path: str, content: FileContent, location: ChunkLocation, start: int, stop: int
    ) -> bytes:
        """Bytes ``start:stop`` of one chunk from the first replica that serves them right:
        the one ranged-read routine."""
        failures: list[str] = []
        reports: list[asyncio.Task[None]] = []
        missing = 0
        try:
            for volume_id, address in zip(location.volume_ids, location.addresses, strict=False):
                try:
                    data = await self._fetch_from(address, location, start, stop)
                except _ReplicaError as error:
                    failures.append(f"{address or '?'} (volume {volume_id}): {error.reason}")
                    missing += error.missing
                    if error.bad:
                        reports.append(
                            asyncio.create_task(
                                self._report(location.chunk_id, volume_id, error.reason)
                            )
                        )
                    continue
                await self._settle_reports(reports)
                return data
            await self._settle_reports(reports)
        finally:
            for report in reports:
                report.cancel()
        if failures and missing == len(failures):
            await self._check_unchanged(path, content)
        raise DataUnavailable(
            f"cannot read {path}: chunk {location.chunk_id} (bytes {location.offset} to "
            f"{location.offset + location.size}) could not be read from any of its "
            f"{len(location.volume_ids)} replicas: {'; '.join(failures) or 'none is known'}. "
            "Retry once the volume servers holding it are back",
            path=path,
            chunk_id=location.chunk_id,
            failures=tuple(failures),
        )

    async def _fetch_from(
        self, address: str, location: ChunkLocation, start: int, stop: int
    ) -> bytes:
        """Bytes ``start:stop`` of a chunk from one replica, checked; ``_ReplicaError``."""
        if not address:
            raise _ReplicaError("the address of its volume server is unknown")
        whole = start == 0 and stop == location.size
        headers = {} if whole else {"Range": f"bytes={start}-{stop - 1}"}
        url = f"http://{address}/chunks/{location.chunk_id}"
        try:
            async with self._http().get(url, headers=headers, timeout=self._timeout) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, OSError) as exc:
            raise _ReplicaError(describe_failure(exc, self._policy.read_timeout)) from None
        if status == 200 and len(body) == location.size:  # the whole chunk: verifiable
            checksum = crc32c(body)
            if checksum != location.checksum:
                raise _ReplicaError(
                    f"its bytes fail the checksum (CRC-32C {checksum}, not {location.checksum})",
                    bad=True,
                )
            return body[start:stop]
        if status == 206 and not whole and len(body) == stop - start:
            return body
        if status in (200, 206):
            expected = location.size if status == 200 else stop - start
            raise _ReplicaError(
                f"it sent {len(body)} bytes instead of {expected} (HTTP {status})", bad=True
            )
        code, message = _volume_error(body, status)
        raise _ReplicaError(
            f"{code}: {message}", missing=status == 404, bad=code == VolumeErrorCode.ECORRUPT
        )

    async def _check_unchanged(self, path: str, content: FileContent) -> None:
        """``FileChanged`` if ``path`` is no longer the version being read."""
        try:
            now = await self._masters.file_content(path)
        except NotFound:
            raise FileChanged(
                f"{path} was deleted while it was being read (the chunks of version "
                f"{content.version} are gone)",
                path=path,
            ) from None
        except QuorumfsError:
            return  # cannot tell: the caller reports the chunk as unavailable
        if now.inode != content.inode:
            raise FileChanged(
                f"{path} was replaced by another file while it was being read (inode "
                f"{content.inode} became {now.inode}, and the old file's chunks are gone); "
                "read it again",
                path=path,
            )
        if now.version != content.version:
            raise FileChanged(
                f"{path} changed while it was being read (version {content.version} became "
                f"{now.version}, and the old version's chunks are gone); read it again",
                path=path,
            )

    async def _report(self, chunk_id: int, volume_id: int, reason: str) -> None:
        try:
            await self._masters.report_bad_chunk(chunk_id, volume_id, reason)
        except QuorumfsError as exc:
            logger.debug("could not report chunk %d on volume %d: %s", chunk_id, volume_id, exc)

    async def _settle_reports(self, reports: list[asyncio.Task[None]]) -> None:
        """Give the reports of bad replicas ``report_timeout`` to reach the leader."""
        if reports:
            await asyncio.wait(reports, timeout=self._policy.report_timeout)


# ------------------------------------------------------------------- sources


class _Span(NamedTuple):
    """One chunk's worth of a source, readable again for a retry."""

    offset: int
    """From the start of the source."""
    size: int
    checksum: int | None
    """CRC-32C, when known before sending."""
    pieces: Callable[[], AsyncGenerator[bytes | memoryview, None]]
    """A fresh reader of the span's bytes, in pieces of at most ``IO_SIZE`` (or as a
    stream delivered them)."""
    whole: bytes | memoryview | None = None
    """All its bytes, when they are in memory, checksummed and at most ``IO_SIZE``."""


_Body: TypeAlias = bytes | memoryview | AsyncIterator[bytes | memoryview]
"""A PUT's request body: a small span whole, or a tee's pieces."""


class _Source(Protocol):
    @property
    def size(self) -> int | None:
        """Bytes in total; None for a stream."""
        ...

    def spans(self, chunk_size: int) -> AsyncGenerator[_Span, None]: ...


class _SourceShrankError(Exception):
    """A source with a known size ended early (changed while it was read)."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


class _RandomAccess:
    """A source readable at any offset, any number of times: bytes in memory, a seekable file."""

    def __init__(
        self,
        size: int,
        read_at: Callable[[int, int], Awaitable[bytes | memoryview]],
        *,
        checksummed: bool,
    ) -> None:
        self._size = size
        self._read_at = read_at
        self._checksummed = checksummed
        """Compute each span's checksum before sending it (cheap when in memory)."""

    @property
    def size(self) -> int:
        return self._size

    async def spans(self, chunk_size: int) -> AsyncGenerator[_Span, None]:
        for offset in range(0, self._size, chunk_size):
            size = min(chunk_size, self._size - offset)
            checksum = whole = None
            if self._checksummed:  # in memory: reading is free
                data = await self._read_at(offset, size)
                checksum = crc32c(data)
                whole = data if size <= IO_SIZE else None
            yield _Span(offset, size, checksum, partial(self._pieces, offset, size), whole)

    async def _pieces(self, offset: int, size: int) -> AsyncGenerator[bytes | memoryview, None]:
        for at in range(offset, offset + size, IO_SIZE):
            count = min(IO_SIZE, offset + size - at)
            piece = await self._read_at(at, count)
            if len(piece) != count:
                raise _SourceShrankError(at + len(piece))
            yield piece


class _Stream:
    """A source read once, front to back: each span is buffered whole before it is sent."""

    size = None

    def __init__(self, read: Callable[[], Awaitable[bytes]]) -> None:
        self._read = read
        """The next bytes; empty at the end."""

    async def spans(self, chunk_size: int) -> AsyncGenerator[_Span, None]:
        offset = 0
        carry = b""
        ended = False
        while not ended:
            parts: list[bytes] = []
            filled = checksum = 0
            while filled < chunk_size:
                piece = carry or await self._read()
                if not piece:
                    ended = True
                    break
                piece, carry = piece[: chunk_size - filled], piece[chunk_size - filled :]
                parts.append(piece)
                filled += len(piece)
                checksum = crc32c(piece, checksum)
            if filled:
                whole = parts[0] if len(parts) == 1 and filled <= IO_SIZE else None
                yield _Span(offset, filled, checksum, partial(_replay, tuple(parts)), whole)
                offset += filled


async def _replay(parts: tuple[bytes, ...]) -> AsyncGenerator[bytes | memoryview, None]:
    for part in parts:
        yield part


@contextlib.asynccontextmanager
async def _open_source(source: Source) -> AsyncIterator[_Source]:
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")

        async def in_memory(offset: int, count: int) -> memoryview:
            return view[offset : offset + count]

        yield _RandomAccess(len(view), in_memory, checksummed=True)
    elif isinstance(source, PurePath):
        file = await asyncio.to_thread(open, source, "rb")
        try:
            yield _from_file(file)
        finally:
            file.close()
    elif isinstance(source, AsyncIterable):
        iterator = aiter(source)

        async def next_piece() -> bytes:
            return bytes(await anext(iterator, b""))

        yield _Stream(next_piece)
    elif callable(getattr(source, "read", None)):
        yield _from_file(source)
    else:
        raise TypeError(
            "a source is bytes, a pathlib.Path, a binary file object or an async iterable "
            f"of bytes, not {type(source).__name__} (for a local file name, pass Path(name))"
        )


def _from_file(file: BinaryIO) -> _Source:
    """A file object from its current position: random access when it can seek, else a stream."""
    try:
        if file.seekable():
            base = file.tell()
            end = file.seek(0, os.SEEK_END)
            file.seek(base)
        else:
            base = end = -1
    except (OSError, ValueError):
        base = end = -1
    if base < 0:

        async def read_next() -> bytes:
            return await asyncio.to_thread(file.read, IO_SIZE)

        return _Stream(read_next)
    lock = threading.Lock()

    def read_exactly(offset: int, count: int) -> bytes:
        parts: list[bytes] = []
        with lock:  # spans in flight read the same file object from worker threads
            file.seek(base + offset)
            while count > 0 and (part := file.read(count)):
                parts.append(part)
                count -= len(part)
        return b"".join(parts)

    async def read_at(offset: int, count: int) -> bytes:
        return await asyncio.to_thread(read_exactly, offset, count)

    return _RandomAccess(end - base, read_at, checksummed=False)


@contextlib.asynccontextmanager
async def _open_sink(sink: Sink) -> AsyncIterator[Callable[[memoryview], Awaitable[None]]]:
    """A writer into ``sink``. A path is written to a temporary file in its directory and
    renamed over it only when the block ends without an error (else removed)."""
    if isinstance(sink, PurePath):
        target = Path(sink)
        fd, temporary = await asyncio.to_thread(
            tempfile.mkstemp, dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
        file = os.fdopen(fd, "wb")

        async def write_file(piece: memoryview) -> None:
            await asyncio.to_thread(file.write, piece)

        try:
            yield write_file
            await asyncio.to_thread(_install, file, temporary, target)
        except BaseException:
            file.close()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    elif callable(getattr(sink, "write", None)):
        writer = sink

        async def write_object(piece: memoryview) -> None:
            await asyncio.to_thread(writer.write, piece)

        yield write_object
    else:
        raise TypeError(
            "a sink is a pathlib.Path or a binary file object, not " + type(sink).__name__
        )


def _install(file: BinaryIO, temporary: str, target: Path) -> None:
    """Close the finished temporary file and rename it over ``target`` (keeping the mode of
    a file it replaces; 0644 for a new one)."""
    file.close()
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    os.chmod(temporary, mode)
    os.replace(temporary, target)


# ------------------------------------------------------------------- writing


class _Meter:
    """Counts bytes done for a ``Progress`` callback."""

    def __init__(self, callback: Progress | None, total: int | None) -> None:
        self._callback = callback
        self._total = total
        self._done = 0

    def add(self, count: int) -> None:
        self._done += count
        if self._callback is not None and count:
            self._callback(self._done, self._total)


class _Spares:
    """A client's spare grants for its next small puts, by number of copies; see "Spare
    grants" in the module docstring."""

    def __init__(self, policy: TransferPolicy) -> None:
        self._policy = policy
        self._pools: dict[int, deque[tuple[ChunkGrant, int]]] = {}
        """Copies -> unused grants allocated for that many, with their expiry (ms)."""
        self._locks: dict[int, asyncio.Lock] = {}
        self.max_chunk_size = MAX_CHUNK_SIZE
        """The cluster's largest chunk, from the answer the spares came with."""

    def lock(self, copies: int) -> asyncio.Lock:
        """Held while taking or refilling spares of ``copies``: puts that find none wait
        for the one refilling them rather than each asking the leader."""
        return self._locks.setdefault(copies, asyncio.Lock())

    def take(self, copies: int) -> ChunkGrant | None:
        pool = self._pools.get(copies)
        fresh_until = (time.time() + self._policy.grant_pool_margin) * 1000
        while pool:
            grant, expires = pool.popleft()
            if expires > fresh_until:
                return grant
        return None

    def keep(self, copies: int, answer: AllocateResponse, grants: list[ChunkGrant]) -> None:
        pool = self._pools.setdefault(copies, deque())
        room = max(0, self._policy.grant_pool - len(pool))
        pool.extend((grant, answer.expires_unix_ms) for grant in grants[:room])
        self.max_chunk_size = answer.max_chunk_size

    def avoid(self, failed: set[int]) -> None:
        for copies, pool in self._pools.items():
            self._pools[copies] = _without(pool, failed)

    def clear(self) -> None:
        self._pools.clear()


def _without(
    pool: deque[tuple[ChunkGrant, int]], failed: set[int]
) -> deque[tuple[ChunkGrant, int]]:
    """The grants of ``pool`` that name none of the volumes ``failed``."""
    return deque(
        (grant, expires)
        for grant, expires in pool
        if failed.isdisjoint(target.volume_id for target in grant.targets)
    )


class _Grants:
    """Grants for one upload: a pool filled by ``allocate`` in batches, just in time;
    with ``spares``, the client's spare grants first (and a refill of them)."""

    def __init__(
        self,
        masters: Masters,
        path: str,
        *,
        replication: int | None,
        chunk_size: int,
        policy: TransferPolicy,
        wanted: int | None,
        spares: _Spares | None = None,
    ) -> None:
        self._masters = masters
        self._path = path
        self._replication = replication
        self._chunk_size = chunk_size
        self._policy = policy
        self._wanted = wanted
        """Spans still to be granted, when known (the batch is no larger)."""
        self._spares = spares
        self._pool: deque[tuple[ChunkGrant, int]] = deque()
        """Unused grants with their expiry (ms since the epoch)."""
        self._lock = asyncio.Lock()
        self.borrowed: int | None = None
        """The copies of the grant last taken when it was a spare (allocated for another
        path): the file may want more. Spares serve one-chunk uploads only, so the last
        grant taken is the one the chunk was stored under."""

    async def take(self) -> ChunkGrant:
        async with self._lock:
            fresh_until = (time.time() + self._policy.token_margin) * 1000
            while self._pool:
                grant, expires = self._pool.popleft()
                if expires > fresh_until:
                    return self._taken(grant)
            if self._spares is None:
                return self._taken(await self._allocate(None))
            copies = self._replication or DEFAULT_REPLICATION
            async with self._spares.lock(copies):
                spare = self._spares.take(copies)
                if spare is None:
                    self.borrowed = None
                    return self._taken(await self._allocate(copies))
            self._check_chunk_size(self._spares.max_chunk_size)
            self.borrowed = copies
            return self._taken(spare)

    async def _allocate(self, copies: int | None) -> ChunkGrant:
        """A batch for this path; the first grant. The rest are pooled for this upload,
        or kept as spares of ``copies`` when that is what the leader granted."""
        wanted = self._policy.in_flight if self._wanted is None else self._wanted
        count = max(1, min(MAX_ALLOCATE, self._policy.allocate_batch, wanted))
        if copies is not None:
            count = min(MAX_ALLOCATE, count + self._policy.grant_pool)
        answer = await self._masters.allocate(self._path, count, replication=self._replication)
        self._check_chunk_size(answer.max_chunk_size)
        if not answer.chunks:
            raise WriteFailed(
                f"cannot write {self._path}: the leader granted no chunk (asked for "
                f"{count}); is any volume server writable?",
                path=self._path,
            )
        # A fresh grant is used even if this machine's clock calls it expired: the volume
        # server, not this clock, is the judge.
        first, *rest = answer.chunks
        if self._spares is not None and answer.replication == copies:
            own = max(0, (wanted if self._wanted is not None else 1) - 1)
            self._pool.extend((grant, answer.expires_unix_ms) for grant in rest[:own])
            self._spares.keep(answer.replication, answer, rest[own:])
        else:
            self._pool.extend((grant, answer.expires_unix_ms) for grant in rest)
        return first

    def _check_chunk_size(self, max_chunk_size: int) -> None:
        if self._chunk_size > max_chunk_size:
            raise InvalidArgument(
                f"cannot write {self._path}: chunks of {self._chunk_size} bytes are larger "
                f"than the cluster's maximum ({max_chunk_size}); use a smaller chunk size",
                path=self._path,
            )

    def avoid(self, volume_ids: list[int]) -> None:
        """Drop the pooled (and spare) grants naming one of ``volume_ids`` (they just
        failed); later allocations reflect what the leader knows by then."""
        failed = set(volume_ids)
        self._pool = _without(self._pool, failed)
        if self._spares is not None:
            self._spares.avoid(failed)

    def drop_pool(self) -> None:
        """Forget the pooled (and spare) grants (a volume server found their tokens expired)."""
        self._pool.clear()
        if self._spares is not None:
            self._spares.clear()

    def _taken(self, grant: ChunkGrant) -> ChunkGrant:
        if self._wanted:
            self._wanted -= 1
        return grant


class _TargetFailed(NamedTuple):
    """Why one target did not store a chunk, when a fresh grant may do better."""

    reason: str
    token_refused: bool = False


class _SpanReader:
    """One target's request body: the span read on its own, checksummed on the way."""

    def __init__(self, span: _Span, meter: _Meter | None) -> None:
        self._span = span
        self._meter = meter
        """Counts progress: one reader per span does, so a byte is counted once."""
        self.fed = 0
        """Bytes handed to the request so far."""
        self.checksum: int | None = None
        """The CRC-32C of what was read, once all of it was."""
        self.error: BaseException | None = None
        """The source's own failure (the request only sees its body break off)."""

    async def body(self) -> AsyncIterator[bytes | memoryview]:
        checksum = 0
        try:
            async with contextlib.aclosing(self._span.pieces()) as pieces:
                async for piece in pieces:
                    checksum = crc32c(piece, checksum)
                    self.fed += len(piece)
                    if self._meter is not None:
                        self._meter.add(len(piece))
                    yield piece
        except (_SourceShrankError, OSError) as exc:
            self.error = exc
            raise
        self.checksum = checksum


async def _collect(
    pending: set[asyncio.Task[Chunk]], into: list[Chunk]
) -> set[asyncio.Task[Chunk]]:
    """Wait for at least one of ``pending``; its chunk into ``into`` (or its error raised)."""
    done, rest = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    into.extend(task.result() for task in done)
    return rest


def _mismatch(written: ChunkWritten, chunk_id: int, size: int, checksum: int | None) -> str | None:
    """What is wrong with a target's 201 answer, or None."""
    if checksum is None:
        return "it answered before receiving the whole chunk"
    if (written.chunk_id, written.size, written.checksum) != (chunk_id, size, checksum):
        return (
            f"it stored chunk {written.chunk_id} with {written.size} bytes and CRC-32C "
            f"{written.checksum}, not chunk {chunk_id} with {size} bytes and {checksum}"
        )
    return None


# ------------------------------------------------------------------- reading


class _Region(NamedTuple):
    """A piece of a read: ``size`` bytes of a chunk from ``start`` within it, or a hole."""

    location: ChunkLocation | None
    start: int
    size: int


class _ReplicaError(Exception):
    """One replica did not serve a chunk; ``bad`` when it should be reported, ``missing``
    when it does not hold it (404)."""

    def __init__(self, reason: str, *, bad: bool = False, missing: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.bad = bad
        self.missing = missing


def _regions(chunks: list[ChunkLocation], start: int, stop: int) -> Iterator[_Region]:
    """The chunk pieces and holes that make up bytes ``start:stop`` of a file, in order."""
    position = start
    for location in chunks:
        first, last = location.offset, location.offset + location.size
        if last <= position:
            continue
        if first >= stop or position >= stop:
            break
        if first > position:
            yield _Region(None, position, first - position)
            position = first
        end = min(last, stop)
        yield _Region(location, position - first, end - position)
        position = end
    if position < stop:
        yield _Region(None, position, stop - position)


# ------------------------------------------------------------------- changes


class _Edit(NamedTuple):
    """A file's next content, as a commit will state it."""

    chunks: list[Chunk]
    size: int
    new_ids: frozenset[int]
    """The chunks uploaded for it (the proof that a lost commit took effect)."""


def _chunk(location: ChunkLocation) -> Chunk:
    return Chunk(
        location.chunk_id,
        location.offset,
        location.size,
        location.checksum,
        tuple(location.volume_ids),
    )


def _kept(content: FileContent | None) -> list[Chunk]:
    return [] if content is None else [_chunk(location) for location in content.chunks]


def _moved(chunk: Chunk, by: int) -> Chunk:
    return msgspec.structs.replace(chunk, offset=chunk.offset + by)


def _offset_of(chunk: Chunk) -> int:
    return chunk.offset


# ------------------------------------------------------------------- helpers


def _check_chunk_size(chunk_size: int) -> None:
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidArgument(f"chunk_size {chunk_size} is not between 1 and {MAX_CHUNK_SIZE}")


def _check_range(offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        raise InvalidArgument(f"offset {offset} and length {length} must not be negative")


def _clamp(size: int, offset: int, length: int | None) -> tuple[int, int]:
    """Bytes ``start:stop`` of a file of ``size`` bytes that a read of ``offset, length`` covers."""
    start = min(offset, size)
    stop = size if length is None else min(size, offset + length)
    return start, max(start, stop)


def _volume_error(body: bytes, status: int) -> tuple[str, str]:
    """A volume server's error answer as (code, message)."""
    try:
        error = msgspec.json.decode(body, type=ErrorResponse).error
    except msgspec.MsgspecError:
        return f"HTTP {status}", "an answer without a quorumfs error body"
    return error.code, error.message


def describe_failure(exc: BaseException, timeout: float) -> str:
    """Why an HTTP exchange got no answer, in a few words (the master call path uses it too)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        inner = exc.os_error
        if isinstance(inner, ConnectionRefusedError):
            return "connection refused"
        return str(inner.strerror or inner) if inner is not None else str(exc)
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection was closed before the answer"
    return str(exc) or type(exc).__name__
