"""``/metrics`` over real processes: 3 masters and 3 volume servers.

The leader reports role LEADER and a heartbeat age per volume server, the
followers FOLLOWER with the same term; a file written with two copies adds
its size twice to the volume servers' bytes written, and reading it back adds
it to their bytes read."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from procs import DataCluster, wait_for
from prometheus_client.parser import text_string_to_metric_families

from quorumfs.client import MasterClient

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataCluster]:
    c = DataCluster(tmp_path_factory.mktemp("metrics"))
    c.start()
    yield c
    c.stop()


def test_masters_show_their_roles_and_the_leader_the_volume_servers(cluster: DataCluster) -> None:
    leader = cluster.leader()
    followers = [m for m in cluster.masters if m is not leader]
    samples = scrape(leader.address)
    assert value(samples, "quorumfs_raft_role", role="LEADER") == 1
    assert value(samples, "quorumfs_raft_role", role="FOLLOWER") == 0
    term = value(samples, "quorumfs_raft_term")
    assert value(samples, "quorumfs_raft_leader_changes_total") >= 1
    for follower in followers:
        theirs = scrape(follower.address)
        assert value(theirs, "quorumfs_raft_role", role="FOLLOWER") == 1
        assert value(theirs, "quorumfs_raft_role", role="LEADER") == 0
        assert value(theirs, "quorumfs_raft_term") == term
        assert value(theirs, "quorumfs_raft_lease_remaining_seconds") == 0
        assert not any(name.startswith("quorumfs_master_volume_heartbeat") for name, _ in theirs)

    volume_ids = {int(v["volume_id"]) for v in cluster.volume_states() or []}
    assert len(volume_ids) == 3

    def ages() -> dict[int, float] | None:
        found = {
            int(dict(labels)["volume_id"]): sample
            for (name, labels), sample in scrape(leader.address).items()
            if name == "quorumfs_master_volume_heartbeat_age_seconds"
        }
        return found if set(found) == volume_ids else None

    found = wait_for(ages, "a heartbeat age for every volume server")
    assert all(0 <= age < 5 for age in found.values()), found
    samples = scrape(leader.address)
    assert value(samples, "quorumfs_master_volume_servers", state="writable") == 3
    assert value(samples, "quorumfs_raft_fsync_seconds_count") > 0
    for volume in cluster.volumes:
        theirs = scrape(volume.address)
        assert value(theirs, "quorumfs_volume_id") in volume_ids
        assert 0 <= value(theirs, "quorumfs_volume_heartbeat_age_seconds") < 5


def test_volume_servers_count_the_bytes_of_a_file(cluster: DataCluster) -> None:
    def total(name: str) -> float:
        return sum(value(scrape(v.address), name) for v in cluster.volumes)

    written, read = (
        total("quorumfs_volume_bytes_written_total"),
        total("quorumfs_volume_bytes_read_total"),
    )
    leader = cluster.leader()
    proposals = value(scrape(leader.address), "quorumfs_raft_proposals_total", outcome="committed")
    data = bytes(range(256)) * 400  # 102,400 bytes
    with MasterClient(cluster.master_list()) as client:
        client.put("/metrics-file", data, replication=2)
        assert client.read("/metrics-file") == data
    assert total("quorumfs_volume_bytes_written_total") == written + 2 * len(data)
    assert total("quorumfs_volume_bytes_read_total") == read + len(data)
    after = value(scrape(leader.address), "quorumfs_raft_proposals_total", outcome="committed")
    assert after > proposals  # the commit, at least
