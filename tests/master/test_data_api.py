"""The masters' data-path routes over a fake ``MasterService`` with a real namespace:
heartbeats (auth, registration, full reports, deltas), allocation (not before a full
report, tokens a volume server accepts), commits, chunk lookup, garbage on delete,
and routing to the leader."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from aiohttp.test_utils import TestClient, TestServer
from test_http_api import Answer, Client, FakeService, assert_error, call

from quorumfs.master.commands import Command, Create
from quorumfs.master.data_api import add_data_routes
from quorumfs.master.data_service import DataOptions, DataService
from quorumfs.master.http_api import REDIRECT_HEADER, build_app
from quorumfs.master.results import Result
from quorumfs.master.topology import TopologyOptions
from quorumfs.runtime.clock import WallClock
from quorumfs.tokens import TokenError, WriteTokenKey, volume_token
from quorumfs.wire import AllocateResponse, FileContent, HeartbeatResponse

SECRET = b"test-cluster-secret-0123456789"
VOLUME = {"Authorization": f"Bearer {volume_token(SECRET)}"}
GiB = 1 << 30


class ListeningService(FakeService):
    """Calls the data service's apply listener, as the real state machine does."""

    data: DataService | None = None

    async def execute(self, command: Command) -> Result[Any]:
        result = await super().execute(command)
        if self.data is not None:
            self.data.on_applied(command, result)
        return result


@asynccontextmanager
async def serve(
    service: ListeningService, clock: WallClock | None = None
) -> AsyncIterator[tuple[Client, DataService]]:
    data = DataService(
        service,
        secret=SECRET,
        leader_term=lambda: 3 if service.leader else None,
        masters=lambda: ["10.0.0.1:9333"],
        options=DataOptions(topology=TopologyOptions(min_free=1), writable_wait=0.2),
        clock=clock,
    )
    service.data = data
    app = build_app(service, request_timeout=2.0, more_routes=add_data_routes(data), clock=clock)
    async with TestClient(TestServer(app)) as client:
        yield client, data


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


def heartbeat_body(volume_id: int, port: int, **fields: Any) -> dict[str, Any]:
    return {"address": f"127.0.0.1:{port}", "volume_id": volume_id, "free": GiB, **fields}


async def register(client: Client, port: int) -> int:
    first = await call(
        client, "POST", "/v1/volumes/heartbeat", heartbeat_body(0, port), headers=VOLUME
    )
    assert first.status == 200, first.body
    volume_id = msgspec.convert(first.body, HeartbeatResponse).volume_id
    full = heartbeat_body(volume_id, port, full_report=True)
    assert (await call(client, "POST", "/v1/volumes/heartbeat", full, headers=VOLUME)).status == 200
    return volume_id


def test_heartbeats_need_the_volume_token() -> None:
    async def test() -> None:
        async with serve(ListeningService()) as (client, _):
            for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
                answer = await call(
                    client, "POST", "/v1/volumes/heartbeat", heartbeat_body(0, 1), headers=headers
                )
                assert_error(answer, 401, "EACCES", mentions="cluster secret")

    run(test)


def test_a_first_heartbeat_registers_and_a_delta_asks_for_a_full_report() -> None:
    async def test() -> None:
        service = ListeningService()
        async with serve(service) as (client, _):
            answer = await call(
                client, "POST", "/v1/volumes/heartbeat", heartbeat_body(0, 8080), headers=VOLUME
            )
            beat = msgspec.convert(answer.body, HeartbeatResponse)
            assert beat.volume_id == 1
            assert beat.need_full_report  # a delta against nothing
            assert (beat.leader_term, beat.pulse_ms, beat.masters) == (3, 1000, ["10.0.0.1:9333"])
            assert service.namespace.volumes() == {1: "127.0.0.1:8080"}
            moved = heartbeat_body(1, 8081, full_report=True)
            answer = await call(client, "POST", "/v1/volumes/heartbeat", moved, headers=VOLUME)
            assert not msgspec.convert(answer.body, HeartbeatResponse).need_full_report
            assert service.namespace.volumes() == {1: "127.0.0.1:8081"}
            stranger = heartbeat_body(9, 8082)
            answer = await call(client, "POST", "/v1/volumes/heartbeat", stranger, headers=VOLUME)
            assert_error(answer, 404, "ENOENT", mentions="another cluster")
            bad = await call(
                client,
                "POST",
                "/v1/volumes/heartbeat",
                {"address": "no port", "volume_id": 0},
                headers=VOLUME,
            )
            assert_error(bad, 400, "EINVAL")

    run(test)


def test_heartbeat_answers_token_expiries_and_mtimes_are_on_the_masters_clock() -> None:
    """A leader whose wall clock is an hour behind tells volume servers its time, signs
    tokens that expire two minutes after it, and stamps commits with it."""
    hour_ms = 3_600_000

    def near(ms: int, expected_ms: int) -> bool:
        return abs(ms - expected_ms) < 60_000

    async def test() -> None:
        clock = WallClock(offset=-3600)
        async with serve(ListeningService(), clock) as (client, _):
            answer = await call(
                client, "POST", "/v1/volumes/heartbeat", heartbeat_body(0, 8001), headers=VOLUME
            )
            told = msgspec.convert(answer.body, HeartbeatResponse).leader_time_unix_ms
            assert told is not None and near(told, int(time.time() * 1000) - hour_ms)
            await register(client, 8001)
            await call(client, "POST", "/v1/fs/create", {"path": "/f", "replication": 1})
            answer = await call(client, "POST", "/v1/fs/allocate", {"path": "/f"})
            allocated = msgspec.convert(answer.body, AllocateResponse)
            assert near(allocated.expires_unix_ms, clock.time_ms() + 120_000)
            (grant,) = allocated.chunks
            chunk = [grant.chunk_id, 0, 5, 1234, [grant.targets[0].volume_id]]
            body = {"path": "/f", "chunks": [chunk], "size": 5}
            committed = await call(client, "POST", "/v1/fs/commit", body)
            assert committed.status == 200, committed.body
            mtime_ms = committed.body["stat"]["mtime"] // 1_000_000
            assert near(mtime_ms, int(time.time() * 1000) - hour_ms)

    run(test)


def test_allocation_waits_for_a_full_report_and_signs_tokens() -> None:
    async def test() -> None:
        service = ListeningService()
        async with serve(service) as (client, _):
            await call(client, "POST", "/v1/fs/create", {"path": "/f", "replication": 2})
            none = await call(client, "POST", "/v1/fs/allocate", {"path": "/f"})
            assert_error(none, 503, "EAGAIN", mentions="no volume server")
            ids = [await register(client, port) for port in (8001, 8002, 8003)]
            answer = await call(client, "POST", "/v1/fs/allocate", {"path": "/f", "count": 3})
            assert answer.status == 200, answer.body
            allocated = msgspec.convert(answer.body, AllocateResponse)
            assert allocated.replication == 2
            chunk_ids = [grant.chunk_id for grant in allocated.chunks]
            assert len(set(chunk_ids)) == 3
            key = WriteTokenKey(SECRET)
            for grant in allocated.chunks:
                assert len({t.volume_id for t in grant.targets}) == 2
                for target in grant.targets:
                    assert target.volume_id in ids
                    assert target.address == f"127.0.0.1:{8000 + target.volume_id}"
                    key.verify(
                        target.token,
                        chunk_id=grant.chunk_id,
                        volume_id=target.volume_id,
                        now_unix_ms=allocated.expires_unix_ms - 1,
                    )
                    try:
                        key.verify(
                            target.token,
                            chunk_id=grant.chunk_id,
                            volume_id=target.volume_id,
                            now_unix_ms=allocated.expires_unix_ms,
                        )
                    except TokenError:
                        pass
                    else:
                        raise AssertionError("a token must expire")
            # One Raft entry reserved a range: the next allocation costs none.
            executed = len(service.executed)
            again = await call(client, "POST", "/v1/fs/allocate", {"path": "/new", "count": 2})
            grants = msgspec.convert(again.body, AllocateResponse).chunks
            assert [g.chunk_id for g in grants] == [max(chunk_ids) + 1, max(chunk_ids) + 2]
            assert len(service.executed) == executed
            big = await call(client, "POST", "/v1/fs/allocate", {"path": "/f", "count": 65})
            assert_error(big, 400, "EINVAL")

    run(test)


def test_commit_lookup_and_garbage() -> None:
    async def test() -> None:
        service = ListeningService()
        async with serve(service) as (client, _):
            v1, v2 = [await register(client, port) for port in (8001, 8002)]
            answer = await call(client, "POST", "/v1/fs/allocate", {"path": "/f"})
            chunk_id = msgspec.convert(answer.body, AllocateResponse).chunks[0].chunk_id
            chunk = [chunk_id, 0, 5, 1234, [v1, v2]]
            body = {"path": "/f", "chunks": [chunk], "size": 5, "create": True}
            committed = await call(client, "POST", "/v1/fs/commit", body)
            assert committed.status == 200, committed.body
            assert committed.body["stat"]["version"] == 1
            assert committed.body["stat"]["size"] == 5

            content = await call(client, "GET", "/v1/fs/chunks?path=/f")
            decoded = msgspec.convert(content.body, FileContent)
            assert decoded.version == 1 and decoded.size == 5
            (location,) = decoded.chunks
            assert location.addresses == ["127.0.0.1:8001", "127.0.0.1:8002"]
            assert (location.chunk_id, location.checksum) == (chunk_id, 1234)

            stale = {**body, "expected_version": 0, "create": False}
            assert_error(await call(client, "POST", "/v1/fs/commit", stale), 409, "ECONFLICT")
            unknown_volume = {**body, "chunks": [[chunk_id, 0, 5, 1, [9]]]}
            assert_error(await call(client, "POST", "/v1/fs/commit", unknown_volume), 400, "EINVAL")
            missing = {**body, "path": "/nope/f"}
            assert_error(await call(client, "POST", "/v1/fs/commit", missing), 404, "ENOENT")
            bad_path = {**body, "path": "/a/../b"}
            assert_error(await call(client, "POST", "/v1/fs/commit", bad_path), 400, "EINVAL")
            assert_error(await call(client, "GET", "/v1/fs/chunks?path=/nope"), 404, "ENOENT")

            # Deleting the file tells both servers to delete the chunk.
            assert (await call(client, "POST", "/v1/fs/delete", {"path": "/f"})).status == 200
            for volume_id, port in ((v1, 8001), (v2, 8002)):
                beat = heartbeat_body(volume_id, port, added=[chunk_id])
                answer = await call(client, "POST", "/v1/volumes/heartbeat", beat, headers=VOLUME)
                assert msgspec.convert(answer.body, HeartbeatResponse).delete == [chunk_id]

    run(test)


def test_a_follower_redirects_data_writes_and_serves_lookups() -> None:
    async def test() -> None:
        service = ListeningService(leader=False)
        service.leader_address = "10.0.0.9:9333"
        async with serve(service) as (client, _):
            headers = {**VOLUME, REDIRECT_HEADER: "1"}
            answer: Answer = await call(
                client, "POST", "/v1/volumes/heartbeat", heartbeat_body(0, 1), headers=headers
            )
            assert answer.status == 307
            assert answer.headers["Location"] == "http://10.0.0.9:9333/v1/volumes/heartbeat"
            answer = await call(
                client, "POST", "/v1/fs/allocate", {"path": "/f"}, headers={REDIRECT_HEADER: "1"}
            )
            assert answer.status == 307
            service.namespace.apply(Create(path="/f", mtime=0, owner="o")).unwrap()
            content = await call(client, "GET", "/v1/fs/chunks?path=/f")
            assert content.status == 200 and content.body["chunks"] == []

    run(test)


def test_an_allocation_waits_for_a_server_to_become_writable() -> None:
    """Right after a leader change no server is writable until its full report: an
    allocation made then is held until one is, rather than answered "retry in 1 s"."""

    async def test() -> None:
        service = ListeningService()
        async with serve(service) as (client, data):
            data.options = DataOptions(topology=TopologyOptions(min_free=1), writable_wait=5.0)
            first = await call(
                client, "POST", "/v1/volumes/heartbeat", heartbeat_body(0, 8001), headers=VOLUME
            )
            volume_id = msgspec.convert(first.body, HeartbeatResponse).volume_id
            pending = asyncio.create_task(call(client, "POST", "/v1/fs/allocate", {"path": "/f"}))
            deadline = asyncio.get_running_loop().time() + 2
            while not data._writable._waiters:  # the allocation is waiting (private, for a test)
                assert not pending.done(), (await pending).body
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            full = heartbeat_body(volume_id, 8001, full_report=True)
            await call(client, "POST", "/v1/volumes/heartbeat", full, headers=VOLUME)
            answer = await asyncio.wait_for(pending, 2)
            assert answer.status == 200, answer.body
            (grant,) = msgspec.convert(answer.body, AllocateResponse).chunks
            assert [t.volume_id for t in grant.targets] == [volume_id]

    run(test)
