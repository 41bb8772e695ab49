"""``NodeMetrics``: a ``RaftNode``'s instruments, scraped from its own registry.

Three nodes in one event loop (real journals, an in-process transport, as in
``test_node``), each with its own registry: role, term and leader per node,
proposals by outcome and their commit latency, journal syncs, leader changes,
indexes, apply lag and the lease. Waiting is polling with a deadline.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_node import TICK, LocalNetwork, Register, leader_of, stop_all

from quorumfs.raft import Config, Entry, HardState, bootstrap_log
from quorumfs.runtime.metrics import ROLES, NodeMetrics
from quorumfs.runtime.node import NodeOptions, NotLeaderError, RaftNode
from quorumfs.runtime.wal import DiskStorage


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the text exposition, keyed by (name, sorted labels)."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def start_group(tmp_path: Path) -> tuple[LocalNetwork, dict[int, CollectorRegistry]]:
    network = LocalNetwork()
    registries: dict[int, CollectorRegistry] = {}
    entries, hard_state = bootstrap_log(range(1, 4))
    for node_id in range(1, 4):
        storage = DiskStorage.open(tmp_path / f"n{node_id}", fsync=False)
        storage.save(hard_state, entries)
        storage.sync()
        registries[node_id] = CollectorRegistry()
        network.nodes[node_id] = RaftNode(
            Config(id=node_id),
            storage,
            network.transport_for(node_id),
            Register(),
            options=NodeOptions(tick_interval=TICK),
            rng=random.Random(node_id),
            metrics=NodeMetrics(registries[node_id]),
        )
    for node in network.nodes.values():
        await node.start()
    return network, registries


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(TICK)
    assert condition(), what


def test_role_term_leader_and_indexes_reflect_each_node(tmp_path: Path) -> None:
    async def scenario() -> None:
        network, registries = await start_group(tmp_path)
        leader = await leader_of(network)
        await until(
            lambda: all(n.leader == leader.id for n in network.nodes.values()),
            "every node to know the leader",
        )
        await leader.propose(b"x", 5)
        for node in network.nodes.values():
            await node.read_barrier(5)
            samples = scrape(registries[node.id])
            want = "LEADER" if node is leader else "FOLLOWER"
            for role in ROLES:
                expected = 1.0 if role == want else 0.0
                assert value(samples, "quorumfs_raft_role", role=role) == expected, (node.id, role)
            status = node.status()
            assert value(samples, "quorumfs_raft_term") == status.term >= 1
            assert value(samples, "quorumfs_raft_leader_id") == leader.id
            assert value(samples, "quorumfs_raft_commit_index") == status.commit
            assert value(samples, "quorumfs_raft_applied_index") == status.applied
            assert value(samples, "quorumfs_raft_apply_lag") == status.commit - status.applied
            assert value(samples, "quorumfs_raft_last_index") == status.last_index
            assert value(samples, "quorumfs_raft_voters") == 3
            assert value(samples, "quorumfs_raft_leader_changes_total") >= 1
            assert value(samples, "quorumfs_raft_ticks_total") >= 1
            if node is not leader:
                assert value(samples, "quorumfs_raft_lease_remaining_seconds") == 0.0
        await stop_all(network)

    asyncio.run(scenario())


def test_a_proposal_counts_and_adds_a_commit_latency_observation(tmp_path: Path) -> None:
    async def scenario() -> None:
        network, registries = await start_group(tmp_path)
        leader = await leader_of(network)
        registry = registries[leader.id]
        before = scrape(registry)
        committed = value(before, "quorumfs_raft_proposals_total", outcome="committed")
        observed = value(before, "quorumfs_raft_commit_latency_seconds_count")
        syncs = value(before, "quorumfs_raft_fsync_seconds_count")

        await asyncio.gather(*(leader.propose(f"v{i}".encode(), 5) for i in range(7)))
        after = scrape(registry)
        assert value(after, "quorumfs_raft_proposals_total", outcome="committed") == committed + 7
        assert value(after, "quorumfs_raft_commit_latency_seconds_count") == observed + 7
        total = value(after, "quorumfs_raft_commit_latency_seconds_sum")
        assert 0 < total - value(before, "quorumfs_raft_commit_latency_seconds_sum") < 7 * 5
        assert value(after, "quorumfs_raft_fsync_seconds_count") > syncs  # the entries were synced
        infinite = value(after, "quorumfs_raft_commit_latency_seconds_bucket", le="+Inf")
        assert infinite == observed + 7

        follower = next(n for n in network.nodes.values() if n is not leader)
        with pytest.raises(NotLeaderError):
            await follower.propose(b"y", 1)
        samples = scrape(registries[follower.id])
        assert value(samples, "quorumfs_raft_proposals_total", outcome="not_leader") == 1
        assert value(samples, "quorumfs_raft_proposals_total", outcome="committed") == 0
        assert value(samples, "quorumfs_raft_commit_latency_seconds_count") == 0
        await stop_all(network)

    asyncio.run(scenario())


def test_the_leader_shows_its_lease_and_a_new_leader_is_counted(tmp_path: Path) -> None:
    async def scenario() -> None:
        network, registries = await start_group(tmp_path)
        leader = await leader_of(network)
        lease = leader.raw.raft.lease_ticks * TICK

        def remaining() -> float:
            return value(scrape(registries[leader.id]), "quorumfs_raft_lease_remaining_seconds")

        await until(lambda: remaining() > 0, "the leader to hold a lease")
        assert 0 < remaining() <= lease + TICK

        target = next(n for n in network.nodes.values() if n is not leader)
        await until(lambda: target.leader == leader.id, "the target to know the leader")
        changes = value(scrape(registries[target.id]), "quorumfs_raft_leader_changes_total")
        await leader.transfer_leadership(target.id, 5)
        assert remaining() == 0.0  # the transfer gave the lease up
        await until(
            lambda: (
                value(scrape(registries[target.id]), "quorumfs_raft_leader_changes_total")
                == changes + 1
            ),
            "the new leader to count the change",
        )
        samples = scrape(registries[target.id])
        assert value(samples, "quorumfs_raft_role", role="LEADER") == 1.0
        await stop_all(network)

    asyncio.run(scenario())


def test_a_journal_sync_that_flushes_is_timed_and_one_with_nothing_to_flush_is_not(
    tmp_path: Path,
) -> None:
    observed: list[float] = []
    with DiskStorage.open(tmp_path / "journal", fsync=False) as storage:
        storage.sync_observer = observed.append
        storage.save(HardState(term=1, vote=0, commit=0), [Entry(term=1, index=1, data=b"a")])
        storage.sync()
        assert len(observed) == 1 and observed[0] >= 0
        storage.sync()  # nothing written since
        assert len(observed) == 1
        storage.save(None, [Entry(term=1, index=2, data=b"b")])
        storage.sync()
        assert len(observed) == 2
