"""Three (then five) real master processes on loopback: election, failover, restart, membership."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import Cluster, HttpError, Master, free_port_pair, http, wait_for

from quorumfs.client import MasterClient


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    c.start()
    yield c
    c.stop()


def mkdir(master: Master, path: str) -> None:
    http("POST", master.address, "/v1/fs/mkdir", {"path": path})


def names(master: Master, path: str = "/") -> list[str]:
    listing = http("GET", master.address, f"/v1/fs/list?path={path}")
    return [entry["name"] for entry in listing["entries"]]


def members(master: Master) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = http("GET", master.address, "/cluster/members")["members"]
    return result


def test_three_masters_elect_one_leader_and_report_it_everywhere(cluster: Cluster) -> None:
    leader = cluster.leader()
    statuses = [m.status() for m in cluster.masters]
    assert all(s["leader_http"] == leader.address for s in statuses)
    roles = sorted(
        next(member["role"] for member in s["members"] if member["id"] == s["id"]) for s in statuses
    )
    assert roles == ["FOLLOWER", "FOLLOWER", "LEADER"]
    # The leader hears from each follower every heartbeat round; followers don't know.
    contacts = {m["id"]: m["last_contact_ms"] for m in leader.status()["members"]}
    own = leader.status()["id"]
    assert contacts[own] is None
    assert all(0 <= ms < 5000 for i, ms in contacts.items() if i != own), contacts
    follower = next(m for m in cluster.masters if m is not leader)
    assert all(m["last_contact_ms"] is None for m in follower.status()["members"])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "quorumfs",
            "fs",
            "masterInfo",
            "--master",
            cluster.masters[0].address,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert f"current leader master: {leader.address}" in result.stdout
    # Listed by node id; founding ids follow the sorted --peers list.
    assert "All masters: [" + ", ".join(sorted(m.address for m in cluster.masters)) + "]" in (
        result.stdout
    )


def test_namespace_operations_succeed_through_any_master(cluster: Cluster) -> None:
    leader = cluster.leader()
    for i, master in enumerate(cluster.masters):
        mkdir(master, f"/dir{i}")  # a follower forwards the write to the leader
    for master in cluster.masters:
        assert names(master) == ["dir0", "dir1", "dir2"]  # reads are linearizable anywhere
    with pytest.raises(HttpError) as refused:
        mkdir(leader, "/dir0")
    assert refused.value.status == 409
    assert refused.value.body["error"]["code"] == "EEXIST"


def test_killing_the_leader_loses_nothing_and_it_catches_up_after_restart(cluster: Cluster) -> None:
    leader = cluster.leader()
    for i in range(20):
        mkdir(leader, f"/before-{i:02d}")
    leader.kill(signal.SIGKILL)
    new_leader = cluster.leader()
    assert new_leader is not leader
    assert names(new_leader) == [f"before-{i:02d}" for i in range(20)]
    mkdir(new_leader, "/after")
    leader.start()  # no --peers: the membership is in its directory
    leader.wait_serving()
    assert cluster.leader() is new_leader
    assert names(leader) == ["after"] + [f"before-{i:02d}" for i in range(20)]


def test_all_masters_restarted_at_once_come_back_with_the_namespace(cluster: Cluster) -> None:
    # Through the client, which rides through the extra elections a loaded machine causes
    # (20 ms ticks): this test is about the journal, not about a quiet election.
    addresses = [m.address for m in cluster.masters]
    with MasterClient(addresses) as client:
        for i in range(10):
            client.mkdir(f"/d{i}", parents=True)
    for master in cluster.masters:
        master.kill(signal.SIGKILL)
    for master in cluster.masters:
        master.start()
    for master in cluster.masters:
        master.wait_serving()
    with MasterClient(addresses) as client:
        assert [entry.name for entry in client.ls("/")] == [f"d{i}" for i in range(10)]


def test_masters_are_added_one_at_a_time_then_one_removed(cluster: Cluster) -> None:
    leader = cluster.leader()
    mkdir(leader, "/existing")
    fourth = cluster.add(via=cluster.masters[1])
    fifth = cluster.add(via=cluster.masters[2])

    def five_voters() -> bool:
        members = cluster.leader().status()["members"]
        return len(members) == 5 and all(m["voter"] for m in members)

    wait_for(five_voters, "five voters")
    assert names(fifth) == ["existing"]
    assert names(fourth) == ["existing"]
    status = leader.status()
    assert status["warnings"] == []
    token = leader.admin_token()
    leader_now = cluster.leader()
    http(
        "DELETE",
        leader_now.address,
        f"/cluster/members/{fourth.status()['id']}",
        headers={"Authorization": f"Bearer {token}"},
    )
    members = cluster.leader().status()["members"]
    assert len(members) == 4
    assert any("even number" in w for w in cluster.leader().status()["warnings"])


def test_a_master_added_just_before_the_leader_dies_is_promoted_by_the_next(
    cluster: Cluster,
) -> None:
    """Found by the nemesis: a master added to become a voter stayed a learner for good
    when the leader that added it lost leadership before promoting it. The intent is now
    replicated, and whichever master leads promotes it once it has caught up."""
    leader = cluster.leader()
    for i in range(120):  # more than the promote lag (100 entries): it must catch up first
        mkdir(leader, f"/d{i:03d}")
    survivors = [m for m in cluster.masters if m is not leader]
    fourth = Master(cluster.root, "m4", free_port_pair())
    cluster.masters.append(fourth)
    fourth.start("--peers", survivors[0].address)
    try:
        deadline = time.monotonic() + 15
        while not any(m["http"] == fourth.address for m in members(leader)):
            assert time.monotonic() < deadline, "timed out waiting for the add"
            time.sleep(0.002)
        # The add is applied on the leader, which answers it now. Hold the new master
        # before it can catch up, so the leader cannot promote it, and kill the leader.
        assert fourth.process is not None
        fourth.process.send_signal(signal.SIGSTOP)
        leader.kill(signal.SIGKILL)

        def survivors_agree() -> Master | None:
            named = {m.status()["leader_http"] for m in survivors}
            return next((m for m in survivors if named == {m.address}), None)

        new_leader: Master = wait_for(survivors_agree, "a new leader among the survivors")
        mine = next(m for m in members(new_leader) if m["http"] == fourth.address)
        assert (mine["role"], mine["voter"], mine["promote"]) == ("LEARNER", False, True)
    finally:
        if fourth.process is not None:
            fourth.process.send_signal(signal.SIGCONT)

    def a_voter() -> bool:
        mine = next(m for m in members(new_leader) if m["http"] == fourth.address)
        return bool(mine["voter"]) and not mine["promote"]

    wait_for(a_voter, "the new master to become a voter")
    assert new_leader.role() == "LEADER"
    assert f"master {mine['id']} caught up and is now a voter" in new_leader.log_text()
    fourth.wait_serving()
    wait_for(lambda: len(names(fourth)) == 120, "the namespace on the new master")


def test_a_joined_master_restarted_at_once_hears_the_leader_again(cluster: Cluster) -> None:
    """Found by the nemesis: a master killed soon after it joined came back with the
    group's entries in its journal but no commit index covering them, so no membership:
    it refused every peer's connection ("not a member") and never heard a leader again.
    It now keeps the group it joined (seed.json) until its journal's membership applies."""
    leader = cluster.leader()
    mkdir(leader, "/before")
    fourth = cluster.add(via=cluster.masters[1])
    fourth.kill()
    mkdir(cluster.leader(), "/while-down")
    fourth.start()
    fourth.wait_serving()

    def hears_the_leader() -> bool:
        status = fourth.status()
        return bool(status["leader_http"]) and status["leader_http"] == cluster.leader().address

    wait_for(hears_the_leader, "the restarted master to hear the leader")
    wait_for(lambda: names(fourth) == ["before", "while-down"], "the namespace on it")
    assert "which is not a member" not in fourth.log_text().split("serving")[-1]


def test_a_restarted_master_hears_a_leader_its_applied_membership_lacks(
    cluster: Cluster,
) -> None:
    """Found by the nemesis: a master restarts with its commit index behind the entry
    that added a new master (the commit index is written lazily), while that new master
    leads. It knew only the members it had applied, refused the leader's connections as
    "not a member", and stayed cut off. Its transport now also accepts masters whose
    addition is in its journal but not applied yet."""
    leader = cluster.leader()
    fourth = cluster.add(via=leader)
    token = {"Authorization": f"Bearer {leader.admin_token()}"}
    fourth_id = int(fourth.status()["id"])

    def voter() -> bool:
        members = cluster.leader().status()["members"]
        return any(m["id"] == fourth_id and m["voter"] for m in members)

    wait_for(voter, "the new master to be a voter")
    # The old leader's journal holds the addition, but the commit index it last wrote
    # (when its term began) does not cover it.
    old_leader = cluster.leader()
    old_leader.kill()
    now = wait_for(
        lambda: next((m for m in cluster.alive() if m.role() == "LEADER"), None), "a new leader"
    )
    if now is not fourth:
        http("POST", now.address, "/cluster/transfer-leader", {"to": fourth_id}, headers=token)
    wait_for(lambda: fourth.role() == "LEADER", "the new master to lead")
    old_leader.start()
    old_leader.wait_serving()
    wait_for(
        lambda: old_leader.status()["leader_http"] == fourth.address,
        "the restarted master to hear the new master lead",
    )
    assert "which is not a member" not in old_leader.log_text().split("serving")[-1]


def test_a_master_joining_through_a_leader_newer_than_its_snapshot_catches_up(
    tmp_path: Path,
) -> None:
    """Found by the nemesis: a leader that joined after the newest snapshot sends that
    snapshot to the next master to join. Its member list predates the leader, and the
    new master, restoring it, dropped the leader from its peers and refused it as "not a
    member": it never caught up nor became a voter. Only an applied removal drops a peer
    now."""
    cluster = Cluster(tmp_path, master_args=("--snapshot-every", "40"))
    cluster.start()
    try:
        leader = cluster.leader()
        for i in range(60):  # a snapshot at 40 lists masters 1-3 only
            mkdir(leader, f"/d{i}")
        token = {"Authorization": f"Bearer {leader.admin_token()}"}
        fourth = cluster.add(via=leader)
        fourth_id = int(fourth.status()["id"])

        def voter(master_id: int) -> bool:
            members = cluster.leader().status()["members"]
            return any(m["id"] == master_id and m["voter"] for m in members)

        wait_for(lambda: voter(fourth_id), "the fourth master to be a voter")
        now = cluster.leader()
        http("POST", now.address, "/cluster/transfer-leader", {"to": fourth_id}, headers=token)
        wait_for(lambda: fourth.role() == "LEADER", "the fourth master to lead")
        fifth = cluster.add(via=fourth)
        fifth_id = int(fifth.status()["id"])
        wait_for(lambda: voter(fifth_id), "the fifth master to be a voter")
        wait_for(lambda: len(names(fifth)) == 60, "the namespace on the fifth master")
        assert "which is not a member" not in fifth.log_text()
    finally:
        cluster.stop()


def test_admin_requests_need_the_token(cluster: Cluster) -> None:
    leader = cluster.leader()
    with pytest.raises(HttpError) as refused:
        http("DELETE", leader.address, "/cluster/members/2")
    assert refused.value.status == 401
    for name in ("cluster.secret", "admin.token"):  # only their owner may read them
        assert (leader.mdir / name).stat().st_mode & 0o777 == 0o600


def _killed_master_with_five_dirs(tmp_path: Path) -> tuple[Master, Path]:
    """A group of one that made /d0../d4 durable, then SIGKILLed; and its newest segment."""
    master = Master(tmp_path, "solo", free_port_pair())
    master.start()
    master.wait_serving()
    wait_for(lambda: master.role() == "LEADER", "a single master to lead")
    for i in range(5):
        mkdir(master, f"/d{i}")
    master.kill(signal.SIGKILL)
    return master, sorted((master.mdir / "journal" / "wal").iterdir())[-1]


def test_a_torn_journal_tail_is_truncated_with_a_warning(tmp_path: Path) -> None:
    master, segment = _killed_master_with_five_dirs(tmp_path)
    with segment.open("ab") as f:
        f.write(b"\xa9\x57\x01\x00\x00\x00\x10")  # half a record header: a crash mid-write
    master.start()
    try:
        master.wait_serving()
        wait_for(lambda: master.role() == "LEADER", "the master to lead again")
        assert names(master) == [f"d{i}" for i in range(5)]
        assert "torn" in master.log_text().lower()
    finally:
        master.kill(signal.SIGTERM)


def test_a_corrupt_committed_record_refuses_to_start(tmp_path: Path) -> None:
    master, segment = _killed_master_with_five_dirs(tmp_path)
    data = bytearray(segment.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside an early record, with valid records after it
    segment.write_bytes(bytes(data))
    master.start()
    assert master.process is not None
    assert master.process.wait(timeout=20) == 2
    text = master.log_text()
    assert str(segment) in text and "offset" in text


def test_a_forged_peer_frame_is_refused_and_the_group_keeps_working(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(m for m in cluster.masters if m is not leader)
    with socket.create_connection(("127.0.0.1", follower.port + 10000), timeout=5) as s:
        s.sendall(b"\x00\x00\x00\x20" + b"forged raft frame, no handshake!")
        # Longer than the master's 5 s handshake timeout: the master, not this socket,
        # must end the connection, or it logs a close rather than a refusal.
        s.settimeout(15)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
    wait_for(lambda: "refused" in follower.log_text(), "the refusal to be logged")
    mkdir(leader, "/still-fine")

    def listed() -> list[str] | None:  # a loaded machine may be between leaders: poll
        try:
            return names(follower)
        except HttpError as error:
            if error.status != 503:
                raise
            return None

    wait_for(lambda: listed() == ["still-fine"], "the group to keep working")
