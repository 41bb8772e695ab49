"""A volume server's HTTP API: chunks in and out, its status, and every error as JSON.

Owns the translation between HTTP and the ``ChunkStore``: routes, headers
(``quorumfs.wire``: the write token, the CRC-32C, ranges), checking write
tokens (``quorumfs.tokens``), streaming bodies between the socket and the
store's worker threads, and mapping the store's errors to statuses and codes
(``wire.VolumeErrorCode``). Leaves to others: the volume id and the changes
heartbeats report (``heartbeat.HeartbeatLoop``, which the handlers read and
record into), and how chunks are stored and verified (``store``).

Theory of operation:

- ``PUT /chunks/{id}`` needs a write token for this chunk on this server, so
  nothing is written before the server is registered (503 ``EAGAIN`` until the
  first heartbeat is answered). Its expiry is judged by the leader's wall clock
  (``HeartbeatLoop.leader_now_unix_ms``: this server's plus the offset the last
  heartbeat answer showed), not this server's. A small body (up to
  ``SMALL_BODY``, 1 MiB) is read on the event loop (within ``body_timeout``)
  and handed to ``ChunkStore.write_chunk`` in one worker-thread call. A larger
  one is streamed into it in a worker thread, 1 MiB at a time
  (``heartbeat.StreamSource``): a 64 MiB chunk is never held in memory. The
  answer is 201 only once the chunk is durable; on any error nothing is stored.
- ``GET /chunks/{id}`` runs the whole read in one worker thread: it opens the
  reader and takes the first verified piece before any header goes out, so
  damage found before the first byte is a clean 500 ``ECORRUPT``. A small
  chunk (up to ``store.SMALL_CHUNK``, read and verified whole with one pread)
  comes back from the thread whole and is answered as one response. A larger
  one is streamed from the thread; damage found later (it is verified block by
  block as it streams) aborts the connection: the client sees a body shorter
  than its Content-Length, never wrong bytes. The store remembers corrupt
  chunks and heartbeats report them.
- A chunk the store knows is corrupt is not served at all (500 ``ECORRUPT``):
  read another replica.
- Reads are not authorised (``quorumfs.wire``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Final

import aiohttp
from aiohttp import web

from quorumfs.master.http_api import ApiError, HealthResponse, json_response
from quorumfs.tokens import TokenError, WriteTokenKey
from quorumfs.wire import (
    CHECKSUM_HEADER,
    MAX_CHUNK_SIZE,
    TOKEN_HEADER,
    ChunkWritten,
    VolumeErrorCode,
)

from .errors import (
    ChecksumMismatchError,
    ChunkCorruptError,
    ChunkNotFoundError,
    ChunkRangeError,
    SourceSizeError,
    StoreClosedError,
    StoreError,
    StoreFailedError,
    StoreFullError,
)
from .heartbeat import HeartbeatLoop, StreamSource, TransferError, run_on_loop
from .metrics import VolumeMetrics
from .store import SMALL_CHUNK, ChunkInfo, ChunkReader, ChunkStore

__all__ = ["SMALL_BODY", "build_app", "writes_finished"]

logger = logging.getLogger("quorumfs.volume")

_MAX_CHUNK_ID: Final = 2**63 - 1
_MAX_CRC: Final = 2**32 - 1

SMALL_BODY: Final = 1 << 20
"""A chunk write with at most this many bytes is read whole before it goes to the store."""


class _Api:
    """The handlers of one volume server."""

    def __init__(
        self,
        store: ChunkStore,
        heart: HeartbeatLoop,
        key: WriteTokenKey,
        body_timeout: float,
        metrics: VolumeMetrics,
    ) -> None:
        self.store = store
        self.heart = heart
        self.metrics = metrics
        self.key = key
        self.body_timeout = body_timeout
        self.writing = 0
        """PUTs streaming into the store now."""
        self.no_writes = asyncio.Event()
        """Set while ``writing`` is 0."""
        self.no_writes.set()

    @contextlib.contextmanager
    def write_in_flight(self) -> Iterator[None]:
        self.writing += 1
        self.no_writes.clear()
        try:
            yield
        finally:
            self.writing -= 1
            if self.writing == 0:
                self.no_writes.set()

    @web.middleware  # new-style: (request, handler)
    async def errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Turn every failure into a JSON answer."""
        path = request.match_info.get("chunk_id", "")
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except StoreError as exc:
            return _store_error(exc, path).response()
        except web.HTTPException as exc:
            return _http_exception(request, exc).response()
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                message = f"the disk is full ({exc.strerror}); nothing was stored"
                return ApiError(507, VolumeErrorCode.ENOSPC, message, path=path).response()
            return _internal_error(request, path)
        except Exception:
            return _internal_error(request, path)

    # ------------------------------------------------------------------ writes

    async def put_chunk(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        chunk_id, path = _chunk_id(request)
        volume_id = self.heart.volume_id
        if volume_id == 0:
            raise ApiError(
                503,
                VolumeErrorCode.EAGAIN,
                "this volume server is not registered with the masters yet (its first "
                "heartbeat was not answered); retry shortly",
                path=path,
                headers={"Retry-After": "1"},
            )
        token = request.headers.get(TOKEN_HEADER)
        if token is None:
            raise _unauthorized(
                f"a chunk write needs the write token from /v1/fs/allocate in {TOKEN_HEADER}", path
            )
        try:
            # Judged by the leader's clock (the tokens' clock), not this server's.
            now = self.heart.leader_now_unix_ms()
            self.key.verify(token, chunk_id=chunk_id, volume_id=volume_id, now_unix_ms=now)
        except TokenError as exc:
            raise _unauthorized(str(exc), path) from None
        size = request.content_length
        if size is None:
            raise ApiError(
                411, VolumeErrorCode.ELENGTH, "a chunk write needs Content-Length", path=path
            )
        if size == 0:
            raise ApiError.invalid("a chunk has at least one byte (Content-Length is 0)", path)
        if size > MAX_CHUNK_SIZE:
            raise ApiError(
                413,
                VolumeErrorCode.E2BIG,
                f"a chunk is at most {MAX_CHUNK_SIZE} bytes, not {size}",
                path=path,
            )
        expected = _checksum(request, path)
        body: bytes | StreamSource
        try:
            with self.write_in_flight():
                if size <= SMALL_BODY:
                    body = await self._small_body(request, size)
                else:
                    loop = asyncio.get_running_loop()
                    body = StreamSource(request.content, loop, timeout=self.body_timeout)
                info = await asyncio.to_thread(self._write, chunk_id, body, size, expected)
        except TransferError as exc:
            raise ApiError.invalid(f"{exc}; nothing was stored", path) from None
        self.metrics.chunk_written(info.size, time.perf_counter() - started)
        return json_response(
            ChunkWritten(chunk_id=chunk_id, size=info.size, checksum=info.crc), status=201
        )

    async def _small_body(self, request: web.Request, size: int) -> bytes:
        """The whole body of a small write, read on the loop within ``body_timeout``; one
        that ends early is returned short (the store refuses it, ``SourceSizeError``)."""
        try:
            async with asyncio.timeout(self.body_timeout):
                return await request.content.readexactly(size)
        except asyncio.IncompleteReadError as short:
            return short.partial
        except TimeoutError:
            raise TransferError(
                f"the body did not arrive whole within {self.body_timeout:g} s"
            ) from None
        except (OSError, aiohttp.ClientError) as exc:
            raise TransferError(f"the body broke off ({exc or type(exc).__name__})") from exc

    def _write(
        self, chunk_id: int, body: bytes | StreamSource, size: int, expected: int | None
    ) -> ChunkInfo:
        """In a worker thread: store the chunk durably, then record it for the heartbeats
        (here, so that a request cancelled meanwhile still records what it stored)."""
        info = self.store.write_chunk(chunk_id, body, size, expected_crc=expected)
        self.heart.changes.added(chunk_id)
        return info

    # ------------------------------------------------------------------- reads

    async def get_chunk(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        chunk_id, path = _chunk_id(request)
        asked = request.headers.get("Range")
        loop = asyncio.get_running_loop()
        response = web.StreamResponse()

        async def begin(reader: ChunkReader) -> None:
            response.headers.update(_chunk_headers(reader.crc))
            if asked is not None:
                response.set_status(206)
                response.headers["Content-Range"] = _content_range(reader)
            response.content_length = reader.length
            await response.prepare(request)

        def serve() -> tuple[ChunkReader, bytes] | None:
            """In a worker thread: no header goes out before the first piece passed its CRC.
            A small chunk is read (and verified) whole and returned, not streamed."""
            info = self._stat(chunk_id)
            start, stop = _byte_range(asked, info.size, path)
            with self.store.open_chunk(chunk_id, start, stop - start) as reader:
                if info.size <= SMALL_CHUNK:
                    return reader, b"".join(reader)
                pieces = iter(reader)
                first = next(pieces, None)
                run_on_loop(loop, begin(reader), self.body_timeout)
                if first is None:
                    return None
                run_on_loop(loop, response.write(first), self.body_timeout)
                for piece in pieces:
                    run_on_loop(loop, response.write(piece), self.body_timeout)
            self.metrics.chunk_read(reader.length, time.perf_counter() - started)
            return None

        try:
            whole = await asyncio.to_thread(serve)
        except Exception as exc:
            if not response.prepared:
                raise  # nothing sent yet: an ordinary error answer
            _broken_off(request, chunk_id, exc)
            return response
        if whole is not None:
            reader, data = whole
            answer = web.Response(body=data, headers=_chunk_headers(reader.crc))
            if asked is not None:
                answer.set_status(206)
                answer.headers["Content-Range"] = _content_range(reader)
            self.metrics.chunk_read(len(data), time.perf_counter() - started)
            return answer
        await response.write_eof()
        return response

    async def head_chunk(self, request: web.Request) -> web.Response:
        chunk_id, _ = _chunk_id(request)
        info = await asyncio.to_thread(self._stat, chunk_id)
        headers = _chunk_headers(info.crc)
        headers["Content-Length"] = str(info.size)
        return web.Response(headers=headers)

    def _stat(self, chunk_id: int) -> ChunkInfo:
        """The chunk's size and CRC; ``ChunkCorruptError`` for a chunk known to be corrupt."""
        why = self.store.corrupt_chunks().get(chunk_id)
        if why is not None:
            raise ChunkCorruptError(chunk_id, why)
        return self.store.stat(chunk_id)

    # ------------------------------------------------------------------ status

    async def status(self, _request: web.Request) -> web.Response:
        return json_response(await self.heart.status())

    async def healthz(self, _request: web.Request) -> web.Response:
        return json_response(HealthResponse(ok=True))


_API: Final = web.AppKey("quorumfs.volume.http_api", _Api)


def build_app(
    store: ChunkStore,
    heart: HeartbeatLoop,
    *,
    secret: bytes,
    body_timeout: float = 30.0,
    metrics: VolumeMetrics | None = None,
) -> web.Application:
    """The aiohttp application of one volume server. ``secret`` is the cluster secret
    (write tokens are checked with the key derived from it); a body that stalls for
    ``body_timeout`` seconds, either way, ends its request. ``GET /metrics`` serves
    ``metrics`` (a fresh ``VolumeMetrics`` of its own when None)."""
    metrics = metrics or VolumeMetrics(store, heart)
    api = _Api(store, heart, WriteTokenKey(secret), body_timeout, metrics)
    app = web.Application(middlewares=[api.errors])
    app[_API] = api
    app.router.add_put("/chunks/{chunk_id}", api.put_chunk)
    app.router.add_get("/chunks/{chunk_id}", api.get_chunk, allow_head=False)
    app.router.add_head("/chunks/{chunk_id}", api.head_chunk)
    app.router.add_get("/status", api.status)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/metrics", metrics.handle)
    return app


async def writes_finished(app: web.Application, timeout: float) -> bool:
    """Wait until no PUT of ``app`` is streaming into the store; False after ``timeout``.

    For a graceful stop: aiohttp's own shutdown stops reading request bodies at once,
    so stop listening, wait here, and only then clean the runner up.
    """
    api = app[_API]
    try:
        async with asyncio.timeout(timeout):
            await api.no_writes.wait()
    except TimeoutError:
        return False
    return True


# ------------------------------------------------------------------- helpers


def _chunk_id(request: web.Request) -> tuple[int, str]:
    """The chunk id of the path, and its text (the ``path`` of error answers)."""
    text = request.match_info["chunk_id"]
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= _MAX_CHUNK_ID):
        raise ApiError.invalid(f"chunk id {text!r} is not an integer in 1..{_MAX_CHUNK_ID}")
    return int(text), text


def _checksum(request: web.Request, path: str) -> int | None:
    text = request.headers.get(CHECKSUM_HEADER)
    if text is None:
        return None
    text = text.strip()
    if not (text.isascii() and text.isdigit() and int(text) <= _MAX_CRC):
        raise ApiError.invalid(
            f"{CHECKSUM_HEADER} {text!r} is not a CRC-32C in decimal (0..{_MAX_CRC})", path
        )
    return int(text)


def _chunk_headers(crc: int) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        CHECKSUM_HEADER: str(crc),
    }


def _content_range(reader: ChunkReader) -> str:
    last = reader.offset + reader.length - 1
    return f"bytes {reader.offset}-{last}/{reader.chunk_size}"


def _byte_range(header: str | None, size: int, path: str) -> tuple[int, int]:
    """``[start, stop)`` of a chunk of ``size`` bytes that ``Range`` asks for (all of it
    without one): ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n``; one range only."""
    if header is None:
        return 0, size
    unit, sep, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not sep or not dash or "," in spec:
        raise ApiError.invalid(
            f"Range {header!r} is not one byte range (bytes=a-b, bytes=a- or bytes=-n)", path
        )
    if not all(part == "" or (part.isascii() and part.isdigit()) for part in (first, last)):
        raise ApiError.invalid(f"Range {header!r} has a bound that is not a number", path)
    if first == "":
        if last == "" or int(last) == 0 or size == 0:
            raise _unsatisfiable(header, size, path)
        return max(0, size - int(last)), size
    start = int(first)
    if last != "" and int(last) < start:
        raise ApiError.invalid(f"Range {header!r} ends before it starts", path)
    if start >= size:
        raise _unsatisfiable(header, size, path)
    return start, size if last == "" else min(int(last) + 1, size)


def _unsatisfiable(header: str, size: int, path: str) -> ApiError:
    return ApiError(
        416,
        VolumeErrorCode.ERANGE,
        f"Range {header!r} lies outside the chunk, which has {size} bytes",
        path=path,
        headers={"Content-Range": f"bytes */{size}"},
    )


def _unauthorized(message: str, path: str) -> ApiError:
    return ApiError(
        401,
        VolumeErrorCode.EACCES,
        message,
        path=path,
        headers={"WWW-Authenticate": f'{TOKEN_HEADER} realm="quorumfs"'},  # the scheme: its header
    )


def _internal_error(request: web.Request, path: str) -> web.Response:
    """A bug (or an unexpected failure of the disk): logged whole, answered 500 EIO."""
    logger.exception("unexpected error serving %s %s", request.method, request.path)
    return ApiError(
        500,
        VolumeErrorCode.EIO,
        "internal error in the volume server; the details are in its log",
        path=path,
    ).response()


def _store_error(exc: StoreError, path: str) -> ApiError:
    """The one table from the store's errors to answers."""
    if isinstance(exc, ChunkNotFoundError):
        return ApiError(404, VolumeErrorCode.ENOENT, str(exc), path=path)
    if isinstance(exc, ChunkCorruptError):
        return ApiError(500, VolumeErrorCode.ECORRUPT, str(exc), path=path)
    if isinstance(exc, ChunkRangeError):
        return ApiError(416, VolumeErrorCode.ERANGE, str(exc), path=path)
    if isinstance(exc, ChecksumMismatchError):
        return ApiError(400, VolumeErrorCode.ECHECKSUM, str(exc), path=path)
    if isinstance(exc, SourceSizeError):
        return ApiError.invalid(str(exc), path)
    if isinstance(exc, StoreFullError):
        return ApiError(507, VolumeErrorCode.ENOSPC, str(exc), path=path)
    if isinstance(exc, StoreClosedError):
        message = "the volume server is shutting down; use another replica"
        return ApiError(503, VolumeErrorCode.EROFS, message, path=path)
    if isinstance(exc, StoreFailedError):
        return ApiError(503, VolumeErrorCode.EROFS, str(exc), path=path)
    logger.error("chunk store error serving chunk %s: %s", path, exc)
    return ApiError(500, VolumeErrorCode.EIO, str(exc), path=path)


def _http_exception(request: web.Request, exc: web.HTTPException) -> ApiError:
    """The router's own refusals (404, 405, ...) as JSON."""
    headers: dict[str, str] = {}
    if exc.status == 404:
        message = (
            f"no endpoint {request.method} {request.path}; a volume server serves "
            "/chunks/{id} (PUT, GET, HEAD), /status, /healthz and /metrics"
        )
    elif exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        headers["Allow"] = allowed
        message = f"{request.path} does not accept {request.method}; it accepts {allowed}"
    else:
        message = f"the request was refused: {exc.reason}"
    code = VolumeErrorCode.ENOSYS if exc.status in (404, 405) else VolumeErrorCode.EINVAL
    return ApiError(exc.status, code, message, headers=headers)


def _broken_off(request: web.Request, chunk_id: int, exc: Exception) -> None:
    """A read failed after its headers went out: cut the connection, so the client sees a
    body shorter than its Content-Length rather than a body that looks whole."""
    if request.transport is not None:
        request.transport.abort()
    if isinstance(exc, ChunkCorruptError):
        logger.warning("chunk %d turned out corrupt mid-read; connection aborted", chunk_id)
    elif isinstance(exc, OSError | TimeoutError):
        logger.debug("chunk %d: the reader went away (%s)", chunk_id, exc)
    else:
        logger.error("chunk %d: read failed mid-stream", chunk_id, exc_info=exc)
