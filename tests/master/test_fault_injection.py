"""``GET|PUT /debug/faults``: a journal fsync delay set at run time, for fault tests.

Over a fake service with a real journal (``DiskStorage``, no flushes): 404 when fault
injection is off, 401 without the admin token, 400 for each kind of bad input (and
nothing changed), a PUT then a GET, the WARNING in the log, and no forwarding. Then a
whole master in-process (``run_master``, a group of one): a write pays the delay, and
is fast again once it is set back to 0. Waiting is polling; nothing waits on a sleep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_http_api import ADMIN, Client, FakeService, assert_error, call, run
from test_master_metrics import SECRET, free_port, parse, until, value

from quorumfs.master.http_api import FaultTarget, build_app
from quorumfs.master.server import MasterOptions, run_master
from quorumfs.runtime.wal import DiskStorage

LOGGER = "quorumfs.master.http_api"


@asynccontextmanager
async def serve(service: FakeService, faults: FaultTarget | None) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(service, faults=faults))) as client:
        yield client


@pytest.fixture
def journal(tmp_path: Path) -> DiskStorage:
    return DiskStorage.open(tmp_path / "journal", fsync=False)


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


@pytest.mark.parametrize("headers", [ADMIN, {}])
def test_faults_are_404_when_fault_injection_is_off(headers: dict[str, str]) -> None:
    async def test() -> None:
        async with serve(FakeService(), None) as client:
            for method, body in (("GET", None), ("PUT", {"fsync_delay_ms": 100})):
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
    async def test() -> None:
        headers = {} if authorization is None else {"Authorization": authorization}
        body = {"fsync_delay_ms": 100} if method == "PUT" else None
        async with serve(FakeService(), journal) as client:
            answer = await call(client, method, "/debug/faults", body, headers=headers)
            assert_error(answer, 401, "EACCES", mentions=mentions)
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert journal.sync_delay == 0.0

    with journal:
        run(test)


@pytest.mark.parametrize(
    ("raw", "mentions"),
    [
        (b"", "not valid JSON"),
        (b'{"fsync_delay_ms": ', "not valid JSON"),
        (b"[200]", "Expected `object`, got `array`"),
        (b"{}", "missing required field `fsync_delay_ms`"),
        (b'{"fsync_delay_ms": 200, "slow": true}', "unknown field `slow`"),
        (b'{"fsync_ms": 200}', "unknown field `fsync_ms`"),
        (b'{"fsync_delay_ms": "200"}', "Expected `int`, got `str` - at `$.fsync_delay_ms`"),
        (b'{"fsync_delay_ms": 1.5}', "Expected `int`, got `float` - at `$.fsync_delay_ms`"),
        (b'{"fsync_delay_ms": true}', "Expected `int`, got `bool` - at `$.fsync_delay_ms`"),
        (b'{"fsync_delay_ms": null}', "Expected `int`, got `null` - at `$.fsync_delay_ms`"),
        (b'{"fsync_delay_ms": -1}', "Expected `int` >= 0 - at `$.fsync_delay_ms`"),
        (b'{"fsync_delay_ms": 60001}', "Expected `int` <= 60000 - at `$.fsync_delay_ms`"),
    ],
)
def test_bad_faults_are_refused_and_change_nothing(
    journal: DiskStorage, caplog: pytest.LogCaptureFixture, raw: bytes, mentions: str
) -> None:
    async def test() -> None:
        async with serve(FakeService(), journal) as client:
            answer = await call(client, "PUT", "/debug/faults", raw=raw, headers=ADMIN)
            assert_error(answer, 400, "EINVAL", mentions=mentions)
            now = await call(client, "GET", "/debug/faults", headers=ADMIN)
            assert (now.status, now.body) == (200, {"fsync_delay_ms": 7})

    with journal:
        journal.sync_delay = 0.007
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            run(test)
        assert journal.sync_delay == 0.007
        assert warnings_logged(caplog) == []
        journal.sync_delay = 0.0


def test_put_sets_the_delay_get_reads_it_and_each_change_is_a_warning(
    journal: DiskStorage, caplog: pytest.LogCaptureFixture
) -> None:
    async def test() -> None:
        async with serve(FakeService(), journal) as client:
            answer = await call(client, "GET", "/debug/faults", headers=ADMIN)
            assert (answer.status, answer.body) == (200, {"fsync_delay_ms": 0})

            put = {"fsync_delay_ms": 200}
            answer = await call(client, "PUT", "/debug/faults", put, headers=ADMIN)
            assert (answer.status, answer.body) == (200, {"fsync_delay_ms": 200})
            assert journal.sync_delay == 0.2
            answer = await call(client, "GET", "/debug/faults", headers=ADMIN)
            assert (answer.status, answer.body) == (200, {"fsync_delay_ms": 200})

            answer = await call(client, "PUT", "/debug/faults", put, headers=ADMIN)
            assert (answer.status, answer.body) == (200, {"fsync_delay_ms": 200})  # no change

            for ms in (60000, 0):
                put = {"fsync_delay_ms": ms}
                answer = await call(client, "PUT", "/debug/faults", put, headers=ADMIN)
                assert (answer.status, answer.body) == (200, {"fsync_delay_ms": ms})
            assert journal.sync_delay == 0.0
            answer = await call(client, "GET", "/debug/faults", headers=ADMIN)
            assert (answer.status, answer.body) == (200, {"fsync_delay_ms": 0})

    with journal, caplog.at_level(logging.WARNING, logger=LOGGER):
        run(test)
    assert warnings_logged(caplog) == [
        "fault injection: journal fsync delay set to 200 ms (was 0 ms)",
        "fault injection: journal fsync delay set to 60000 ms (was 200 ms)",
        "fault injection: journal fsync delay set to 0 ms (was 60000 ms)",
    ]


def test_a_follower_sets_its_own_delay_and_forwards_nothing(journal: DiskStorage) -> None:
    async def test() -> None:
        service = FakeService(node_id=2, leader=False)
        service.leader_address = "127.0.0.1:1"  # a forward would fail: nothing listens there
        async with serve(service, journal) as client:
            put = {"fsync_delay_ms": 15}
            answer = await call(client, "PUT", "/debug/faults", put, headers=ADMIN)
            assert (answer.status, answer.body) == (200, {"fsync_delay_ms": 15})
        assert journal.sync_delay == 0.015
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
        stop = asyncio.Event()
        started: list[str] = []
        task = asyncio.create_task(run_master(options, started=started.append, stop=stop))
        base = f"http://{options.http_address}"
        try:
            async with aiohttp.ClientSession() as session:

                async def leading() -> bool:
                    if task.done():
                        task.result()
                    if not started:
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
        finally:
            stop.set()
            await task

    asyncio.run(asyncio.wait_for(test(), timeout=30))
