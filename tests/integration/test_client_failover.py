"""The Python client against three real master processes while the leader is SIGKILLed.

One ``MasterClient`` writes 30 directories with plain ``mkdir`` (a write that is not
safe to repeat, so the client may answer ``OutcomeUnknown`` but never repeats it);
the leader is killed after the 10th. Every write must succeed or raise
``OutcomeUnknown``, nothing else; afterwards every successful one is visible on every
surviving master, and the same client, untouched, follows the new leader.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import Cluster, http

from quorumfs.client import MasterClient, OutcomeUnknown

WRITES = 30
KILL_AFTER = 10


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    c.start()
    yield c
    c.stop()


def test_a_client_rides_through_a_leader_sigkill(cluster: Cluster) -> None:
    old_leader = cluster.leader()
    outcomes: dict[str, str] = {}
    failover_seconds = 0.0
    with MasterClient([m.address for m in cluster.masters]) as client:
        for i in range(WRITES):
            path = f"/dir-{i:02d}"
            started = time.monotonic()
            try:
                client.mkdir(path)
                outcomes[path] = "ok"
            except OutcomeUnknown:
                outcomes[path] = "unknown"
            if i == KILL_AFTER:  # the first write after the kill
                failover_seconds = time.monotonic() - started
            if i == KILL_AFTER - 1:
                old_leader.kill(signal.SIGKILL)
        new_leader = cluster.leader()
        assert new_leader is not old_leader
        assert client.leader == new_leader.address  # followed without help
        listed = {entry.name for entry in client.ls("/")}

    unknown = sorted(p for p, outcome in outcomes.items() if outcome == "unknown")
    print(f"first write after the kill took {failover_seconds:.2f} s; outcome unknown: {unknown}")
    assert set(outcomes.values()) <= {"ok", "unknown"}
    statuses = list(outcomes.values())
    assert statuses[:KILL_AFTER] == ["ok"] * KILL_AFTER  # before the kill: all acknowledged
    assert statuses[-10:] == ["ok"] * 10  # and well after it: the client recovered by itself
    succeeded = {p.lstrip("/") for p, outcome in outcomes.items() if outcome == "ok"}
    assert succeeded <= listed
    assert listed <= {p.lstrip("/") for p in outcomes}  # nothing else appeared
    for master in cluster.alive():  # every acknowledged write, on every survivor
        entries = http("GET", master.address, "/v1/fs/list?path=/")["entries"]
        assert succeeded <= {entry["name"] for entry in entries}
