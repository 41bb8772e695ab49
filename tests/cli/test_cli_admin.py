"""The admin and read CLI (``fs masterInfo``, ``cluster ...``) and its HTTP helper, against
real master HTTP servers (``build_app`` over a fake service) running in a thread.

Covers the exact ``masterInfo`` format, trying each ``--master`` in turn, following
redirects, and the one-line errors with their exit codes (2: usage, unreachable or
unavailable; 1: refused).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from typer.testing import CliRunner

from quorumfs.cli.http import CliError, MasterClient
from quorumfs.cli.main import app
from quorumfs.master.commands import Command
from quorumfs.master.contract import (
    ClusterStatus,
    MemberInfo,
    MemberRole,
    NotLeaderError,
    RejectedError,
    ServiceUnavailableError,
)
from quorumfs.master.http_api import build_app
from quorumfs.master.namespace import Namespace
from quorumfs.master.results import Result

TOKEN = "tok"
MASTERS = ["10.0.0.1:9333", "10.0.0.2:9333", "10.0.0.3:9333"]


class FakeService:
    """Just enough of a master for the cluster endpoints; ``leader`` toggles its role."""

    def __init__(self, node_id: int = 1, *, leader: bool = True) -> None:
        self.node_id = node_id
        self.leader = leader
        self.leader_address: str | None = MASTERS[0] if leader else None
        self.progress = leader
        """Whether members show match index and last contact (known on the leader)."""
        self.hang = False
        self.members = [
            MemberInfo(
                id=i + 1,
                http=http,
                raft=http.replace("9333", "19333"),
                role=MemberRole.LEADER if i == 0 else MemberRole.FOLLOWER,
                voter=True,
            )
            for i, http in enumerate(MASTERS)
        ]
        self.added: list[tuple[str, str, bool]] = []
        self.transfers: list[int] = []

    @property
    def namespace(self) -> Namespace:
        return Namespace()

    def is_leader(self) -> bool:
        return self.leader

    def leader_http(self) -> str | None:
        return self.leader_address

    async def _on_leader(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if not self.leader:
            raise NotLeaderError(self.leader_address)

    async def execute(self, command: Command) -> Result[Any]:
        await self._on_leader()
        raise ServiceUnavailableError("not used in these tests")

    async def read_barrier(self) -> None:
        return None

    def cluster_status(self) -> ClusterStatus:
        members = [
            MemberInfo(
                id=m.id,
                http=m.http,
                raft=m.raft,
                role=m.role,
                voter=m.voter,
                promote=m.promote,
                match_index=40 + m.id if self.progress else None,
                last_contact_ms=5 * m.id if self.progress else None,
            )
            for m in self.members
        ]
        leader_id = None
        if self.leader_address is not None:
            leader_id = self.node_id if self.leader else 1
        return ClusterStatus(
            id=self.node_id,
            role=MemberRole.LEADER if self.leader else MemberRole.FOLLOWER,
            term=4,
            leader_id=leader_id,
            leader_http=self.leader_address,
            commit_index=44,
            applied_index=44,
            members=members,
            warnings=[f"{len(members)} voters: an even number tolerates no more failures"]
            if len(members) % 2 == 0
            else [],
        )

    async def add_member(self, *, http: str, raft: str, voter: bool) -> MemberInfo:
        await self._on_leader()
        for m in self.members:
            if http in (m.http, m.raft) or raft in (m.http, m.raft):
                raise RejectedError(f"{http} conflicts with member {m.id}", status=409)
        self.added.append((http, raft, voter))
        member = MemberInfo(
            id=len(self.members) + 1,
            http=http,
            raft=raft,
            role=MemberRole.LEARNER,
            voter=False,
            promote=voter,
        )
        self.members.append(member)
        return member

    async def remove_member(self, member_id: int) -> None:
        await self._on_leader()
        if member_id not in [m.id for m in self.members]:
            raise RejectedError(f"no master with id {member_id}", status=404)
        self.members = [m for m in self.members if m.id != member_id]

    async def transfer_leadership(self, member_id: int) -> int:
        await self._on_leader()
        self.transfers.append(member_id)
        return member_id

    async def step_down(self) -> int:
        await self._on_leader()
        voters = [m.id for m in self.members if m.voter and m.id != self.node_id]
        if not voters:
            raise RejectedError(f"master {self.node_id} is the only member that can lead")
        return await self.transfer_leadership(voters[0])

    def admin_token_ok(self, token: str | None) -> bool:
        return token == TOKEN


class ServerThread:
    """A master HTTP server on a loopback port, served by an event loop in a thread."""

    def __init__(self, service: FakeService, request_timeout: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner = web.AppRunner(build_app(service, request_timeout=request_timeout))
        self.thread.start()
        self.address = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> str:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        host, port = self.runner.addresses[0][:2]
        return f"{host}:{port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


Serve = Callable[..., str]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(service, request_timeout=2.0)`` starts a master server and returns its address."""
    servers: list[ServerThread] = []

    def start(service: FakeService, request_timeout: float = 2.0) -> str:
        servers.append(ServerThread(service, request_timeout))
        return servers[-1].address

    yield start
    for server in servers:
        server.stop()


def closed_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def cli(*args: str, env: dict[str, str | None] | None = None) -> Any:
    result = CliRunner().invoke(
        app,
        list(args),
        env={
            "COLUMNS": "200",
            "QUORUMFS_MASTER": None,
            "QUORUMFS_ADMIN_TOKEN": None,
            **(env or {}),
        },
    )
    assert "Traceback" not in result.output
    return result


def assert_one_line_error(result: Any, exit_code: int, *mentions: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in mentions:
        assert text in lines[0], lines[0]


# ------------------------------------------------------------------ fs masterInfo


def test_master_info_prints_the_leader_and_all_masters(serve: Serve) -> None:
    address = serve(FakeService())
    result = cli("fs", "masterInfo", "--master", address)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "current leader master: 10.0.0.1:9333\n"
        "All masters: [10.0.0.1:9333, 10.0.0.2:9333, 10.0.0.3:9333]\n"
    )

    as_json = cli("fs", "masterInfo", "--json", env={"QUORUMFS_MASTER": address})
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout) == {"leader": MASTERS[0], "masters": MASTERS}


def test_master_info_without_a_leader_exits_2(serve: Serve) -> None:
    address = serve(FakeService(2, leader=False))
    result = cli("fs", "masterInfo", "-m", address)
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        "current leader master: (none: no quorum)",
        f"All masters: [{', '.join(MASTERS)}]",
    ]
    as_json = cli("fs", "masterInfo", "-m", address, "--json")
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout) == {"leader": None, "masters": MASTERS}


def test_master_info_tries_each_master_until_one_knows_the_leader(serve: Serve) -> None:
    unaware = serve(FakeService(3, leader=False))  # just restarted: no leader known yet
    aware = FakeService(2, leader=False)
    aware.leader_address = MASTERS[0]
    masters = f"{closed_address()},{unaware},{serve(aware)}"
    result = cli("fs", "masterInfo", "--master", masters)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "current leader master: 10.0.0.1:9333"


def test_no_master_answering_is_one_line_and_exit_2() -> None:
    dead = closed_address()
    result = cli("fs", "masterInfo", "--master", dead)
    assert_one_line_error(
        result, 2, f"no master answered at {dead} (connection refused)", "pass --master"
    )
    two = cli("cluster", "members", "--master", f"{dead}, {dead}")  # repeats are asked once
    assert_one_line_error(two, 2, f"at {dead} (connection refused);")


@pytest.mark.parametrize("masters", ["nonsense", "h:0", "h:99999", "a:1,,b:2", "::1:9333"])
def test_a_bad_master_list_is_a_usage_error(masters: str) -> None:
    result = cli("fs", "masterInfo", "--master", masters)
    assert_one_line_error(result, 2, "--master:", "is not host:port")


# --------------------------------------------------------------- cluster members


def test_members_table_with_warnings(serve: Serve) -> None:
    service = FakeService()
    service.members.append(
        MemberInfo(
            id=4, http="10.0.0.4:9333", raft="10.0.0.4:19333", role=MemberRole.LEARNER, voter=False
        )
    )
    result = cli("cluster", "members", "--master", serve(service))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "ROLE" in line)
    for column in ("ID", "ROLE", "HTTP", "RAFT", "MATCH", "LAST CONTACT"):
        assert column in header
    rows = [line.split("│")[1:-1] for line in lines if "10.0.0." in line]
    cells = [[cell.strip() for cell in row] for row in rows]
    assert cells[0] == ["1", "LEADER", "10.0.0.1:9333", "10.0.0.1:19333", "41", "5 ms ago"]
    assert cells[3] == ["4", "LEARNER", "10.0.0.4:9333", "10.0.0.4:19333", "44", "20 ms ago"]
    assert lines[-1] == "warning: 4 voters: an even number tolerates no more failures"


def test_members_table_shows_a_learner_to_be_promoted(serve: Serve) -> None:
    service = FakeService()
    for member_id, promote in ((4, False), (5, True)):
        service.members.append(
            MemberInfo(
                id=member_id,
                http=f"10.0.0.{member_id}:9333",
                raft=f"10.0.0.{member_id}:19333",
                role=MemberRole.LEARNER,
                voter=False,
                promote=promote,
            )
        )
    result = cli("cluster", "members", "--master", serve(service))
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[1:-1] for line in result.stdout.splitlines() if "10.0.0." in line]
    roles = {row[0].strip(): row[1].strip() for row in rows}
    assert (roles["4"], roles["5"]) == ("LEARNER", "LEARNER (to be voter)")


def test_members_asks_the_leader_for_progress(serve: Serve) -> None:
    leader = serve(FakeService())
    follower = FakeService(2, leader=False)
    follower.leader_address = leader
    result = cli("cluster", "members", "--master", serve(follower), "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["id"] == 1  # the leader's view
    assert [m["match_index"] for m in status["members"]] == [41, 42, 43]

    # When the leader cannot be reached, the follower's own view is shown.
    follower.leader_address = closed_address()
    result = cli("cluster", "members", "--master", serve(follower))
    assert result.exit_code == 0, result.output
    assert "as seen by member 2" in result.stdout
    row = next(line for line in result.stdout.splitlines() if "10.0.0.1:9333" in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]][4:] == ["-", "-"]


# ----------------------------------------------------------------- admin commands


def test_add_member(serve: Serve) -> None:
    service = FakeService()
    address = serve(service)
    args = ["cluster", "add", "--http", "10.0.0.4:9333", "--raft", "10.0.0.4:19333"]
    result = cli(*args, "--master", address, "--token", TOKEN)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "added member 4 (http 10.0.0.4:9333, raft 10.0.0.4:19333) as a learner; "
        "it becomes a voter once it has caught up\n"
    )
    learner = ["cluster", "add", "--http", "h:1", "--raft", "h:2", "--learner", "--json"]
    result = cli(*learner, "--master", address, env={"QUORUMFS_ADMIN_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id"] == 5
    assert service.added == [("10.0.0.4:9333", "10.0.0.4:19333", True), ("h:1", "h:2", False)]


def test_add_member_errors(serve: Serve) -> None:
    service = FakeService()
    address = serve(service)
    bad = cli("cluster", "add", "--http", "h", "--raft", "h:2", "-m", address, "--token", TOKEN)
    assert_one_line_error(bad, 2, "--http: 'h' is not host:port")

    no_token = cli("cluster", "add", "--http", "h:1", "--raft", "h:2", "-m", address)
    assert_one_line_error(no_token, 1, "needs the cluster admin token", "--token", "EACCES")

    taken = ["cluster", "add", "--http", MASTERS[1], "--raft", "h:2", "-m", address]
    assert_one_line_error(cli(*taken, "--token", TOKEN), 1, "conflicts with member 2", "EEXIST")
    assert service.added == []


def test_remove_member(serve: Serve) -> None:
    service = FakeService()
    address = serve(service)
    result = cli("cluster", "remove", "3", "--master", address, "--token", TOKEN)
    assert (result.exit_code, result.stdout) == (0, "removed member 3\n")
    assert [m.id for m in service.members] == [1, 2]

    again = cli("cluster", "remove", "3", "--master", address, "--token", TOKEN)
    assert_one_line_error(again, 1, "no master with id 3", "ENOENT", address)

    wrong = cli("cluster", "remove", "2", "--master", address, "--token", "nope")
    assert_one_line_error(wrong, 1, "not valid")


def test_transfer_leader(serve: Serve) -> None:
    service = FakeService()
    address = serve(service)
    result = cli("cluster", "transfer-leader", "--to", "2", "-m", address, "--token", TOKEN)
    assert (result.exit_code, result.stdout) == (0, "member 2 (10.0.0.2:9333) leads now\n")
    as_json = cli(
        "cluster", "transfer-leader", "--to", "3", "-m", address, "--token", TOKEN, "--json"
    )
    assert json.loads(as_json.stdout) == {"leader_id": 3, "leader_http": "10.0.0.3:9333"}
    assert service.transfers == [2, 3]


@pytest.mark.parametrize(("to", "member"), [("10.0.0.3:9333", 3), ("10.0.0.2:19333", 2), ("3", 3)])
def test_transfer_leader_to_an_address(serve: Serve, to: str, member: int) -> None:
    service = FakeService()
    result = cli("cluster", "transfer-leader", "--to", to, "-m", serve(service), "--token", TOKEN)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"member {member} (10.0.0.{member}:9333) leads now")
    assert service.transfers == [member]


@pytest.mark.parametrize(
    ("to", "exit_code", "mentions"),
    [
        ("10.0.0.9:9333", 1, "no member has the address 10.0.0.9:9333"),
        ("somewhere", 2, "--to: 'somewhere' is not host:port"),
        ("0", 2, "--to: 0 is not a member id"),
    ],
)
def test_transfer_leader_to_nobody(serve: Serve, to: str, exit_code: int, mentions: str) -> None:
    service = FakeService()
    result = cli("cluster", "transfer-leader", "--to", to, "-m", serve(service), "--token", TOKEN)
    assert_one_line_error(result, exit_code, mentions)
    assert service.transfers == []


def test_step_down(serve: Serve) -> None:
    service = FakeService()
    address = serve(service)
    result = cli("cluster", "step-down", "--master", address, "--token", TOKEN)
    assert (result.exit_code, result.stdout) == (0, "member 2 (10.0.0.2:9333) leads now\n")
    as_json = cli(
        "cluster", "step-down", "-m", address, "--json", env={"QUORUMFS_ADMIN_TOKEN": TOKEN}
    )
    assert json.loads(as_json.stdout) == {"leader_id": 2, "leader_http": "10.0.0.2:9333"}
    assert service.transfers == [2, 2]


def test_step_down_errors(serve: Serve) -> None:
    service = FakeService()
    address = serve(service)
    no_token = cli("cluster", "step-down", "-m", address)
    assert_one_line_error(no_token, 1, "needs the cluster admin token", "EACCES")

    service.members = service.members[:1]
    alone = cli("cluster", "step-down", "-m", address, "--token", TOKEN)
    assert_one_line_error(alone, 1, "the only member that can lead", "EINVAL")

    service.leader, service.leader_address = False, None
    leaderless = cli("cluster", "step-down", "-m", address, "--token", TOKEN)
    assert_one_line_error(leaderless, 2, "no leader is known", "EAGAIN")
    assert service.transfers == []


def test_admin_commands_through_a_follower_reach_the_leader(serve: Serve) -> None:
    leader = FakeService()
    follower = FakeService(2, leader=False)
    follower.leader_address = serve(leader)
    masters = f"{closed_address()},{serve(follower)}"
    result = cli("cluster", "transfer-leader", "--to", "3", "-m", masters, "--token", TOKEN)
    assert (result.exit_code, result.stdout) == (0, "member 3 (10.0.0.3:9333) leads now\n")
    result = cli("cluster", "step-down", "-m", masters, "--token", TOKEN)
    assert (result.exit_code, result.stdout) == (0, "member 2 (10.0.0.2:9333) leads now\n")
    assert leader.transfers == [3, 2]


def test_admin_command_without_a_leader_exits_2_and_is_not_sent_elsewhere(
    serve: Serve,
) -> None:
    # A 503 EAGAIN may mean "outcome unknown" (quorum lost mid-commit), so a write is
    # not re-sent to the next master, even one that leads; a read would be.
    leader = FakeService()
    masters = f"{serve(FakeService(2, leader=False))},{serve(leader)}"
    result = cli("cluster", "transfer-leader", "--to", "2", "-m", masters, "--token", TOKEN)
    assert_one_line_error(result, 2, "no leader is known", "EAGAIN")
    assert leader.transfers == []


def test_admin_command_that_times_out_on_the_master_is_not_retried(serve: Serve) -> None:
    hung, spare = FakeService(), FakeService()
    hung.hang = True
    masters = f"{serve(hung, request_timeout=0.05)},{serve(spare)}"
    result = cli("cluster", "transfer-leader", "--to", "2", "-m", masters, "--token", TOKEN)
    assert_one_line_error(result, 2, "may or may not have been applied", "ETIMEDOUT")
    assert spare.transfers == []


# ------------------------------------------------------------------- HTTP helper


def test_client_follows_redirects_to_the_leader(serve: Serve) -> None:
    leader = FakeService()
    leader_address = serve(leader)
    follower = FakeService(2, leader=False)
    follower.leader_address = leader_address
    client = MasterClient(serve(follower), token=TOKEN)
    reply = client.request("POST", "/cluster/transfer-leader", {"to": 2}, redirect=True)
    assert (reply.status, reply.body["leader_id"], reply.address) == (200, 2, leader_address)
    assert leader.transfers == [2]


def test_client_gives_up_on_a_redirect_loop(serve: Serve) -> None:
    a, b = FakeService(1, leader=False), FakeService(2, leader=False)
    a_address, b_address = serve(a), serve(b)
    a.leader_address, b.leader_address = b_address, a_address
    client = MasterClient(a_address, token=TOKEN)
    with pytest.raises(CliError, match="more than 3 redirects") as caught:
        client.request("DELETE", "/cluster/members/3", redirect=True)
    assert caught.value.exit_code == 2


def test_client_read_timeout_moves_on_for_reads_but_not_for_writes(serve: Serve) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent_address = f"127.0.0.1:{silent.getsockname()[1]}"
        live = serve(FakeService())
        client = MasterClient(f"{silent_address},{live}", token=TOKEN, read_timeout=0.05)
        assert client.request("GET", "/cluster/status").address == live
        with pytest.raises(CliError, match="may or may not have been applied"):
            client.request("POST", "/cluster/transfer-leader", {"to": 2})


def test_client_refuses_an_answer_that_is_not_json() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"

        def answer_once() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 6\r\n"
                    b"Connection: close\r\n\r\n<html>"
                )

        thread = threading.Thread(target=answer_once)
        thread.start()
        with pytest.raises(CliError, match="without JSON"):
            MasterClient(address).request("GET", "/cluster/status")
        thread.join(10)
