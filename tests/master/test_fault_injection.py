"""``GET|PUT /debug/faults``: a journal fsync delay and a wall clock offset set at run
time, for fault tests.

Over a fake service with a real journal (``DiskStorage``, no flushes) and a
``WallClock``: 404 when fault injection is off, 401 without the admin token, 400 for
each kind of bad input (and nothing changed), PUTs of either field or both then GETs,
the WARNINGs in the log, the offset in the mtimes the API stamps, and no forwarding.
Then whole masters in-process (``run_master``): a group of one, where a write pays the
delay and is fast again once it is set back to 0; and a group of three whose leader's
clock jumps an hour ahead and a follower's an hour back: mtimes and lease.log's wall
times move, while the leader, the term and commits do not, until a transfer. Waiting is
polling; nothing waits on a sleep, except the hold that shows nothing happens.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_http_api import ADMIN, Client, FakeService, assert_error, call, run
from test_master_metrics import SECRET, free_port, parse, running, until, value

from quorumfs.master.commands import Create, Mkdir
from quorumfs.master.http_api import FaultTarget, build_app
from quorumfs.master.server import MasterOptions
from quorumfs.runtime.clock import WallClock
from quorumfs.runtime.wal import DiskStorage

LOGGER = "quorumfs.master.http_api"
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


@asynccontextmanager
async def serve(
    service: FakeService, faults: FaultTarget | None, clock: WallClock | None = None
) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(service, faults=faults, clock=clock))) as client:
        yield client


@pytest.fixture
def journal(tmp_path: Path) -> DiskStorage:
    return DiskStorage.open(tmp_path / "journal", fsync=False)


def faults(delay_ms: int = 0, offset_ms: int = 0) -> dict[str, int]:
    """A ``/debug/faults`` answer."""
    return {"fsync_delay_ms": delay_ms, "wall_clock_offset_ms": offset_ms}


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


@pytest.mark.parametrize("headers", [ADMIN, {}])
def test_faults_are_404_when_fault_injection_is_off(headers: dict[str, str]) -> None:
    async def test() -> None:
        async with serve(FakeService(), None) as client:
            puts: list[dict[str, Any]] = [
                {"fsync_delay_ms": 100},
                {"wall_clock_offset_ms": HOUR_MS},
            ]
            for method, body in (("GET", None), *(("PUT", put) for put in puts)):
                answer = await call(client, method, "/debug/faults", body, headers=headers)
                assert_error(
                    answer,
                    404,
                    "ENOSYS",
                    mentions="fault injection is off: start the master with --fault-injection",
                )

    run(test)


@pytest.mark.parametrize("method", ["GET", "PUT"])
@pytest.mark.parametrize(
    ("authorization", "mentions"),
    [(None, "needs the cluster admin token"), ("Bearer wrong", "not valid")],
)
def test_faults_need_the_admin_token(
    journal: DiskStorage, method: str, authorization: str | None, mentions: str
) -> None:
    clock = WallClock()

    async def test() -> None:
        headers = {} if authorization is None else {"Authorization": authorization}
        body = {"fsync_delay_ms": 100, "wall_clock_offset_ms": 1} if method == "PUT" else None
        async with serve(FakeService(), journal, clock) as client:
            answer = await call(client, method, "/debug/faults", body, headers=headers)
            assert_error(answer, 401, "EACCES", mentions=mentions)
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert journal.sync_delay == 0.0
        assert clock.offset == 0.0

    with journal:
        run(test)


@pytest.mark.parametrize(
    ("raw", "mentions"),
    [
        (b"", "not valid JSON"),
        (b'{"fsync_delay_ms": ', "not valid JSON"),
        (b"[200]", "Expected `object`, got `array`"),
        (b"{}", "nothing to change: give `fsync_delay_ms`, `wall_clock_offset_ms` or both"),
        (b'{"fsync_delay_ms": 200, "slow": true}', "unknown field `slow`"),
        (b'{"fsync_ms": 200}', "unknown field `fsync_ms`"),
        (b'{"clock_offset_ms": 200}', "unknown field `clock_offset_ms`"),
        (b'{"fsync_delay_ms": "200"}', "Expected `int`, got `str` - at `$.fsync_delay_ms`"),
        (b'{"fsync_delay_ms": 1.5}', "Expected `int`, got `float` - at `$.fsync_delay_ms`"),
        (b'{"fsync_delay_ms": true}', "Expected `int`, got `bool` - at `$.fsync_delay_ms`"),
        (b'{"fsync_delay_ms": null}', "Expected `int`, got `null` - at `$.fsync_delay_ms`"),
        (b'{"fsync_delay_ms": -1}', "Expected `int` >= 0 - at `$.fsync_delay_ms`"),
        (b'{"fsync_delay_ms": 60001}', "Expected `int` <= 60000 - at `$.fsync_delay_ms`"),
        (
            b'{"wall_clock_offset_ms": "-5"}',
            "Expected `int`, got `str` - at `$.wall_clock_offset_ms`",
        ),
        (
            b'{"wall_clock_offset_ms": 1e3}',
            "Expected `int`, got `float` - at `$.wall_clock_offset_ms`",
        ),
        (
            b'{"wall_clock_offset_ms": false}',
            "Expected `int`, got `bool` - at `$.wall_clock_offset_ms`",
        ),
        (
            b'{"wall_clock_offset_ms": null}',
            "Expected `int`, got `null` - at `$.wall_clock_offset_ms`",
        ),
        (
            b'{"wall_clock_offset_ms": 86400001}',
            "Expected `int` <= 86400000 - at `$.wall_clock_offset_ms`",
        ),
        (
            b'{"wall_clock_offset_ms": -86400001}',
            "Expected `int` >= -86400000 - at `$.wall_clock_offset_ms`",
        ),
        # One good field does not make a bad one pass, nor is it applied alone.
        (
            b'{"fsync_delay_ms": 100, "wall_clock_offset_ms": 99999999999}',
            "Expected `int` <= 86400000 - at `$.wall_clock_offset_ms`",
        ),
        (
            b'{"fsync_delay_ms": -5, "wall_clock_offset_ms": 1000}',
            "Expected `int` >= 0 - at `$.fsync_delay_ms`",
        ),
    ],
)
def test_bad_faults_are_refused_and_change_nothing(
    journal: DiskStorage, caplog: pytest.LogCaptureFixture, raw: bytes, mentions: str
) -> None:
    clock = WallClock(offset=-1.234)

    async def test() -> None:
        async with serve(FakeService(), journal, clock) as client:
            answer = await call(client, "PUT", "/debug/faults", raw=raw, headers=ADMIN)
            assert_error(answer, 400, "EINVAL", mentions=mentions)
            now = await call(client, "GET", "/debug/faults", headers=ADMIN)
            assert (now.status, now.body) == (200, faults(7, -1234))

    with journal:
        journal.sync_delay = 0.007
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            run(test)
        assert journal.sync_delay == 0.007
        assert clock.offset == -1.234
        assert warnings_logged(caplog) == []
        journal.sync_delay = 0.0


def test_put_sets_the_delay_get_reads_it_and_each_change_is_a_warning(
    journal: DiskStorage, caplog: pytest.LogCaptureFixture
) -> None:
    async def test() -> None:
        async with serve(FakeService(), journal) as client:
            answer = await call(client, "GET", "/debug/faults", headers=ADMIN)
            assert (answer.status, answer.body) == (200, faults())

            put = {"fsync_delay_ms": 200}
            answer = await call(client, "PUT", "/debug/faults", put, headers=ADMIN)
            assert (answer.status, answer.body) == (200, faults(200))
            assert journal.sync_delay == 0.2
            answer = await call(client, "GET", "/debug/faults", headers=ADMIN)
            assert (answer.status, answer.body) == (200, faults(200))

            answer = await call(client, "PUT", "/debug/faults", put, headers=ADMIN)
            assert (answer.status, answer.body) == (200, faults(200))  # no change

            for ms in (60000, 0):
                put = {"fsync_delay_ms": ms}
                answer = await call(client, "PUT", "/debug/faults", put, headers=ADMIN)
                assert (answer.status, answer.body) == (200, faults(ms))
            assert journal.sync_delay == 0.0
            answer = await call(client, "GET", "/debug/faults", headers=ADMIN)
            assert (answer.status, answer.body) == (200, faults())

    with journal, caplog.at_level(logging.WARNING, logger=LOGGER):
        run(test)
    assert warnings_logged(caplog) == [
        "fault injection: journal fsync delay set to 200 ms (was 0 ms)",
        "fault injection: journal fsync delay set to 60000 ms (was 200 ms)",
        "fault injection: journal fsync delay set to 0 ms (was 60000 ms)",
    ]


def test_put_sets_the_clock_offset_or_both_and_leaves_out_fields_unchanged(
    journal: DiskStorage, caplog: pytest.LogCaptureFixture
) -> None:
    clock = WallClock()

    async def test() -> None:
        async with serve(FakeService(), journal, clock) as client:

            async def put(body: dict[str, int], expected: dict[str, int]) -> None:
                answer = await call(client, "PUT", "/debug/faults", body, headers=ADMIN)
                assert (answer.status, answer.body) == (200, expected)
                answer = await call(client, "GET", "/debug/faults", headers=ADMIN)
                assert (answer.status, answer.body) == (200, expected)

            await put({"wall_clock_offset_ms": HOUR_MS}, faults(0, HOUR_MS))
            assert clock.offset == 3600.0
            assert abs(clock.time() - (time.time() + 3600)) < 5
            await put({"fsync_delay_ms": 50}, faults(50, HOUR_MS))  # the offset stays
            await put({"wall_clock_offset_ms": -HOUR_MS}, faults(50, -HOUR_MS))  # the delay too
            assert journal.sync_delay == 0.05
            await put({"fsync_delay_ms": 0, "wall_clock_offset_ms": DAY_MS}, faults(0, DAY_MS))
            await put({"wall_clock_offset_ms": DAY_MS}, faults(0, DAY_MS))  # no change
            await put({"wall_clock_offset_ms": -DAY_MS}, faults(0, -DAY_MS))
            await put({"wall_clock_offset_ms": 1}, faults(0, 1))
            assert clock.offset == 0.001
            await put({"fsync_delay_ms": 0, "wall_clock_offset_ms": 0}, faults())
            assert (clock.offset, journal.sync_delay) == (0.0, 0.0)

    with journal, caplog.at_level(logging.WARNING, logger=LOGGER):
        run(test)
    note = "leases and timeouts do not read the wall clock"
    assert warnings_logged(caplog) == [
        f"fault injection: wall clock offset set to +3600000 ms (was +0 ms); {note}",
        "fault injection: journal fsync delay set to 50 ms (was 0 ms)",
        f"fault injection: wall clock offset set to -3600000 ms (was +3600000 ms); {note}",
        "fault injection: journal fsync delay set to 0 ms (was 50 ms)",
        f"fault injection: wall clock offset set to +86400000 ms (was -3600000 ms); {note}",
        f"fault injection: wall clock offset set to -86400000 ms (was +86400000 ms); {note}",
        f"fault injection: wall clock offset set to +1 ms (was -86400000 ms); {note}",
        f"fault injection: wall clock offset set to +0 ms (was +1 ms); {note}",
    ]


@pytest.mark.parametrize("offset_ms", [HOUR_MS, -HOUR_MS])
def test_the_mtimes_the_api_stamps_are_on_the_shifted_clock(
    journal: DiskStorage, offset_ms: int
) -> None:
    async def test() -> None:
        service = FakeService()
        async with serve(service, journal, WallClock()) as client:
            put = {"wall_clock_offset_ms": offset_ms}
            assert (await call(client, "PUT", "/debug/faults", put, headers=ADMIN)).status == 200
            expected_ns = time.time_ns() + offset_ms * 1_000_000
            assert (await call(client, "POST", "/v1/fs/mkdir", {"path": "/d"})).status == 200
            created = await call(client, "POST", "/v1/fs/create", {"path": "/d/f"})
            assert created.status == 200
            mkdir, create = service.executed
            assert isinstance(mkdir, Mkdir) and isinstance(create, Create)
            for mtime in (mkdir.mtime, create.mtime, created.body["mtime"]):
                assert abs(mtime - expected_ns) < 5 * 10**9

    with journal:
        run(test)


def test_a_follower_sets_its_own_faults_and_forwards_nothing(journal: DiskStorage) -> None:
    clock = WallClock()

    async def test() -> None:
        service = FakeService(node_id=2, leader=False)
        service.leader_address = "127.0.0.1:1"  # a forward would fail: nothing listens there
        async with serve(service, journal, clock) as client:
            put = {"fsync_delay_ms": 15, "wall_clock_offset_ms": -20}
            answer = await call(client, "PUT", "/debug/faults", put, headers=ADMIN)
            assert (answer.status, answer.body) == (200, faults(15, -20))
        assert journal.sync_delay == 0.015
        assert clock.offset == -0.02
        journal.sync_delay = 0.0

    with journal:
        run(test)


# ------------------------------------------------------------- a real master

DELAY_MS = 300


def test_a_real_master_commits_no_faster_than_the_delay_then_fast_again(
    tmp_path: Path,
) -> None:
    options = MasterOptions(
        mdir=tmp_path / "m1",
        port=free_port(),
        raft_port=free_port(),
        secret=SECRET.decode(),
        tick_interval=0.01,
        fsync=False,
        fault_injection=True,
    )

    async def test() -> None:
        base = f"http://{options.http_address}"
        async with running(options) as masters, aiohttp.ClientSession() as session:

            async def leading() -> bool:
                if not masters.started():
                    return False
                async with session.get(f"{base}/cluster/status") as response:
                    return bool((await response.json())["role"] == "LEADER")

            async def faults(ms: int | None = None) -> int:
                token = (options.mdir / "admin.token").read_text().strip()
                headers = {"Authorization": f"Bearer {token}"}
                body = None if ms is None else {"fsync_delay_ms": ms}
                async with session.request(
                    "GET" if ms is None else "PUT",
                    f"{base}/debug/faults",
                    json=body,
                    headers=headers,
                ) as response:
                    assert response.status == 200, await response.text()
                    delay: int = (await response.json())["fsync_delay_ms"]
                    return delay

            async def mkdir(path: str) -> float:
                started = time.perf_counter()
                async with session.post(f"{base}/v1/fs/mkdir", json={"path": path}) as resp:
                    assert resp.status == 200, await resp.text()
                return time.perf_counter() - started

            async def fsync_seconds() -> float:
                async with session.get(f"{base}/metrics") as response:
                    samples = parse(await response.text())
                return value(samples, "quorumfs_raft_fsync_seconds_sum")

            await until(leading, "the master to lead")
            await mkdir("/warm")
            assert await faults() == 0

            assert await faults(DELAY_MS) == DELAY_MS
            assert await faults() == DELAY_MS
            synced_before = await fsync_seconds()
            assert await mkdir("/slow") >= DELAY_MS / 1000
            assert await fsync_seconds() - synced_before >= DELAY_MS / 1000

            assert await faults(0) == 0
            assert await mkdir("/fast") < DELAY_MS / 1000

    asyncio.run(asyncio.wait_for(test(), timeout=30))


def founding_ports(count: int) -> list[int]:
    """HTTP ports P, each with P + 10000 (the founding masters' Raft port) free too."""
    ports: list[int] = []
    rng = random.Random()
    while len(ports) < count:
        port = rng.randrange(20000, 55000)
        with ExitStack() as stack:
            try:
                for candidate in (port, port + 10000):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def lease_log_lines(mdir: Path) -> list[tuple[float, str]]:
    """(wall time in seconds since the epoch, the rest) of every lease.log line."""
    lines = []
    for line in (mdir / "lease.log").read_text().splitlines():
        stamp, _, rest = line.partition(" ")
        wall = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        lines.append((wall.timestamp(), rest))
    return lines


def test_a_wall_clock_jump_moves_mtimes_and_lease_log_stamps_but_not_leadership(
    tmp_path: Path,
) -> None:
    """Three masters: the leader's clock jumps an hour ahead, a follower's an hour back.
    The leader, the term and commits carry on through several election timeouts (leases
    and elections count monotonic time); mtimes and lease.log's wall times move. After a
    transfer to the follower, both sides' lease.log lines show their own clocks."""
    ports = founding_ports(3)
    peers = [f"127.0.0.1:{port}" for port in ports]
    tick = 0.02  # an election timeout of 0.2 to 0.4 s: short, but not so short that a
    # busy test machine makes elections happen on their own
    options = [
        MasterOptions(
            mdir=tmp_path / f"m{i}",
            port=port,
            peers=peers,
            secret=SECRET.decode(),
            tick_interval=tick,
            fsync=False,
            fault_injection=True,
        )
        for i, port in enumerate(ports, start=1)
    ]
    by_id = {i: o for i, o in enumerate(sorted(options, key=lambda o: o.http_address), start=1)}

    async def test() -> None:
        async with running(*options) as masters, aiohttp.ClientSession() as session:

            async def status(o: MasterOptions) -> dict[str, Any]:
                async with session.get(f"http://{o.http_address}/cluster/status") as response:
                    assert response.status == 200
                    answer: dict[str, Any] = await response.json()
                    return answer

            async def agreed() -> tuple[int, int] | None:
                """(leader id, term) if every master names the same leader and term."""
                if not masters.started():
                    return None
                seen = {(s["leader_id"], s["term"]) for s in [await status(o) for o in options]}
                if len(seen) != 1:
                    return None
                ((leader, term),) = seen
                return None if leader is None else (leader, term)

            async def settled() -> bool:
                return await agreed() is not None

            async def jump(o: MasterOptions, offset_ms: int) -> None:
                token = (o.mdir / "admin.token").read_text().strip()
                async with session.put(
                    f"http://{o.http_address}/debug/faults",
                    json={"wall_clock_offset_ms": offset_ms},
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    assert response.status == 200, await response.text()
                    assert (await response.json())["wall_clock_offset_ms"] == offset_ms

            async def make(o: MasterOptions, path: str, what: str = "mkdir") -> int:
                """The mtime of a new directory (or file: ``create``), in seconds."""
                url = f"http://{o.http_address}/v1/fs/{what}"
                async with session.post(url, json={"path": path}) as response:
                    assert response.status == 200, await response.text()
                    mtime: int = (await response.json())["mtime"]
                    return mtime // 10**9

            def near(seconds: float, offset_ms: int) -> bool:
                return abs(seconds - (time.time() + offset_ms / 1000)) < 60

            await until(settled, "the masters to agree on a leader", timeout=20)
            agreement = await agreed()
            assert agreement is not None
            leader_id, term = agreement
            leader = by_id[leader_id]
            ahead, behind = leader_id, next(i for i in by_id if i != leader_id)
            other = next(i for i in by_id if i not in (ahead, behind))
            await jump(by_id[ahead], HOUR_MS)
            await jump(by_id[behind], -HOUR_MS)

            # Through the follower that was not touched: forwarded, stamped by the leader.
            assert near(await make(by_id[other], "/ahead", "create"), HOUR_MS)
            held_until = time.monotonic() + 6 * options[0].election_tick * tick
            count = 0
            while time.monotonic() < held_until:  # three election timeouts at least
                await make(leader, f"/commit-{count}")
                count += 1
                await asyncio.sleep(tick)
            for o in options:
                now = await status(o)
                assert (now["leader_id"], now["term"]) == (leader_id, term), now
            assert (await status(leader))["role"] == "LEADER"
            assert count > 5

            token = (leader.mdir / "admin.token").read_text().strip()
            async with session.post(
                f"http://{leader.http_address}/cluster/transfer-leader",
                json={"to": behind},
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                assert response.status == 200, await response.text()
            assert near(await make(by_id[other], "/behind", "create"), -HOUR_MS)

            def stamps(i: int, event: str) -> list[float]:
                lines = lease_log_lines(by_id[i].mdir)
                return [wall for wall, rest in lines if f" event={event} " in f"{rest} "]

            async def new_lease_logged() -> bool:
                return any(near(wall, -HOUR_MS) for wall in stamps(behind, "lease-acquired"))

            await until(new_lease_logged, "the new leader to log its lease, an hour back")
            assert near(stamps(ahead, "step-down")[-1], HOUR_MS)
            assert near(stamps(ahead, "started")[0], 0)  # before the jump
            watcher = lease_log_lines(by_id[other].mdir)
            assert all(near(wall, 0) for wall, _ in watcher)
            assert any(f"term={term + 1}" in rest for _, rest in watcher)

    asyncio.run(asyncio.wait_for(test(), timeout=60))
