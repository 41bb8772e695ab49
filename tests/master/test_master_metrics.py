"""A master's ``GET /metrics``: the data path's series over a fake service (volume
servers, heartbeat ages per volume id, series gone in a new term or on a follower),
and a whole master in-process (``run_master``, a group of one): role, term, a
proposal counted and timed, journal syncs, the lease. Waiting is polling."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from test_data_api import VOLUME, ListeningService, heartbeat_body, register, run
from test_http_api import Client

from quorumfs.master.data_api import add_data_routes
from quorumfs.master.data_service import DataOptions, DataService
from quorumfs.master.http_api import build_app
from quorumfs.master.metrics import MasterMetrics
from quorumfs.master.server import MasterOptions, run_master
from quorumfs.master.topology import TopologyOptions
from quorumfs.tokens import volume_token

SECRET = b"test-cluster-secret-0123456789"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


async def scrape(client: Client) -> Samples:
    async with client.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(await response.text())


def test_volume_servers_and_their_heartbeat_ages_on_the_leader_only() -> None:
    async def test() -> None:
        service = ListeningService()
        term = {"now": 3}
        data = DataService(
            service,
            secret=SECRET,
            leader_term=lambda: term["now"] if service.leader else None,
            masters=lambda: ["10.0.0.1:9333"],
            options=DataOptions(topology=TopologyOptions(min_free=1)),
        )
        service.data = data
        metrics = MasterMetrics()
        metrics.watch_data(data)
        app = build_app(service, more_routes=add_data_routes(data), metrics=metrics.registry)
        async with TestClient(TestServer(app)) as client:
            samples = await scrape(client)
            assert value(samples, "quorumfs_master_volume_servers", state="registered") == 0
            assert "quorumfs_master_volume_heartbeat_age_seconds" not in names(samples)

            ids = [await register(client, port) for port in (8001, 8002)]
            samples = await scrape(client)
            for state in ("registered", "alive", "writable"):
                assert value(samples, "quorumfs_master_volume_servers", state=state) == 2
            for volume_id in ids:
                age = value(
                    samples,
                    "quorumfs_master_volume_heartbeat_age_seconds",
                    volume_id=str(volume_id),
                )
                assert 0 <= age < 5
                assert (
                    value(samples, "quorumfs_master_volume_free_bytes", volume_id=str(volume_id))
                    == heartbeat_body(volume_id, 1)["free"]
                )
            assert value(samples, "quorumfs_master_under_replicated_chunks") == 0
            assert value(samples, "quorumfs_master_repairs_in_flight") == 0

            term["now"] = 4  # a new leadership: the picture is rebuilt from heartbeats
            samples = await scrape(client)
            assert value(samples, "quorumfs_master_volume_servers", state="registered") == 2
            assert ("quorumfs_master_volume_servers", (("state", "alive"),)) not in samples
            assert "quorumfs_master_volume_heartbeat_age_seconds" not in names(samples)
            beat = heartbeat_body(ids[0], 8001, full_report=True)
            await client.post("/v1/volumes/heartbeat", json=beat, headers=VOLUME)
            samples = await scrape(client)
            ages = {labels for name, labels in samples if name.endswith("heartbeat_age_seconds")}
            assert ages == {(("volume_id", str(ids[0])),)}  # the silent one has no series

            service.leader = False
            samples = await scrape(client)
            assert value(samples, "quorumfs_master_volume_servers", state="registered") == 2
            assert "quorumfs_master_volume_heartbeat_age_seconds" not in names(samples)

    run(test)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class RunningMasters:
    """Masters run by ``run_master`` on the test's own event loop (see ``running``)."""

    def __init__(self, options: Sequence[MasterOptions]) -> None:
        self.stop = asyncio.Event()
        self.announced: list[str] = []
        self.tasks = [
            asyncio.create_task(run_master(o, started=self.announced.append, stop=self.stop))
            for o in options
        ]

    def started(self) -> bool:
        """Whether every master serves; raises what a master that exited raised."""
        for task in self.tasks:
            if task.done():
                task.result()
        return len(self.announced) == len(self.tasks)


@asynccontextmanager
async def running(*options: MasterOptions) -> AsyncIterator[RunningMasters]:
    """Run these masters for the block, then stop them and wait for them to finish."""
    masters = RunningMasters(options)
    try:
        yield masters
    finally:
        masters.stop.set()
        await asyncio.gather(*masters.tasks)


def test_a_running_master_serves_its_raft_metrics(tmp_path: Path) -> None:
    secret = SECRET.decode()
    options = MasterOptions(
        mdir=tmp_path / "m1",
        port=free_port(),
        raft_port=free_port(),
        secret=secret,
        tick_interval=0.01,
        fsync=False,
    )

    async def test() -> None:
        base = f"http://{options.http_address}"
        async with running(options) as masters, aiohttp.ClientSession() as session:

            async def scrape_master() -> Samples:
                async with session.get(f"{base}/metrics") as response:
                    assert response.status == 200
                    return parse(await response.text())

            async def leading() -> bool:
                if not masters.started():
                    return False
                samples = await scrape_master()
                return (
                    value(samples, "quorumfs_raft_role", role="LEADER") == 1
                    and value(samples, "quorumfs_raft_lease_remaining_seconds") > 0
                )

            await until(leading, "the master to lead, with a lease")
            before = await scrape_master()
            assert value(before, "quorumfs_raft_term") >= 1
            assert value(before, "quorumfs_raft_leader_id") == 1
            assert value(before, "quorumfs_raft_leader_changes_total") == 1
            assert value(before, "quorumfs_raft_voters") == 1
            assert value(before, "quorumfs_raft_lease_remaining_seconds") <= 8 * 0.01 + 0.01

            async with session.post(f"{base}/v1/fs/mkdir", json={"path": "/d"}) as response:
                assert response.status == 200, await response.text()
            after = await scrape_master()
            proposals = ("quorumfs_raft_proposals_total", (("outcome", "committed"),))
            assert after[proposals] == before[proposals] + 1
            count = "quorumfs_raft_commit_latency_seconds_count"
            assert value(after, count) == value(before, count) + 1
            syncs = "quorumfs_raft_fsync_seconds_count"
            assert value(after, syncs) > value(before, syncs)
            assert value(after, "quorumfs_raft_commit_index") > value(
                before, "quorumfs_raft_commit_index"
            )
            assert value(after, "quorumfs_raft_apply_lag") == 0

            beat = heartbeat_body(0, 8080)
            headers = {"Authorization": f"Bearer {volume_token(SECRET)}"}
            async with session.post(
                f"{base}/v1/volumes/heartbeat", json=beat, headers=headers
            ) as response:
                assert response.status == 200, await response.text()
            samples = await scrape_master()
            assert value(samples, "quorumfs_master_volume_servers", state="registered") == 1
            age = value(samples, "quorumfs_master_volume_heartbeat_age_seconds", volume_id="1")
            assert 0 <= age < 5

    asyncio.run(asyncio.wait_for(test(), timeout=30))
