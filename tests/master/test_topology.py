"""The leader's volume picture: placement, reports, garbage and repair, in virtual time."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from quorumfs.master.commands import (
    AllocateChunkIds,
    Chunk,
    CommitContent,
    Create,
    RegisterVolume,
    ReplaceChunkReplicas,
)
from quorumfs.master.namespace import Namespace
from quorumfs.master.topology import Topology, TopologyOptions
from quorumfs.wire import Heartbeat

GiB = 1 << 30
OPTIONS = TopologyOptions(dead_after=3.0, replication_delay=10.0, orphan_grace=100.0)


def beat(
    volume_id: int,
    *,
    full: bool = False,
    added: Sequence[int] = (),
    removed: Sequence[int] = (),
    corrupt: Sequence[int] = (),
    failed: Sequence[int] = (),
) -> Heartbeat:
    return Heartbeat(
        address=f"10.0.0.{volume_id}:8080",
        volume_id=volume_id,
        used=0,
        free=10 * GiB,
        full_report=full,
        added=list(added),
        removed=list(removed),
        corrupt=list(corrupt),
        failed=list(failed),
    )


@pytest.fixture
def namespace() -> Namespace:
    """Volumes 1-4; /f holds chunk 1 on volumes (1, 2), replication 2."""
    ns = Namespace()
    for i in range(1, 5):
        ns.apply(RegisterVolume(address=f"10.0.0.{i}:8080")).unwrap()
    ns.apply(Create(path="/f", mtime=0, owner="o")).unwrap()
    ns.apply(AllocateChunkIds(count=10)).unwrap()
    chunk = Chunk(chunk_id=1, offset=0, size=5, checksum=7, volume_ids=(1, 2))
    ns.apply(CommitContent(path="/f", chunks=(chunk,), size=5, mtime=0)).unwrap()
    return ns


def everyone_reports(
    topology: Topology, namespace: Namespace, now: float, holders: Sequence[int] = (1, 2)
) -> None:
    for v in (1, 2, 3, 4):
        topology.heartbeat(beat(v, full=True, added=[1] if v in holders else []), v, namespace, now)


def test_a_server_is_writable_only_after_a_full_report(namespace: Namespace) -> None:
    topology = Topology(OPTIONS, started=0.0)
    need_full, *_ = topology.heartbeat(beat(1), 1, namespace, 0.0)
    assert need_full  # a delta against a picture this leader never had
    assert topology.writable_count(0.0) == 0
    assert topology.place(1, 2, 0.0, random.Random(1)) == [[]]
    need_full, *_ = topology.heartbeat(beat(1, full=True, added=[1]), 1, namespace, 0.5)
    assert not need_full
    assert topology.writable_count(0.5) == 1
    assert topology.writable_count(0.5 + OPTIONS.dead_after) == 0  # silent: not writable


def test_placement_picks_distinct_servers_up_to_the_goal(namespace: Namespace) -> None:
    topology = Topology(OPTIONS, started=0.0)
    everyone_reports(topology, namespace, 0.0)
    rng = random.Random(7)
    for placement in topology.place(50, 2, 0.1, rng):
        ids = [s.volume_id for s in placement]
        assert len(ids) == 2 and len(set(ids)) == 2
    assert len(topology.place(1, 9, 0.1, rng)[0]) == 4  # fewer servers than the goal
    used = {s.volume_id for p in topology.place(200, 1, 0.1, rng) for s in p}
    assert used == {1, 2, 3, 4}  # every server gets a share


def test_placement_weighs_free_space(namespace: Namespace) -> None:
    topology = Topology(OPTIONS, started=0.0)
    everyone_reports(topology, namespace, 0.0)
    topology.servers[4].free = 100 * GiB
    picks = [p[0].volume_id for p in topology.place(400, 1, 0.1, random.Random(3))]
    assert picks.count(4) > 250
    topology.servers[3].free = 1  # full: never chosen
    assert all(p[0].volume_id != 3 for p in topology.place(100, 1, 0.1, random.Random(3)))


def test_deltas_update_the_picture(namespace: Namespace) -> None:
    topology = Topology(OPTIONS, started=0.0)
    topology.heartbeat(beat(1, full=True, added=[1]), 1, namespace, 0.0)
    topology.heartbeat(beat(1, added=[5], removed=[1]), 1, namespace, 1.0)
    assert topology.servers[1].chunks == {5}


def test_released_chunks_are_deleted_and_orphans_after_the_grace(namespace: Namespace) -> None:
    topology = Topology(OPTIONS, started=0.0)
    topology.release([Chunk(chunk_id=3, offset=0, size=1, checksum=0, volume_ids=(1,))])
    _, deletes, _, _ = topology.heartbeat(beat(1, full=True, added=[1, 3, 4]), 1, namespace, 0.0)
    assert deletes == [3]  # released: at once; 4 is an orphan, maybe an upload in progress
    _, deletes, _, _ = topology.heartbeat(beat(1), 1, namespace, 99.0)
    assert deletes == []
    _, deletes, _, _ = topology.heartbeat(beat(1), 1, namespace, 100.5)
    assert deletes == [4]
    assert topology.was_collected(4)


def test_a_committed_chunk_is_never_an_orphan(namespace: Namespace) -> None:
    topology = Topology(OPTIONS, started=0.0)
    topology.heartbeat(beat(1, full=True, added=[4]), 1, namespace, 0.0)
    chunk = Chunk(chunk_id=4, offset=0, size=1, checksum=0, volume_ids=(1,))
    topology.committed([chunk], 1.0)
    _, deletes, _, _ = topology.heartbeat(beat(1), 1, namespace, 500.0)
    assert deletes == []


def test_a_dead_server_is_replaced_after_the_delay(namespace: Namespace) -> None:
    topology = Topology(OPTIONS, started=0.0)
    everyone_reports(topology, namespace, 0.0)
    for t in (1.0, 5.0, 9.0):  # volume 2 falls silent
        for v in (1, 3, 4):
            topology.heartbeat(beat(v), v, namespace, t)
    plan = topology.scan([(namespace.chunk(1) or pytest.fail())], 9.0, random.Random(1))
    assert plan.under_replicated == 0 and not topology.repairs  # within the delay: unknown
    for v in (1, 3, 4):
        topology.heartbeat(beat(v), v, namespace, 10.5)
    found = namespace.chunk(1)
    assert found is not None
    plan = topology.scan([found], 10.5, random.Random(1))
    assert plan.under_replicated == 1
    target = topology.repairs[1].target
    assert target in (3, 4)
    _, _, tasks, _ = topology.heartbeat(beat(target), target, namespace, 11.0)
    assert [(t.chunk_id, t.sources) for t in tasks] == [(1, ["10.0.0.1:8080"])]
    # The copy lands: the next heartbeat of the target reports it, and the new list drops 2.
    _, _, _, plan = topology.heartbeat(beat(target, added=[1]), target, namespace, 12.0)
    assert plan.commits == [
        ReplaceChunkReplicas(chunk_id=1, expected=(1, 2), volume_ids=(1, target))
    ]


def test_a_corrupt_copy_is_repaired_then_dropped(namespace: Namespace) -> None:
    topology = Topology(OPTIONS, started=0.0)
    everyone_reports(topology, namespace, 0.0)
    topology.heartbeat(beat(2, corrupt=[1]), 2, namespace, 1.0)
    found = namespace.chunk(1)
    assert found is not None
    topology.scan([found], 1.0, random.Random(2))
    target = topology.repairs[1].target
    _, _, _, plan = topology.heartbeat(beat(target, added=[1]), target, namespace, 2.0)
    assert plan.commits == [
        ReplaceChunkReplicas(chunk_id=1, expected=(1, 2), volume_ids=(1, target))
    ]
    topology.drop_copies(1, (2,))
    _, deletes, _, _ = topology.heartbeat(beat(2), 2, namespace, 2.5)
    assert deletes == [1]


def test_a_failed_copy_is_planned_again(namespace: Namespace) -> None:
    topology = Topology(OPTIONS, started=0.0)
    everyone_reports(topology, namespace, 0.0)
    topology.report_bad(1, 2)
    found = namespace.chunk(1)
    assert found is not None
    topology.scan([found], 1.0, random.Random(2))
    target = topology.repairs[1].target
    topology.heartbeat(beat(target, failed=[1]), target, namespace, 2.0)
    assert 1 not in topology.repairs
    assert topology.dirty


def test_a_surplus_copy_is_deleted_and_a_needed_one_adopted(namespace: Namespace) -> None:
    topology = Topology(OPTIONS, started=0.0)
    everyone_reports(topology, namespace, 0.0, holders=(1, 2))
    _, deletes, _, _ = topology.heartbeat(beat(3, added=[1]), 3, namespace, 0.5)
    assert deletes == [1]  # chunk 1 has its two copies on 1 and 2
    topology = Topology(OPTIONS, started=0.0)
    topology.heartbeat(beat(1, full=True, added=[1]), 1, namespace, 20.0)
    topology.heartbeat(beat(2, full=True, added=[]), 2, namespace, 20.0)  # lost it
    _, deletes, _, plan = topology.heartbeat(beat(3, full=True, added=[1]), 3, namespace, 20.0)
    assert deletes == []
    assert plan.commits == [ReplaceChunkReplicas(chunk_id=1, expected=(1, 2), volume_ids=(1, 3))]


def test_a_chunk_without_any_copy_is_reported_lost(namespace: Namespace) -> None:
    topology = Topology(OPTIONS, started=0.0)
    topology.heartbeat(beat(3, full=True), 3, namespace, 20.0)
    found = namespace.chunk(1)
    assert found is not None
    plan = topology.scan([found], 20.0, random.Random(1))
    assert plan.lost == [1]


def test_a_fresh_leader_waits_for_reports_before_judging(namespace: Namespace) -> None:
    topology = Topology(OPTIONS, started=100.0)
    topology.heartbeat(beat(3, full=True), 3, namespace, 100.5)
    found = namespace.chunk(1)
    assert found is not None
    plan = topology.scan([found], 101.0, random.Random(1))
    assert plan.under_replicated == 0 and not plan.lost and not topology.repairs
