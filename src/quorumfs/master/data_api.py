"""HTTP routes of the data path on a master: allocation, commits, chunk lookup, heartbeats.

The handlers decode and check requests (shapes from ``quorumfs.wire``) and
hand them to ``DataService``; routing to the leader, deadlines and error
bodies are ``http_api``'s, shared with the namespace routes. Which master
serves what:

- ``GET /v1/fs/chunks`` on any master, after a read barrier (linearizable).
- everything else on the leader (the leader's picture of the volume servers
  is its own): a follower forwards it, or answers 307 when asked to.

Heartbeats need ``Authorization: Bearer <volume token>``; a wrong or missing
token is a 401 before anything else is looked at.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from aiohttp import web

from quorumfs.wire import Accepted, AllocateRequest, BadChunkReport, CommitRequest, Heartbeat

from .data_service import DataService
from .http_api import (
    ApiError,
    Handlers,
    check_address,
    check_path,
    decode_body,
    json_response,
    query_path,
)
from .results import ErrorCode

__all__ = ["add_data_routes"]


class _DataHandlers:
    def __init__(self, api: Handlers, data: DataService) -> None:
        self.api = api
        self.data = data

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/volumes/heartbeat", self.heartbeat)
        app.router.add_get("/v1/volumes", self.volumes)
        app.router.add_post("/v1/fs/allocate", self.allocate)
        app.router.add_post("/v1/fs/commit", self.commit)
        app.router.add_get("/v1/fs/chunks", self.chunks)
        app.router.add_post("/v1/fs/bad-chunk", self.bad_chunk)

    async def heartbeat(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not self.data.volume_token_ok(token.strip()):
            raise ApiError(
                401,
                "EACCES",
                "heartbeats need `Authorization: Bearer <volume token>`, derived from the "
                "cluster secret: start the volume server with the cluster's secret "
                "(--secret or QUORUMFS_CLUSTER_SECRET)",
                headers={"WWW-Authenticate": 'Bearer realm="quorumfs volumes"'},
            )
        raw = await _read_large(request)
        beat = decode_body(raw, Heartbeat)
        check_address(beat.address, "address")

        async def run() -> web.Response:
            return json_response(await self.data.heartbeat(beat))

        return await self.api.on_leader(request, raw, run)

    async def allocate(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = decode_body(raw, AllocateRequest)
        check_path(body.path, "path")

        async def run() -> web.Response:
            return json_response(await self.data.allocate(body))

        return await self.api.on_leader(request, raw, run)

    async def commit(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = decode_body(raw, CommitRequest)
        check_path(body.path, "path")
        for i, chunk in enumerate(body.chunks):
            numbers = (chunk.chunk_id, chunk.offset, chunk.size, chunk.checksum, *chunk.volume_ids)
            if not all(0 <= n <= _MAX_INT64 for n in numbers):
                raise ApiError(
                    400,
                    ErrorCode.EINVAL,
                    f"chunk {i} has a number outside 0..2**63-1 - at `$.chunks[{i}]`",
                    path=body.path,
                )

        async def run() -> web.Response:
            return json_response(await self.data.commit(body))

        return await self.api.on_leader(request, raw, run)

    async def chunks(self, request: web.Request) -> web.Response:
        path = query_path(request)
        result = await self.data.file_content(path)
        if result.error is not None:
            raise ApiError(
                result.error.http_status, result.error.code, result.error.message, path=path
            )
        return json_response(result.value)

    async def bad_chunk(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = decode_body(raw, BadChunkReport)

        async def run() -> web.Response:
            self.data.report_bad_chunk(body.chunk_id, body.volume_id, body.reason)
            return json_response(Accepted(), status=202)

        return await self.api.on_leader(request, raw, run)

    async def volumes(self, request: web.Request) -> web.Response:
        for name in request.query:
            if name != "redirect":
                raise ApiError(400, ErrorCode.EINVAL, f"unknown query parameter `{name}`")

        async def run() -> web.Response:
            return json_response(self.data.volumes())

        return await self.api.on_leader(request, b"", run)


_MAX_INT64: Final = 2**63 - 1
MAX_HEARTBEAT_BYTES: Final = 64 * 1024 * 1024
"""A full chunk report is about 10 bytes per chunk: room for millions of chunks (other
requests keep aiohttp's 1 MiB limit)."""


async def _read_large(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_HEARTBEAT_BYTES:
        raise ApiError(413, "E2BIG", f"a heartbeat is at most {MAX_HEARTBEAT_BYTES} bytes")
    body = bytearray()
    async for piece in request.content.iter_chunked(1 << 20):
        body += piece
        if len(body) > MAX_HEARTBEAT_BYTES:
            raise ApiError(413, "E2BIG", f"a heartbeat is at most {MAX_HEARTBEAT_BYTES} bytes")
    return bytes(body)


def add_data_routes(data: DataService) -> Callable[[web.Application, Handlers], None]:
    """The routes of the data path, for ``http_api.build_app(more_routes=...)``."""

    def add(app: web.Application, api: Handlers) -> None:
        _DataHandlers(api, data).register(app)

    return add
