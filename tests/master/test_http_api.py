"""The master's HTTP API against a fake ``MasterService``: every endpoint's answers and
errors, write routing (forwarding, redirects, the double-forward refusal), the 503s of
a cluster without leader or quorum, the request deadline, admin auth, and the OpenAPI
document matching the routes and the wire Structs.

The fake applies commands straight to a real ``Namespace``; each test runs on its own
event loop (``asyncio.run``) against real aiohttp servers on loopback ports.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDictProxy

from quorumfs import wire
from quorumfs.master import http_api
from quorumfs.master.commands import Chunk, Command, Create, Mkdir, SetAttr
from quorumfs.master.contract import (
    ClusterStatus,
    MemberInfo,
    MemberRole,
    NotLeaderError,
    OutcomeUnknownError,
    RejectedError,
    ServiceUnavailableError,
)
from quorumfs.master.data_api import add_data_routes
from quorumfs.master.data_service import DataService
from quorumfs.master.http_api import (
    FORWARDED_HEADER,
    REDIRECT_HEADER,
    SERVED_BY_HEADER,
    build_app,
    load_openapi_document,
)
from quorumfs.master.namespace import Namespace
from quorumfs.master.results import DirEntry, Result, Stat, Totals

TOKEN = "s3cret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
Client = TestClient[web.Request, web.Application]


def three_members() -> list[MemberInfo]:
    return [
        MemberInfo(
            id=i,
            http=f"10.0.0.{i}:9333",
            raft=f"10.0.0.{i}:19333",
            role=MemberRole.LEADER if i == 1 else MemberRole.FOLLOWER,
            voter=True,
            match_index=7,
            last_contact_ms=12,
        )
        for i in (1, 2, 3)
    ]


class FakeService:
    """A ``MasterService`` that applies commands at once; knobs make it misbehave."""

    def __init__(self, node_id: int = 1, *, leader: bool = True) -> None:
        self.node_id = node_id
        self._namespace = Namespace()
        self.leader = leader
        self.leader_address: str | None = None
        self.members = three_members()
        self.executed: list[Command] = []
        self.barriers = 0
        self.hang = False
        """execute, read_barrier and membership calls never return (until cancelled)."""
        self.unavailable: ServiceUnavailableError | None = None
        self.stale_leadership = False
        """is_leader() says yes, but execute finds out it is not (NotLeaderError)."""
        self.crash: Exception | None = None
        self.membership_error: Exception | None = None
        self.transfers: list[int] = []
        self.removed: list[int] = []
        self.step_down_to: int | None = 2
        """Whom ``step_down`` hands over to; None: no other member can lead."""

    @property
    def namespace(self) -> Namespace:
        return self._namespace

    def is_leader(self) -> bool:
        return self.leader

    def leader_http(self) -> str | None:
        return self.leader_address

    async def _gate(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.unavailable is not None:
            raise self.unavailable
        if self.crash is not None:
            raise self.crash

    async def _leader_gate(self) -> None:
        await self._gate()
        if not self.leader or self.stale_leadership:
            raise NotLeaderError(self.leader_address)

    async def execute(self, command: Command) -> Result[Any]:
        await self._leader_gate()
        self.executed.append(command)
        return self._namespace.apply(command)

    async def read_barrier(self) -> None:
        await self._gate()
        self.barriers += 1

    def cluster_status(self) -> ClusterStatus:
        return ClusterStatus(
            id=self.node_id,
            role=MemberRole.LEADER if self.leader else MemberRole.FOLLOWER,
            term=3,
            leader_id=self.node_id if self.leader else None,
            leader_http=self.leader_address,
            commit_index=7,
            applied_index=7,
            members=list(self.members),
            warnings=["an even number of voters"] if len(self.members) % 2 == 0 else [],
        )

    async def add_member(self, *, http: str, raft: str, voter: bool) -> MemberInfo:
        await self._leader_gate()
        if self.membership_error is not None:
            raise self.membership_error
        for m in self.members:
            if http in (m.http, m.raft) or raft in (m.http, m.raft):
                raise RejectedError(f"{http} conflicts with member {m.id}", status=409)
        member = MemberInfo(
            id=max(m.id for m in self.members) + 1,
            http=http,
            raft=raft,
            role=MemberRole.LEARNER,
            voter=False,
        )
        self.members.append(member)
        return member

    async def remove_member(self, member_id: int) -> None:
        await self._leader_gate()
        if self.membership_error is not None:
            raise self.membership_error
        if member_id not in [m.id for m in self.members]:
            raise RejectedError(f"no master with id {member_id}", status=404)
        self.removed.append(member_id)
        self.members = [m for m in self.members if m.id != member_id]

    async def transfer_leadership(self, member_id: int) -> int:
        await self._leader_gate()
        if self.membership_error is not None:
            raise self.membership_error
        self.transfers.append(member_id)
        return member_id

    async def step_down(self) -> int:
        await self._leader_gate()
        if self.step_down_to is None:
            raise RejectedError("master 1 is the only member that can lead")
        return await self.transfer_leadership(self.step_down_to)

    def admin_token_ok(self, token: str | None) -> bool:
        return token == TOKEN


# ------------------------------------------------------------------ harness


class Answer(NamedTuple):
    status: int
    body: Any
    headers: CIMultiDictProxy[str]


@asynccontextmanager
async def serve(service: FakeService, *, request_timeout: float = 2.0) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(service, request_timeout=request_timeout))) as c:
        yield c


def address(client: Client) -> str:
    return f"{client.server.host}:{client.server.port}"


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


async def call(
    client: Client,
    method: str,
    path: str,
    body: object = None,
    *,
    raw: bytes | io.BytesIO | None = None,
    headers: dict[str, str] | None = None,
    follow: bool = False,
) -> Answer:
    """One request; every answer must be JSON, whatever its status."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    async with client.request(
        method, path, data=data, headers=headers, allow_redirects=follow
    ) as response:
        content = await response.read()
        assert response.content_type == "application/json", (response.status, content[:300])
        return Answer(response.status, json.loads(content), response.headers)


def assert_error(answer: Answer, status: int, code: str, *, mentions: str = "") -> dict[str, str]:
    assert answer.status == status, answer.body
    assert list(answer.body) == ["error"]
    error: dict[str, str] = answer.body["error"]
    assert sorted(error) == ["code", "message", "path"]
    assert error["code"] == code, error
    assert mentions in error["message"], error
    assert "Traceback" not in error["message"]
    return error


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ------------------------------------------------------------ namespace reads


def test_reads_return_stat_listing_and_totals_after_a_read_barrier() -> None:
    async def test() -> None:
        service = FakeService()
        async with serve(service) as client:
            assert (await call(client, "POST", "/v1/fs/mkdir", {"path": "/a"})).status == 200
            assert (await call(client, "POST", "/v1/fs/create", {"path": "/a/f"})).status == 200

            stat = await call(client, "GET", "/v1/fs/stat?path=/a/f")
            assert stat.status == 200
            decoded = msgspec.convert(stat.body, Stat)
            assert decoded == service.namespace.stat("/a/f").value

            listing = await call(client, "GET", "/v1/fs/list?path=/a")
            assert listing.status == 200
            assert list(listing.body) == ["entries"]
            entries = msgspec.convert(listing.body["entries"], list[DirEntry])
            assert [e.name for e in entries] == ["f"]

            root = await call(client, "GET", "/v1/fs/list?path=/")
            assert [e["name"] for e in root.body["entries"]] == ["a"]

            totals = await call(client, "GET", "/v1/fs/totals")
            assert msgspec.convert(totals.body, Totals) == Totals(1, 2, 0)
            assert service.barriers == 4

    run(test)


@pytest.mark.parametrize(
    ("query", "status", "code", "mentions"),
    [
        ("/v1/fs/stat?path=/missing", 404, "ENOENT", "/missing does not exist"),
        ("/v1/fs/stat", 400, "EINVAL", "missing query parameter `path`"),
        ("/v1/fs/stat?path=/a&path=/b", 400, "EINVAL", "more than once"),
        ("/v1/fs/stat?path=/&verbose=1", 400, "EINVAL", "unknown query parameter `verbose`"),
        ("/v1/fs/stat?path=a", 400, "EINVAL", "not absolute"),
        ("/v1/fs/stat?path=/a//b", 400, "EINVAL", "empty component"),
        ("/v1/fs/list?path=/a/", 400, "EINVAL", "trailing slash"),
        ("/v1/fs/list?path=/" + "n" * 256, 400, "ENAMETOOLONG", "255"),
        ("/v1/fs/list?path=/file", 409, "ENOTDIR", "it is a file"),
        ("/v1/fs/list?path=/missing/x", 404, "ENOENT", "/missing does not exist"),
        ("/v1/fs/totals?path=/", 400, "EINVAL", "unknown query parameter `path`"),
    ],
)
def test_read_errors(query: str, status: int, code: str, mentions: str) -> None:
    async def test() -> None:
        service = FakeService()
        service.namespace.apply(Create(path="/file", mtime=1, owner="root"))
        async with serve(service) as client:
            error = assert_error(await call(client, "GET", query), status, code, mentions=mentions)
            if code in ("ENOENT", "ENOTDIR"):
                assert error["path"] == query.split("=", 1)[1]

    run(test)


# ----------------------------------------------------------- namespace writes


def test_mkdir_stamps_the_master_clock_and_defaults_owner_and_mode() -> None:
    async def test() -> None:
        service = FakeService()
        async with serve(service) as client:
            before = time.time_ns()
            answer = await call(client, "POST", "/v1/fs/mkdir", {"path": "/a"})
            after = time.time_ns()
            assert answer.status == 200
            stat = msgspec.convert(answer.body, Stat)
            assert (stat.kind, stat.mode, stat.owner) == ("directory", 0o755, "root")
            assert before <= stat.mtime <= after

            deep = {"path": "/a/b/c", "parents": True, "mode": 0o700, "owner": "alice"}
            answer = await call(client, "POST", "/v1/fs/mkdir", deep)
            assert answer.status == 200
            assert (answer.body["mode"], answer.body["owner"]) == (0o700, "alice")
            command = service.executed[-1]
            assert isinstance(command, Mkdir) and command.parents

            again = await call(client, "POST", "/v1/fs/mkdir", {"path": "/a"})
            assert_error(again, 409, "EEXIST", mentions="/a")
            missing = await call(client, "POST", "/v1/fs/mkdir", {"path": "/x/y"})
            assert_error(missing, 404, "ENOENT", mentions="/x does not exist")

    run(test)


def test_create_exclusive_and_replication() -> None:
    async def test() -> None:
        service = FakeService()
        async with serve(service) as client:
            body = {"path": "/f", "exclusive": True, "replication": 3, "owner": "bob"}
            answer = await call(client, "POST", "/v1/fs/create", body)
            assert answer.status == 200
            assert answer.body["kind"] == "file"
            assert (answer.body["mode"], answer.body["replication"]) == (0o644, 3)
            assert answer.body["owner"] == "bob"

            assert_error(await call(client, "POST", "/v1/fs/create", body), 409, "EEXIST")
            retried = await call(client, "POST", "/v1/fs/create", {"path": "/f"})
            assert retried.status == 200
            assert retried.body["inode"] == answer.body["inode"]

    run(test)


def test_delete_and_rename() -> None:
    async def test() -> None:
        service = FakeService()
        async with serve(service) as client:
            await call(client, "POST", "/v1/fs/mkdir", {"path": "/d/e", "parents": True})
            await call(client, "POST", "/v1/fs/create", {"path": "/d/e/f"})
            await call(client, "POST", "/v1/fs/create", {"path": "/g"})

            refused = await call(client, "POST", "/v1/fs/delete", {"path": "/d"})
            assert_error(refused, 409, "ENOTEMPTY", mentions="recursive")

            moved = await call(client, "POST", "/v1/fs/rename", {"src": "/g", "dst": "/h"})
            assert (moved.status, moved.body) == (200, {"replaced": False})
            await call(client, "POST", "/v1/fs/create", {"path": "/g"})
            over = await call(client, "POST", "/v1/fs/rename", {"src": "/g", "dst": "/h"})
            assert (over.status, over.body) == (200, {"replaced": True})
            gone = await call(client, "POST", "/v1/fs/rename", {"src": "/g", "dst": "/i"})
            assert_error(gone, 404, "ENOENT")

            deleted = await call(client, "POST", "/v1/fs/delete", {"path": "/d", "recursive": True})
            assert (deleted.status, deleted.body) == (200, {"files": 1, "directories": 2})
            assert_error(await call(client, "POST", "/v1/fs/delete", {"path": "/d"}), 404, "ENOENT")

    run(test)


def test_setattr_changes_only_what_is_given() -> None:
    async def test() -> None:
        service = FakeService()
        async with serve(service) as client:
            await call(client, "POST", "/v1/fs/create", {"path": "/f", "owner": "bob"})
            answer = await call(client, "POST", "/v1/fs/setattr", {"path": "/f", "mode": 0o600})
            assert (answer.body["mode"], answer.body["owner"]) == (0o600, "bob")
            answer = await call(client, "POST", "/v1/fs/setattr", {"path": "/f", "mtime": 42})
            assert (answer.body["mtime"], answer.body["mode"]) == (42, 0o600)
            assert service.executed[-1] == SetAttr(path="/f", mtime=42)

            nothing = await call(client, "POST", "/v1/fs/setattr", {"path": "/f"})
            assert_error(nothing, 400, "EINVAL", mentions="at least one of")
            missing = await call(client, "POST", "/v1/fs/setattr", {"path": "/g", "mode": 1})
            assert_error(missing, 404, "ENOENT")

    run(test)


@pytest.mark.parametrize(
    ("route", "raw", "mentions"),
    [
        ("mkdir", b"{", "not valid JSON"),
        ("mkdir", b"", "not valid JSON"),
        ("mkdir", b"[1]", "Expected `object`, got `array`"),
        ("mkdir", b"{}", "missing required field `path`"),
        ("mkdir", b'{"path": 1}', "`$.path`"),
        ("mkdir", b'{"path": "/a", "colour": "red"}', "unknown field `colour`"),
        ("mkdir", b'{"path": "/a", "mode": -1}', "`$.mode`"),
        ("mkdir", b'{"path": "/a", "mode": 4096}', "`$.mode`"),
        ("mkdir", b'{"path": "/a", "parents": "yes"}', "`$.parents`"),
        ("mkdir", b'{"path": "/a", "owner": ""}', "`$.owner`"),
        ("mkdir", b'{"path": "a"}', "`$.path`"),
        ("create", b'{"path": "/a", "replication": 0}', "`$.replication`"),
        ("create", b'{"path": "/a", "exclusive": 1}', "`$.exclusive`"),
        ("create", b'{"path": "/a/../b"}', "`$.path`"),
        ("delete", b'{"path": "/"}', ""),
        ("delete", b'{"path": "/a", "recursive": null}', "`$.recursive`"),
        ("rename", b'{"src": "/a"}', "missing required field `dst`"),
        ("rename", b'{"src": "/a", "dst": "b"}', "`$.dst`"),
        ("setattr", b'{"path": "/a", "mode": -8}', "`$.mode`"),
        ("setattr", b'{"path": "/a", "mtime": 9223372036854775808}', "`$.mtime`"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(route: str, raw: bytes, mentions: str) -> None:
    async def test() -> None:
        service = FakeService()
        before = service.namespace.snapshot()
        async with serve(service) as client:
            answer = await call(client, "POST", f"/v1/fs/{route}", raw=raw)
            assert_error(answer, 400, "EINVAL", mentions=mentions)
        if route != "delete":  # deleting the root is refused by the namespace itself
            assert service.executed == []
        assert service.namespace.snapshot() == before

    run(test)


def test_unknown_route_and_wrong_method_answer_json() -> None:
    async def test() -> None:
        async with serve(FakeService()) as client:
            assert_error(await call(client, "GET", "/v1/fs/nope"), 404, "ENOSYS", mentions="nope")
            wrong = await call(client, "GET", "/v1/fs/mkdir")
            assert_error(wrong, 405, "ENOSYS", mentions="POST")
            assert wrong.headers["Allow"] == "POST"
            too_big = await call(
                client, "POST", "/v1/fs/mkdir", raw=io.BytesIO(b" " * (2 * 1024 * 1024))
            )
            assert_error(too_big, 413, "E2BIG")

    run(test)


def test_unexpected_exception_is_a_generic_500_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        service = FakeService()
        service.crash = RuntimeError("disk on fire at /secret/place")
        async with serve(service) as client:
            for answer in (
                await call(client, "POST", "/v1/fs/mkdir", {"path": "/a"}),
                await call(client, "GET", "/v1/fs/stat?path=/"),
            ):
                error = assert_error(answer, 500, "EIO", mentions="log")
                assert "fire" not in error["message"]

    with caplog.at_level(logging.ERROR, logger="quorumfs.master.http_api"):
        run(test)
    assert "disk on fire" in caplog.text


# -------------------------------------------------------- unavailable, timeout


def test_no_leader_is_a_503_with_retry_after() -> None:
    async def test() -> None:
        service = FakeService(leader=False)  # and no leader known
        async with serve(service) as client:
            answer = await call(client, "POST", "/v1/fs/mkdir", {"path": "/a"})
            assert_error(answer, 503, "EAGAIN", mentions="no leader")
            assert answer.headers["Retry-After"] == "1"

            service.leader = True
            service.unavailable = ServiceUnavailableError("lost the quorum", retry_after=2.2)
            for answer in (
                await call(client, "POST", "/v1/fs/mkdir", {"path": "/a"}),
                await call(client, "GET", "/v1/fs/stat?path=/"),
            ):
                assert_error(answer, 503, "EAGAIN", mentions="lost the quorum")
                assert answer.headers["Retry-After"] == "3"
                assert answer.headers["X-Quorumfs-Retry-After-Ms"] == "2200"

            service.unavailable = ServiceUnavailableError("electing", retry_after=0.0)
            answer = await call(client, "GET", "/v1/fs/totals")
            assert answer.headers["Retry-After"] == "1"
            assert answer.headers["X-Quorumfs-Retry-After-Ms"] == "1"

    run(test)


def test_a_write_whose_outcome_is_unknown_is_a_503_etimedout() -> None:
    async def test() -> None:
        service = FakeService()
        service.unavailable = OutcomeUnknownError("leadership was lost before the reply")
        async with serve(service) as client:
            answer = await call(client, "POST", "/v1/fs/mkdir", {"path": "/a"})
            error = assert_error(answer, 503, "ETIMEDOUT", mentions="leadership was lost")
            assert "may or may not" in error["message"]

    run(test)


def test_every_request_is_bounded_by_the_request_timeout() -> None:
    async def test() -> None:
        service = FakeService()
        service.hang = True
        async with serve(service, request_timeout=0.05) as client:
            write = await call(client, "POST", "/v1/fs/mkdir", {"path": "/a"})
            assert_error(write, 503, "ETIMEDOUT", mentions="may or may not have been applied")
            assert write.headers["Retry-After"] == "1"
            read = await call(client, "GET", "/v1/fs/list?path=/")
            assert_error(read, 503, "ETIMEDOUT", mentions="0.05 s")
            admin = await call(client, "DELETE", "/cluster/members/2", headers=ADMIN)
            assert_error(admin, 503, "ETIMEDOUT")
            # Local answers do not wait on Raft.
            assert (await call(client, "GET", "/cluster/status")).status == 200
            assert (await call(client, "GET", "/healthz")).status == 200

    run(test)


def test_build_app_refuses_a_non_positive_timeout() -> None:
    with pytest.raises(ValueError, match="positive"):
        build_app(FakeService(), request_timeout=0)


# ------------------------------------------------------ forwarding, redirects


def test_a_follower_forwards_writes_to_the_leader_and_relays_the_answer() -> None:
    async def test() -> None:
        leader, follower = FakeService(1), FakeService(2, leader=False)
        async with serve(leader) as to_leader, serve(follower) as to_follower:
            follower.leader_address = address(to_leader)

            answer = await call(to_follower, "POST", "/v1/fs/mkdir", {"path": "/a"})
            assert answer.status == 200
            assert answer.headers[SERVED_BY_HEADER] == address(to_leader)
            assert [c.path for c in leader.executed if isinstance(c, Mkdir)] == ["/a"]
            assert follower.executed == []

            # Errors come back as the leader gave them.
            again = await call(to_follower, "POST", "/v1/fs/mkdir", {"path": "/a"})
            assert_error(again, 409, "EEXIST")
            assert again.headers[SERVED_BY_HEADER] == address(to_leader)

            # Admin requests travel with their token.
            add = {"http": "10.0.0.4:9333", "raft": "10.0.0.4:19333"}
            added = await call(to_follower, "POST", "/cluster/members", add, headers=ADMIN)
            assert (added.status, added.body["id"]) == (201, 4)
            removed = await call(to_follower, "DELETE", "/cluster/members/4", headers=ADMIN)
            assert (removed.status, removed.body) == (200, {"removed": 4})
            assert leader.removed == [4]

            # Reads are served locally, never forwarded.
            listing = await call(to_follower, "GET", "/v1/fs/list?path=/")
            assert listing.body == {"entries": []}
            assert SERVED_BY_HEADER not in listing.headers

    run(test)


def test_a_master_that_finds_out_it_is_not_the_leader_forwards() -> None:
    async def test() -> None:
        leader, stale = FakeService(1), FakeService(2)
        stale.stale_leadership = True
        async with serve(leader) as to_leader, serve(stale) as to_stale:
            stale.leader_address = address(to_leader)
            answer = await call(to_stale, "POST", "/v1/fs/create", {"path": "/f"})
            assert answer.status == 200
            assert answer.headers[SERVED_BY_HEADER] == address(to_leader)
            assert len(leader.executed) == 1

    run(test)


def test_redirect_mode_answers_307_to_the_leader() -> None:
    async def test() -> None:
        leader, follower = FakeService(1), FakeService(2, leader=False)
        async with serve(leader) as to_leader, serve(follower) as to_follower:
            follower.leader_address = address(to_leader)
            body = {"path": "/a"}

            by_header = await call(
                to_follower, "POST", "/v1/fs/mkdir", body, headers={REDIRECT_HEADER: "1"}
            )
            location = f"http://{address(to_leader)}/v1/fs/mkdir"
            assert by_header.status == 307
            assert by_header.headers["Location"] == location
            assert by_header.body == {"leader_http": address(to_leader), "location": location}

            by_query = await call(to_follower, "POST", "/v1/fs/mkdir?redirect=1", body)
            assert by_query.status == 307
            assert by_query.headers["Location"] == location + "?redirect=1"
            assert leader.executed == []

            followed = await call(to_follower, "POST", "/v1/fs/mkdir?redirect=1", body, follow=True)
            assert followed.status == 200
            assert [c.path for c in leader.executed if isinstance(c, Mkdir)] == ["/a"]

    run(test)


def test_a_request_is_never_forwarded_twice() -> None:
    async def test() -> None:
        # Two confused followers, each believing the other leads.
        a, b = FakeService(1, leader=False), FakeService(2, leader=False)
        async with serve(a) as to_a, serve(b) as to_b:
            a.leader_address, b.leader_address = address(to_b), address(to_a)
            answer = await call(to_a, "POST", "/v1/fs/mkdir", {"path": "/a"})
            assert_error(answer, 503, "ELOOP", mentions="not the leader")
            assert answer.headers["Retry-After"] == "1"
            assert answer.headers[SERVED_BY_HEADER] == address(to_b)

            direct = await call(
                to_a, "POST", "/v1/fs/mkdir", {"path": "/a"}, headers={FORWARDED_HEADER: "7"}
            )
            assert_error(direct, 503, "ELOOP")
            assert a.executed == b.executed == []

    run(test)


def test_an_unreachable_leader_is_a_503() -> None:
    async def test() -> None:
        follower = FakeService(2, leader=False)
        follower.leader_address = f"127.0.0.1:{closed_port()}"
        async with serve(follower) as client:
            answer = await call(client, "POST", "/v1/fs/mkdir", {"path": "/a"})
            # No connection to the leader: nothing was sent, so nothing was done.
            error = assert_error(answer, 503, "EAGAIN", mentions=follower.leader_address)
            assert "nothing was done" in error["message"]
            assert answer.headers["Retry-After"] == "1"

    run(test)


# ------------------------------------------------------------------- cluster


def test_cluster_status_and_members_answer_from_local_state_without_quorum() -> None:
    async def test() -> None:
        service = FakeService(2, leader=False)
        service.hang = True  # nothing Raft-bound would ever answer
        async with serve(service, request_timeout=0.05) as client:
            status = await call(client, "GET", "/cluster/status")
            assert status.status == 200
            assert msgspec.convert(status.body, ClusterStatus) == service.cluster_status()
            assert status.body["role"] == "FOLLOWER"
            assert status.body["leader_http"] is None

            members = await call(client, "GET", "/cluster/members")
            assert list(members.body) == ["members"]
            decoded = msgspec.convert(members.body["members"], list[MemberInfo])
            assert decoded == service.members

            health = await call(client, "GET", "/healthz")
            assert (health.status, health.body) == (200, {"ok": True})

    run(test)


ADMIN_CALLS = [
    ("POST", "/cluster/members", {"http": "h:1", "raft": "h:2"}),
    ("DELETE", "/cluster/members/2", None),
    ("POST", "/cluster/transfer-leader", {"to": 2}),
    ("POST", "/cluster/step-down", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
@pytest.mark.parametrize(
    ("authorization", "mentions"),
    [
        (None, "needs the cluster admin token"),
        ("Bearer wrong", "not valid"),
        (f"Basic {TOKEN}", "not `Bearer <token>`"),
        ("Bearer ", "not `Bearer <token>`"),
    ],
)
def test_admin_operations_need_the_token(
    method: str, path: str, body: object, authorization: str | None, mentions: str
) -> None:
    async def test() -> None:
        service = FakeService()
        headers = {} if authorization is None else {"Authorization": authorization}
        async with serve(service) as client:
            answer = await call(client, method, path, body, headers=headers)
            assert_error(answer, 401, "EACCES", mentions=mentions)
            assert "--token" in answer.body["error"]["message"]
            assert "admin.token" in answer.body["error"]["message"]
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert service.members == three_members()
        assert service.transfers == []

    run(test)


def test_add_member() -> None:
    async def test() -> None:
        service = FakeService()
        async with serve(service) as client:
            body = {"http": "10.0.0.4:9333", "raft": "10.0.0.4:19333", "voter": False}
            answer = await call(client, "POST", "/cluster/members", body, headers=ADMIN)
            assert answer.status == 201
            member = msgspec.convert(answer.body, MemberInfo)
            assert (member.id, member.http, member.role) == (4, "10.0.0.4:9333", MemberRole.LEARNER)

            v6 = {"http": "[::1]:9333", "raft": "[::1]:19333"}
            assert (await call(client, "POST", "/cluster/members", v6, headers=ADMIN)).status == 201

            taken = {"http": "10.0.0.9:9333", "raft": "10.0.0.2:19333"}
            duplicate = await call(client, "POST", "/cluster/members", taken, headers=ADMIN)
            assert_error(duplicate, 409, "EEXIST", mentions="conflicts with member 2")

    run(test)


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({"http": "host", "raft": "h:1"}, "`$.http`"),
        ({"http": "h:0", "raft": "h:1"}, "1..65535"),
        ({"http": "h:1", "raft": "h:65536"}, "`$.raft`"),
        ({"http": ":80", "raft": "h:1"}, "not host:port"),
        ({"http": "::1:80", "raft": "h:1"}, "brackets"),
        ({"http": "h:8x", "raft": "h:1"}, "no port"),
        ({"http": "h h:80", "raft": "h:1"}, "space"),
        ({"http": "h:1"}, "missing required field `raft`"),
        ({"http": "h:1", "raft": "h:2", "voter": "no"}, "`$.voter`"),
    ],
)
def test_add_member_refuses_bad_addresses(body: dict[str, object], mentions: str) -> None:
    async def test() -> None:
        service = FakeService()
        async with serve(service) as client:
            answer = await call(client, "POST", "/cluster/members", body, headers=ADMIN)
            assert_error(answer, 400, "EINVAL", mentions=mentions)
        assert service.members == three_members()

    run(test)


def test_remove_member() -> None:
    async def test() -> None:
        service = FakeService()
        async with serve(service) as client:
            answer = await call(client, "DELETE", "/cluster/members/3", headers=ADMIN)
            assert (answer.status, answer.body) == (200, {"removed": 3})
            assert [m.id for m in service.members] == [1, 2]
            again = await call(client, "DELETE", "/cluster/members/3", headers=ADMIN)
            assert_error(again, 404, "ENOENT", mentions="no master with id 3")
            bad = await call(client, "DELETE", "/cluster/members/three", headers=ADMIN)
            assert_error(bad, 400, "EINVAL", mentions="'three'")
            assert service.removed == [3]

    run(test)


def test_transfer_leader() -> None:
    async def test() -> None:
        service = FakeService()
        service.members.append(
            MemberInfo(id=4, http="h:4", raft="h:5", role=MemberRole.LEARNER, voter=False)
        )
        async with serve(service) as client:
            moved = await call(client, "POST", "/cluster/transfer-leader", {"to": 3}, headers=ADMIN)
            assert (moved.status, moved.body) == (
                200,
                {"leader_id": 3, "leader_http": "10.0.0.3:9333"},
            )
            itself = await call(
                client, "POST", "/cluster/transfer-leader", {"to": 1}, headers=ADMIN
            )
            assert (itself.status, itself.body) == (
                200,
                {"leader_id": 1, "leader_http": "10.0.0.1:9333"},
            )
            assert service.transfers == [3]

            unknown = await call(
                client, "POST", "/cluster/transfer-leader", {"to": 9}, headers=ADMIN
            )
            assert_error(unknown, 404, "ENOENT")
            learner = await call(
                client, "POST", "/cluster/transfer-leader", {"to": 4}, headers=ADMIN
            )
            assert_error(learner, 400, "EINVAL", mentions="learner")
            zero = await call(client, "POST", "/cluster/transfer-leader", {"to": 0}, headers=ADMIN)
            assert_error(zero, 400, "EINVAL", mentions="`$.to`")

            service.unavailable = ServiceUnavailableError("member 3 did not catch up", 2)
            slow = await call(client, "POST", "/cluster/transfer-leader", {"to": 3}, headers=ADMIN)
            assert_error(slow, 503, "EAGAIN", mentions="did not catch up")
            assert slow.headers["Retry-After"] == "2"

    run(test)


def test_step_down() -> None:
    async def test() -> None:
        service = FakeService()
        async with serve(service) as client:
            moved = await call(client, "POST", "/cluster/step-down", headers=ADMIN)
            assert (moved.status, moved.body) == (
                200,
                {"leader_id": 2, "leader_http": "10.0.0.2:9333"},
            )
            assert service.transfers == [2]

            service.step_down_to = None
            alone = await call(client, "POST", "/cluster/step-down", headers=ADMIN)
            assert_error(alone, 400, "EINVAL", mentions="only member that can lead")

            service.step_down_to = 3
            service.unavailable = ServiceUnavailableError(
                "node 1 still leads: the transfer to node 3 was given up", 1
            )
            failed = await call(client, "POST", "/cluster/step-down", headers=ADMIN)
            assert_error(failed, 503, "EAGAIN", mentions="the transfer to node 3 was given up")
            assert failed.headers["Retry-After"] == "1"
        assert service.transfers == [2]

    run(test)


def test_a_follower_forwards_a_step_down_to_the_leader() -> None:
    async def test() -> None:
        leader = FakeService()
        async with serve(leader) as leader_client:
            follower = FakeService(2, leader=False)
            follower.leader_address = address(leader_client)
            async with serve(follower) as client:
                forwarded = await call(client, "POST", "/cluster/step-down", headers=ADMIN)
                assert (forwarded.status, forwarded.body["leader_id"]) == (200, 2)
                assert forwarded.headers[SERVED_BY_HEADER] == address(leader_client)
                redirected = await call(
                    client,
                    "POST",
                    "/cluster/step-down",
                    headers={**ADMIN, REDIRECT_HEADER: "1"},
                )
                assert redirected.status == 307
                assert redirected.headers["Location"].endswith("/cluster/step-down")
        assert leader.transfers == [2]
        assert follower.transfers == []

    run(test)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (RejectedError("would leave one voter"), 400, "EINVAL"),
        (RejectedError("gone", status=404), 404, "ENOENT"),
        (RejectedError("busy changing", status=409), 409, "EEXIST"),
        (RejectedError("odd status", status=418), 400, "EINVAL"),
    ],
)
def test_membership_refusals_from_the_service(error: Exception, status: int, code: str) -> None:
    async def test() -> None:
        service = FakeService()
        service.membership_error = error
        async with serve(service) as client:
            answer = await call(client, "DELETE", "/cluster/members/2", headers=ADMIN)
            assert_error(answer, status, code, mentions=str(error))

    run(test)


# ------------------------------------------------------------------- OpenAPI


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_openapi_document_matches_the_routes() -> None:
    document = json.loads(load_openapi_document())
    assert document["openapi"].startswith("3.1")

    service = FakeService()
    data = DataService(service, secret=b"x" * 20, leader_term=lambda: 1, masters=list)
    app = build_app(service, more_routes=add_data_routes(data))  # starts nothing
    registered = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    methods = ("get", "post", "put", "patch", "delete")
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in methods
    }
    assert registered == documented

    for ref in _refs(document):
        _resolve(document, ref)
    operation_ids = [
        op["operationId"]
        for item in document["paths"].values()
        for method, op in item.items()
        if method in methods
    ]
    assert len(operation_ids) == len(set(operation_ids))
    for item in document["paths"].values():
        for method, op in item.items():
            if method in methods:
                assert op["responses"], op["operationId"]


def _shown(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema as msgspec generates it: without the document's prose."""
    return {k: v for k, v in schema.items() if k not in ("description", "examples")}


def test_openapi_schemas_match_the_wire_structs() -> None:
    """Every field a Struct sends or accepts is documented, and nothing else; for
    requests, ``required`` lists exactly the fields without a default. An array-like
    Struct (``Chunk``) travels as a JSON array: one ``prefixItems`` entry per field."""
    schemas = json.loads(load_openapi_document())["components"]["schemas"]
    requests: list[type[msgspec.Struct]] = [
        http_api.MkdirRequest,
        http_api.CreateRequest,
        http_api.DeleteRequest,
        http_api.RenameRequest,
        http_api.SetAttrRequest,
        http_api.AddMemberRequest,
        http_api.TransferLeaderRequest,
        http_api.FaultsRequest,
        wire.AllocateRequest,
        wire.CommitRequest,
        wire.BadChunkReport,
        wire.Heartbeat,
    ]
    responses: list[type[msgspec.Struct]] = [
        Stat,
        DirEntry,
        Totals,
        ClusterStatus,
        MemberInfo,
        http_api.ListResponse,
        http_api.DeleteResponse,
        http_api.RenameResponse,
        http_api.MembersResponse,
        http_api.RemoveMemberResponse,
        http_api.TransferLeaderResponse,
        http_api.RedirectResponse,
        http_api.HealthResponse,
        http_api.FaultsResponse,
        http_api.ErrorResponse,
        http_api.ErrorBody,
        wire.AllocateResponse,
        wire.ChunkGrant,
        wire.WriteTarget,
        wire.CommitResponse,
        wire.FileContent,
        wire.ChunkLocation,
        wire.HeartbeatResponse,
        wire.ReplicateTask,
        wire.VolumesResponse,
        wire.VolumeInfo,
        wire.Accepted,
    ]
    array_like: list[type[msgspec.Struct]] = [Chunk]
    _, generated = msgspec.json.schema_components(
        requests + responses + array_like, ref_template="#/components/schemas/{name}"
    )
    for struct in array_like:
        assert struct.__struct_config__.array_like, struct
        schema, expected = schemas[struct.__name__], generated[struct.__name__]
        fields = msgspec.structs.fields(struct)
        assert schema["type"] == "array"
        assert [_shown(item) for item in schema["prefixItems"]] == expected["prefixItems"]
        assert len(schema["prefixItems"]) == len(fields), struct
        assert schema["minItems"] == expected["minItems"] == sum(f.required for f in fields)
        for field, item in zip(fields, schema["prefixItems"], strict=True):
            assert item["description"].startswith(f"{field.encode_name}:"), (struct, field)
    for struct in requests + responses:
        assert not struct.__struct_config__.array_like, struct
        schema = schemas[struct.__name__]
        fields = msgspec.structs.fields(struct)
        assert list(schema["properties"]) == [f.encode_name for f in fields], struct
        for name, prop in schema["properties"].items():
            assert _shown(prop) == generated[struct.__name__]["properties"][name], (struct, name)
        if struct in requests:
            assert schema["additionalProperties"] is False
            required = [f.encode_name for f in fields if f.required]
        else:
            required = [f.encode_name for f in fields]  # responses carry every field
        assert schema["required"] == required, struct


def test_openapi_document_is_served() -> None:
    async def test() -> None:
        async with serve(FakeService()) as client:
            answer = await call(client, "GET", "/openapi.json")
            assert answer.status == 200
            assert answer.body == json.loads(load_openapi_document())

    run(test)
