"""A Jepsen-style nemesis over real processes: clients, faults, a history, a verdict.

One ``DataCluster`` (3 or 5 masters, 3 volume servers, from ``procs``) serves several rounds.
In a round, ``clients`` concurrent ``AsyncMasterClient``s run a small model against
their own directory while a nemesis injects faults on a seeded schedule:

* **Model** (``model.DirModel``): the files of one epoch (``KEYS`` of them; names
  rotate every ``EPOCH`` seconds so fresh, absent files keep the create races coming)
  form one small directory, checked as one object: ``put`` of a unique value, ``read``
  (a missing file reads as ``None``), ``create(exclusive=True)`` (creates an empty
  file, read as ``""``, iff absent) and ``mv`` between two of its files (POSIX rename:
  the destination is replaced; a missing source is a definite "not found").
* **Values** are written in chunks of ``CHUNK`` bytes (1-4 chunks a file) and carry a
  self-check header (value id, body length, SHA-256 of the body; the body is derived
  from the id): a torn read or a mix of two versions' chunks is detected.
* **Outcomes.** ok; failed (definitely not applied: left out of the history); unknown
  (``ret = inf``: may take effect at any time after the call, or never). Read
  ``classify`` for the exact table: it follows the client's docstrings, and is
  conservative where they leave room (a ``put``'s ``Unavailable`` may come after a
  retried commit whose first attempt was applied, so it is unknown).
* **Faults** (one at a time, ``FAULT_KINDS``): SIGKILL + restart of the leader, of a
  follower, of a volume server; SIGSTOP/SIGCONT of the leader for longer than the
  election timeout; SIGKILL of all masters at once and restart; a leadership transfer
  and a step-down; network partitions between masters (``network.py``: each master in
  its own namespace, packets dropped in a hub): the leader in a minority, a follower
  alone, and one-way cuts of everything the leader sends or receives; a slow journal
  fsync on one master and wall-clock jumps of every master (``PUT /debug/faults``,
  masters run with ``--fault-injection``; the leader must keep its term through a
  jump); a membership change (a follower removed, wiped, and joined again as a new
  member).
* **Checks** after each round: linearizability (per directory); no acknowledged write lost
  (a final read, after healing, of every file); no torn read; and healing (one agreed
  leader, three writable volume servers and every file readable) within ``HEAL_BOUND``.

``run_rounds`` returns a ``RunResult`` whose ``report`` is the readable text saved to
``artifacts/nemesis/<run>.txt`` (with the processes' logs in ``<run>-logs/`` after an
anomaly).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from model import DirInput, DirModel, DirOutput, Rename, RenameOk
from network import Network
from procs import DataCluster, HttpError, Master, http, wait_for

from quorumfs.client import (
    AlreadyExists,
    AsyncMasterClient,
    Conflict,
    InvalidArgument,
    NotFound,
    OutcomeUnknown,
    QuorumfsError,
    RetryPolicy,
    TransferPolicy,
    Unavailable,
    WriteFailed,
)
from quorumfs.verify.linearizability import Cas, CasOk, Get, GetOk, Operation, Put, PutOk, check

CHUNK = 1024
"""Chunk size of the model's puts: small, so a file has several chunks to tear."""
KEYS = 3
"""Files in use at once per round."""
EPOCH = 2.5
"""Seconds before the files in use are replaced by fresh (absent) ones."""
OP_TIMEOUT = 30.0
"""A harness-side bound on one operation (the client's own deadline is shorter)."""
HEAL_BOUND = 30.0
"""Seconds from the end of the faults to a healed cluster (leader, volumes, data)."""
CHECK_STEPS = 5_000_000
"""The checker's search budget per file."""

FAULT_KINDS = (
    "kill-leader",
    "kill-follower",
    "kill-volume",
    "pause-leader",
    "restart-masters",
    "transfer-leader",
    "step-down",
    "partition-leader",
    "partition-follower",
    "partition-leader-out",
    "partition-leader-in",
    "slow-fsync",
    "clock-jump",
    "replace-follower",
)
"""Every kind the schedule draws from; ``network.py`` explains how partitions are made."""
PARTITION_HOLD = (1.0, 4.0)
"""Seconds a partition lasts: long enough for an isolated leader's lease to lapse and the
majority to elect, short enough for TCP's retransmission backoff to recover quickly."""
FSYNC_DELAY_MS = (50, 400)
"""A slow disk: every journal fsync of the chosen master takes this much longer."""
CLOCK_JUMP_S = (30.0, 7200.0)
"""How far a master's wall clock jumps, forward or back (leases count monotonic ticks)."""

Kind = Literal["put", "read", "create", "rename"]
Outcome = Literal["ok", "failed", "unknown"]


class TornReadError(Exception):
    """A read returned bytes that no single put wrote."""


# ----------------------------------------------------------------------------- values


def encode(value: str) -> bytes:
    """The file content for ``value``: a header that checks the body, and a body of
    1-4 chunks derived from the value (so two values' chunks never mix unnoticed)."""
    seed = int.from_bytes(hashlib.sha256(value.encode()).digest()[:4], "big")
    size = CHUNK // 2 + seed % (3 * CHUNK)
    unit = hashlib.sha256(value.encode()).hexdigest().encode()
    body = (unit * (size // len(unit) + 1))[:size]
    digest = hashlib.sha256(body).hexdigest()
    return f"QFS1 {value} {len(body)} {digest}\n".encode() + body


def decode(data: bytes) -> str:
    """The value ``data`` holds (``""`` for an empty file); ``TornReadError`` if it is not
    exactly what one ``encode`` produced."""
    if not data:
        return ""
    head, sep, body = data.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 4 or parts[0] != b"QFS1":
        raise TornReadError(f"bad header {head[:80]!r} ({len(data)} bytes)")
    value = parts[1].decode(errors="replace")
    if (
        not parts[2].isdigit()
        or int(parts[2]) != len(body)
        or hashlib.sha256(body).hexdigest() != parts[3].decode()
    ):
        raise TornReadError(f"value {value}: body of {len(body)} bytes does not match its header")
    if encode(value) != data:
        raise TornReadError(f"value {value}: content differs from what was written")
    return value


# ---------------------------------------------------------------------------- records


@dataclass
class Record:
    """One operation as the harness saw it; times are ``time.monotonic()``."""

    client: int
    kind: Kind
    key: str
    value: str | None
    """Written (put), read (read; None = missing), the destination (rename), or None
    (create)."""
    call: float
    ret: float = math.inf
    outcome: Outcome = "unknown"
    swapped: bool | None = None
    """create: whether it created the file; rename: whether it moved one."""
    error: str = ""

    def operation(self) -> Operation[DirInput, DirOutput] | None:
        """The checker's view; None for an operation that tells nothing (failed)."""
        if self.outcome == "failed":
            return None
        inp: DirInput
        out: DirOutput
        if self.kind == "put":
            assert self.value is not None
            inp, out = Put(self.key, self.value), PutOk()
        elif self.kind == "read":
            inp, out = Get(self.key), GetOk(self.value)
        elif self.kind == "rename":
            assert self.value is not None
            inp, out = Rename(self.key, self.value), RenameOk(bool(self.swapped))
        else:
            inp, out = Cas(self.key, None, ""), CasOk(bool(self.swapped))
        if self.outcome == "unknown":
            return Operation(self.client, inp, None, self.call, math.inf)
        return Operation(self.client, inp, out, self.call, self.ret)

    def render(self, t0: float) -> str:
        end = "inf" if self.ret == math.inf else f"{self.ret - t0:8.3f}"
        what = {
            "put": f"put {self.value}",
            "read": f"read -> {self.value!r}",
            "create": f"create-excl -> {'created' if self.swapped else 'exists'}",
            "rename": f"mv -> {self.value}: {'moved' if self.swapped else 'not found'}",
        }[self.kind]
        if self.outcome != "ok":
            what = f"{self.kind} {self.value or ''} {self.outcome.upper()} ({self.error})"
        return f"[{self.call - t0:8.3f}, {end}] c{self.client} {self.key}: {what}"


def classify(
    kind: Kind, error: BaseException
) -> tuple[Outcome | Literal["missing", "exists"], str]:
    """What an exception says about the operation's effect (see the module docstring).

    ``"missing"``: a read or a rename that found no file; ``"exists"``: a create-exclusive
    that found the file. Both are definite answers (ok operations), not failures.
    """
    name = f"{type(error).__name__}: {str(error)[:400]}"
    if kind == "read":
        if isinstance(error, NotFound):
            return "missing", name
        return "failed", name  # a read that failed tells nothing: left out
    if isinstance(error, OutcomeUnknown):
        return "unknown", name
    if kind == "create" and isinstance(error, AlreadyExists):
        return "exists", name  # O_EXCL is never retried, so this is the first answer
    if kind == "rename" and isinstance(error, NotFound):
        return "missing", name  # never retried either: the source was absent
    if isinstance(error, NotFound | Conflict | AlreadyExists | InvalidArgument):
        return "failed", name
    if isinstance(error, WriteFailed):
        return "failed", name  # "Nothing was committed: the file is as it was."
    if isinstance(error, Unavailable) and kind in ("create", "rename"):
        # A write that is not safe to repeat raises Unavailable only if never sent.
        return "failed", name
    # OutcomeUnknown, Unavailable of a put (its commit is retried: an earlier attempt
    # may have been applied), timeouts, anything else.
    return "unknown", name


# ----------------------------------------------------------------------------- faults


@dataclass
class Fault:
    kind: str
    start: float
    end: float = math.nan
    detail: str = ""

    def render(self, t0: float) -> str:
        return f"[{self.start - t0:8.3f}, {self.end - t0:8.3f}] {self.kind}: {self.detail}"


class Nemesis:
    """Applies faults to a ``DataCluster`` whose master i+1 runs in ``network``'s
    namespace i+1; every blocking step runs in a thread."""

    def __init__(self, cluster: DataCluster, network: Network, rng: random.Random) -> None:
        self.cluster = cluster
        self.network = network
        self.rng = rng
        self.paused: list[Master] = []
        self.injected: set[Master] = set()
        """Masters with a /debug/faults setting that may still be on."""
        self.clock_anomalies: list[str] = []
        """Leadership lost while wall clocks jumped (leases must not care)."""
        self.faults: list[Fault] = []

    async def leader(self, timeout: float = 15.0) -> Master:
        return await asyncio.to_thread(partial(self.cluster.leader, timeout, majority=True))

    async def apply(self, kind: str, hold: float) -> None:
        fault = Fault(kind, time.monotonic())
        self.faults.append(fault)
        try:
            fault.detail = await self._apply(kind, hold)
        finally:
            fault.end = time.monotonic()

    async def _apply(self, kind: str, hold: float) -> str:
        cluster = self.cluster
        if kind == "kill-volume":
            volume = self.rng.choice(cluster.volumes)
            await asyncio.to_thread(volume.kill)
            await asyncio.sleep(hold)
            volume.start()
            return f"SIGKILL {volume.address}, restarted after {hold:.1f} s"
        if kind == "restart-masters":
            for master in cluster.masters:
                await asyncio.to_thread(master.kill)
            await asyncio.sleep(hold)
            for master in cluster.masters:
                master.start()
            for master in cluster.masters:
                await asyncio.to_thread(master.wait_serving)
            return f"SIGKILL all masters, restarted after {hold:.1f} s"
        leader = await self.leader()
        if kind == "kill-leader":
            await asyncio.to_thread(leader.kill)
            await asyncio.sleep(hold)
            leader.start()
            await asyncio.to_thread(leader.wait_serving)
            return f"SIGKILL leader {leader.address}, restarted after {hold:.1f} s"
        followers = [m for m in cluster.masters if m is not leader]
        if kind.startswith("partition-"):
            return await self._partition(kind, leader, followers)
        if kind == "slow-fsync":
            master = self.rng.choice([leader, leader, *followers])  # the leader half the time
            delay = self.rng.randint(*FSYNC_DELAY_MS)
            await asyncio.to_thread(self.set_faults, master, fsync_delay_ms=delay)
            await asyncio.sleep(hold)
            await asyncio.to_thread(self.clear_faults, master)
            role = "leader" if master is leader else "follower"
            return f"fsync of {role} {master.address} {delay} ms slower for {hold:.1f} s"
        if kind == "clock-jump":
            return await self._clock_jump(leader, followers, hold)
        if kind == "replace-follower":
            return await asyncio.to_thread(self._replace, leader, self.rng.choice(followers))
        if kind == "kill-follower":
            follower = self.rng.choice(followers)
            await asyncio.to_thread(follower.kill)
            await asyncio.sleep(hold)
            follower.start()
            await asyncio.to_thread(follower.wait_serving)
            return f"SIGKILL follower {follower.address}, restarted after {hold:.1f} s"
        if kind == "pause-leader":
            assert leader.process is not None
            leader.process.send_signal(signal.SIGSTOP)
            self.paused.append(leader)
            try:
                await asyncio.sleep(hold)
            finally:
                self.resume_all()
            return f"SIGSTOP leader {leader.address} for {hold:.1f} s, then SIGCONT"
        if kind in ("transfer-leader", "step-down"):
            headers = {"Authorization": f"Bearer {leader.admin_token()}"}
            if kind == "transfer-leader":
                target = self.rng.choice(followers)
                to = int(target.status()["id"])
                path, body = "/cluster/transfer-leader", {"to": to}
                asked = f"to {target.address}"
            else:
                path, body, asked = "/cluster/step-down", None, ""
            try:
                answer = await asyncio.to_thread(
                    http, "POST", leader.address, path, body, timeout=10, headers=headers
                )
                result = f"now {answer['leader_http']}"
            except (HttpError, OSError) as error:  # a refused transfer is not an anomaly
                result = f"refused: {error}"
            return f"{kind} from {leader.address} {asked}: {result}"
        raise ValueError(f"unknown fault {kind!r}")

    async def _partition(self, kind: str, leader: Master, followers: list[Master]) -> str:
        net, number = self.network, self.cluster.masters.index
        hold = self.rng.uniform(*PARTITION_HOLD)
        if kind == "partition-leader":
            # A minority with the leader in it: alone of 3, with one follower of 5.
            size = len(self.cluster.masters) // 2
            group = [leader, *self.rng.sample(followers, size - 1)]
            net.isolate({number(m) + 1 for m in group})
            what = "isolated " + " and ".join(f"{m.address}" for m in group) + " (leader first)"
        elif kind == "partition-follower":
            follower = self.rng.choice(followers)
            net.isolate({number(follower) + 1})
            what = f"isolated follower {follower.address}"
        else:
            for follower in followers:
                ends = (number(leader) + 1, number(follower) + 1)
                net.cut(*(ends if kind == "partition-leader-out" else ends[::-1]))
            if kind == "partition-leader-out":
                what = f"dropped everything leader {leader.address} sends to the other masters"
            else:
                what = f"dropped everything the other masters send to leader {leader.address}"
        try:
            await asyncio.sleep(hold)
        finally:
            await asyncio.to_thread(net.heal)
        return f"{what}, healed after {hold:.1f} s"

    async def _clock_jump(self, leader: Master, followers: list[Master], hold: float) -> str:
        """Jump every master's wall clock by its own amount, forward or back, then back to
        true. Leases must not care: the leader keeps its term throughout (checked)."""
        jumps = {
            m: round(self.rng.choice((-1, 1)) * self.rng.uniform(*CLOCK_JUMP_S) * 1000)
            for m in (leader, *followers)
        }
        term = int(leader.status()["term"])
        for master, offset in jumps.items():
            await asyncio.to_thread(self.set_faults, master, wall_clock_offset_ms=offset)
        await asyncio.sleep(hold)
        for master in jumps:
            await asyncio.to_thread(self.clear_faults, master)
        after = await asyncio.to_thread(leader.status)
        if after["role"] != "LEADER" or int(after["term"]) != term:
            self.clock_anomalies.append(
                f"LEADERSHIP CHANGED DURING A CLOCK JUMP: {leader.address} led in term {term}; "
                f"after the jump it is {after['role']} in term {after['term']}"
            )
        shown = ", ".join(f"{m.address} {o / 1000:+.0f} s" for m, o in jumps.items())
        return f"wall clocks jumped ({shown}; the leader first) for {hold:.1f} s"

    def set_faults(self, master: Master, **faults: int) -> None:
        self.injected.add(master)
        headers = {"Authorization": f"Bearer {master.admin_token()}"}
        http("PUT", master.address, "/debug/faults", faults, timeout=10, headers=headers)

    def clear_faults(self, master: Master) -> None:
        self.set_faults(master, fsync_delay_ms=0, wall_clock_offset_ms=0)
        self.injected.discard(master)

    def _replace(self, leader: Master, follower: Master) -> str:
        """Remove a follower from the group, wipe it, and let it join again as a new member
        (a learner first, then a voter): a membership change in each direction."""
        headers = {"Authorization": f"Bearer {leader.admin_token()}"}
        old_id = int(follower.status()["id"])
        http("DELETE", leader.address, f"/cluster/members/{old_id}", timeout=10, headers=headers)
        follower.kill()
        shutil.rmtree(follower.mdir)
        follower.start("--peers", leader.address)
        follower.wait_serving()
        new_id = int(follower.status()["id"])

        def voter() -> bool:
            try:
                members = http("GET", follower.address, "/cluster/members", timeout=2)
            except (OSError, HttpError):
                return False
            voters = {m["id"]: m["voter"] for m in members["members"]}
            return voters.get(new_id) is True and old_id not in voters

        wait_for(voter, f"{follower.address} to be a voter again", HEAL_BOUND)
        return f"removed {follower.address} (id {old_id}), wiped, joined again as id {new_id}"

    def resume_all(self) -> None:
        while self.paused:
            master = self.paused.pop()
            if master.process is not None and master.process.poll() is None:
                master.process.send_signal(signal.SIGCONT)

    def heal(self) -> None:
        """Every process running again, no cut, no injected fault (idempotent; used in
        ``finally`` too)."""
        self.resume_all()
        self.network.heal()
        for master in list(self.injected):
            with contextlib.suppress(OSError, HttpError):
                self.clear_faults(master)
        for master in self.cluster.masters:
            if not master.alive:
                master.start()
        for volume in self.cluster.volumes:
            if not volume.alive:
                volume.start()


# ----------------------------------------------------------------------------- rounds


@dataclass
class RoundResult:
    index: int
    seed: int
    t0: float
    records: list[Record]
    faults: list[Fault]
    anomalies: list[str] = field(default_factory=list)
    heal_seconds: float = math.nan
    keys: int = 0

    def counts(self) -> Counter[str]:
        return Counter(f"{r.kind}:{r.outcome}" for r in self.records)


@dataclass
class RunResult:
    rounds: list[RoundResult]
    report: str
    report_path: Path

    @property
    def anomalies(self) -> list[str]:
        return [a for r in self.rounds for a in r.anomalies]


def _renamed_to(record: Record) -> str | None:
    return record.value if record.kind == "rename" else None


def _around(records: list[Record], key: str, t0: float, at: float | None, n: int = 12) -> str:
    mine = sorted((r for r in records if key in (r.key, _renamed_to(r))), key=lambda r: r.call)
    if at is not None:
        mine.sort(key=lambda r: abs(r.call - at))
        mine = sorted(mine[: 2 * n], key=lambda r: r.call)
    return "\n".join(f"    {r.render(t0)}" for r in mine[-2 * n :])


async def _client_loop(
    n: int,
    client: AsyncMasterClient,
    *,
    root: str,
    rng: random.Random,
    t0: float,
    stop: asyncio.Event,
    records: list[Record],
    torn: list[str],
    keys: set[str],
) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        epoch = int((time.monotonic() - t0) / EPOCH)
        key = f"{root}/e{epoch}-k{rng.randrange(KEYS)}"
        keys.add(key)
        roll = rng.random()
        kind: Kind = (
            "put"
            if roll < 0.4
            else "read"
            if roll < 0.75
            else "create"
            if roll < 0.88
            else "rename"
        )
        value = f"c{n}-{i}" if kind == "put" else None
        if kind == "rename":
            others = [k for k in range(KEYS) if f"-k{k}" != key[key.rindex("-k") :]]
            value = f"{root}/e{epoch}-k{rng.choice(others)}"
        record = Record(n, kind, key, value, time.monotonic())
        records.append(record)
        try:
            if kind == "put":
                assert value is not None
                await asyncio.wait_for(client.put(key, encode(value), chunk_size=CHUNK), OP_TIMEOUT)
            elif kind == "read":
                data = await asyncio.wait_for(client.read(key), OP_TIMEOUT)
                record.value = decode(data)
            elif kind == "rename":
                assert value is not None
                await asyncio.wait_for(client.mv(key, value), OP_TIMEOUT)
                record.swapped = True
            else:
                await asyncio.wait_for(client.create(key, exclusive=True), OP_TIMEOUT)
                record.swapped = True
            record.ret, record.outcome = time.monotonic(), "ok"
        except TornReadError as error:
            record.ret, record.outcome = time.monotonic(), "failed"
            record.error = f"TORN: {error}"
            torn.append(f"torn read of {key} by client {n}: {error}")
        except (QuorumfsError, OSError, TimeoutError) as error:
            verdict, record.error = classify(kind, error)
            if verdict == "missing" and kind == "rename":
                record.ret, record.outcome, record.swapped = time.monotonic(), "ok", False
            elif verdict == "missing":
                record.ret, record.outcome, record.value = time.monotonic(), "ok", None
            elif verdict == "exists":
                record.ret, record.outcome, record.swapped = time.monotonic(), "ok", False
            elif verdict == "failed":
                record.ret, record.outcome = time.monotonic(), "failed"
            else:
                record.outcome = "unknown"  # ret stays inf
            if verdict not in ("missing", "exists"):
                await asyncio.sleep(0.05)  # do not spin while the cluster is down


async def _final_reads(
    masters: str, keys: set[str], deadline: float
) -> tuple[dict[str, str | None], dict[str, float], dict[str, str]]:
    """Every key read once, retried until ``deadline``: value (None = missing) and call
    time of each key read, and the last error of each key that could not be read."""
    values: dict[str, str | None] = {}
    times: dict[str, float] = {}
    unreadable: dict[str, str] = {}
    async with AsyncMasterClient(masters, policy=RetryPolicy(deadline=10.0)) as client:
        for key in sorted(keys):
            while True:
                call = time.monotonic()
                try:
                    values[key] = decode(await client.read(key))
                    times[key] = call
                    break
                except NotFound:
                    values[key], times[key] = None, call
                    break
                except (QuorumfsError, OSError, TimeoutError) as error:
                    if time.monotonic() > deadline:
                        unreadable[key] = f"{type(error).__name__}: {error}"
                        break
                    await asyncio.sleep(0.2)
    return values, times, unreadable


def _lost_writes(records: list[Record], key: str, final: str | None) -> str | None:
    """An acknowledged write the final value contradicts, described; else None.

    The final value must come from a write (put or create, acknowledged or unknown) that
    no acknowledged write invoked after it completed has superseded.
    """
    writes = [r for r in records if r.key == key and r.kind != "read" and r.outcome != "failed"]
    writes = [w for w in writes if w.kind == "put" or w.swapped or w.outcome == "unknown"]
    acked = [w for w in writes if w.outcome == "ok"]
    if not acked:
        return None
    source = [w for w in writes if (w.value if w.kind == "put" else "") == final]
    if final is None or not source:
        return f"final read of {key} is {final!r}, yet {len(acked)} writes were acknowledged"
    for w in source:
        if not any(a is not w and a.call > w.ret for a in acked):
            return None  # nothing acknowledged was invoked after it completed
    latest = max(acked, key=lambda a: a.call)
    return f"final read of {key} is {final!r}, superseded by acknowledged {latest.value!r}"


async def run_round(
    cluster: DataCluster,
    network: Network,
    index: int,
    seed: int,
    *,
    duration: float,
    clients: int,
    next_kind: Callable[[], str],
) -> RoundResult:
    rng = random.Random(seed)
    root = f"/nemesis/r{index}"
    masters = cluster.master_list()
    policy = RetryPolicy(deadline=10.0, request_timeout=4.0)
    transfer = TransferPolicy(read_timeout=5.0)
    records: list[Record] = []
    torn: list[str] = []
    keys: set[str] = set()
    nemesis = Nemesis(cluster, network, random.Random(seed + 1))
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        pool = [
            await stack.enter_async_context(
                AsyncMasterClient(masters, policy=policy, transfer=transfer)
            )
            for _ in range(clients)
        ]
        await pool[0].mkdir(root, parents=True)
        t0 = time.monotonic()
        tasks = [
            asyncio.create_task(
                _client_loop(
                    n,
                    c,
                    root=root,
                    rng=random.Random(seed * 100 + n),
                    t0=t0,
                    stop=stop,
                    records=records,
                    torn=torn,
                    keys=keys,
                )
            )
            for n, c in enumerate(pool)
        ]
        anomalies: list[str] = []
        try:
            await asyncio.sleep(1.0)  # some load before the first fault
            while time.monotonic() - t0 < duration - 3.0:
                kind = next_kind()
                try:
                    await nemesis.apply(kind, hold=rng.uniform(0.8, 2.0))
                except (AssertionError, HttpError, OSError) as error:
                    # The system did not do what the fault asked of it (a member never
                    # became a voter again, a master refused a fault setting, ...).
                    anomalies.append(f"the {kind} fault could not complete: {error}")
                    break
                try:
                    await nemesis.leader(timeout=HEAL_BOUND)
                except AssertionError as error:
                    anomalies.append(f"no leader within {HEAL_BOUND:g} s after {kind}: {error}")
                    break
                await asyncio.sleep(rng.uniform(0.5, 1.5))  # the schedule's quiet gap
            faults_end = time.monotonic()
            nemesis.heal()
            await asyncio.sleep(max(0.0, t0 + duration - time.monotonic()))
        finally:
            stop.set()
            nemesis.heal()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, BaseException):  # a harness bug: fail loudly
                    anomalies.append(f"a client task crashed: {outcome!r}")

    result = RoundResult(index, seed, t0, records, nemesis.faults, anomalies, keys=len(keys))
    if anomalies:
        return result
    anomalies += torn + nemesis.clock_anomalies

    # Healing: a leader, every volume server writable, every file readable, within a bound.
    heal_deadline = faults_end + HEAL_BOUND
    try:
        await asyncio.to_thread(cluster.leader, max(1.0, heal_deadline - time.monotonic()))
        await asyncio.to_thread(
            cluster.wait_writable, len(cluster.volumes), max(1.0, heal_deadline - time.monotonic())
        )
        finals, times, unreadable = await _final_reads(masters, keys, heal_deadline)
    except (AssertionError, QuorumfsError, OSError, TimeoutError) as error:
        anomalies.append(f"cluster did not heal within {HEAL_BOUND:g} s of the last fault: {error}")
        return result
    for key, why in sorted(unreadable.items()):
        anomalies.append(
            f"UNREADABLE FILE: {key} could not be read within {HEAL_BOUND:g} s of the last "
            f"fault: {why}\n  as recorded:\n{_around(records, key, t0, None, 30)}"
        )
    if unreadable:
        return result
    result.heal_seconds = time.monotonic() - faults_end
    # A file a rename touched may hold a value put under another name: the checker (which
    # sees renames and the final reads) judges those; the direct check, the others.
    renamed = {k for r in records if r.kind == "rename" for k in (r.key, r.value)}
    for key, value in finals.items():
        final = Record(-1, "read", key, value, times[key], time.monotonic(), "ok")
        records.append(final)
        lost = None if key in renamed else _lost_writes(records, key, value)
        if lost:
            anomalies.append(f"LOST WRITE: {lost}\n{_around(records, key, t0, None)}")

    # Linearizability, file by file.
    history = [op for r in records if (op := r.operation()) is not None]
    model = DirModel()
    verdict = await asyncio.to_thread(check, model, history, max_steps=CHECK_STEPS)
    if verdict.ok is not True:
        key = verdict.failing[0].input.key if verdict.failing else "?"
        explained = verdict.explain(model)
        lines = explained.splitlines()
        if len(lines) > 80:
            explained = "\n".join([*lines[:80], f"  ... ({len(lines) - 80} more lines)"])
        at = verdict.failing[0].call if verdict.failing else None
        word = "NOT LINEARIZABLE" if verdict.ok is False else "CHECKER GAVE UP"
        anomalies.append(
            f"{word}: file {key}\n{explained}\n  as recorded:\n{_around(records, key, t0, at, 30)}"
        )
    return result


def render_round(r: RoundResult) -> str:
    counts = r.counts()
    lines = [
        f"round {r.index} (seed {r.seed}): {len(r.records)} operations on {r.keys} files, "
        f"{len(r.faults)} faults, healed in {r.heal_seconds:.2f} s",
        "  operations: "
        + ", ".join(
            f"{k} {counts[f'{k}:{o}']} {o}"
            for k in ("put", "read", "create", "rename")
            for o in ("ok", "failed", "unknown")
        ),
        "  faults (seconds since the round's start):",
        *(f"    {f.render(r.t0)}" for f in r.faults),
    ]
    errors = Counter(rec.error.split(":")[0] for rec in r.records if rec.error)
    if errors:
        lines.append("  error answers: " + ", ".join(f"{k} {v}" for k, v in errors.most_common()))
        rare = {k for k in errors if k not in ("AlreadyExists", "NotFound")}  # the expected ones
        for rec in r.records:  # the first of each other kind, for the reader
            kind = rec.error.split(":")[0]
            if kind in rare:
                rare.discard(kind)
                lines.append(f"    e.g. {rec.kind} {rec.error}")
    if r.anomalies:
        lines.append(f"  ANOMALIES ({len(r.anomalies)}); the first:")
        lines += [f"  {line}" for line in r.anomalies[0].splitlines()]
    else:
        lines.append(
            "  checks passed: linearizable, no acknowledged write lost, no torn read, healed"
        )
    return "\n".join(lines)


async def run_rounds(
    root: Path,
    *,
    rounds: int,
    duration: float,
    clients: int,
    seed: int,
    run_name: str,
    artifacts: Path,
    masters: int = 3,
    kinds: tuple[str, ...] = FAULT_KINDS,
) -> RunResult:
    """Start a cluster of ``masters`` masters (each in its own network namespace) and 3
    volume servers, run ``rounds`` rounds, stop it (always), write the report; after an
    anomaly, keep every process's log beside it."""
    network = await asyncio.to_thread(Network, masters)
    cluster = DataCluster(
        root,
        masters=masters,
        ips=[network.address(n) for n in range(1, masters + 1)],
        netns=network.namespaces,
        master_args=("--fault-injection",),
    )
    results: list[RoundResult] = []
    started = time.monotonic()
    try:
        await asyncio.to_thread(cluster.start)
        # Every kind in turn, reshuffled each cycle: mixed, and none left out for long.
        kinds_rng = random.Random(seed)
        queue: list[str] = []

        def next_kind() -> str:
            if not queue:
                queue.extend(kinds)
                kinds_rng.shuffle(queue)
            return queue.pop(0)

        for index in range(rounds):
            result = await run_round(
                cluster,
                network,
                index,
                seed + index,
                duration=duration,
                clients=clients,
                next_kind=next_kind,
            )
            results.append(result)
            if result.anomalies:
                break
    finally:
        for master in cluster.masters:  # a stopped process ignores SIGTERM until continued
            if master.process is not None and master.process.poll() is None:
                master.process.send_signal(signal.SIGCONT)
        await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(network.close)

    faults = Counter(f.kind for r in results for f in r.faults)
    ops = sum(len(r.records) for r in results)
    anomalies = sum(len(r.anomalies) for r in results)
    head = [
        f"nemesis run {run_name}: seed {seed}, {masters} masters, {len(results)}/{rounds} rounds "
        f"of {duration:g} s, {clients} clients, {time.monotonic() - started:.0f} s in all",
        f"operations checked: {ops}; faults: " + ", ".join(f"{k} {faults[k]}" for k in kinds),
        f"anomalies: {anomalies}",
        "",
    ]
    report = "\n".join(head + [render_round(r) + "\n" for r in results])
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / f"{run_name}.txt"
    path.write_text(report)
    if anomalies:
        logs = artifacts / f"{run_name}-logs"
        logs.mkdir(exist_ok=True)
        for log in root.glob("*.log"):
            shutil.copy(log, logs / log.name)
        for lease_log in root.glob("*/lease.log"):
            shutil.copy(lease_log, logs / f"{lease_log.parent.name}-lease.log")
    return RunResult(results, report, path)
