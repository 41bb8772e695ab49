"""``RaftNode`` in one event loop: real journals on disk, an in-process transport."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from quorumfs.raft import ConfChange, Config, ConfState, Message, bootstrap_log
from quorumfs.runtime.node import NodeOptions, NotLeaderError, RaftNode, UnavailableError
from quorumfs.runtime.wal import DiskStorage

TICK = 0.01


class Register:
    """A state machine that appends each command to a list and answers its position."""

    def __init__(self) -> None:
        self.values: list[bytes] = []

    def apply(self, index: int, command: bytes) -> object:
        self.values.append(command)
        return len(self.values)

    def apply_membership(self, index: int, change: ConfChange, conf: ConfState) -> None:
        pass

    def snapshot(self) -> bytes:
        return b"\0".join(self.values)

    def restore(self, image: bytes) -> None:
        self.values = image.split(b"\0") if image else []


class LocalNetwork:
    def __init__(self) -> None:
        self.nodes: dict[int, RaftNode] = {}
        self.cut: set[int] = set()

    def transport_for(self, node_id: int) -> LocalTransport:
        return LocalTransport(self, node_id)


class LocalTransport:
    def __init__(self, network: LocalNetwork, node_id: int) -> None:
        self.network = network
        self.node_id = node_id

    def send(self, messages: Iterable[Message]) -> None:
        loop = asyncio.get_running_loop()
        for m in messages:
            target = self.network.nodes.get(m.to)
            if target is not None and not {m.frm, m.to} & self.network.cut:
                loop.call_soon(target.receive, m)


async def start_group(
    tmp_path: Path, size: int = 3, *, lease_logs: bool = False
) -> tuple[LocalNetwork, dict[int, Register]]:
    network = LocalNetwork()
    machines: dict[int, Register] = {}
    entries, hard_state = bootstrap_log(range(1, size + 1))
    for node_id in range(1, size + 1):
        storage = DiskStorage.open(tmp_path / f"n{node_id}", fsync=False)
        storage.save(hard_state, entries)
        storage.sync()
        machines[node_id] = Register()
        network.nodes[node_id] = RaftNode(
            Config(id=node_id),
            storage,
            network.transport_for(node_id),
            machines[node_id],
            options=NodeOptions(
                tick_interval=TICK,
                snapshot_every=50,
                lease_log=tmp_path / f"lease-{node_id}.log" if lease_logs else None,
            ),
            rng=random.Random(node_id),
        )
    for node in network.nodes.values():
        await node.start()
    return network, machines


async def leader_of(network: LocalNetwork) -> RaftNode:
    async with asyncio.timeout(10):
        while True:
            leaders = [
                n for n in network.nodes.values() if n.is_leader() and n.id not in network.cut
            ]
            if leaders:
                return leaders[0]
            await asyncio.sleep(TICK)


async def stop_all(network: LocalNetwork) -> None:
    for node in network.nodes.values():
        await node.stop()
        node.storage.close()


def test_a_proposal_returns_what_the_state_machine_answered(tmp_path: Path) -> None:
    async def scenario() -> None:
        network, machines = await start_group(tmp_path)
        leader = await leader_of(network)
        results = await asyncio.gather(*(leader.propose(f"v{i}".encode(), 5) for i in range(20)))
        assert sorted(results) == list(range(1, 21))  # type: ignore[type-var]
        for node in network.nodes.values():
            await node.read_barrier(5)
            assert len(machines[node.id].values) == 20  # every replica, after a barrier
        await stop_all(network)

    asyncio.run(scenario())


def test_a_follower_refuses_proposals_and_names_the_leader(tmp_path: Path) -> None:
    async def scenario() -> None:
        network, _ = await start_group(tmp_path)
        leader = await leader_of(network)
        follower = next(n for n in network.nodes.values() if n is not leader)
        async with asyncio.timeout(5):
            while follower.leader != leader.id:
                await asyncio.sleep(TICK)
        with pytest.raises(NotLeaderError) as refused:
            await follower.propose(b"x", 1)
        assert refused.value.leader == leader.id
        await stop_all(network)

    asyncio.run(scenario())


def test_reads_fail_in_bounded_time_without_a_quorum(tmp_path: Path) -> None:
    async def scenario() -> None:
        network, _ = await start_group(tmp_path)
        leader = await leader_of(network)
        others = [n.id for n in network.nodes.values() if n is not leader]
        network.cut.update(others)
        with pytest.raises((UnavailableError, TimeoutError)):
            await leader.read_barrier(0.5)  # stale after the lease: ReadIndex cannot finish
        await stop_all(network)

    asyncio.run(scenario())


def test_leadership_transfer_returns_once_the_target_leads(tmp_path: Path) -> None:
    async def scenario() -> None:
        network, _ = await start_group(tmp_path)
        leader = await leader_of(network)
        target = next(n for n in network.nodes.values() if n is not leader)
        assert await leader.transfer_leadership(target.id, 5) == target.id
        assert target.is_leader()
        await stop_all(network)

    asyncio.run(scenario())


def test_a_transfer_that_the_core_gives_up_fails_at_once_with_the_reason(tmp_path: Path) -> None:
    async def scenario() -> None:
        network, _ = await start_group(tmp_path)
        leader = await leader_of(network)
        target = next(n for n in network.nodes.values() if n is not leader)
        network.cut.add(target.id)
        started = time.monotonic()
        with pytest.raises(UnavailableError, match="given up after an election timeout"):
            await leader.transfer_leadership(target.id, 5)
        assert time.monotonic() - started < 1.0  # an election timeout (0.1 s), not 5 s
        assert leader.is_leader()
        await stop_all(network)

    asyncio.run(scenario())


def test_the_lease_log_records_a_transfer_on_both_sides(tmp_path: Path) -> None:
    async def scenario() -> None:
        network, _ = await start_group(tmp_path, lease_logs=True)
        leader = await leader_of(network)
        target = next(n for n in network.nodes.values() if n is not leader)

        def events(node: RaftNode) -> list[str]:
            text = (tmp_path / f"lease-{node.id}.log").read_text()
            return [line.split(" event=")[1].split()[0] for line in text.splitlines()]

        async with asyncio.timeout(5):
            while "lease-acquired" not in events(leader):
                await asyncio.sleep(TICK)
        await leader.transfer_leadership(target.id, 5)
        async with asyncio.timeout(5):
            while "lease-acquired" not in events(target):
                await asyncio.sleep(TICK)
        old = events(leader)
        assert old[0] == "started"
        assert old.index("lease-acquired") < old.index("step-down")
        text = (tmp_path / f"lease-{leader.id}.log").read_text()
        step_down = rf"event=step-down reason=transfer role=FOLLOWER leader=\w+ to={target.id}$"
        assert re.search(step_down, text, re.MULTILINE), text
        await stop_all(network)

    asyncio.run(scenario())


def test_snapshots_compact_the_journal_and_a_restart_recovers_from_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        network, _ = await start_group(tmp_path)
        leader = await leader_of(network)
        for i in range(120):
            await leader.propose(f"v{i}".encode(), 5)
        assert leader.storage.snapshot().meta.index >= 50
        assert leader.storage.first_index() > 1
        await stop_all(network)
        storage = DiskStorage.open(tmp_path / f"n{leader.id}", fsync=False)
        machine = Register()
        node = RaftNode(
            Config(id=leader.id), storage, LocalNetwork().transport_for(leader.id), machine
        )
        node.replay()
        # The snapshot's image, then the journal after it (close() persisted the commit index).
        assert machine.values == [f"v{i}".encode() for i in range(120)]
        storage.close()

    asyncio.run(scenario())
