"""Benchmark: write availability across leader failovers (3 masters, 3 volume servers, fsync on).

Starts 3 ``quorumfs master`` and 3 ``quorumfs volume`` processes on loopback
with the product's default timings (50 ms ticks, 10 election ticks, 1 s volume
heartbeat pulse), data under a temporary directory in --dir (default: the work
tree, so fsync is real). ``--writers`` clients (each its own
``AsyncMasterClient`` with the default ``RetryPolicy``) put 1 KiB files with
unique paths without pause, recording every acknowledged path, its SHA-256 and
when it was started and acknowledged; a put that raises is counted as failed
(or unknown, for ``OutcomeUnknown``), never as acknowledged. Then:

(a) ``--rounds`` times: SIGKILL the leader; measure until a write started after
    the kill is acknowledged and every volume server is writable on the new
    leader; restart the killed master on its directory; wait until the cluster
    is healthy (3 masters agree on the leader, 3 volume servers writable).
(b) ``--stepdowns`` times: ``POST /cluster/step-down`` to the leader with the
    admin token; measure the same from the request's start.
(c) Read back every acknowledged write and compare its SHA-256.

The headline figure of a round (its "gap") is: from the kill (or the step-down
request's start) to the acknowledgement of the first write that a writer
*started* after it. Printed beside it, from lease.log (``mono=`` is the same
monotonic clock as this process's ``time.monotonic()``) and from polling the
masters every 20 ms: when the new leader was elected, when the new leader first
saw a volume server writable and all of them, and the first acknowledgement of
any write (including one started before the kill and retried through it).

    .venv/bin/python bench/failover.py [--rounds 20] [--stepdowns 10] [--writers 4] [--dir DIR]

Targets (issue #5): gap median <= 1.0 s and max <= 2.0 s after SIGKILL, median
<= 0.3 s after a step-down, and zero acknowledged writes missing. Exits 1 when an
acknowledged write is missing or differs (a missed timing target is only printed).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from quorumfs.client import AsyncMasterClient, OutcomeUnknown, QuorumfsError

BASE_PORT = 29633  # masters' HTTP; Raft on + 10000
VOLUME_PORT = 28680
SECRET = "failover-benchmark-secret-0123456789"
FILE_SIZE = 1024
POLL = 0.02
ROUND_TIMEOUT = 30.0

TARGET_KILL_MEDIAN = 1.0
TARGET_KILL_MAX = 2.0
TARGET_STEPDOWN_MEDIAN = 0.3


# ------------------------------------------------------------------ processes


class Proc:
    """One ``python -m quorumfs ...`` process, restartable with the same arguments."""

    def __init__(self, name: str, root: Path, args: list[str], address: str) -> None:
        self.name = name
        self.args = args
        self.address = address
        self.log = root / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "QUORUMFS_CLUSTER_SECRET": SECRET}
        command = [sys.executable, "-m", "quorumfs", *self.args, "--log-level", "WARNING"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, env=env)

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.master_addresses = [f"127.0.0.1:{BASE_PORT + i}" for i in range(3)]
        peers = ",".join(self.master_addresses)
        self.masters = [
            Proc(
                f"m{i}",
                root,
                [
                    "master",
                    "--mdir",
                    str(root / f"m{i}"),
                    "--port",
                    str(BASE_PORT + i),
                    "--peers",
                    peers,
                ],
                address,
            )
            for i, address in enumerate(self.master_addresses)
        ]
        self.volumes = [
            Proc(
                f"v{i}",
                root,
                [
                    "volume",
                    "--dir",
                    str(root / f"v{i}"),
                    "--port",
                    str(VOLUME_PORT + i),
                    "--mserver",
                    peers,
                ],
                f"127.0.0.1:{VOLUME_PORT + i}",
            )
            for i in range(3)
        ]

    @property
    def masters_option(self) -> str:
        return ",".join(self.master_addresses)

    def master_at(self, address: str) -> Proc:
        return next(m for m in self.masters if m.address == address)

    def mdir(self, master: Proc) -> Path:
        return self.root / master.name

    def start(self) -> None:
        for port in [BASE_PORT + i for i in range(3)] + [VOLUME_PORT + i for i in range(3)]:
            for p in (port, port + 10000) if port >= BASE_PORT else (port,):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind(("127.0.0.1", p))
                    except OSError:
                        raise SystemExit(
                            f"port {p} is taken; is another benchmark running?"
                        ) from None
        for proc in [*self.masters, *self.volumes]:
            proc.start()

    def stop(self) -> None:
        for proc in [*self.volumes, *self.masters]:
            proc.signal(signal.SIGTERM)
        for proc in [*self.volumes, *self.masters]:
            proc.stop()


# ------------------------------------------------------------------ writers


@dataclass
class Ack:
    writer: int
    path: str
    digest: bytes
    started: float
    acked: float


@dataclass
class Ledger:
    acked: list[Ack] = field(default_factory=list)
    failed: int = 0
    unknown: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    max_latency: float = 0.0
    event: asyncio.Event = field(default_factory=asyncio.Event)


async def writer(n: int, client: AsyncMasterClient, ledger: Ledger, stop: asyncio.Event) -> None:
    rng = random.Random(n)
    i = 0
    while not stop.is_set():
        i += 1
        path = f"/bench/w{n}/{i}"
        payload = rng.randbytes(FILE_SIZE)
        started = time.monotonic()
        try:
            await client.put(path, payload)
        except OutcomeUnknown:
            ledger.unknown += 1
            continue
        except (QuorumfsError, OSError, aiohttp.ClientError, TimeoutError) as exc:
            ledger.failed += 1
            key = type(exc).__name__
            ledger.errors[key] = ledger.errors.get(key, 0) + 1
            continue
        acked = time.monotonic()
        ledger.max_latency = max(ledger.max_latency, acked - started)
        ledger.acked.append(Ack(n, path, hashlib.sha256(payload).digest(), started, acked))
        ledger.event.set()


# ------------------------------------------------------------------ observing the cluster


class Observer:
    def __init__(self, cluster: Cluster, session: aiohttp.ClientSession) -> None:
        self.cluster = cluster
        self.session = session

    async def get(self, address: str, path: str, timeout: float = 0.5) -> Any:
        try:
            async with self.session.get(
                f"http://{address}{path}", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                if response.status != 200:
                    return None
                return await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def statuses(self) -> list[Any]:
        live = [m.address for m in self.cluster.masters if m.alive]
        return list(await asyncio.gather(*(self.get(a, "/cluster/status") for a in live)))

    async def writable(self, leader: str) -> int:
        answer = await self.get(leader, "/v1/volumes")
        if not isinstance(answer, dict):
            return -1
        return sum(1 for v in answer.get("volumes", []) if v.get("writable"))

    async def healthy_leader(self) -> tuple[str, int] | None:
        """(leader, term) when 3 masters answer naming the same leader in the same term,
        the leader heard from both followers recently, and 3 volume servers are writable."""
        statuses = await self.statuses()
        if len(statuses) != 3 or any(s is None for s in statuses):
            return None
        leaders = {(s["leader_http"], s["term"]) for s in statuses}
        if len(leaders) != 1:
            return None
        leader, term = leaders.pop()
        if leader is None:
            return None
        own = next((s for s in statuses if s["role"] == "LEADER"), None)
        if own is None:
            return None
        for member in own["members"]:  # every follower has caught up
            if (member.get("match_index") or 0) < own["commit_index"] - 50:
                return None
        if (
            max(s["applied_index"] for s in statuses) - min(s["applied_index"] for s in statuses)
            > 50
        ):
            return None
        if await self.writable(leader) < 3:
            return None
        return str(leader), int(term)

    async def wait_healthy(self, timeout: float = 60.0) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in [*self.cluster.masters, *self.cluster.volumes]:
                if proc.process is not None and not proc.alive:
                    raise SystemExit(f"{proc.name} exited; see {proc.log}")
            found = await self.healthy_leader()
            if found is not None:
                return found
            await asyncio.sleep(0.05)
        raise SystemExit(f"the cluster did not become healthy within {timeout:g} s")


@dataclass
class Round:
    kind: str
    start: float
    """The kill, or the step-down request's start (time.monotonic())."""
    old_leader: str
    old_term: int
    gap: float | None = None
    """Start -> ack of the first write started after ``start``."""
    all_writers: float | None = None
    """Start -> every writer has had a write started after ``start`` acknowledged."""
    first_ack_any: float | None = None
    leader_seen: float | None = None
    """Polled: a live master names a leader in a newer term."""
    campaign: float | None = None
    """lease.log: the first term-change by campaign (the election began)."""
    elected: float | None = None
    """lease.log: the new leader became leader (lease-acquired - since_elected_ms)."""
    lease: float | None = None
    """lease.log: the new leader's first lease."""
    first_writable: float | None = None
    all_writable: float | None = None
    call: float | None = None
    """A step-down: the request's own duration."""
    new_leader: str | None = None


async def watch(observer: Observer, r: Round, done: asyncio.Event) -> None:
    """Poll until the new leader has 3 writable volume servers (or ``done``)."""
    leader: str | None = None
    while not done.is_set():
        now = time.monotonic()
        if leader is None:
            for s in await observer.statuses():
                if s is not None and s["leader_http"] and s["term"] > r.old_term:
                    leader = str(s["leader_http"])
                    r.new_leader = leader
                    r.leader_seen = now - r.start
                    break
        if leader is not None:
            count = await observer.writable(leader)
            if count >= 1 and r.first_writable is None:
                r.first_writable = now - r.start
            if count >= 3:
                r.all_writable = now - r.start
                return
        await asyncio.sleep(POLL)


async def wait_first_ack(ledger: Ledger, r: Round, index: int, writers: int) -> None:
    """Record the first acks after ``r.start``: of any write, of one started after it, and
    when every writer has had one started after it acknowledged."""
    fresh: set[int] = set()
    while len(fresh) < writers:
        for ack in ledger.acked[index:]:
            if r.first_ack_any is None and ack.acked >= r.start:
                r.first_ack_any = ack.acked - r.start
            if ack.started >= r.start:
                if r.gap is None:
                    r.gap = ack.acked - r.start
                fresh.add(ack.writer)
                if len(fresh) == writers:
                    r.all_writers = ack.acked - r.start
                    return
        index = len(ledger.acked)
        ledger.event.clear()
        await ledger.event.wait()


def lease_events(cluster: Cluster) -> list[dict[str, str]]:
    events = []
    for master in cluster.masters:
        path = cluster.mdir(master) / "lease.log"
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            fields = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
            if "mono" in fields:
                events.append(fields)
    return events


def read_lease_log(cluster: Cluster, r: Round) -> None:
    after = [e for e in lease_events(cluster) if float(e["mono"]) >= r.start]
    after.sort(key=lambda e: float(e["mono"]))
    for e in after:
        if int(e["term"]) <= r.old_term:
            continue
        mono = float(e["mono"]) - r.start
        if e["event"] == "term-change" and e.get("reason") == "campaign" and r.campaign is None:
            r.campaign = mono
        if e["event"] == "lease-acquired" and r.lease is None:
            r.lease = mono
            r.elected = mono - int(e.get("since_elected_ms", "0")) / 1000
            break


async def run_round(
    kind: str,
    *,
    cluster: Cluster,
    observer: Observer,
    ledger: Ledger,
    session: aiohttp.ClientSession,
    writers: int,
) -> Round:
    leader, term = await observer.wait_healthy()
    await asyncio.sleep(random.uniform(0.5, 1.0))  # writers in full swing, a random phase
    leader, term = await observer.wait_healthy()
    master = cluster.master_at(leader)
    index = len(ledger.acked)
    r = Round(kind, time.monotonic(), leader, term)
    done = asyncio.Event()
    watcher = asyncio.create_task(watch(observer, r, done))
    acks = asyncio.create_task(wait_first_ack(ledger, r, index, writers))
    if kind == "kill":
        master.signal(signal.SIGKILL)
    else:
        token = (cluster.mdir(master) / "admin.token").read_text().strip()
        async with session.post(
            f"http://{leader}/cluster/step-down",
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=15),
        ) as response:
            body = await response.read()
            r.call = time.monotonic() - r.start
            if response.status != 200:
                print(f"  step-down answered {response.status}: {body!r}", flush=True)
    try:
        await asyncio.wait_for(asyncio.gather(watcher, acks), ROUND_TIMEOUT)
    except TimeoutError:
        print(f"  {kind}: not recovered within {ROUND_TIMEOUT:g} s", flush=True)
    finally:
        done.set()
        watcher.cancel()
        acks.cancel()
    if kind == "kill":
        while master.alive:
            await asyncio.sleep(0.01)
        master.start()  # rejoins from its directory
    await asyncio.sleep(0.2)  # let lease.log lines reach the disk
    read_lease_log(cluster, r)
    return r


# ------------------------------------------------------------------ reporting


def ms(value: float | None) -> str:
    return "   -  " if value is None else f"{value * 1000:6.0f}"


def describe(r: Round) -> str:
    extra = f" call {ms(r.call)}" if r.call is not None else ""
    return (
        f"gap {ms(r.gap)}  all-writers {ms(r.all_writers)}  any-ack {ms(r.first_ack_any)}  "
        f"campaign {ms(r.campaign)}  "
        f"elected {ms(r.elected)}  lease {ms(r.lease)}  seen {ms(r.leader_seen)}  "
        f"1st-writable {ms(r.first_writable)}  all-writable {ms(r.all_writable)}{extra}  ms"
    )


def stat_line(label: str, values: Iterable[float | None], target: str = "") -> str:
    present = [v for v in values if v is not None]
    if not present:
        return f"  {label:34} (none)"
    missing = sum(1 for v in values if v is None) if isinstance(values, list) else 0
    text = (
        f"  {label:34} median {statistics.median(present):6.3f} s   "
        f"max {max(present):6.3f} s   min {min(present):6.3f} s"
    )
    if missing:
        text += f"   ({missing} never)"
    return text + (f"   target {target}" if target else "")


def summary(kind: str, rounds: list[Round]) -> list[str]:
    def col(name: str) -> list[float | None]:
        return [getattr(r, name) for r in rounds]

    title = "SIGKILL of the leader" if kind == "kill" else "graceful step-down"
    lines = [f"{title}, {len(rounds)} rounds (from the {'kill' if kind == 'kill' else 'request'}):"]
    gaps = [r.gap if r.gap is not None else float("inf") for r in rounds]
    if kind == "kill":
        median, worst = statistics.median(gaps), max(gaps)
        ok = median <= TARGET_KILL_MEDIAN and worst <= TARGET_KILL_MAX
        verdict = "met" if ok else "MISSED"
        target = f"median <= {TARGET_KILL_MEDIAN} s, max <= {TARGET_KILL_MAX} s: {verdict}"
    else:
        median = statistics.median(gaps)
        verdict = "met" if median <= TARGET_STEPDOWN_MEDIAN else "MISSED"
        target = f"median <= {TARGET_STEPDOWN_MEDIAN} s: {verdict}"
    lines.append(stat_line("gap: first ack of a new write", col("gap"), target))
    lines.append(stat_line("every writer acked a new write", col("all_writers")))
    lines.append(stat_line("first ack of any write", col("first_ack_any")))
    if kind == "kill":
        lines.append(stat_line("election began (lease.log)", col("campaign")))
    lines.append(stat_line("new leader elected (lease.log)", col("elected")))
    lines.append(stat_line("new leader's lease (lease.log)", col("lease")))
    lines.append(stat_line("new leader seen (polled)", col("leader_seen")))
    lines.append(stat_line("first volume server writable", col("first_writable")))
    lines.append(stat_line("all 3 volume servers writable", col("all_writable")))
    if kind != "kill":
        lines.append(stat_line("step-down call's duration", col("call")))
    after_writable = [
        r.gap - r.first_writable
        for r in rounds
        if r.gap is not None and r.first_writable is not None
    ]
    lines.append(stat_line("gap - first writable", after_writable))
    stalled = [
        r.all_writers - r.first_writable
        for r in rounds
        if r.all_writers is not None and r.first_writable is not None
    ]
    lines.append(stat_line("every writer acked - 1st writable", stalled))
    return lines


# ------------------------------------------------------------------ the run


async def read_back(masters: str, acked: list[Ack], concurrency: int = 16) -> tuple[int, int]:
    missing = mismatched = 0
    queue = list(acked)

    async def reader(client: AsyncMasterClient) -> None:
        nonlocal missing, mismatched
        while queue:
            ack = queue.pop()
            try:
                data = await client.read(ack.path)
            except FileNotFoundError:
                missing += 1
                print(f"  MISSING {ack.path}", flush=True)
                continue
            if hashlib.sha256(data).digest() != ack.digest:
                mismatched += 1
                print(f"  DIFFERS {ack.path}", flush=True)

    clients = [AsyncMasterClient(masters) for _ in range(concurrency)]
    try:
        await asyncio.gather(*(reader(c) for c in clients))
    finally:
        for client in clients:
            await client.close()
    return missing, mismatched


async def run(cluster: Cluster, rounds: int, stepdowns: int, writers: int) -> int:
    async with aiohttp.ClientSession() as session:
        observer = Observer(cluster, session)
        leader, _ = await observer.wait_healthy()
        print(f"cluster healthy, leader {leader}", flush=True)
        ledger = Ledger()
        stop = asyncio.Event()
        clients = [AsyncMasterClient(cluster.masters_option) for _ in range(writers)]
        for n in range(writers):
            await clients[0].mkdir(f"/bench/w{n}", parents=True)
        began = time.monotonic()
        tasks = [asyncio.create_task(writer(n, c, ledger, stop)) for n, c in enumerate(clients)]
        results: dict[str, list[Round]] = {"kill": [], "step-down": []}
        try:
            for kind, count in (("kill", rounds), ("step-down", stepdowns)):
                for i in range(count):
                    r = await run_round(
                        kind,
                        cluster=cluster,
                        observer=observer,
                        ledger=ledger,
                        session=session,
                        writers=writers,
                    )
                    results[kind].append(r)
                    print(f"{kind:9} {i + 1:2}: {describe(r)}", flush=True)
            await observer.wait_healthy()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for client in clients:
                await client.close()
        elapsed = time.monotonic() - began
        print()
        print("Definitions: 'gap' = from the kill (step-down: the request's start) to the")
        print("acknowledgement of the first write started after it; 'any-ack' = to the first")
        print("acknowledgement of any write, including one started before and retried through it;")
        print("'all-writers' = until every writer has had a write started after it acknowledged.")
        print("Times from lease.log and polling are from the same start; 'writable' = on the new")
        print("leader's GET /v1/volumes (a writer may still write on spare grants before).")
        for kind in ("kill", "step-down"):
            if results[kind]:
                print("\n".join(summary(kind, results[kind])))
        total = len(ledger.acked) + ledger.failed + ledger.unknown
        print(
            f"writes: {total:,} in {elapsed:.0f} s by {writers} writers: "
            f"{len(ledger.acked):,} acknowledged, {ledger.failed:,} failed "
            f"{dict(ledger.errors) or ''}, {ledger.unknown:,} outcome unknown; "
            f"longest acknowledged write {ledger.max_latency:.3f} s"
        )
        started = time.monotonic()
        missing, mismatched = await read_back(cluster.masters_option, ledger.acked)
        print(
            f"read back {len(ledger.acked):,} acknowledged writes in "
            f"{time.monotonic() - started:.1f} s: {missing} missing, {mismatched} differ "
            f"(target 0): {'met' if missing + mismatched == 0 else 'FAILED'}"
        )
        return 1 if missing + mismatched else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="SIGKILLs of the leader")
    parser.add_argument("--stepdowns", type=int, default=10, help="graceful step-downs")
    parser.add_argument("--writers", type=int, default=4, help="concurrent writing clients")
    parser.add_argument("--dir", type=Path, default=None, help="where the cluster keeps its data")
    parser.add_argument("--keep", action="store_true", help="keep the data and logs afterwards")
    parser.add_argument(
        "--client-log", action="store_true", help="log the clients' retries to client.log"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench-failover-"))
    if args.client_log:
        handler = logging.FileHandler(root / "client.log")
        handler.setFormatter(logging.Formatter("%(created).3f %(name)s %(message)s"))
        logging.getLogger("quorumfs.client").addHandler(handler)
        logging.getLogger("quorumfs.client").setLevel(logging.DEBUG)
    cluster = Cluster(root)
    code = 1
    try:
        cluster.start()
        print(
            f"3 masters (HTTP {BASE_PORT}-{BASE_PORT + 2}) and 3 volume servers "
            f"(HTTP {VOLUME_PORT}-{VOLUME_PORT + 2}), default timings, fsync on, data in {root}",
            flush=True,
        )
        code = uvloop.run(run(cluster, args.rounds, args.stepdowns, args.writers))
    finally:
        cluster.stop()
        if args.keep:
            print(f"data and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
