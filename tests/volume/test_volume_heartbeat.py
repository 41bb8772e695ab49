"""The heartbeat loop and the task runner: what each heartbeat reports, and what the answers do.

Covers full reports and deltas (first heartbeat, after a failure, on request,
changes made while a heartbeat was in flight), the volume id stored before use
and sent after a restart, deletes, copies from another volume server (a real
one, in process: ``test_volume_http_api.volume_app``), compaction, the pulse and the
master list the leader gives, the leader's clock offset, the rate-limited warnings,
and riding through a leader change within one pulse with the real
``AsyncMasterClient`` against emulated masters (a dead leader, and a hung one).

Tests call ``beat()`` one heartbeat at a time; the one test of ``run()`` polls
with a deadline. Nothing waits by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from crc32c import crc32c
from test_volume_http_api import SECRET, VOLUME_ID, FakeLink, blob, run, volume_app

from quorumfs.client import AsyncMasterClient, RetryPolicy, Unavailable
from quorumfs.tokens import volume_token
from quorumfs.volume.heartbeat import HeartbeatLoop, IdentityFile, MasterList
from quorumfs.volume.store import ChunkStore
from quorumfs.wire import Heartbeat, HeartbeatResponse, ReplicateTask

MiB = 1 << 20
HOUR_MS = 3_600_000


@contextmanager
def heartbeat_loop(
    directory: Path, link: FakeLink | AsyncMasterClient, *, masters: MasterList | None = None
) -> Iterator[HeartbeatLoop]:
    """A heartbeat loop over a store in ``directory / "chunks"`` (closed at the end)."""
    store = ChunkStore.open(directory / "chunks", fsync=False)
    try:
        yield HeartbeatLoop(
            store,
            link,
            address="127.0.0.1:8080",
            directory=directory,
            identity=IdentityFile(directory / "identity.json", fsync=False),
            masters=masters,
        )
    finally:
        store.close()


def write(heart: HeartbeatLoop, chunk_id: int, data: bytes = b"data") -> None:
    """What the PUT handler does: store, then record."""
    heart.store.write_chunk(chunk_id, data, len(data))
    heart.changes.added(chunk_id)


def delete(heart: HeartbeatLoop, chunk_id: int) -> None:
    heart.store.delete_chunk(chunk_id)
    heart.changes.removed(chunk_id)


# ------------------------------------------------------------- reports and deltas


def test_a_full_report_first_then_deltas_since_the_last_acknowledged_heartbeat(
    tmp_path: Path,
) -> None:
    with ChunkStore.open(tmp_path / "chunks", fsync=False) as store:  # held before a restart
        for chunk_id in (1, 2, 3):
            store.write_chunk(chunk_id, b"old", 3)

    async def test() -> None:
        link = FakeLink()
        with heartbeat_loop(tmp_path, link) as heart:
            assert heart.volume_id == 0
            assert await heart.beat()
            first = link.beats[-1]
            assert first.full_report
            assert (first.volume_id, first.added, first.removed) == (0, [1, 2, 3], [])
            usage = heart.store.usage()
            assert (first.capacity, first.used, first.chunk_count) == (None, usage.total_bytes, 3)
            assert first.free > 0  # the disk's free space: no --max
            assert heart.volume_id == VOLUME_ID

            write(heart, 4)
            delete(heart, 2)
            assert await heart.beat()
            second = link.beats[-1]
            assert not second.full_report
            assert (second.volume_id, second.added, second.removed) == (VOLUME_ID, [4], [2])
            assert second.chunk_count == 3

            assert await heart.beat()
            assert (link.beats[-1].added, link.beats[-1].removed) == ([], [])

    run(test)


def test_need_full_report_and_a_failure_each_make_the_next_heartbeat_full(tmp_path: Path) -> None:
    async def test() -> None:
        link = FakeLink()
        with heartbeat_loop(tmp_path, link) as heart:
            assert await heart.beat()
            write(heart, 1)
            link.answers.append(link.ack(need_full_report=True))  # this delta was not applied
            assert await heart.beat()
            assert link.beats[-1].added == [1]
            assert await heart.beat()
            assert link.beats[-1].full_report
            assert link.beats[-1].added == [1]

            write(heart, 2)
            link.answers.append(Unavailable("no leader", reason="no leader"))
            assert not await heart.beat()
            assert heart.full_report_due
            write(heart, 3)
            assert await heart.beat()
            assert link.beats[-1].full_report
            assert link.beats[-1].added == [1, 2, 3]

            write(heart, 4)
            assert await heart.beat()
            assert not link.beats[-1].full_report
            assert link.beats[-1].added == [4]  # the full report acknowledged 2 and 3

    run(test)


def test_changes_made_while_a_heartbeat_is_in_flight_are_sent_next(tmp_path: Path) -> None:
    class Racing(FakeLink):
        meanwhile: Callable[[], None] | None = None
        """Runs on the server while the next heartbeat is in flight."""

        async def heartbeat(self, beat: Heartbeat, *, deadline: float) -> HeartbeatResponse:
            if self.meanwhile is not None:
                self.meanwhile()
                self.meanwhile = None
            return await super().heartbeat(beat, deadline=deadline)

    async def test() -> None:
        link = Racing()
        with heartbeat_loop(tmp_path, link) as heart:
            assert await heart.beat()
            write(heart, 5)

            def meanwhile() -> None:
                write(heart, 9)  # a new chunk
                delete(heart, 5)  # a chunk this very heartbeat reports as added

            link.meanwhile = meanwhile
            assert await heart.beat()
            assert link.beats[-1].added == [5]
            assert await heart.beat()
            assert (link.beats[-1].added, link.beats[-1].removed) == ([9], [5])

    run(test)


def test_the_volume_id_is_stored_before_use_and_sent_after_a_restart(tmp_path: Path) -> None:
    async def test() -> None:
        with heartbeat_loop(tmp_path, FakeLink(volume_id=12)) as heart:
            assert await heart.beat()
            assert heart.volume_id == 12
        assert json.loads((tmp_path / "identity.json").read_text()) == {"volume_id": 12}

        link = FakeLink(volume_id=12)
        with heartbeat_loop(tmp_path, link) as heart:
            assert heart.volume_id == 12  # before any heartbeat
            assert await heart.beat()
            assert link.beats[0].volume_id == 12

    run(test)


def test_an_answer_with_another_volume_id_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    IdentityFile(tmp_path / "identity.json", fsync=False).save(12)

    async def test() -> None:
        link = FakeLink(volume_id=13)
        with heartbeat_loop(tmp_path, link) as heart:
            with caplog.at_level(logging.WARNING, "quorumfs.volume"):
                assert not await heart.beat()
            assert heart.volume_id == 12
            assert heart.full_report_due
            assert "answered volume id 13, but this server is 12" in caplog.text
        assert IdentityFile(tmp_path / "identity.json").load() == 12

    run(test)


def test_an_unreadable_identity_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "identity.json").write_text('{"volume_id": "seven"}')
    with pytest.raises(ValueError, match=r"identity\.json is unreadable"):
        IdentityFile(tmp_path / "identity.json").load()


# ---------------------------------------------------------------------------- tasks


def test_deletes_in_an_answer_are_carried_out_and_reported_as_removed(tmp_path: Path) -> None:
    async def test() -> None:
        link = FakeLink()
        with heartbeat_loop(tmp_path, link) as heart:
            for chunk_id in (1, 2, 3):
                write(heart, chunk_id)
            assert await heart.beat()
            link.answers.append(link.ack(delete=[1, 3, 99]))  # 99: not here, removed all the same
            assert await heart.beat()
            await heart.tasks.wait_idle()
            assert [info.chunk_id for info in heart.store.chunks()] == [2]
            assert await heart.beat()
            assert link.beats[-1].removed == [1, 3, 99]
            await heart.tasks.close()

    run(test)


@contextmanager
def dead_address() -> Iterator[str]:
    """A port with nothing listening (bound, never listened on): connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


def test_replication_tasks_copy_from_the_first_source_that_has_the_right_bytes(
    tmp_path: Path,
) -> None:
    big, small, held = blob(1, 3 * MiB + 7), blob(2, 5000), b"already here"

    async def test() -> None:
        async with volume_app(tmp_path / "source") as source:
            assert (await source.put(5, big)).status == 201
            assert (await source.put(6, small)).status == 201
            link = FakeLink()
            with dead_address() as dead, heartbeat_loop(tmp_path / "target", link) as heart:
                write(heart, 7, held)
                assert await heart.beat()
                tasks = [
                    ReplicateTask(
                        chunk_id=5,
                        size=len(big),
                        checksum=crc32c(big),
                        sources=[dead, source.address],
                    ),
                    ReplicateTask(  # the source serves other bytes than the leader expects
                        chunk_id=6,
                        size=len(small),
                        checksum=crc32c(small) ^ 1,
                        sources=[source.address],
                    ),
                    ReplicateTask(  # the source does not have it
                        chunk_id=8, size=10, checksum=0, sources=[source.address]
                    ),
                    ReplicateTask(  # held already with this checksum: nothing to copy
                        chunk_id=7, size=len(held), checksum=crc32c(held), sources=[]
                    ),
                ]
                link.answers.append(link.ack(replicate=tasks))
                assert await heart.beat()
                await heart.tasks.wait_idle()

                assert heart.store.read_chunk(5) == big
                assert 6 not in heart.store
                assert 8 not in heart.store
                assert await heart.beat()
                assert link.beats[-1].added == [5, 7]
                assert link.beats[-1].failed == [6, 8]
                assert await heart.beat()
                assert link.beats[-1].failed == []  # acknowledged
                await heart.tasks.close()

    run(test)


def test_compaction_reclaims_the_garbage_of_deleted_chunks(tmp_path: Path) -> None:
    async def test() -> None:
        with heartbeat_loop(tmp_path, FakeLink()) as heart:
            for chunk_id in range(1, 11):
                write(heart, chunk_id, blob(chunk_id, 50_000))
            for chunk_id in range(1, 9):
                delete(heart, chunk_id)
            assert heart.store.usage().garbage_bytes > 300_000
            assert await heart.tasks.compact() == [1]
            assert heart.store.usage().garbage_bytes == 0
            assert heart.store.read_chunk(10) == blob(10, 50_000)
            assert await heart.tasks.compact() == []

    run(test)


# ------------------------------------------------------------------- the answers


def test_the_leaders_pulse_and_master_list_are_taken(tmp_path: Path) -> None:
    async def test() -> None:
        masters = MasterList("10.0.0.1:9333")
        link = FakeLink()
        with heartbeat_loop(tmp_path, link, masters=masters) as heart:
            link.answers.append(
                link.ack(pulse_ms=250, masters=["10.0.0.1:9333", "10.0.0.2:9333", ""])
            )
            assert await heart.beat()
            assert heart.pulse == 0.25
            assert masters.current == ("10.0.0.1:9333", "10.0.0.2:9333")
            assert (await heart.status()).masters == ["10.0.0.1:9333", "10.0.0.2:9333"]

    run(test)


def test_the_leaders_clock_offset_is_taken_from_each_acknowledged_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``leader_clock_offset_ms``: the leader's time minus this server's when the answer
    arrived; 0 before the first answer and after one without it (an older leader); a
    failed heartbeat keeps it; a jump of more than 5 s is a warning."""

    def now_ms() -> int:
        return time.time_ns() // 1_000_000

    def near(offset: int, expected: int) -> bool:
        return expected - 5_000 < offset <= expected

    async def test() -> None:
        link = FakeLink()
        with heartbeat_loop(tmp_path, link) as heart, caplog.at_level(logging.WARNING):
            assert heart.leader_clock_offset_ms == 0
            assert abs(heart.leader_now_unix_ms() - now_ms()) < 5_000
            link.answers.append(link.ack(leader_time_unix_ms=now_ms() - HOUR_MS))
            assert await heart.beat()
            assert near(heart.leader_clock_offset_ms, -HOUR_MS)
            assert abs(heart.leader_now_unix_ms() - (now_ms() - HOUR_MS)) < 5_000
            assert (await heart.status()).leader_clock_offset_ms == heart.leader_clock_offset_ms

            link.answers.append(OSError("connection refused"))
            assert not await heart.beat()
            assert near(heart.leader_clock_offset_ms, -HOUR_MS)  # kept

            link.answers.append(link.ack(leader_time_unix_ms=now_ms() + 1_000))
            assert await heart.beat()
            assert near(heart.leader_clock_offset_ms, 1_000)
            link.answers.append(link.ack(leader_time_unix_ms=now_ms() + 1_200))
            assert await heart.beat()  # a small change: no warning
            assert near(heart.leader_clock_offset_ms, 1_200)

            link.answers.append(link.ack())  # a leader that does not say: its clock is ours
            assert await heart.beat()
            assert heart.leader_clock_offset_ms == 0
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "wall clock" in r.getMessage()
        ]
        assert len(warnings) == 2, warnings
        assert warnings[0].startswith("the leader's wall clock is -3600.")
        assert warnings[0].endswith(
            "s from this server's (was +0.0 s); write tokens are judged by the leader's clock"
        )
        assert "s from this server's (was -3600." in warnings[1]

    run(test)


def test_failures_warn_once_per_outage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        link = FakeLink()
        with heartbeat_loop(tmp_path, link) as heart, caplog.at_level(logging.DEBUG):
            link.answers += [OSError("connection refused")] * 3
            for _ in range(3):
                assert not await heart.beat()
            assert await heart.beat()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.getMessage() for r in warnings] == [
            "heartbeat failed: connection refused; retrying every 1 s (with a full report)"
        ]
        assert "heartbeats reach the leader again (3 failed in a row)" in caplog.text
        assert "registered with the masters as volume server 7" in caplog.text

    run(test)


def test_run_beats_every_pulse_and_survives_failures(tmp_path: Path) -> None:
    async def test() -> None:
        link = FakeLink()
        link.answers = [link.ack(pulse_ms=50), OSError("down"), *[link.ack(pulse_ms=50)] * 3]
        with heartbeat_loop(tmp_path, link) as heart:
            task = asyncio.create_task(heart.run())
            try:
                deadline = asyncio.get_running_loop().time() + 5
                while len(link.beats) < 4:
                    assert asyncio.get_running_loop().time() < deadline, link.beats
                    await asyncio.sleep(0.01)
            finally:
                task.cancel()
            assert [b.full_report for b in link.beats[:4]] == [True, False, True, False]

    run(test)


def test_a_new_leaders_request_for_the_full_list_is_answered_at_once(tmp_path: Path) -> None:
    """After a graceful leadership change the heartbeats never failed, so the next one is
    a delta; the new leader asks for the full list, and the server must not wait a pulse
    (a minute here) to send it: it takes no new chunks until then."""

    async def test() -> None:
        link = FakeLink()
        link.answers = [
            link.ack(pulse_ms=60_000),
            link.ack(pulse_ms=60_000, need_full_report=True, leader_term=2),
        ]
        with heartbeat_loop(tmp_path, link) as heart:
            assert await heart.beat()  # the first heartbeat: full
            task = asyncio.create_task(heart.run())
            try:
                deadline = asyncio.get_running_loop().time() + 5
                while len(link.beats) < 3:
                    assert asyncio.get_running_loop().time() < deadline, link.beats
                    await asyncio.sleep(0.01)
            finally:
                task.cancel()
            assert [b.full_report for b in link.beats] == [True, False, True]

    run(test)


# ------------------------------------------------------------- a leader change


class EmulatedMasters:
    """Masters' ``POST /v1/volumes/heartbeat``: the leader answers, the others answer 307
    naming it; ``hang`` makes the leader take heartbeats and never answer."""

    def __init__(self, size: int = 3) -> None:
        self.addresses: list[str] = []
        self.servers: list[TestServer] = []
        self.leader = 0
        self.term = 1
        self.beats: list[list[Heartbeat]] = [[] for _ in range(size)]
        self.hang = False
        self.release = asyncio.Event()

    def handler(self, index: int) -> web.Application:
        async def heartbeat(request: web.Request) -> web.Response:
            assert request.headers["Authorization"] == f"Bearer {volume_token(SECRET)}"
            if index != self.leader:
                location = f"http://{self.addresses[self.leader]}/v1/volumes/heartbeat"
                return web.Response(status=307, headers={"Location": location})
            beat = msgspec.json.decode(await request.read(), type=Heartbeat)
            self.beats[index].append(beat)
            if self.hang:
                await self.release.wait()
            answer = HeartbeatResponse(volume_id=VOLUME_ID, leader_term=self.term, pulse_ms=300)
            return web.Response(body=msgspec.json.encode(answer), content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/volumes/heartbeat", heartbeat)
        return app

    def elect(self, index: int) -> None:
        self.leader = index
        self.term += 1
        self.hang = False


@asynccontextmanager
async def emulated_masters() -> AsyncIterator[EmulatedMasters]:
    masters = EmulatedMasters()
    try:
        for index in range(len(masters.beats)):
            server = TestServer(masters.handler(index), host="127.0.0.1")
            await server.start_server()
            masters.servers.append(server)
            masters.addresses.append(f"127.0.0.1:{server.port}")
        yield masters
    finally:
        masters.release.set()
        for server in masters.servers:
            await server.close()


def client_for(masters: list[str]) -> AsyncMasterClient:
    policy = RetryPolicy(connect_timeout=0.2, backoff_initial=0.01, backoff_max=0.05)
    return AsyncMasterClient(MasterList(masters), policy=policy, token=volume_token(SECRET))


def test_a_dead_leader_is_replaced_within_the_same_heartbeat(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def test() -> None:
        async with emulated_masters() as cluster:
            a = cluster.addresses
            async with client_for([a[1], a[0], a[2]]) as client:
                with heartbeat_loop(tmp_path, client) as heart, caplog.at_level(logging.INFO):
                    assert await heart.beat()  # master 1 redirects to the leader, master 0
                    assert len(cluster.beats[0]) == 1
                    assert heart.pulse == 0.3

                    await cluster.servers[0].close()  # the leader dies; master 2 takes over
                    cluster.elect(2)
                    loop = asyncio.get_running_loop()
                    started = loop.time()
                    assert await heart.beat()
                    assert loop.time() - started < heart.pulse
                    assert len(cluster.beats[2]) == 1
                    assert (await heart.status()).leader == a[2]
        assert f"heartbeats go to the leader {a[2]} (term 2)" in caplog.text

    run(test)


def test_a_hung_leader_is_abandoned_after_one_pulse(tmp_path: Path) -> None:
    async def test() -> None:
        async with emulated_masters() as cluster, client_for(cluster.addresses) as client:
            with heartbeat_loop(tmp_path, client) as heart:
                assert await heart.beat()
                assert heart.pulse == 0.3
                cluster.hang = True  # the leader takes the heartbeat and never answers

                loop = asyncio.get_running_loop()
                started = loop.time()
                assert not await heart.beat()
                assert loop.time() - started < heart.pulse + 0.2
                assert len(cluster.beats[0]) == 2

                cluster.elect(1)  # meanwhile the masters elected another leader
                assert await heart.beat()
                assert len(cluster.beats[1]) == 1
                assert cluster.beats[1][0].full_report  # after a failure

    run(test)
