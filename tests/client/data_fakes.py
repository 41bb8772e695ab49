"""In-process fakes of the data path's servers: a leader master and volume servers.

``FakeLeader`` is a ``MasterService`` over the real ``Namespace``, served by the
real HTTP API (``http_api.build_app``) for the namespace routes (stat, list,
mkdir, delete, rename, cluster status), with the data path's master routes
(``/v1/fs/allocate``, ``commit``, ``chunks``, ``bad-chunk``) answered by a
middleware in front, as ``quorumfs.wire`` documents them. Chunk ids come from
``AllocateChunkIds``, commits are ``CommitContent`` and volume servers are
registered with ``RegisterVolume``, so create and compare-and-set semantics
are the real namespace's. Placement is fixed: the first ``replication``
writable volumes, in order.

``FakeVolume`` stores chunks in a dict, checks write tokens with the real
``WriteTokenKey``, serves ranges, and can be told to fail writes, drop a write
halfway, corrupt a chunk, answer ECORRUPT, or die (every connection dropped).

Nothing here waits by sleeping: knobs are counters and flags that the tests set
before the request they affect.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from typing import Any, Literal, NamedTuple, TypeVar

import msgspec
from aiohttp import web
from aiohttp.test_utils import TestServer
from crc32c import crc32c

from quorumfs.master.commands import (
    DEFAULT_FILE_MODE,
    DEFAULT_REPLICATION,
    AllocateChunkIds,
    Command,
    CommitContent,
    RegisterVolume,
)
from quorumfs.master.contract import ClusterStatus, MemberInfo, MemberRole
from quorumfs.master.http_api import build_app
from quorumfs.master.namespace import Namespace
from quorumfs.master.results import Kind, NamespaceError, Result
from quorumfs.tokens import TokenError, WriteGrant, WriteTokenKey
from quorumfs.wire import (
    CHECKSUM_HEADER,
    MAX_CHUNK_SIZE,
    TOKEN_HEADER,
    AllocateRequest,
    AllocateResponse,
    BadChunkReport,
    ChunkGrant,
    ChunkLocation,
    ChunkWritten,
    CommitRequest,
    CommitResponse,
    FileContent,
    WriteTarget,
)

SECRET = b"the cluster secret of the data-path fakes"
TOKEN_TTL_MS = 60_000

Drop = Literal["before", "after"]
"""Drop a commit's connection before applying it, or after (applied, answer lost)."""

T = TypeVar("T")


def error_response(status: int, code: str, message: str, path: str = "") -> web.Response:
    body = msgspec.json.encode({"error": {"code": code, "message": message, "path": path}})
    return web.Response(status=status, body=body, content_type="application/json")


def json_response(value: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode(value), content_type="application/json"
    )


def _abort(request: web.Request) -> web.Response:
    assert request.transport is not None
    request.transport.abort()
    return web.Response(status=500)  # never reaches the client


# ------------------------------------------------------------------- volumes


class Put(NamedTuple):
    chunk_id: int
    checksum_sent: bool
    """Whether the client sent X-Quorumfs-Crc32c."""


class FakeVolume:
    """A volume server: chunks in a dict, and knobs to make it misbehave."""

    def __init__(self, key: WriteTokenKey) -> None:
        self.key = key
        self.volume_id = 0
        self.address = ""
        self.chunks: dict[int, bytes] = {}
        self.writable = True
        """Chosen by the leader for new chunks."""
        self.dead = False
        """Every request has its connection dropped."""
        self.put_failures: list[int] = []
        """Statuses to answer the next PUTs with (their body read first), e.g. 500, 507, 413."""
        self.cut_puts = 0
        """The next this many PUTs have their connection dropped halfway through the body."""
        self.ecorrupt: set[int] = set()
        """Chunks answered with 500 ECORRUPT (the server found its copy bad)."""
        self.puts: list[Put] = []
        self.gets: list[tuple[int, str | None]] = []
        """(chunk id, Range header) of every GET."""
        self.on_put: Callable[[int], None] | None = None
        """Called with the chunk id when a PUT arrives, before its body is read."""

    def corrupt(self, chunk_id: int) -> None:
        """Flip a bit of a stored chunk, silently (served as if it were fine)."""
        data = bytearray(self.chunks[chunk_id])
        data[len(data) // 2] ^= 0x01
        self.chunks[chunk_id] = bytes(data)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_CHUNK_SIZE + 1, middlewares=[self._maybe_dead])
        app.router.add_put("/chunks/{chunk_id}", self.put)
        app.router.add_get("/chunks/{chunk_id}", self.get)
        return app

    @web.middleware
    async def _maybe_dead(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.dead:
            return _abort(request)
        return await handler(request)

    async def put(self, request: web.Request) -> web.StreamResponse:
        chunk_id = int(request.match_info["chunk_id"])
        self.puts.append(Put(chunk_id, CHECKSUM_HEADER in request.headers))
        if self.on_put is not None:
            self.on_put(chunk_id)
        if self.put_failures:
            status = self.put_failures.pop(0)
            await request.read()
            code = {507: "ENOSPC", 413: "E2BIG", 400: "EINVAL"}.get(status, "EIO")
            return error_response(status, code, f"told to answer {status}")
        if self.cut_puts:
            self.cut_puts -= 1
            await request.content.readexactly((request.content_length or 2) // 2)
            return _abort(request)
        try:
            self.key.verify(
                request.headers.get(TOKEN_HEADER, ""),
                chunk_id=chunk_id,
                volume_id=self.volume_id,
                now_unix_ms=int(time.time() * 1000),
            )
        except TokenError as refused:
            await request.read()
            return error_response(401, "EACCES", str(refused))
        if request.content_length is None:
            return error_response(411, "ELENGTH", "a write needs Content-Length")
        data = await request.read()
        checksum = crc32c(data)
        declared = request.headers.get(CHECKSUM_HEADER)
        if declared is not None and int(declared) != checksum:
            return error_response(400, "ECHECKSUM", "the body does not match its checksum")
        self.chunks[chunk_id] = data
        return json_response(
            ChunkWritten(chunk_id=chunk_id, size=len(data), checksum=checksum), status=201
        )

    async def get(self, request: web.Request) -> web.StreamResponse:
        chunk_id = int(request.match_info["chunk_id"])
        wanted = request.headers.get("Range")
        self.gets.append((chunk_id, wanted))
        data = self.chunks.get(chunk_id)
        if data is None:
            return error_response(404, "ENOENT", f"no chunk {chunk_id} here")
        if chunk_id in self.ecorrupt:
            return error_response(500, "ECORRUPT", f"chunk {chunk_id} failed its checksum")
        headers = {CHECKSUM_HEADER: str(crc32c(data))}
        if wanted is None:
            return web.Response(body=data, headers=headers)
        first, _, last = wanted.removeprefix("bytes=").partition("-")
        start, stop = int(first), int(last) + 1
        if not 0 <= start < stop <= len(data):
            return error_response(416, "ERANGE", f"{wanted} is outside {len(data)} bytes")
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        return web.Response(status=206, body=data[start:stop], headers=headers)


# -------------------------------------------------------------------- leader


class FakeLeader:
    """A leader master over the real namespace; see the module docstring."""

    node_id = 1

    def __init__(self, volumes: list[FakeVolume], key: WriteTokenKey) -> None:
        self._namespace = Namespace()
        self.volumes = volumes
        self.key = key
        self.address = ""
        self.token_ttls: list[int] = []
        """Lifetimes (ms) of the next allocations' tokens (negative: already expired)."""
        self.allocations: list[AllocateRequest] = []
        self.commits: list[CommitRequest] = []
        self.reports: list[BadChunkReport] = []
        self.released: list[int] = []
        """Chunk ids that commits dropped (not yet reclaimed from the volumes)."""
        self.before_commit: Callable[[CommitRequest], Awaitable[None]] | None = None
        """Awaited before each commit is applied (e.g. another writer's commit)."""
        self.drop_commits: list[Drop] = []
        """Applied, in order, to the next commits."""

    # -- MasterService

    @property
    def namespace(self) -> Namespace:
        return self._namespace

    def is_leader(self) -> bool:
        return True

    def leader_http(self) -> str | None:
        return self.address

    async def execute(self, command: Command) -> Result[Any]:
        return self._namespace.apply(command)

    async def read_barrier(self) -> None:
        return None

    def cluster_status(self) -> ClusterStatus:
        return ClusterStatus(
            id=1,
            role=MemberRole.LEADER,
            term=1,
            leader_id=1,
            leader_http=self.address,
            commit_index=1,
            applied_index=1,
            members=[
                MemberInfo(
                    id=1, http=self.address, raft=self.address, role=MemberRole.LEADER, voter=True
                )
            ],
        )

    async def add_member(self, *, http: str, raft: str, voter: bool) -> MemberInfo:
        raise NotImplementedError

    async def remove_member(self, member_id: int) -> None:
        raise NotImplementedError

    async def transfer_leadership(self, member_id: int) -> int:
        raise NotImplementedError

    async def step_down(self) -> int:
        raise NotImplementedError

    def admin_token_ok(self, token: str | None) -> bool:
        return False

    # -- helpers for tests

    def content(self, path: str) -> FileContent:
        """What ``GET /v1/fs/chunks`` answers for ``path`` (it must be a file)."""
        chunks = self._namespace.lookup_chunks(path).unwrap()
        stat = self._namespace.stat(path).unwrap()
        return FileContent(
            inode=chunks.inode,
            version=chunks.version,
            size=chunks.size,
            mtime=stat.mtime,
            chunks=[
                ChunkLocation(
                    chunk_id=chunk.chunk_id,
                    offset=chunk.offset,
                    size=chunk.size,
                    checksum=chunk.checksum,
                    volume_ids=list(chunk.volume_ids),
                    addresses=[self._namespace.volume_address(v) or "" for v in chunk.volume_ids],
                )
                for chunk in chunks.chunks
            ],
        )

    def reclaim(self) -> None:
        """Delete released chunks from every volume (the leader's garbage collection)."""
        for volume in self.volumes:
            for chunk_id in self.released:
                volume.chunks.pop(chunk_id, None)
        self.released.clear()

    def commit_now(self, path: str, chunks: list[Any], size: int) -> None:
        """Another writer's commit, applied directly (no client involved)."""
        self._namespace.apply(
            CommitContent(path=path, chunks=tuple(chunks), size=size, mtime=time.time_ns())
        ).unwrap()

    # -- the data path's routes

    @web.middleware
    async def front(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = (request.method, request.path)
        if route == ("POST", "/v1/fs/allocate"):
            return await self.allocate(request)
        if route == ("POST", "/v1/fs/commit"):
            return await self.commit(request)
        if route == ("GET", "/v1/fs/chunks"):
            return await self.chunks(request)
        if route == ("POST", "/v1/fs/bad-chunk"):
            return await self.bad_chunk(request)
        return await handler(request)

    async def allocate(self, request: web.Request) -> web.Response:
        body = msgspec.json.decode(await request.read(), type=AllocateRequest)
        self.allocations.append(body)
        existing = self._namespace.stat(body.path)
        if existing.value is not None and existing.value.kind is Kind.FILE:
            replication = existing.value.replication
        else:
            replication = body.replication or DEFAULT_REPLICATION
        writable = [v for v in self.volumes if v.writable]
        if not writable:
            return error_response(503, "EAGAIN", "no volume server is writable")
        chosen = writable[:replication]
        ids = self._namespace.apply(AllocateChunkIds(count=body.count)).unwrap().chunk_ids
        ttl = self.token_ttls.pop(0) if self.token_ttls else TOKEN_TTL_MS
        expires = int(time.time() * 1000) + ttl
        grants = [
            ChunkGrant(
                chunk_id=chunk_id,
                targets=[
                    WriteTarget(
                        volume_id=v.volume_id,
                        address=v.address,
                        token=self.key.sign(WriteGrant(chunk_id, v.volume_id, expires)),
                    )
                    for v in chosen
                ],
            )
            for chunk_id in ids
        ]
        return json_response(
            AllocateResponse(chunks=grants, replication=replication, expires_unix_ms=expires)
        )

    async def commit(self, request: web.Request) -> web.Response:
        body = msgspec.json.decode(await request.read(), type=CommitRequest)
        self.commits.append(body)
        drop = self.drop_commits.pop(0) if self.drop_commits else None
        if drop == "before":
            return _abort(request)
        if self.before_commit is not None:
            await self.before_commit(body)
        result = self._namespace.apply(
            CommitContent(
                path=body.path,
                chunks=tuple(body.chunks),
                size=body.size,
                mtime=body.mtime if body.mtime is not None else time.time_ns(),
                expected_version=body.expected_version,
                expected_inode=body.expected_inode,
                create=body.create,
                mode=body.mode if body.mode is not None else DEFAULT_FILE_MODE,
                owner=body.owner or "root",
                replication=body.replication or DEFAULT_REPLICATION,
            )
        )
        if result.error is not None:
            return _namespace_error(result.error)
        assert result.value is not None
        self.released.extend(chunk.chunk_id for chunk in result.value.released_chunks)
        if drop == "after":
            return _abort(request)
        return json_response(
            CommitResponse(
                stat=result.value.stat, released_chunks=len(result.value.released_chunks)
            )
        )

    async def chunks(self, request: web.Request) -> web.Response:
        path = request.query.get("path", "")
        found = self._namespace.lookup_chunks(path)
        if found.error is not None:
            return _namespace_error(found.error)
        return json_response(self.content(path))

    async def bad_chunk(self, request: web.Request) -> web.Response:
        self.reports.append(msgspec.json.decode(await request.read(), type=BadChunkReport))
        return json_response({"accepted": True}, status=202)


def _namespace_error(error: NamespaceError) -> web.Response:
    return error_response(error.http_status, error.code, error.message, error.path)


# ------------------------------------------------------------------- cluster


class DataCluster:
    """One fake leader and ``volumes`` fake volume servers."""

    def __init__(self, volumes: int = 2) -> None:
        key = WriteTokenKey(SECRET)
        self.volumes = [FakeVolume(key) for _ in range(volumes)]
        self.leader = FakeLeader(self.volumes, key)

    @property
    def master(self) -> str:
        return self.leader.address

    def __getitem__(self, volume_id: int) -> FakeVolume:
        return self.volumes[volume_id - 1]

    def stored(self, chunk_id: int) -> list[int]:
        """The volumes that hold ``chunk_id``."""
        return [v.volume_id for v in self.volumes if chunk_id in v.chunks]


@asynccontextmanager
async def serving(cluster: DataCluster) -> AsyncIterator[DataCluster]:
    """Serve ``cluster`` on loopback ports from the running loop."""
    servers: list[TestServer] = []
    try:
        for volume in cluster.volumes:
            server = TestServer(volume.app(), host="127.0.0.1")
            await server.start_server()
            servers.append(server)
            volume.address = f"127.0.0.1:{server.port}"
            registered = cluster.leader.namespace.apply(RegisterVolume(address=volume.address))
            volume.volume_id = registered.unwrap().volume_id
        app = build_app(cluster.leader, request_timeout=5.0)
        app.middlewares.insert(0, cluster.leader.front)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        cluster.leader.address = f"127.0.0.1:{server.port}"
        yield cluster
    finally:
        for server in servers:
            await server.close()


@contextmanager
def in_loop_thread(served: AbstractAsyncContextManager[T]) -> Iterator[T]:
    """Enter ``served`` on an event loop of its own in a thread (for the sync client and
    the CLI, which run their own loops), and leave it there at the end."""
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    entered: list[T] = []

    async def serve() -> None:
        async with served as value:
            entered.append(value)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield entered[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def serving_in_thread(cluster: DataCluster) -> AbstractContextManager[DataCluster]:
    """Serve ``cluster`` from an event loop in a thread (for the sync client and the CLI)."""
    return in_loop_thread(serving(cluster))
