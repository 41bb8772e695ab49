"""One master process: its directory, its identity, and how it joins or forms a group.

The master directory (``--mdir``) holds::

    identity.json   this master's node id and addresses: written once, then sticky
    seed.json       a joining master's first view of the group (ids and Raft addresses):
                    its peers after a restart until its journal's membership is applied
                    (its journal may hold the group's entries without knowing they are
                    committed, and without peers it would refuse the leader's connections)
    cluster.secret  the group's shared secret (mode 0600): authenticates Raft peers
    admin.token     derived from the secret (mode 0600): authorises admin requests
    journal/        the Raft journal (quorumfs.runtime.wal)
    lease.log       leases and leadership changes, one line each (quorumfs.runtime.lease_log);
                    rotated: lease.log.1 .. lease.log.5

How a master starts, as SeaweedFS masters do:

- ``identity.json`` exists: a restart. Membership comes from the journal, so
  ``--peers`` is not needed (and is ignored, with a note in the log).
- ``--peers`` lists this master's own address: a founding member. Every
  founding master is given the same list; node ids are positions in the
  sorted list, so they agree without talking. With more than one peer they
  must share a secret (``--secret`` or ``QUORUMFS_CLUSTER_SECRET``).
- ``--peers`` lists other masters only: a new master joining a running group.
  It asks one of them (over HTTP, with the admin token derived from the
  shared secret) to add it; it joins as a learner, catches up, and is
  promoted to voter by the leader (whichever master leads by then).
- no ``--peers``: a group of one, with a freshly generated secret.

Ports: HTTP on ``--port`` (default 9333), Raft on ``--port + 10000``.

Timing (``MasterOptions``): a tick of ``tick_interval`` seconds; followers
campaign after a random [T, 2T) without a leader, T = ``election_tick``
ticks, and ignore other candidates within T of hearing the leader; the
leader's lease runs ``lease_tick`` ticks from when a heartbeat round a quorum
acknowledged was sent, at most ``election_tick - LEASE_MARGIN_TICKS``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web

from quorumfs.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    EntryType,
    ReadOnlyOption,
    bootstrap_log,
)
from quorumfs.runtime.clock import WallClock
from quorumfs.runtime.node import NodeOptions, RaftNode
from quorumfs.runtime.transport import RaftTransport
from quorumfs.runtime.wal import DiskStorage
from quorumfs.runtime.wal.fileio import Durability, atomic_write
from quorumfs.tokens import MIN_SECRET_BYTES, SECRET_ENV

from .contract import RAFT_PORT_OFFSET
from .data_api import add_data_routes
from .data_service import DataOptions, DataService
from .http_api import RETRY_AFTER_MS_HEADER, SERVED_BY_HEADER, build_app
from .metrics import MasterMetrics
from .service import RaftMasterService
from .state_machine import MasterStateMachine, MemberAddresses

__all__ = ["MasterOptions", "MasterStartupError", "admin_token_for", "run_master"]

logger = logging.getLogger("quorumfs.master")

LEASE_MARGIN_TICKS = 2
"""The lease ends at least this many ticks before a follower that acknowledged it may
vote again: one for the phase of the followers' tickers (a follower's first tick after
hearing the leader can come at once), one for clock-rate drift and scheduling delays."""


class MasterStartupError(Exception):
    """The master cannot start as asked; the message says what to do instead."""


@dataclass(frozen=True)
class MasterOptions:
    mdir: Path
    ip: str = "127.0.0.1"
    port: int = 9333
    raft_port: int | None = None
    peers: list[str] = field(default_factory=list)
    secret: str | None = None
    tick_interval: float = 0.05
    election_tick: int = 10
    lease_tick: int | None = None
    """None: the core's default, ``election_tick - 2``: the longest lease with the margin."""
    snapshot_every: int = 10_000
    fsync: bool = True
    fault_injection: bool = False
    """Serve ``GET|PUT /debug/faults`` (admin token): fault tests slow this master's
    journal fsync, or shift its wall clock, at run time. For fault tests only, never in
    production."""
    data: DataOptions = field(default_factory=DataOptions)
    """Volume servers, placement and repair."""

    def __post_init__(self) -> None:
        if not self.tick_interval > 0:
            raise MasterStartupError(f"the tick must be positive, not {self.tick_interval} s")
        longest = self.election_tick - LEASE_MARGIN_TICKS
        if longest < 1:
            raise MasterStartupError(
                f"--election-ticks {self.election_tick} leaves no room for a leader lease: "
                f"give at least {LEASE_MARGIN_TICKS + 1}"
            )
        if self.lease_tick is not None and not 1 <= self.lease_tick <= longest:
            raise MasterStartupError(
                f"--lease-ticks {self.lease_tick} must be between 1 and --election-ticks - "
                f"{LEASE_MARGIN_TICKS} = {longest}: the lease must end before a follower that "
                f"acknowledged it may vote again ({self.election_tick} ticks after hearing the "
                f"leader), with {LEASE_MARGIN_TICKS} ticks to spare for tick phase and clock drift"
            )

    @property
    def http_address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def raft_address(self) -> str:
        return f"{self.ip}:{self.raft_port or self.port + RAFT_PORT_OFFSET}"


@dataclass(frozen=True)
class _Identity:
    node_id: int
    http: str
    raft: str


def admin_token_for(secret: bytes) -> str:
    return hmac.new(secret, b"quorumfs admin token", hashlib.sha256).hexdigest()[:40]


def normalize_address(address: str) -> str:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MasterStartupError(f"{address!r} is not HOST:PORT")
    if host == "localhost":
        host = "127.0.0.1"
    return f"{host}:{int(port)}"


def _default_raft(http_address: str) -> str:
    host, port = _split(http_address)
    return f"{host}:{port + RAFT_PORT_OFFSET}"


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (secrets), atomically and durably."""
    atomic_write(path, text.encode(), Durability(), mode=0o600)


class _MasterDirectory:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.identity_file = path / "identity.json"
        self.seed_file = path / "seed.json"
        self.secret_file = path / "cluster.secret"
        self.journal = path / "journal"
        self.lease_log = path / "lease.log"

    def identity(self) -> _Identity | None:
        if not self.identity_file.exists():
            return None
        try:
            data = json.loads(self.identity_file.read_text())
            return _Identity(int(data["node_id"]), str(data["http"]), str(data["raft"]))
        except (ValueError, KeyError, TypeError) as error:
            raise MasterStartupError(
                f"{self.identity_file} is unreadable ({error}); restore it or start this "
                f"master afresh with an empty directory and re-add it"
            ) from error

    def save_identity(self, identity: _Identity) -> None:
        text = json.dumps(
            {"node_id": identity.node_id, "http": identity.http, "raft": identity.raft}
        )
        _write_private(self.identity_file, text + "\n")

    def seed(self) -> list[tuple[int, str]]:
        """The group as a joining master first saw it (``[]`` for a founding master)."""
        if not self.seed_file.exists():
            return []
        try:
            return [(int(m["id"]), str(m["raft"])) for m in json.loads(self.seed_file.read_text())]
        except (ValueError, KeyError, TypeError) as error:
            raise MasterStartupError(
                f"{self.seed_file} is unreadable ({error}); restore it, or start this master "
                "afresh with an empty directory and re-add it"
            ) from error

    def save_seed(self, seed: list[tuple[int, str]]) -> None:
        text = json.dumps([{"id": member_id, "raft": raft} for member_id, raft in seed])
        atomic_write(self.seed_file, text.encode() + b"\n", Durability())

    def secret(self, given: str | None, *, generate: bool) -> bytes:
        stored = self.secret_file.read_text().strip() if self.secret_file.exists() else None
        if stored and given and stored != given:
            raise MasterStartupError(
                f"the secret given differs from the one in {self.secret_file}; "
                f"a master keeps the secret it was started with"
            )
        secret = stored or given
        if not secret:
            if not generate:
                raise MasterStartupError(
                    "masters of one group must share a secret: set "
                    f"{SECRET_ENV} (or --secret) to the same value on every master, for "
                    "example the output of `python3 -c 'import secrets; "
                    "print(secrets.token_hex(32))'`"
                )
            secret = secrets.token_hex(32)
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise MasterStartupError(
                f"the cluster secret must be at least {MIN_SECRET_BYTES} bytes"
            )
        if not stored:
            _write_private(self.secret_file, secret + "\n")
        token = admin_token_for(secret.encode())
        _write_private(self.path / "admin.token", token + "\n")
        return secret.encode()


JOIN_PATIENCE: Final = 30.0
"""Seconds a joining master keeps asking while the group has no leader or is unreachable."""
JOIN_PAUSE: Final = 0.5
"""Seconds between two rounds of asking, unless a master hints otherwise."""


async def _join(
    options: MasterOptions, peers: list[str], token: str
) -> tuple[int, list[dict[str, object]]]:
    """Ask a running group to add this master; returns its id and the members.

    The masters are asked in turn, in rounds, for up to ``JOIN_PATIENCE`` seconds: a
    503 (an election under way, no quorum yet) or an unreachable master means "ask again
    shortly"; any other refusal ends the join at once. A request whose answer was lost
    may have been applied: then a later round is told the address is taken (409), and a
    member with exactly this master's addresses is this master's earlier request, so its
    id is adopted. A member with those addresses found before any request may have been
    applied is another master's (a stale entry to remove first): that stays a refusal.
    """
    me = (options.http_address, options.raft_address)
    body = {"http": me[0], "raft": me[1], "voter": True}
    errors: list[str] = []
    maybe_applied = False
    deadline = time.monotonic() + JOIN_PATIENCE
    timeout = aiohttp.ClientTimeout(total=10)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        while True:
            hints: list[float] = []  # the masters' X-Quorumfs-Retry-After-Ms, in seconds
            for peer in peers:
                try:
                    async with session.post(f"http://{peer}/cluster/members", json=body) as answer:
                        payload = await answer.json(content_type=None)
                        status, hint = answer.status, answer.headers.get(RETRY_AFTER_MS_HEADER)
                        leader = answer.headers.get(SERVED_BY_HEADER, peer)
                    if status == 201:
                        maybe_applied = True  # if reading the members fails, ask again
                        # From the leader that added us: another master may not have
                        # applied the latest changes, and a stale list would leave this
                        # master refusing the leader's connections.
                        return int(payload["id"]), await _members(session, leader)
                    error = payload.get("error", {}) if isinstance(payload, dict) else {}
                    reason = f"{peer}: {status} {error.get('message', payload)}"
                    if status == 409 and maybe_applied:
                        members = await _members(session, leader)
                        mine = [m for m in members if (m.get("http"), m.get("raft")) == me]
                        if mine:
                            return int(str(mine[0]["id"])), members
                        # Not there yet on this master (it applies a moment after the
                        # leader): ask again.
                    elif status != 503:
                        raise MasterStartupError(f"could not join the group: {reason}")
                    # EAGAIN: no leader, nothing was done; any other 503 (ETIMEDOUT) may
                    # have been applied.
                    maybe_applied = maybe_applied or error.get("code") != "EAGAIN"
                    if hint is not None and hint.isdigit():
                        hints.append(min(max(int(hint) / 1000, 0.05), JOIN_PAUSE * 4))
                except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as error:
                    # Unreachable (never sent), or the answer was lost (maybe applied).
                    sent = not isinstance(error, aiohttp.ClientConnectorError)
                    maybe_applied = maybe_applied or sent
                    reason = f"{peer}: {error or type(error).__name__}"
                errors.append(reason)
                logger.info("joining: %s; asking again", reason)
            pause = min(hints, default=JOIN_PAUSE)
            if time.monotonic() + pause > deadline:
                raise MasterStartupError(
                    f"could not join the group within {JOIN_PATIENCE:g} s: "
                    + "; ".join(errors[-len(peers) :])
                )
            await asyncio.sleep(pause)


async def _members(session: aiohttp.ClientSession, peer: str) -> list[dict[str, object]]:
    async with session.get(f"http://{peer}/cluster/members") as response:
        response.raise_for_status()
        members: list[dict[str, object]] = (await response.json())["members"]
    return members


async def _prepare(
    options: MasterOptions, directory: _MasterDirectory
) -> tuple[_Identity, bytes, DiskStorage, list[tuple[int, str]]]:
    """Work out who this master is; returns identity, secret, journal and seed peers."""
    directory.path.mkdir(parents=True, exist_ok=True)
    identity = directory.identity()
    peers = [normalize_address(p) for p in options.peers if p.strip()]
    if identity is not None:
        if peers:
            logger.info("membership is kept in the journal: --peers is ignored on restart")
        secret = directory.secret(options.secret, generate=False)
        storage = DiskStorage.open(directory.journal, fsync=options.fsync)
        return identity, secret, storage, directory.seed()

    me_http, me_raft = options.http_address, options.raft_address
    if not peers or peers == [me_http]:  # a group of one
        founders = [me_http]
    elif me_http in peers:
        founders = sorted(set(peers))
    else:
        founders = []

    if founders:
        secret = directory.secret(options.secret, generate=len(founders) == 1)
        node_id = founders.index(me_http) + 1
        if len(founders) > 1 and me_raft != _default_raft(me_http):
            raise MasterStartupError(
                "founding masters use the default Raft port (HTTP port + 10000) so that each "
                "can work out the others'; drop --raft-port, or found a group of one and add "
                "masters to it"
            )
        contexts = {
            i: MemberAddresses(http=addr, raft=_default_raft(addr)).encode()
            for i, addr in enumerate(founders, start=1)
        }
        storage = DiskStorage.open(directory.journal, fsync=options.fsync)
        if storage.last_index() == 0:
            entries, hard_state = bootstrap_log(contexts.keys(), contexts)
            storage.save(hard_state, entries)
            storage.sync()
        identity = _Identity(node_id, me_http, me_raft)
        directory.save_identity(identity)
        logger.info("founding master %d of %d: %s", node_id, len(founders), ", ".join(founders))
        return identity, secret, storage, []

    secret = directory.secret(options.secret, generate=False)
    node_id, members = await _join(options, peers, admin_token_for(secret))
    identity = _Identity(node_id, me_http, me_raft)
    storage = DiskStorage.open(directory.journal, fsync=options.fsync)
    seed = [(int(str(m["id"])), str(m["raft"])) for m in members if int(str(m["id"])) != node_id]
    directory.save_seed(seed)  # before the identity: a restart must find both
    directory.save_identity(identity)
    logger.info("joined the group as master %d (learner until caught up)", node_id)
    return identity, secret, storage, seed


def _added_after(storage: DiskStorage, applied: int) -> list[tuple[int, int, str]]:
    """(index, id, raft address) of every master a membership change in the journal
    after ``applied`` adds."""
    first = max(applied + 1, storage.first_index())
    added = []
    for entry in storage.entries(first, storage.last_index() + 1):
        if entry.type is not EntryType.CONF_CHANGE:
            continue
        change = ConfChange.decode(entry.data)
        if change.type is not ConfChangeType.REMOVE_NODE and change.context:
            raft = MemberAddresses.decode(change.context).raft
            added.append((entry.index, change.node_id, raft))
    return added


async def run_master(
    options: MasterOptions,
    *,
    started: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a master until ``stop`` is set (or SIGINT/SIGTERM)."""
    directory = _MasterDirectory(options.mdir)
    # This master's one wall clock (runtime.clock): lease.log stamps, mtimes, token
    # expiries; /debug/faults shifts it. Leases and timeouts read the monotonic clock.
    clock = WallClock()
    identity, secret, storage, seed = await _prepare(options, directory)
    state = MasterStateMachine()
    stop = stop or asyncio.Event()
    node_holder: list[RaftNode] = []  # the node is built after its transport: late binding
    metrics = MasterMetrics()

    transport = RaftTransport(
        identity.node_id,
        _split(identity.raft),
        secret,
        on_message=lambda m: node_holder[0].receive(m),  # noqa: PLW0108
        on_unreachable=lambda peer: node_holder[0].report_unreachable(peer),  # noqa: PLW0108
    )

    unapplied: list[tuple[int, int, str]] = []
    """(index, id, raft) of masters added by entries in this journal beyond what it had
    applied when it started; filled once the journal is replayed."""

    def sync_peers() -> None:
        """The transport's peers: the applied members (or, while a joined master has
        applied none, the group it joined), plus masters whose addition is in the journal
        but not applied yet, minus those whose removal was applied. A restarted master's
        commit index may lag its log, and the group may already be led by such a master:
        refusing it would cut this master off until someone else leads (as in the Raft
        paper, the transport follows the latest configuration in the log; the core still
        applies changes once committed)."""
        wanted = {m.id: m.raft for m in state.members.values()} or dict(seed)
        # Applied: up to the membership change being applied now, or a snapshot installed.
        applied = max(state.membership_index, node_holder[0].status().applied if node_holder else 0)
        for index, member_id, raft in unapplied:
            if index > applied:
                wanted.setdefault(member_id, raft)
        wanted.pop(identity.node_id, None)
        # Nor an earlier member at this master's own address (an older snapshot's view).
        wanted = {i: raft for i, raft in wanted.items() if raft != identity.raft}
        for member_id, raft in wanted.items():
            transport.set_peer(member_id, _split(raft))
        # Only a removal applied here drops a peer. A snapshot lists the members as they
        # were when it was taken: a master added since (perhaps the leader sending it)
        # is missing there, and refusing it would stop the entries that add it arriving.
        for member_id in (set(transport.peer_state()) - set(wanted)) & state.removed:
            transport.remove_peer(member_id)

    sync_peers()
    state.on_membership_change(sync_peers)
    config = Config(
        id=identity.node_id,
        election_tick=options.election_tick,
        heartbeat_tick=1,
        lease_tick=options.lease_tick,
        read_only=ReadOnlyOption.LEASE,
    )
    node = RaftNode(
        config,
        storage,
        transport,
        state,
        options=NodeOptions(
            tick_interval=options.tick_interval,
            snapshot_every=options.snapshot_every,
            lease_log=directory.lease_log,
            wall_clock=clock,
        ),
        metrics=metrics.node,
    )
    node_holder.append(node)
    service = RaftMasterService(node, state, admin_token=admin_token_for(secret))
    data = DataService(
        service,
        secret=secret,
        leader_term=service.leader_term,
        masters=lambda: [m.http for m in sorted(state.members.values(), key=lambda m: m.id)],
        options=options.data,
        clock=clock,
    )
    state.on_applied(data.on_applied)
    metrics.watch_data(data)
    app = build_app(
        service,
        more_routes=add_data_routes(data),
        metrics=metrics.registry,
        faults=storage if options.fault_injection else None,
        clock=clock,
    )
    if options.fault_injection:
        logger.warning(
            "fault injection is on (--fault-injection): PUT /debug/faults can slow this "
            "master's journal or shift its wall clock; for fault tests only, never in "
            "production"
        )
    runner = web.AppRunner(app, access_log=None)
    try:
        await node.start()
        unapplied.extend(_added_after(storage, node.status().applied))
        sync_peers()
        service.start()
        data.start()
        await transport.start()
        await runner.setup()
        http_host, http_port = _split(identity.http)
        site = web.TCPSite(runner, http_host, http_port, reuse_address=True)
        try:
            await site.start()
        except OSError as error:
            raise MasterStartupError(
                f"cannot listen on {identity.http}: {error.strerror}"
            ) from error
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        message = (
            f"master {identity.node_id} serving http://{identity.http} "
            f"(raft {identity.raft}), journal {directory.journal}"
        )
        logger.info(message)
        if started is not None:
            started(message)
        await stop.wait()
        logger.info("master %d stopping", identity.node_id)
    finally:
        await data.close()
        await service.close()
        await runner.cleanup()
        await node.stop()
        await transport.close()
        storage.close()
