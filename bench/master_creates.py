"""Benchmark: file creates per second through the HTTP API of three masters, fsync on.

Starts three `quorumfs master` processes on loopback (journals under a temporary
directory, or --dir), finds the leader, then runs 64 concurrent clients creating
files for --seconds, and one client alone. Prints ops/s, p50 and p99.

    .venv/bin/python bench/master_creates.py [--clients 64] [--seconds 10] [--dir DIR]

Targets on this 2-core machine: >= 3,000 creates/s, <= 2 ms single-client p50.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

BASE_PORT = 29333
SECRET = "benchmark-secret-0123456789abcdef"


def start_masters(root: Path, count: int) -> list[subprocess.Popen[bytes]]:
    peers = ",".join(f"127.0.0.1:{BASE_PORT + i}" for i in range(count))
    env = {**os.environ, "QUORUMFS_CLUSTER_SECRET": SECRET}
    processes = []
    for i in range(count):
        log = (root / f"m{i}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "quorumfs",
                    "master",
                    "--mdir",
                    str(root / f"m{i}"),
                    "--port",
                    str(BASE_PORT + i),
                    "--peers",
                    peers,
                    "--log-level",
                    "WARNING",
                ],
                stdout=log,
                stderr=log,
                env=env,
            )
        )
    return processes


async def find_leader(session: aiohttp.ClientSession, count: int) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for i in range(count):
            try:
                async with session.get(f"http://127.0.0.1:{BASE_PORT + i}/cluster/status") as r:
                    status = await r.json()
                    if status.get("leader_http"):
                        return str(status["leader_http"])
            except aiohttp.ClientError:
                pass
        await asyncio.sleep(0.1)
    raise SystemExit("no leader within 30 s")


async def client_loop(
    session: aiohttp.ClientSession, leader: str, name: str, until: float, latencies: list[float]
) -> None:
    n = 0
    while time.monotonic() < until:
        n += 1
        started = time.perf_counter()
        async with session.post(
            f"http://{leader}/v1/fs/create", json={"path": f"/bench/{name}-{n}"}
        ) as response:
            await response.read()
            if response.status != 200:
                raise SystemExit(f"create failed: {response.status} {await response.text()}")
        latencies.append(time.perf_counter() - started)


def summary(label: str, latencies: list[float], seconds: float) -> str:
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    return (
        f"{label}: {len(latencies) / seconds:,.0f} creates/s  "
        f"p50 {p50:.2f} ms  p99 {p99:.2f} ms  ({len(latencies):,} creates)"
    )


async def run(clients: int, seconds: float) -> None:
    connector = aiohttp.TCPConnector(limit=clients + 4)
    async with aiohttp.ClientSession(connector=connector) as session:
        leader = await find_leader(session, 3)
        async with session.post(f"http://{leader}/v1/fs/mkdir", json={"path": "/bench"}) as r:
            await r.read()
        await client_loop(session, leader, "warmup", time.monotonic() + 1, [])
        latencies: list[float] = []
        started = time.monotonic()
        until = started + seconds
        await asyncio.gather(
            *(client_loop(session, leader, f"c{i}", until, latencies) for i in range(clients))
        )
        print(summary(f"{clients} clients", latencies, time.monotonic() - started))
        single: list[float] = []
        started = time.monotonic()
        await client_loop(session, leader, "single", started + seconds / 2, single)
        print(summary("1 client  ", single, time.monotonic() - started))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--dir", type=Path, default=None, help="where the journals go")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        processes = start_masters(Path(tmp), 3)
        try:
            print(f"3 masters on loopback, fsync on, journals in {tmp}")
            asyncio.run(run(args.clients, args.seconds))
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=15)


if __name__ == "__main__":
    main()
