"""How a new master joins a running group (``server._join``), against fake masters:
aiohttp servers on loopback ports, in each test's own event loop, that answer
``POST /cluster/members`` from a script and ``GET /cluster/members`` from their
member list. ``JOIN_PATIENCE`` and ``JOIN_PAUSE`` are shrunk so every test is quick.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from quorumfs.master import server
from quorumfs.master.http_api import RETRY_AFTER_MS_HEADER
from quorumfs.master.http_api import SERVED_BY_HEADER as SERVED_BY
from quorumfs.master.server import MasterOptions, MasterStartupError

TOKEN = "join-test-admin-token"
ME_HTTP = "127.0.0.1:19444"
ME_RAFT = "127.0.0.1:29444"

Step = Callable[["FakeMaster", web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]
"""One scripted answer to ``POST /cluster/members``: (master, request, body) -> answer."""


class FakeMaster:
    """A master of a running group of one: answers POSTs from ``script`` (its last step
    repeats) and GETs from its members, the first ``lagging_gets`` of them from the
    view before the latest add (a master that applies a moment after the leader)."""

    def __init__(self, script: list[Step], *, lagging_gets: int = 0) -> None:
        self.script = script
        self.lagging_gets = lagging_gets
        self.members: list[dict[str, Any]] = [
            {"id": 1, "http": "127.0.0.1:9333", "raft": "127.0.0.1:19333", "role": "LEADER"}
        ]
        self.stale_view = list(self.members)
        self.posts: list[dict[str, Any]] = []
        self.tokens: list[str | None] = []
        self.gets = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/cluster/members", self.post)
        app.router.add_get("/cluster/members", self.get)
        return app

    async def post(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.posts.append(body)
        self.tokens.append(request.headers.get("Authorization"))
        step = self.script[min(len(self.posts), len(self.script)) - 1]
        return await step(self, request, body)

    async def get(self, _request: web.Request) -> web.Response:
        self.gets += 1
        if self.lagging_gets > 0:
            self.lagging_gets -= 1
            return web.json_response({"members": self.stale_view})
        return web.json_response({"members": self.members})

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        self.stale_view = list(self.members)
        member = {
            "id": max(m["id"] for m in self.members) + 1,
            "http": body["http"],
            "raft": body["raft"],
            "role": "LEARNER",
        }
        self.members.append(member)
        return member


def error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An error answer shaped as the real API's."""
    body = {"error": {"code": code, "message": message, "path": ""}}
    return web.json_response(body, status=status, headers=headers)


def unavailable(hint_ms: int) -> Step:
    async def step(_m: FakeMaster, _r: web.Request, _b: dict[str, Any]) -> web.StreamResponse:
        headers = {"Retry-After": "1", RETRY_AFTER_MS_HEADER: str(hint_ms)}
        return error(503, "EAGAIN", "no leader is known right now; retry shortly", headers)

    return step


async def added(master: FakeMaster, _r: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return web.json_response(master.apply(body), status=201)


async def conflict(master: FakeMaster, _r: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    taken = next(m for m in master.members if m["http"] == body["http"])
    return error(
        409,
        "EEXIST",
        f"{body['http']} (raft {body['raft']}) conflicts with member {taken['id']} "
        f"({taken['http']}, raft {taken['raft']}); remove it first",
    )


async def unauthorized(_m: FakeMaster, _r: web.Request, _b: dict[str, Any]) -> web.StreamResponse:
    return error(401, "EACCES", "the admin token is not valid")


async def apply_then_hang_up(
    master: FakeMaster, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    """Applies the add, then drops the connection before answering: a lost answer."""
    master.apply(body)
    assert request.transport is not None
    request.transport.close()
    return web.Response(status=201)  # never reaches the client


async def apply_then_outcome_unknown(
    master: FakeMaster, _r: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    """What a real master answers when a write timed out after it was proposed (or a
    follower lost the leader's answer): 503 ETIMEDOUT, "may or may not have been applied"."""
    master.apply(body)
    return error(
        503,
        "ETIMEDOUT",
        "no answer within 5 s; the operation may or may not have been applied: check, then retry",
        {"Retry-After": "1", RETRY_AFTER_MS_HEADER: "10"},
    )


@asynccontextmanager
async def serving(*masters: FakeMaster) -> AsyncIterator[list[str]]:
    """Serves each fake master on 127.0.0.1 (port 0); yields their host:port."""
    async with AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(TestServer(m.app())) for m in masters]
        yield [f"{s.host}:{s.port}" for s in servers]


def options(tmp_path: Path) -> MasterOptions:
    return MasterOptions(
        mdir=tmp_path / "m4",
        port=int(ME_HTTP.rsplit(":", 1)[1]),
        raft_port=int(ME_RAFT.rsplit(":", 1)[1]),
        secret="join-test-cluster-secret-0123456789",
    )


def dead_address() -> str:
    """A loopback address nothing listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=5))


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "JOIN_PATIENCE", 0.5)
    monkeypatch.setattr(server, "JOIN_PAUSE", 0.05)


def test_503s_are_asked_again_honouring_the_hint_until_a_201(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A round pause far longer than the test may take: only the hint makes it quick.
    monkeypatch.setattr(server, "JOIN_PATIENCE", 30.0)
    monkeypatch.setattr(server, "JOIN_PAUSE", 10.0)
    master = FakeMaster([unavailable(20), unavailable(20), added])

    async def test() -> None:
        async with serving(master) as peers:
            started = time.monotonic()
            node_id, members = await server._join(options(tmp_path), peers, TOKEN)
            elapsed = time.monotonic() - started
        assert node_id == 2
        assert [m["id"] for m in members] == [1, 2]
        assert len(master.posts) == 3
        assert master.posts[0] == {"http": ME_HTTP, "raft": ME_RAFT, "voter": True}
        assert master.tokens == [f"Bearer {TOKEN}"] * 3
        assert 0.04 <= elapsed < 1.0, elapsed  # two pauses of the 20 ms hint

    run(test)


def test_a_bad_token_fails_at_once(tmp_path: Path) -> None:
    master = FakeMaster([unauthorized, added])

    async def test() -> None:
        async with serving(master) as peers:
            with pytest.raises(MasterStartupError) as raised:
                await server._join(options(tmp_path), peers, "wrong")
            assert peers[0] in str(raised.value)
        assert "401" in str(raised.value)
        assert "the admin token is not valid" in str(raised.value)
        assert len(master.posts) == 1
        assert len(master.members) == 1

    run(test)


def test_a_409_before_any_request_may_have_been_applied_is_a_stale_member(
    tmp_path: Path,
) -> None:
    """The member holding exactly this master's addresses is another (earlier) master's:
    its id must not be adopted."""
    master = FakeMaster([conflict])
    master.members.append({"id": 3, "http": ME_HTTP, "raft": ME_RAFT, "role": "FOLLOWER"})

    async def test() -> None:
        async with serving(master) as peers:
            with pytest.raises(MasterStartupError) as raised:
                await server._join(options(tmp_path), peers, TOKEN)
        message = str(raised.value)
        assert "409" in message
        assert "conflicts with member 3" in message and "remove it first" in message
        assert len(master.posts) == 1

    run(test)


def test_a_lost_answer_then_a_409_adopts_the_member_with_these_addresses(
    tmp_path: Path,
) -> None:
    master = FakeMaster([apply_then_hang_up, conflict])
    # A member sharing only the HTTP address is not this master.
    master.members.append({"id": 5, "http": ME_HTTP, "raft": "127.0.0.1:1", "role": "FOLLOWER"})

    async def test() -> None:
        async with serving(master) as peers:
            node_id, members = await server._join(options(tmp_path), peers, TOKEN)
        assert node_id == 6
        assert {"id": 6, "http": ME_HTTP, "raft": ME_RAFT, "role": "LEARNER"} in members
        assert len(master.posts) == 2
        assert master.gets == 1

    run(test)


def test_a_lost_answer_then_a_lagging_master_still_joins(tmp_path: Path) -> None:
    master = FakeMaster([apply_then_hang_up, conflict], lagging_gets=1)

    async def test() -> None:
        async with serving(master) as peers:
            node_id, members = await server._join(options(tmp_path), peers, TOKEN)
        assert node_id == 2
        assert [m["id"] for m in members] == [1, 2]
        assert master.gets == 2  # the first GET did not list it yet
        assert len(master.posts) == 3

    run(test)


def test_an_unreachable_master_is_asked_until_patience_runs_out(tmp_path: Path) -> None:
    peer = dead_address()

    async def test() -> None:
        started = time.monotonic()
        with pytest.raises(MasterStartupError) as raised:
            await server._join(options(tmp_path), [peer], TOKEN)
        elapsed = time.monotonic() - started
        assert 0.5 - 0.05 <= elapsed < 1.0, elapsed  # JOIN_PATIENCE, less at most one pause
        message = str(raised.value)
        assert "within 0.5 s" in message
        assert peer in message

    run(test)


def test_an_unreachable_master_is_passed_over_for_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "JOIN_PAUSE", 10.0)  # a second round would time the test out
    master = FakeMaster([added])

    async def test() -> None:
        async with serving(master) as peers:
            started = time.monotonic()
            node_id, members = await server._join(
                options(tmp_path), [dead_address(), *peers], TOKEN
            )
            elapsed = time.monotonic() - started
        assert node_id == 2
        assert [m["id"] for m in members] == [1, 2]
        assert len(master.posts) == 1
        assert elapsed < 1.0  # in the first round, without a pause

    run(test)


def test_a_503_outcome_unknown_then_a_409_adopts_the_member(tmp_path: Path) -> None:
    master = FakeMaster([apply_then_outcome_unknown, conflict])

    async def test() -> None:
        async with serving(master) as peers:
            node_id, _members = await server._join(options(tmp_path), peers, TOKEN)
        assert node_id == 2

    run(test)


def test_the_members_come_from_the_leader_that_added_this_master(tmp_path: Path) -> None:
    """Found by the nemesis: the members were read from the master asked, which relays
    to the leader but may not have applied the latest changes; a new master seeded with
    that stale list refused the leader itself as "not a member"."""
    leader = FakeMaster([added])
    leader.members.append({"id": 7, "http": "127.0.0.1:9337", "raft": "127.0.0.1:19337"})

    async def test() -> None:
        async with serving(leader) as (leader_address,):

            async def relayed(
                _m: FakeMaster, _r: web.Request, body: dict[str, Any]
            ) -> web.StreamResponse:
                answer = leader.apply(body)
                return web.json_response(answer, status=201, headers={SERVED_BY: leader_address})

            follower = FakeMaster([relayed])  # its own (stale) view: member 1 only
            async with serving(follower) as peers:
                node_id, members = await server._join(options(tmp_path), peers, TOKEN)
        assert node_id == 8
        assert {m["id"] for m in members} == {1, 7, 8}
        assert follower.gets == 0 and leader.gets == 1

    run(test)
