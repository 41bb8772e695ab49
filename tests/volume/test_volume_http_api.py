"""A volume server's HTTP API against a real store, over real HTTP (aiohttp's TestServer).

Covers writes (tokens, their expiry judged by the leader's clock as the last heartbeat
answer told it, Content-Length, checksum, size limits, a body that breaks
off, a full or failed store, before registration), reads (whole, ranges over
small and block-by-block chunks, HEAD, bad ranges), corruption found before the
first byte and mid-stream (the connection is cut, never a wrong byte) and its
report in the next heartbeat, and the JSON error bodies of every refusal.

The server is registered by one heartbeat to a fake link (``FakeLink``); tests
that look at what heartbeats report call ``heart.beat()`` themselves. Nothing
waits by sleeping.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer
from crc32c import crc32c

from quorumfs.tokens import WriteGrant, WriteTokenKey
from quorumfs.volume.heartbeat import HeartbeatLoop, IdentityFile
from quorumfs.volume.http_api import build_app
from quorumfs.volume.needles import record_size
from quorumfs.volume.store import ChunkStore
from quorumfs.wire import (
    CHECKSUM_HEADER,
    MAX_CHUNK_SIZE,
    TOKEN_HEADER,
    ChunkWritten,
    Heartbeat,
    HeartbeatResponse,
    VolumeStatus,
)

SECRET = b"volume-server-tests-secret-0123456789"
KEY = WriteTokenKey(SECRET)
VOLUME_ID = 7
MiB = 1 << 20


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def token(chunk_id: int, volume_id: int = VOLUME_ID, *, ttl_ms: int = 60_000) -> str:
    return KEY.sign(WriteGrant(chunk_id, volume_id, int(time.time() * 1000) + ttl_ms))


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=30))


@dataclass
class FakeLink:
    """A ``MasterLink`` whose leader acknowledges every heartbeat, or gives the next of
    ``answers`` (an exception is raised instead of answering). Records every heartbeat."""

    volume_id: int = VOLUME_ID
    leader: str | None = "10.0.0.1:9333"
    term: int = 1
    beats: list[Heartbeat] = field(default_factory=list)
    answers: list[HeartbeatResponse | Exception] = field(default_factory=list)

    async def heartbeat(self, beat: Heartbeat, *, deadline: float) -> HeartbeatResponse:
        self.beats.append(beat)
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return self.ack()

    def ack(self, **fields: object) -> HeartbeatResponse:
        defaults: dict[str, object] = {
            "volume_id": self.volume_id,
            "leader_term": self.term,
            "pulse_ms": 1000,
        }
        return HeartbeatResponse(**{**defaults, **fields})  # type: ignore[arg-type]


@dataclass
class Volume:
    """One running volume server app and a client session to it."""

    store: ChunkStore
    heart: HeartbeatLoop
    link: FakeLink
    session: aiohttp.ClientSession
    address: str

    def url(self, chunk_id: int | str) -> str:
        return f"http://{self.address}/chunks/{chunk_id}"

    async def put(
        self,
        chunk_id: int,
        data: bytes,
        *,
        write_token: str | None = "valid",
        headers: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        sent = dict(headers or {})
        if write_token is not None:
            sent[TOKEN_HEADER] = token(chunk_id) if write_token == "valid" else write_token
        async with self.session.put(self.url(chunk_id), data=data, headers=sent) as response:
            await response.read()
            return response

    async def get(
        self, chunk_id: int, range_: str | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        headers = {"Range": range_} if range_ is not None else {}
        async with self.session.get(self.url(chunk_id), headers=headers) as response:
            return response.status, await response.read(), dict(response.headers)


@asynccontextmanager
async def volume_app(
    directory: Path,
    *,
    register: bool = True,
    max_bytes: int | None = None,
    fsync: bool = False,
    body_timeout: float = 5.0,
) -> AsyncIterator[Volume]:
    """A volume server app on a store in ``directory``, registered as ``VOLUME_ID``."""
    store = ChunkStore.open(directory / "chunks", max_bytes=max_bytes, fsync=fsync)
    link = FakeLink()
    heart = HeartbeatLoop(
        store,
        link,
        address="127.0.0.1:1",
        directory=directory,
        identity=IdentityFile(directory / "identity.json", fsync=False),
    )
    server = TestServer(
        build_app(store, heart, secret=SECRET, body_timeout=body_timeout), host="127.0.0.1"
    )
    await server.start_server()
    heart.address = f"127.0.0.1:{server.port}"
    try:
        if register:
            assert await heart.beat()
        async with aiohttp.ClientSession() as session:
            yield Volume(store, heart, link, session, heart.address)
    finally:
        await server.close()
        await heart.tasks.close()
        store.close()


async def error_of(response: aiohttp.ClientResponse) -> tuple[int, str, str]:
    body = msgspec.json.decode(await response.read())
    return response.status, body["error"]["code"], body["error"]["path"]


async def put_error(
    v: Volume, chunk_id: int, data: bytes, *, headers: dict[str, str] | None = None
) -> tuple[int, str, str, str]:
    """(status, code, path, message) of a PUT with a valid token that is refused."""
    sent = {TOKEN_HEADER: token(chunk_id), **(headers or {})}
    async with v.session.put(v.url(chunk_id), data=data, headers=sent) as response:
        body = msgspec.json.decode(await response.read())
        return (
            response.status,
            body["error"]["code"],
            body["error"]["path"],
            body["error"]["message"],
        )


async def raw_exchange(address: str, request: bytes, *, close_after: bool = False) -> bytes:
    """Send raw bytes (a request the aiohttp client would not send) and read the answer."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        if close_after:
            return b""
        return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


def flip_byte(chunks_dir: Path, needle: bytes, at: int) -> None:
    """Damage the stored copy of the data that starts with ``needle``, ``at`` bytes in."""
    (path,) = sorted(chunks_dir.glob("vol-*.dat"))
    content = path.read_bytes()
    offset = content.index(needle) + at
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(bytes([content[offset] ^ 0x20]))


# --------------------------------------------------------------------------- writes


def test_a_chunk_written_with_a_valid_token_reads_back_whole_and_in_ranges(tmp_path: Path) -> None:
    small, big = blob(1, 5000), blob(2, 3 * MiB + 5)  # big: read block by block

    async def test() -> None:
        async with volume_app(tmp_path) as v:
            for chunk_id, data in ((1, small), (2, big)):
                async with v.session.put(
                    v.url(chunk_id), data=data, headers={TOKEN_HEADER: token(chunk_id)}
                ) as response:
                    assert response.status == 201
                    written = msgspec.json.decode(await response.read(), type=ChunkWritten)
                assert written == ChunkWritten(
                    chunk_id=chunk_id, size=len(data), checksum=crc32c(data)
                )

                status, body, headers = await v.get(chunk_id)
                assert (status, body) == (200, data)
                assert headers[CHECKSUM_HEADER] == str(crc32c(data))
                assert headers["Content-Length"] == str(len(data))

            ranges = {
                "bytes=0-99": slice(0, 100),
                "bytes=100-": slice(100, None),
                "bytes=-10": slice(-10, None),
                "bytes=4990-999999999": slice(4990, None),  # the end is clamped to the chunk's
            }
            across = {  # across 64 KiB blocks and 1 MiB pieces of the big chunk
                "bytes=70000-1500000": slice(70000, 1500001),
                "bytes=1048570-1048580": slice(1048570, 1048581),
            }
            for chunk_id, data, asked_for in ((1, small, ranges), (2, big, ranges | across)):
                for asked, part in asked_for.items():
                    status, body, headers = await v.get(chunk_id, asked)
                    first, stop, _ = part.indices(len(data))
                    assert (status, body) == (206, data[part]), asked
                    assert headers["Content-Range"] == f"bytes {first}-{stop - 1}/{len(data)}"
                    assert headers[CHECKSUM_HEADER] == str(crc32c(data))  # the whole chunk's

            async with v.session.head(v.url(2)) as response:
                assert response.status == 200
                assert response.headers["Content-Length"] == str(len(big))
                assert response.headers[CHECKSUM_HEADER] == str(crc32c(big))
                assert await response.read() == b""

            assert await v.heart.beat()
            assert v.link.beats[-1].full_report is False
            assert v.link.beats[-1].added == [1, 2]

    run(test)


def test_a_chunk_written_again_replaces_it(tmp_path: Path) -> None:
    async def test() -> None:
        async with volume_app(tmp_path) as v:
            assert (await v.put(4, b"first")).status == 201
            assert (await v.put(4, b"second")).status == 201  # a retry, or a repair
            assert (await v.get(4))[1] == b"second"

    run(test)


def test_the_checksum_header_is_checked_before_anything_is_stored(tmp_path: Path) -> None:
    data = blob(3, 200_000)

    async def test() -> None:
        async with volume_app(tmp_path) as v:
            wrong = {CHECKSUM_HEADER: str(crc32c(data) ^ 1)}
            status, code, path, message = await put_error(v, 3, data, headers=wrong)
            assert (status, code, path) == (400, "ECHECKSUM", "3")
            assert "not stored" in message
            assert 3 not in v.store
            status, code, _, _ = await put_error(v, 3, data, headers={CHECKSUM_HEADER: "0x1f"})
            assert (status, code) == (400, "EINVAL")
            assert 3 not in v.store

            response = await v.put(3, data, headers={CHECKSUM_HEADER: str(crc32c(data))})
            assert response.status == 201
            assert v.store.read_chunk(3) == data

    run(test)


def _forged(chunk_id: int) -> str:
    other = WriteTokenKey(b"another-cluster-secret-0123456789")
    return other.sign(WriteGrant(chunk_id, VOLUME_ID, int(time.time() * 1000) + 60_000))


@pytest.mark.parametrize(
    ("write_token", "why"),
    [
        pytest.param(None, "write token", id="missing"),
        pytest.param(_forged(5), "signature", id="forged"),
        pytest.param(token(5, ttl_ms=-1000), "expired", id="expired"),
        pytest.param(token(6), "for chunk 6", id="another-chunk"),
        pytest.param(token(5, volume_id=8), "volume server 8", id="another-volume"),
        pytest.param("v1.bm9uc2Vuc2U.AAAA", "signature", id="garbage"),
    ],
)
def test_a_write_without_a_valid_token_is_refused_and_nothing_is_stored(
    tmp_path: Path, write_token: str | None, why: str
) -> None:
    async def test() -> None:
        async with volume_app(tmp_path) as v:
            headers = {} if write_token is None else {TOKEN_HEADER: write_token}
            async with v.session.put(v.url(5), data=b"payload", headers=headers) as response:
                body = msgspec.json.decode(await response.read())
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith(TOKEN_HEADER)
            assert body["error"]["code"] == "EACCES"
            assert body["error"]["path"] == "5"
            assert why in body["error"]["message"]
            assert 5 not in v.store
            assert v.store.usage().total_bytes == 0

    run(test)


@pytest.mark.parametrize("skew_ms", [-3_600_000, 3_600_000], ids=["behind", "ahead"])
def test_token_expiry_is_judged_by_the_leaders_clock_from_the_last_heartbeat(
    tmp_path: Path, skew_ms: int
) -> None:
    """A leader whose clock is an hour behind (or ahead) signs tokens that expire two
    minutes after its own now. Once a heartbeat answer told this server the leader's
    time, such a token is accepted, and one that expired by the leader's clock is not,
    whatever this server's own clock says."""

    def leader_now() -> int:
        return int(time.time() * 1000) + skew_ms

    async def put(v: Volume, chunk_id: int, expires: int) -> tuple[int, str]:
        grant = KEY.sign(WriteGrant(chunk_id, VOLUME_ID, expires))
        async with v.session.put(
            v.url(chunk_id), data=b"payload", headers={TOKEN_HEADER: grant}
        ) as response:
            body = msgspec.json.decode(await response.read())
            return response.status, "" if response.status == 201 else body["error"]["message"]

    async def test() -> None:
        async with volume_app(tmp_path) as v:  # an answer without the leader's time: offset 0
            assert v.heart.leader_clock_offset_ms == 0
            fresh = leader_now() + 120_000
            if skew_ms < 0:  # by this server's own clock, expired 58 minutes ago
                status, message = await put(v, 1, fresh)
                assert status == 401 and "expired 3480." in message, message
                assert 1 not in v.store

            v.link.answers.append(v.link.ack(leader_time_unix_ms=leader_now()))
            assert await v.heart.beat()
            assert skew_ms - 5_000 < v.heart.leader_clock_offset_ms <= skew_ms

            assert await put(v, 1, fresh) == (201, "")
            assert await put(v, 2, leader_now() + 5_000) == (201, "")
            status, message = await put(v, 3, leader_now() - 1_000)  # truly expired
            assert status == 401, message
            assert "expired" in message and "by the leader's clock" in message, message
            assert 3 not in v.store

    run(test)


def test_writes_wait_for_registration(tmp_path: Path) -> None:
    async def test() -> None:
        async with volume_app(tmp_path, register=False) as v:
            response = await v.put(1, b"early", write_token=token(1))
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            async with v.session.put(
                v.url(1), data=b"early", headers={TOKEN_HEADER: token(1)}
            ) as answer:
                body = msgspec.json.decode(await answer.read())
            assert body["error"]["code"] == "EAGAIN"
            assert "not registered" in body["error"]["message"]
            assert 1 not in v.store

            assert await v.heart.beat()  # the first heartbeat assigns the id
            assert (await v.put(1, b"early")).status == 201

    run(test)


def test_content_length_is_required_and_bounded(tmp_path: Path) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        yield b"chunked "
        yield b"body"

    async def test() -> None:
        async with volume_app(tmp_path) as v:
            headers = {TOKEN_HEADER: token(1)}
            async with v.session.put(v.url(1), data=pieces(), headers=headers) as response:
                assert await error_of(response) == (411, "ELENGTH", "1")
            async with v.session.put(v.url(1), data=b"", headers=headers) as response:
                assert await error_of(response) == (400, "EINVAL", "1")

            too_big = (
                f"PUT /chunks/1 HTTP/1.1\r\nHost: x\r\n{TOKEN_HEADER}: {token(1)}\r\n"
                f"Content-Length: {MAX_CHUNK_SIZE + 1}\r\n\r\n"
            ).encode()
            head = await raw_exchange(v.address, too_big)
            assert head.startswith(b"HTTP/1.1 413 ")
            assert 1 not in v.store

    run(test)


@pytest.mark.parametrize("how", ["stalls", "drops"])
@pytest.mark.parametrize("size", [3 * MiB, 64 * 1024], ids=["streamed", "read-whole"])
def test_a_body_that_breaks_off_stores_nothing(tmp_path: Path, how: str, size: int) -> None:
    # A large body streams into the store (a whole 1 MiB piece reaches the volume file and
    # is undone); a small one is read whole before the store sees it.
    async def test() -> None:
        async with volume_app(tmp_path, body_timeout=0.3) as v:
            assert (await v.put(1, b"before")).status == 201
            used = v.store.usage().total_bytes
            partial = (
                f"PUT /chunks/2 HTTP/1.1\r\nHost: x\r\n{TOKEN_HEADER}: {token(2)}\r\n"
                f"Content-Length: {size}\r\n\r\n"
            ).encode() + blob(4, size // 2)
            if how == "stalls":  # the answer can still be read: 400, after body_timeout
                head = await raw_exchange(v.address, partial)
                assert head.startswith(b"HTTP/1.1 400 ")
            else:  # the client died: nobody hears the answer
                await raw_exchange(v.address, partial, close_after=True)
            # The store takes one streaming write at a time: this one starts once the broken
            # upload has been undone.
            assert (await v.put(3, b"after")).status == 201
            assert 2 not in v.store
            assert (await v.get(2))[0] == 404
            assert v.store.read_chunk(1) == b"before"
            # The partial record was cut off the volume file: it grew by chunk 3's record only.
            on_disk = sum(f.stat().st_size for f in (tmp_path / "chunks").glob("vol-*.dat"))
            assert on_disk == v.store.usage().total_bytes == used + record_size(len(b"after"))

    run(test)


def test_a_full_store_answers_507_and_a_failed_store_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def test() -> None:
        async with volume_app(tmp_path / "full", max_bytes=100_000) as v:
            status, code, path, message = await put_error(v, 1, blob(5, 200_000))
            assert (status, code, path) == (507, "ENOSPC", "1")
            assert "full" in message
            assert 1 not in v.store

        async with volume_app(tmp_path / "failed", fsync=True) as v:
            assert (await v.put(1, b"durable")).status == 201

            def broken(fd: int) -> None:
                raise OSError(5, "Input/output error")

            monkeypatch.setattr(os, "fsync", broken)
            status, code, _, message = await put_error(v, 2, b"lost")
            assert (status, code) == (503, "EROFS")
            status, code, _, _ = await put_error(v, 3, b"refused")
            assert (status, code) == (503, "EROFS")
            monkeypatch.undo()
            assert (await v.get(1))[:2] == (200, b"durable")  # reads go on
            async with v.session.get(f"http://{v.address}/status") as response:
                status_body = msgspec.json.decode(await response.read(), type=VolumeStatus)
            assert status_body.writable is False
            assert status_body.free == 0

    run(test)


# ---------------------------------------------------------------------------- reads


def test_missing_chunks_bad_ids_and_unknown_routes_are_json_errors(tmp_path: Path) -> None:
    async def test() -> None:
        async with volume_app(tmp_path) as v:
            async with v.session.get(v.url(42)) as response:
                assert await error_of(response) == (404, "ENOENT", "42")
            async with v.session.head(v.url(42)) as response:
                assert response.status == 404
            for bad in ("0", "abc", "-1", "1.5", str(2**63)):
                async with v.session.get(v.url(bad)) as response:
                    assert (await error_of(response))[:2] == (400, "EINVAL"), bad
                async with v.session.put(v.url(bad), data=b"x") as response:
                    assert (await error_of(response))[:2] == (400, "EINVAL"), bad
            async with v.session.get(f"http://{v.address}/nowhere") as response:
                assert await error_of(response) == (404, "ENOSYS", "")
            async with v.session.post(v.url(1), data=b"x") as response:
                assert (await error_of(response))[:2] == (405, "ENOSYS")
                assert "PUT" in response.headers["Allow"]

    run(test)


@pytest.mark.parametrize(
    ("asked", "status", "code"),
    [
        ("bytes=5000-", 416, "ERANGE"),
        ("bytes=6000-7000", 416, "ERANGE"),
        ("bytes=-0", 416, "ERANGE"),
        ("bytes=0-1,5-6", 400, "EINVAL"),
        ("bytes=9-3", 400, "EINVAL"),
        ("bytes=a-b", 400, "EINVAL"),
        ("items=0-1", 400, "EINVAL"),
        ("bytes 0-1", 400, "EINVAL"),
    ],
)
def test_bad_ranges_are_refused(tmp_path: Path, asked: str, status: int, code: str) -> None:
    async def test() -> None:
        async with volume_app(tmp_path) as v:
            assert (await v.put(1, blob(6, 5000))).status == 201
            async with v.session.get(v.url(1), headers={"Range": asked}) as response:
                assert await error_of(response) == (status, code, "1")
                if status == 416:
                    assert response.headers["Content-Range"] == "bytes */5000"

    run(test)


def test_a_corrupt_chunk_is_500_ecorrupt_and_reported_in_the_next_heartbeat(
    tmp_path: Path,
) -> None:
    data = blob(7, 4096)

    async def test() -> None:
        async with volume_app(tmp_path) as v:
            assert (await v.put(3, data)).status == 201
            assert (await v.put(4, b"healthy")).status == 201
            assert await v.heart.beat()
            assert v.link.beats[-1].corrupt == []

            flip_byte(tmp_path / "chunks", data[:64], 100)
            async with v.session.get(v.url(3)) as response:
                assert await error_of(response) == (500, "ECORRUPT", "3")
            async with v.session.get(v.url(3), headers={"Range": "bytes=0-9"}) as response:
                assert (await error_of(response))[:2] == (500, "ECORRUPT")
            async with v.session.head(v.url(3)) as response:
                assert response.status == 500
            assert (await v.get(4))[:2] == (200, b"healthy")

            assert await v.heart.beat()
            assert v.link.beats[-1].corrupt == [3]
            assert await v.heart.beat()
            assert v.link.beats[-1].corrupt == []  # acknowledged: not repeated in deltas
            v.link.answers.append(v.link.ack(need_full_report=True))
            assert await v.heart.beat()
            assert await v.heart.beat()
            assert v.link.beats[-1].full_report
            assert v.link.beats[-1].corrupt == [3]  # a full report has them all

    run(test)


def test_damage_found_mid_stream_cuts_the_connection_and_never_sends_wrong_bytes(
    tmp_path: Path,
) -> None:
    data = blob(8, 3 * MiB)

    async def test() -> None:
        async with volume_app(tmp_path) as v:
            assert (await v.put(5, data)).status == 201
            flip_byte(tmp_path / "chunks", data[:64], 2 * MiB + 10)  # in a later block

            received = bytearray()
            with pytest.raises(aiohttp.ClientPayloadError):
                async with v.session.get(v.url(5)) as response:
                    assert response.status == 200  # the first blocks were sound
                    async for piece in response.content.iter_any():
                        received += piece
            assert 0 < len(received) <= 2 * MiB
            assert bytes(received) == data[: len(received)]

            async with v.session.get(v.url(5), headers={"Range": "bytes=0-9"}) as response:
                assert await error_of(response) == (500, "ECORRUPT", "5")
            assert await v.heart.beat()
            assert v.link.beats[-1].corrupt == [5]

    run(test)


def test_status_and_healthz(tmp_path: Path) -> None:
    async def test() -> None:
        async with volume_app(tmp_path, max_bytes=10 * MiB) as v:
            assert (await v.put(1, blob(9, 1000))).status == 201
            async with v.session.get(f"http://{v.address}/status") as response:
                status = msgspec.json.decode(await response.read(), type=VolumeStatus)
            assert status.volume_id == VOLUME_ID
            assert status.address == v.address
            assert status.directory == str(tmp_path)
            assert status.capacity == 10 * MiB
            assert 1000 < status.used < 10 * MiB
            assert 0 < status.free <= 10 * MiB - status.used
            assert (status.chunks, status.corrupt) == (1, 0)
            assert status.leader == v.link.leader
            assert status.last_heartbeat_ms is not None and status.last_heartbeat_ms >= 0
            assert status.writable
            async with v.session.get(f"http://{v.address}/healthz") as response:
                assert msgspec.json.decode(await response.read()) == {"ok": True}

    run(test)


def test_an_unexpected_exception_is_500_eio(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def test() -> None:
        async with volume_app(tmp_path) as v:

            async def broken_status() -> VolumeStatus:
                raise RuntimeError("a bug")

            v.heart.status = broken_status  # type: ignore[method-assign]
            async with v.session.get(f"http://{v.address}/status") as response:
                assert await error_of(response) == (500, "EIO", "")
        assert "a bug" in caplog.text

    run(test)
