"""The client against emulated masters: leader finding, redirects and forwarding, dead
masters, 503 with Retry-After, a leader change, error mapping, the rule that a write
which is not safe to repeat is never repeated, the deadline, and the sync facade.

The emulated masters run the real HTTP API (``http_api.build_app``) over a fake
``MasterService``: the masters of one ``FakeCluster`` share one real ``Namespace``,
and ``cluster.leader_id`` says who leads, so redirects, forwarding and error bodies
are the real ones. A recording middleware in front counts what each master saw and
can drop a connection before or after the request is served. Scripted masters
(``ScriptedMaster``) answer canned responses where the real API cannot be made to
(ECONFLICT, a 500, ELOOP, a body that is not JSON). Nothing waits by sleeping: state
changes are triggered by counts of requests.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import pickle
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from typing import Any, Literal, NamedTuple

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from data_fakes import in_loop_thread

from quorumfs.client import (
    AlreadyExists,
    AsyncMasterClient,
    Conflict,
    DirectoryNotEmpty,
    InvalidArgument,
    IsADirectory,
    Kind,
    MasterClient,
    MasterSource,
    NameTooLong,
    NotADirectory,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    ProtocolError,
    QuorumfsError,
    RetryPolicy,
    StaticMasters,
    Unavailable,
    parse_masters,
)
from quorumfs.master.commands import Command
from quorumfs.master.contract import (
    ClusterStatus,
    MemberInfo,
    MemberRole,
    NotLeaderError,
    ServiceUnavailableError,
)
from quorumfs.master.http_api import REDIRECT_HEADER, build_app
from quorumfs.master.namespace import Namespace
from quorumfs.master.results import Result

FAST = RetryPolicy(
    deadline=3.0,
    connect_timeout=0.5,
    request_timeout=2.0,
    probe_timeout=0.5,
    backoff_initial=0.01,
    backoff_max=0.05,
)
"""Short waits: each test runs in well under a second unless it tests a wait."""

Drop = Literal["before", "after"]
"""Drop the connection before the master serves the request, or after (applied)."""


class Seen(NamedTuple):
    method: str
    path: str


# ------------------------------------------------------------ emulated masters


class FakeMaster:
    """A ``MasterService`` for one emulated master of a ``FakeCluster``, plus its knobs."""

    def __init__(self, cluster: FakeCluster, node_id: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.address = ""
        """Set once its server listens."""
        self.seen: list[Seen] = []
        self.drops: list[Drop] = []
        """Applied, in order, to the next POSTs this master receives."""
        self.unavailable = 0
        """The next this many execute / read_barrier calls raise ServiceUnavailableError."""
        self.retry_after = 1.0
        """The Retry-After of the 503s that ``unavailable`` answers, seconds."""
        self.forward_always = False
        """Ignore X-Quorumfs-Redirect: forward writes to the leader (an older master)."""
        self.believes: int | Literal["cluster"] | None = "cluster"
        """Who this master thinks leads: the cluster's leader, or a stale view."""
        self.isolated_in_term: int | None = None
        """An isolated old leader: it still claims to lead, in this (old) term."""

    # -- MasterService

    @property
    def namespace(self) -> Namespace:
        return self.cluster.namespace

    def is_leader(self) -> bool:
        return self.isolated_in_term is not None or self.cluster.leader_id == self.node_id

    def leader_http(self) -> str | None:
        if self.believes == "cluster":
            return self.cluster.leader_address()
        return None if self.believes is None else self.cluster[self.believes].address

    async def execute(self, command: Command) -> Result[Any]:
        self._gate()
        if not self.is_leader():
            raise NotLeaderError(self.leader_http())
        return self.cluster.namespace.apply(command)

    async def read_barrier(self) -> None:
        self._gate()

    def cluster_status(self) -> ClusterStatus:
        self.cluster.probed()
        term: int = self.cluster.term
        leader: int | None = self.cluster.leader_id
        leader_http = self.leader_http()
        if self.isolated_in_term is not None:
            term, leader, leader_http = self.isolated_in_term, self.node_id, self.address
        return ClusterStatus(
            id=self.node_id,
            role=MemberRole.LEADER if self.is_leader() else MemberRole.FOLLOWER,
            term=term,
            leader_id=leader,
            leader_http=leader_http,
            commit_index=1,
            applied_index=1,
            members=self.cluster.members(),
        )

    async def add_member(self, *, http: str, raft: str, voter: bool) -> MemberInfo:
        raise NotImplementedError

    async def remove_member(self, member_id: int) -> None:
        raise NotImplementedError

    async def transfer_leadership(self, member_id: int) -> int:
        raise NotImplementedError

    async def step_down(self) -> int:
        raise NotImplementedError

    def admin_token_ok(self, token: str | None) -> bool:
        return False

    # -- knobs

    def _gate(self) -> None:
        if self.unavailable > 0:
            self.unavailable -= 1
            raise ServiceUnavailableError("no quorum right now", retry_after=self.retry_after)

    def posts(self) -> list[str]:
        return [s.path for s in self.seen if s.method == "POST"]

    @web.middleware
    async def front(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Records every request; drops connections and strips redirect requests on demand."""
        self.seen.append(Seen(request.method, request.path))
        drop = self.drops.pop(0) if self.drops and request.method == "POST" else None
        if self.forward_always and REDIRECT_HEADER in request.headers:
            headers = {k: v for k, v in request.headers.items() if k != REDIRECT_HEADER}
            request = request.clone(headers=headers)
        if drop == "before":
            await request.read()
            _abort(request)
            return web.Response(status=500)  # never reaches the client
        response = await handler(request)
        if drop == "after":
            _abort(request)
        return response


def _abort(request: web.Request) -> None:
    assert request.transport is not None
    request.transport.abort()


class FakeCluster:
    """Emulated masters sharing one namespace; ``leader_id`` leads (None: an election)."""

    def __init__(self, size: int = 3) -> None:
        self.namespace = Namespace()
        self.masters = [FakeMaster(self, i) for i in range(1, size + 1)]
        self.leader_id: int | None = 1
        self.term = 1
        self.elect_after_probes: tuple[int, int] | None = None
        """(n, id): after n more /cluster/status answers, master ``id`` leads."""

    def __getitem__(self, node_id: int) -> FakeMaster:
        return self.masters[node_id - 1]

    def addresses(self, *node_ids: int) -> list[str]:
        return [self[i].address for i in node_ids or range(1, len(self.masters) + 1)]

    def leader_address(self) -> str | None:
        return None if self.leader_id is None else self[self.leader_id].address

    def elect(self, node_id: int | None) -> None:
        self.leader_id = node_id
        self.term += 1

    def probed(self) -> None:
        if self.elect_after_probes is not None:
            count, node_id = self.elect_after_probes
            if count <= 1:
                self.elect_after_probes = None
                self.elect(node_id)
            else:
                self.elect_after_probes = (count - 1, node_id)

    def members(self) -> list[MemberInfo]:
        return [
            MemberInfo(
                id=m.node_id,
                http=m.address,
                raft=m.address,
                role=MemberRole.LEADER if m.is_leader() else MemberRole.FOLLOWER,
                voter=True,
            )
            for m in self.masters
        ]


@asynccontextmanager
async def running(cluster: FakeCluster) -> AsyncIterator[FakeCluster]:
    servers = []
    try:
        for master in cluster.masters:
            app = build_app(master, request_timeout=2.0)
            app.middlewares.insert(0, master.front)
            server = TestServer(app, host="127.0.0.1")
            await server.start_server()
            servers.append(server)
            master.address = f"127.0.0.1:{server.port}"
        yield cluster
    finally:
        for server in servers:
            await server.close()


class Canned(NamedTuple):
    status: int
    body: bytes
    headers: dict[str, str]


def error_answer(status: int, code: str, message: str = "refused", path: str = "") -> Canned:
    body = msgspec.json.encode({"error": {"code": code, "message": message, "path": path}})
    headers = {"Retry-After": "1"} if status == 503 else {}
    return Canned(status, body, headers)


STAT_BODY = msgspec.json.encode(
    {
        "inode": 7,
        "kind": "file",
        "mode": 0o644,
        "mtime": 1,
        "owner": "root",
        "size": 0,
        "version": 0,
        "replication": 2,
    }
)


class ScriptedMaster:
    """A master that answers the next canned response to every request but
    ``/cluster/status``, where it says it leads."""

    def __init__(self, script: Sequence[Canned]) -> None:
        self.script = list(script)
        self.seen: list[Seen] = []
        self.address = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/cluster/status":
            status = ClusterStatus(
                id=1,
                role=MemberRole.LEADER,
                term=1,
                leader_id=1,
                leader_http=self.address,
                commit_index=1,
                applied_index=1,
                members=[],
            )
            return web.Response(body=msgspec.json.encode(status), content_type="application/json")
        self.seen.append(Seen(request.method, request.path))
        canned = self.script.pop(0)
        return web.Response(status=canned.status, body=canned.body, headers=canned.headers)


@asynccontextmanager
async def scripted(*script: Canned) -> AsyncIterator[ScriptedMaster]:
    master = ScriptedMaster(script)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", master.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    master.address = f"127.0.0.1:{server.port}"
    try:
        yield master
    finally:
        await server.close()


@contextmanager
def dead_addresses(count: int = 1) -> Iterator[list[str]]:
    """Ports with nothing listening: bound (so no one else takes them), never listened on,
    so a connection is refused at once."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        yield [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=15))


# ------------------------------------------------------------ finding the leader


def test_a_follower_redirects_once_and_then_the_client_talks_to_the_leader() -> None:
    async def test() -> None:
        async with running(FakeCluster()) as cluster:
            # The leader (1) is last in the list: the first write lands on a follower.
            masters = cluster.addresses(2, 3, 1)
            async with AsyncMasterClient(masters, policy=FAST) as client:
                await client.mkdir("/a", parents=True)
                assert client.leader == cluster[1].address
                await client.mkdir("/b", parents=True)
                await client.create("/b/f")
            assert cluster[2].posts() == ["/v1/fs/mkdir"]  # one 307, then never again
            assert cluster[1].posts() == ["/v1/fs/mkdir", "/v1/fs/mkdir", "/v1/fs/create"]
            assert cluster[3].seen == []
            assert cluster.namespace.stat("/b/f").ok

    run(test)


def test_a_forwarding_follower_teaches_the_leader_through_served_by() -> None:
    async def test() -> None:
        async with running(FakeCluster()) as cluster:
            cluster[2].forward_always = True
            async with AsyncMasterClient(cluster.addresses(2, 1), policy=FAST) as client:
                await client.create("/f")  # forwarded by 2, answered with Served-By
                assert client.leader == cluster[1].address
                await client.create("/g")
            assert cluster[2].posts() == ["/v1/fs/create"]
            assert cluster[1].posts() == ["/v1/fs/create", "/v1/fs/create"]

    run(test)


def test_a_dead_master_is_skipped_at_once() -> None:
    async def test() -> None:
        async with running(FakeCluster(size=1)) as cluster:
            with dead_addresses(2) as dead:
                masters = [*dead, *cluster.addresses()]
                async with AsyncMasterClient(masters, policy=FAST) as client:
                    started = time.monotonic()
                    await client.mkdir("/a", parents=True)
                    assert (await client.stat("/a")).kind is Kind.DIRECTORY
                    assert time.monotonic() - started < 1.0

    run(test)


def test_a_write_that_is_not_safe_to_repeat_finds_the_leader_by_status_first() -> None:
    async def test() -> None:
        async with running(FakeCluster()) as cluster:
            cluster.elect(3)
            async with AsyncMasterClient(cluster.addresses(), policy=FAST) as client:
                await client.mkdir("/x")  # parents=False: sent to the leader only
            assert cluster[3].posts() == ["/v1/fs/mkdir"]
            assert cluster[1].posts() == cluster[2].posts() == []
            assert Seen("GET", "/cluster/status") in cluster[1].seen

    run(test)


def test_an_isolated_old_leader_is_not_believed_over_a_newer_term() -> None:
    async def test() -> None:
        async with running(FakeCluster()) as cluster:
            cluster.elect(3)
            cluster[1].isolated_in_term = cluster.term - 1
            for _ in range(5):  # the probes answer in any order
                async with AsyncMasterClient(cluster.addresses(), policy=FAST) as client:
                    await client.mkdir("/d")  # sent to the leader found by probing
                    await client.rm("/d")
                    assert client.leader == cluster[3].address
            assert cluster[1].posts() == []

    run(test)


def test_during_an_election_a_risky_write_waits_for_a_leader_without_being_sent() -> None:
    async def test() -> None:
        async with running(FakeCluster()) as cluster:
            cluster.elect(None)
            cluster.elect_after_probes = (7, 2)  # two rounds of probes see no leader
            async with AsyncMasterClient(cluster.addresses(), policy=FAST) as client:
                await client.create("/f", exclusive=True)
            assert cluster[2].posts() == ["/v1/fs/create"]
            assert cluster[1].posts() == cluster[3].posts() == []

    run(test)


def test_a_leader_change_mid_sequence_is_followed() -> None:
    async def test() -> None:
        async with running(FakeCluster()) as cluster:
            async with AsyncMasterClient(cluster.addresses(), policy=FAST) as client:
                await client.mkdir("/a")
                cluster.elect(2)  # the old leader now answers 307 to the new one
                await client.mkdir("/b")
                await client.mkdir("/c")
                assert client.leader == cluster[2].address
                assert [e.name for e in await client.ls("/")] == ["a", "b", "c"]
            assert cluster[1].posts() == ["/v1/fs/mkdir", "/v1/fs/mkdir"]  # /a, then a 307
            assert cluster[2].posts() == ["/v1/fs/mkdir", "/v1/fs/mkdir"]  # /b, /c
            assert cluster[3].posts() == []

    run(test)


def test_masters_that_redirect_to_each_other_end_in_unavailable() -> None:
    async def test() -> None:
        async with running(FakeCluster(size=2)) as cluster:
            cluster.elect(None)
            cluster[1].believes, cluster[2].believes = 2, 1
            policy = RetryPolicy(deadline=0.3, backoff_initial=0.01, backoff_max=0.05)
            async with AsyncMasterClient(cluster.addresses(), policy=policy) as client:
                with pytest.raises(Unavailable) as raised:
                    await client.mkdir("/a", parents=True)
            assert "disagree about who leads" in raised.value.reason
            assert not cluster.namespace.stat("/a").ok

    run(test)


def test_a_503_is_retried_after_retry_after() -> None:
    async def test() -> None:
        async with running(FakeCluster(size=1)) as cluster:
            async with AsyncMasterClient(cluster.addresses(), policy=FAST) as client:
                await client.mkdir("/a", parents=True)
                cluster[1].unavailable = 1
                started = time.monotonic()
                stat = await client.stat("/a")
                waited = time.monotonic() - started
            assert stat.kind is Kind.DIRECTORY
            assert waited >= 0.95  # the master said Retry-After: 1
            assert cluster[1].seen.count(Seen("GET", "/v1/fs/stat")) == 2

    run(test)


def test_a_sub_second_retry_hint_is_followed() -> None:
    """``Retry-After`` has whole seconds; the master's millisecond hint lets a client come
    back as soon as an election is likely over."""

    async def test() -> None:
        async with running(FakeCluster(size=1)) as cluster:
            async with AsyncMasterClient(cluster.addresses(), policy=FAST) as client:
                await client.mkdir("/a", parents=True)
                cluster[1].unavailable = 1
                cluster[1].retry_after = 0.2
                started = time.monotonic()
                await client.stat("/a")
                waited = time.monotonic() - started
            assert 0.19 <= waited < 0.9  # not the 1 s of Retry-After
            assert cluster[1].seen.count(Seen("GET", "/v1/fs/stat")) == 2

    run(test)


def test_max_retry_after_caps_the_wait() -> None:
    async def test() -> None:
        policy = RetryPolicy(deadline=3.0, max_retry_after=0.05, backoff_initial=0.01)
        async with running(FakeCluster(size=1)) as cluster:
            async with AsyncMasterClient(cluster.addresses(), policy=policy) as client:
                cluster[1].unavailable = 2
                started = time.monotonic()
                await client.mkdir("/a", parents=True)  # idempotent: retried after 503s
                assert time.monotonic() - started < 0.5
            assert cluster[1].posts() == ["/v1/fs/mkdir"] * 3

    run(test)


def test_a_master_source_is_asked_on_every_call() -> None:
    class Moving:
        def __init__(self, first: list[str], then: list[str]) -> None:
            self.lists = [first, then]

        async def addresses(self) -> Sequence[str]:
            return self.lists[0] if len(self.lists) == 1 else self.lists.pop(0)

    async def test() -> None:
        async with running(FakeCluster(size=1)) as cluster:
            with dead_addresses() as dead:
                source = Moving(dead, cluster.addresses())
                assert isinstance(source, MasterSource)
                async with AsyncMasterClient(source, policy=FAST) as client:
                    await client.mkdir("/a", parents=True)
            assert cluster[1].posts() == ["/v1/fs/mkdir"]

    run(test)


def test_master_info_and_cluster_status() -> None:
    async def test() -> None:
        async with running(FakeCluster()) as cluster:
            cluster.elect(2)
            async with AsyncMasterClient(cluster.addresses(3), policy=FAST) as client:
                status = await client.cluster_status()
                assert status.leader_http == cluster[2].address
                assert client.leader == cluster[2].address
                info = await client.master_info()
                assert info.leader == cluster[2].address
                assert info.masters == cluster.addresses()
                cluster.elect(None)
                info = await client.master_info()
                assert info == (None, cluster.addresses())

    run(test)


# ---------------------------------------------------------------- error mapping


def test_namespace_errors_become_typed_builtin_compatible_exceptions() -> None:
    async def test() -> None:
        async with (
            running(FakeCluster()) as cluster,
            AsyncMasterClient(cluster.addresses(), policy=FAST) as client,
        ):
            await client.mkdir("/d")
            await client.mkdir("/d/e")
            await client.create("/f")
            cases: list[tuple[Awaitable[object], type[QuorumfsError], type[OSError], int]] = [
                (client.stat("/nope"), NotFound, FileNotFoundError, errno.ENOENT),
                (client.mkdir("/d"), AlreadyExists, FileExistsError, errno.EEXIST),
                (client.mkdir("/f/x"), NotADirectory, NotADirectoryError, errno.ENOTDIR),
                (client.create("/d"), IsADirectory, IsADirectoryError, errno.EISDIR),
                (client.rm("/d"), DirectoryNotEmpty, OSError, errno.ENOTEMPTY),
                (client.stat("relative"), InvalidArgument, OSError, errno.EINVAL),
                (client.mkdir("/" + "x" * 300), NameTooLong, OSError, errno.ENAMETOOLONG),
            ]
            for call, error_type, builtin, number in cases:
                with pytest.raises(error_type) as raised:
                    await call
                error = raised.value
                assert isinstance(error, builtin)
                assert error.errno == number
                assert error.code == errno.errorcode[number]
                assert error.path and error.filename == error.path
                assert str(error).startswith(f"{error.code}: ")
            assert isinstance(NameTooLong("x"), InvalidArgument)
            assert not raised.value.retried_after_unknown

    run(test)


@pytest.mark.parametrize(
    ("canned", "method", "expected", "code"),
    [
        (error_answer(409, "ECONFLICT"), "mkdir", Conflict, "ECONFLICT"),
        (error_answer(401, "EACCES"), "stat", PermissionDenied, "EACCES"),
        (error_answer(404, "ENOSYS"), "stat", QuorumfsError, "ENOSYS"),
        (error_answer(500, "EIO"), "stat", QuorumfsError, "EIO"),
        (error_answer(500, "EIO"), "mkdir", OutcomeUnknown, "EIO"),
        (Canned(404, b"<html>not found</html>", {}), "stat", ProtocolError, "EPROTO"),
        (Canned(200, b"{}", {}), "stat", ProtocolError, "EPROTO"),
    ],
)
def test_other_answers_map_in_one_place(
    canned: Canned, method: str, expected: type[QuorumfsError], code: str
) -> None:
    async def test() -> None:
        async with scripted(canned) as master:
            async with AsyncMasterClient([master.address], policy=FAST) as client:
                call = client.stat("/p") if method == "stat" else client.mkdir("/p", parents=True)
                with pytest.raises(expected) as raised:
                    await call
                assert type(raised.value) is expected
                assert raised.value.code == code
                if code == "ENOSYS":
                    assert not isinstance(raised.value, FileNotFoundError)  # by code, not 404
                    assert raised.value.errno == errno.ENOSYS
            assert len(master.seen) == 1

    run(test)


def test_errors_survive_pickling() -> None:
    for error in (
        NotFound("gone", path="/a", retried_after_unknown=True),
        Unavailable("down", reason="refused", path="/b", attempts=3),
        OutcomeUnknown("maybe", reason="dropped", path="/c"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert (copy.code, copy.message, copy.path, copy.errno) == (
            error.code,
            error.message,
            error.path,
            error.errno,
        )
        assert vars(copy) == vars(error)


# ------------------------------------------------------------ the idempotency rule


def test_a_dropped_exclusive_create_is_outcome_unknown_and_not_repeated() -> None:
    async def test() -> None:
        async with running(FakeCluster()) as cluster:
            async with AsyncMasterClient(cluster.addresses(), policy=FAST) as client:
                await client.stat("/")
                cluster[1].drops = ["before"]
                with pytest.raises(OutcomeUnknown) as raised:
                    await client.create("/f", exclusive=True)
            assert raised.value.path == "/f"
            assert "check" in raised.value.message
            assert cluster[1].posts() == ["/v1/fs/create"]  # sent once, never again
            assert cluster[2].posts() == cluster[3].posts() == []

    run(test)


@pytest.mark.parametrize("drop", ["before", "after"])
def test_rename_and_plain_mkdir_are_never_repeated(drop: Drop) -> None:
    async def test() -> None:
        async with running(FakeCluster()) as cluster:
            async with AsyncMasterClient(cluster.addresses(), policy=FAST) as client:
                await client.create("/f")
                cluster[1].drops = [drop, drop]
                with pytest.raises(OutcomeUnknown):
                    await client.mv("/f", "/g")
                with pytest.raises(OutcomeUnknown):
                    await client.mkdir("/d")
                applied = drop == "after"
                assert cluster.namespace.stat("/g").ok is applied
                assert cluster.namespace.stat("/d").ok is applied
            assert cluster[1].posts() == ["/v1/fs/create", "/v1/fs/rename", "/v1/fs/mkdir"]

    run(test)


def test_a_503_etimedout_on_a_risky_write_is_outcome_unknown() -> None:
    async def test() -> None:
        async with scripted(error_answer(503, "ETIMEDOUT"), Canned(200, STAT_BODY, {})) as master:
            async with AsyncMasterClient([master.address], policy=FAST) as client:
                with pytest.raises(OutcomeUnknown) as raised:
                    await client.create("/f", exclusive=True)
                assert "ETIMEDOUT" in raised.value.reason
            assert master.seen == [Seen("POST", "/v1/fs/create")]  # never sent again

    run(test)


def test_a_503_eagain_proves_nothing_was_done_so_a_risky_write_is_retried() -> None:
    async def test() -> None:
        async with running(FakeCluster()) as cluster:
            async with AsyncMasterClient(cluster.addresses(), policy=FAST) as client:
                await client.stat("/")
                cluster[1].unavailable = 1
                stat = await client.create("/f", exclusive=True)
                assert stat.kind == "file"
            assert cluster[1].posts() == ["/v1/fs/create", "/v1/fs/create"]

    run(test)


def test_eloop_proves_nothing_was_done_so_even_a_risky_write_is_retried() -> None:
    async def test() -> None:
        async with scripted(error_answer(503, "ELOOP"), Canned(200, STAT_BODY, {})) as master:
            policy = RetryPolicy(deadline=3.0, max_retry_after=0.01, backoff_initial=0.01)
            async with AsyncMasterClient([master.address], policy=policy) as client:
                stat = await client.create("/f", exclusive=True)
            assert stat.inode == 7
            assert master.seen == [Seen("POST", "/v1/fs/create")] * 2

    run(test)


def test_idempotent_writes_are_retried_after_a_lost_answer() -> None:
    async def test() -> None:
        async with running(FakeCluster()) as cluster:
            async with AsyncMasterClient(cluster.addresses(), policy=FAST) as client:
                await client.stat("/")
                cluster[1].drops = ["after"]  # each retry goes through
                assert (await client.create("/f")).kind is Kind.FILE
                cluster[1].drops = ["before"]
                assert (await client.mkdir("/d/e", parents=True)).kind is Kind.DIRECTORY
                cluster[1].drops = ["after"]
                assert (await client.setattr("/f", mode=0o600)).mode == 0o600
            assert cluster[1].posts() == [
                "/v1/fs/create",
                "/v1/fs/create",
                "/v1/fs/mkdir",
                "/v1/fs/mkdir",
                "/v1/fs/setattr",
                "/v1/fs/setattr",
            ]

    run(test)


def test_a_delete_whose_answer_was_lost_is_retried_and_enoent_then_means_done() -> None:
    async def test() -> None:
        async with running(FakeCluster()) as cluster:
            async with AsyncMasterClient(cluster.addresses(), policy=FAST) as client:
                await client.mkdir("/d/e", parents=True)
                cluster[1].drops = ["after"]  # applied, answer lost
                assert await client.rm("/d", recursive=True) is None
                assert not cluster.namespace.stat("/d").ok
                with pytest.raises(NotFound) as raised:  # no lost attempt: a plain ENOENT
                    await client.rm("/d")
                assert not raised.value.retried_after_unknown
                await client.create("/f")
                removed = await client.rm("/f")
                assert removed is not None
                assert (removed.files, removed.directories) == (1, 0)
            assert cluster[1].posts().count("/v1/fs/delete") == 4

    run(test)


# -------------------------------------------------------------------- deadline


def test_no_master_at_all_is_unavailable_within_the_deadline() -> None:
    async def test() -> None:
        policy = RetryPolicy(deadline=0.5, backoff_initial=0.01, backoff_max=0.05)
        with dead_addresses(3) as dead:
            async with AsyncMasterClient(dead, policy=policy) as client:
                for call, sent in ((client.stat("/"), True), (client.mv("/a", "/b"), False)):
                    started = time.monotonic()
                    with pytest.raises(Unavailable) as raised:
                        await call
                    assert time.monotonic() - started < 0.8
                    assert "connection refused" in raised.value.reason
                    assert "majority of the masters" in raised.value.message
                    # A rename is sent to a leader only: with none found, it never left.
                    assert (raised.value.attempts >= 3) if sent else raised.value.attempts == 0

    run(test)


def test_without_a_leader_calls_end_at_the_deadline_and_risky_writes_are_never_sent() -> None:
    async def test() -> None:
        async with running(FakeCluster()) as cluster:
            cluster.elect(None)
            policy = RetryPolicy(deadline=0.4, backoff_initial=0.01, backoff_max=0.05)
            async with AsyncMasterClient(cluster.addresses(), policy=policy) as client:
                started = time.monotonic()
                with pytest.raises(Unavailable) as raised:
                    await client.mkdir("/a", parents=True)  # 503 Retry-After 1 > deadline
                assert time.monotonic() - started < 0.4
                assert "EAGAIN" in raised.value.reason
                with pytest.raises(Unavailable) as raised:
                    await client.create("/b", exclusive=True)
                assert time.monotonic() - started < 0.9
                assert "no master knows a leader" in raised.value.reason
            posts = [p for m in cluster.masters for p in m.posts()]
            assert posts.count("/v1/fs/create") == 0

    run(test)


# --------------------------------------------------------------------- logging


def test_each_retry_is_logged_at_debug_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        async with running(FakeCluster(size=1)) as cluster:
            with dead_addresses() as dead:
                async with AsyncMasterClient([*dead, *cluster.addresses()], policy=FAST) as c:
                    await c.stat("/")

    with caplog.at_level(logging.DEBUG, logger="quorumfs.client"):
        run(test)
    retries = [r for r in caplog.records if r.name == "quorumfs.client" and "retrying" in r.msg]
    assert len(retries) == 1
    assert "connection refused" in retries[0].getMessage()


# ----------------------------------------------------------- construction, API


def test_master_lists_are_parsed_and_checked() -> None:
    assert parse_masters("a:1, b:2,,a:1") == ("a:1", "b:2")
    assert parse_masters(["[::1]:9333", "h:9334"]) == ("[::1]:9333", "h:9334")
    for bad in ("", "a", "a:0", "a:99999", "::1:9333", "http://a:1", "a:1,b"):
        with pytest.raises(ValueError, match=r"host:port|no master"):
            parse_masters(bad)
    assert repr(StaticMasters("a:1,b:2")) == "StaticMasters('a:1,b:2')"
    with pytest.raises(TypeError):
        AsyncMasterClient(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="deadline"):
        RetryPolicy(deadline=0)
    with pytest.raises(ValueError, match="at least one"):
        asyncio.run(AsyncMasterClient("a:1").setattr("/f"))


def test_a_closed_client_refuses_calls() -> None:
    async def test() -> None:
        client = AsyncMasterClient("127.0.0.1:1")
        await client.close()
        with pytest.raises(RuntimeError, match="closed"):
            await client.stat("/")

    run(test)


# ---------------------------------------------------------------- sync facade


def cluster_in_thread(size: int = 3) -> AbstractContextManager[FakeCluster]:
    """A FakeCluster served by its own event loop in a thread (for the sync client)."""
    return in_loop_thread(running(FakeCluster(size)))


def test_the_sync_client_mirrors_the_async_one() -> None:
    with cluster_in_thread() as cluster:
        cluster.elect(3)
        with MasterClient(",".join(cluster.addresses()), policy=FAST) as client:
            assert client.mkdir("/d", parents=True).kind is Kind.DIRECTORY
            assert client.create("/d/f", replication=3).replication == 3
            assert client.setattr("/d/f", owner="alice").owner == "alice"
            renamed = client.mv("/d/f", "/d/g")
            assert renamed.replaced is False
            assert [e.name for e in client.ls("/d")] == ["g"]
            assert client.stat("/d/g").kind is Kind.FILE
            assert client.totals().files == 1
            assert client.master_info().leader == cluster[3].address
            assert client.cluster_status().leader_id == 3
            assert client.leader == cluster[3].address
            with pytest.raises(FileNotFoundError):
                client.stat("/nope")
            removed = client.rm("/d", recursive=True)
            assert removed is not None and removed.directories == 1
            cluster[3].drops = ["before"]
            with pytest.raises(OutcomeUnknown):
                client.mkdir("/x")
        assert client.closed
        with pytest.raises(RuntimeError, match="closed"):
            client.stat("/")
        client.close()  # idempotent
    assert not any(t.name == "quorumfs-client" for t in threading.enumerate())


def test_the_sync_client_works_inside_a_running_event_loop_and_from_threads() -> None:
    with cluster_in_thread(size=1) as cluster, MasterClient(cluster.addresses()) as client:

        async def inside_a_loop() -> None:
            client.mkdir("/from-a-loop")  # asyncio.run per call would refuse here

        asyncio.run(inside_a_loop())
        threads = [
            threading.Thread(target=client.mkdir, args=(f"/t{i}",), kwargs={"parents": True})
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(client.ls("/")) == 9
