"""Three real masters: step-down and transfer return with the new leader in place, and each
master's lease.log tells the story (lease acquired, handed over, a killed leader's term
ended)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import Cluster, Master, http, wait_for


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    c.start()
    yield c
    c.stop()


def lease_events(master: Master) -> list[dict[str, str]]:
    """The master's lease.log, one dict per line (``wall`` is the first field)."""
    path = master.mdir / "lease.log"
    events = []
    for line in path.read_text().splitlines() if path.exists() else []:
        wall, *fields = line.split()
        events.append({"wall": wall, **dict(field.split("=", 1) for field in fields)})
    return events


def has_event(master: Master, **wanted: str) -> bool:
    return any(wanted.items() <= event.items() for event in lease_events(master))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quorumfs", "cluster", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_step_down_and_transfer_return_with_a_new_leader_in_place(cluster: Cluster) -> None:
    old = cluster.leader()
    old_id = str(old.status()["id"])
    wait_for(lambda: has_event(old, event="lease-acquired", leader=old_id), "the leader's lease")
    follower = next(m for m in cluster.masters if m is not old)

    # Through a follower, which forwards it to the leader.
    stepped = cli("step-down", "--master", follower.address, "--token", old.admin_token())
    assert stepped.returncode == 0, stepped.stderr
    found = re.fullmatch(r"member (\d+) \((\S+)\) leads now\n", stepped.stdout)
    assert found is not None, stepped.stdout
    new_id, new_address = found.groups()
    new = next(m for m in cluster.masters if m.address == new_address)
    assert new is not old
    assert new.status()["role"] == "LEADER"  # in place when the command returns
    http("POST", new.address, "/v1/fs/mkdir", {"path": "/after-step-down"})

    events = lease_events(old)
    names = [e["event"] for e in events]
    assert names[0] == "started"
    acquired, step_down = names.index("lease-acquired"), names.index("step-down")
    assert acquired < step_down
    assert events[step_down]["reason"] == "transfer" and events[step_down]["to"] == new_id
    assert events[step_down]["term"] == events[acquired]["term"]  # the term it led
    wait_for(lambda: has_event(new, event="lease-acquired", leader=new_id), "the new lease")

    # And back, naming the old leader by its address.
    moved = cli(
        "transfer-leader", "--to", old.address, "-m", new.address, "--token", old.admin_token()
    )
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout == f"member {old_id} ({old.address}) leads now\n"
    assert old.status()["role"] == "LEADER"


def test_a_killed_leader_ends_its_term_in_the_others_lease_logs(cluster: Cluster) -> None:
    leader = cluster.leader()
    term = int(leader.status()["term"])
    leader.kill(signal.SIGKILL)
    new = cluster.leader()
    new_id = str(new.status()["id"])
    for master in cluster.alive():

        def new_term_logged(m: Master = master) -> bool:
            return any(
                e["event"] == "term-change"
                and int(e["term"]) > term
                and int(e["prev_term"]) >= term
                for e in lease_events(m)
            )

        wait_for(new_term_logged, f"a term-change line in {master.mdir}/lease.log")
    wait_for(lambda: has_event(new, event="lease-acquired", leader=new_id), "the new lease")
    assert has_event(new, event="term-change", reason="campaign")


def test_a_transfer_to_a_master_that_does_not_answer_fails_with_the_reason(
    cluster: Cluster,
) -> None:
    leader = cluster.leader()
    frozen = next(m for m in cluster.masters if m is not leader)
    assert frozen.process is not None
    frozen.process.send_signal(signal.SIGSTOP)
    try:
        refused = cli(
            "transfer-leader", "--to", frozen.address, "-m", leader.address,
            "--token", leader.admin_token(),
        )  # fmt: skip
    finally:
        frozen.process.send_signal(signal.SIGCONT)
    assert refused.returncode == 2, refused.stdout
    leader_id = leader.status()["id"]
    assert f"node {leader_id} still leads: the transfer to node" in refused.stderr
    assert "was given up after an election timeout" in refused.stderr
    assert "EAGAIN" in refused.stderr
    # Once resumed, the frozen master may still act on the TimeoutNow it had been sent
    # (and take over: the old leader stopped trusting its lease when the transfer began).
    # Either way the group settles on one leader.
    cluster.leader()
