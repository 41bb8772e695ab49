"""``RaftMasterService`` over real ``RaftNode``s in one event loop (journals on disk, an
in-process transport): promoting learners to voters. The intent to promote is replicated
state, so a leader that did not add the learner promotes it; a learner added with
``voter=False`` stays one. Waiting is polling with a deadline."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from quorumfs.master.contract import MemberRole
from quorumfs.master.service import RaftMasterService
from quorumfs.master.state_machine import MasterStateMachine, MemberAddresses
from quorumfs.raft import Config, Message, bootstrap_log
from quorumfs.runtime.node import NodeOptions, RaftNode
from quorumfs.runtime.wal import DiskStorage

TICK = 0.01


def addresses(node_id: int) -> MemberAddresses:
    return MemberAddresses(http=f"10.0.0.{node_id}:9333", raft=f"10.0.0.{node_id}:19333")


class LocalNetwork:
    """Delivers each message to its target if that master runs, else drops it."""

    def __init__(self) -> None:
        self.nodes: dict[int, RaftNode] = {}


class LocalTransport:
    def __init__(self, network: LocalNetwork) -> None:
        self.network = network

    def send(self, messages: Iterable[Message]) -> None:
        loop = asyncio.get_running_loop()
        for m in messages:
            target = self.network.nodes.get(m.to)
            if target is not None:
                loop.call_soon(target.receive, m)


@dataclass
class Master:
    node: RaftNode
    service: RaftMasterService

    @property
    def id(self) -> int:
        return self.node.id


async def start_master(
    tmp_path: Path, network: LocalNetwork, node_id: int, *, founders: int = 0
) -> Master:
    """A master; with ``founders``, one of the group 1..founders, else a joining one (an
    empty journal)."""
    storage = DiskStorage.open(tmp_path / f"n{node_id}", fsync=False)
    if founders:
        contexts = {i: addresses(i).encode() for i in range(1, founders + 1)}
        entries, hard_state = bootstrap_log(contexts.keys(), contexts)
        storage.save(hard_state, entries)
        storage.sync()
    state = MasterStateMachine()
    node = RaftNode(
        Config(id=node_id),
        storage,
        LocalTransport(network),
        state,
        options=NodeOptions(tick_interval=TICK),
        rng=random.Random(node_id),
    )
    # promote_lag=0: a learner is promoted once it holds every committed entry, so one
    # that is not running is never caught up.
    service = RaftMasterService(node, state, admin_token="t" * 20, promote_lag=0)
    network.nodes[node_id] = node
    await node.start()
    service.start()
    return Master(node, service)


async def stop_master(network: LocalNetwork, master: Master) -> None:
    network.nodes.pop(master.id, None)
    await master.service.close()
    await master.node.stop()
    master.node.storage.close()


async def until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(TICK)


async def leader_of(masters: Iterable[Master]) -> Master:
    candidates = list(masters)
    await until(lambda: any(m.node.is_leader() for m in candidates), "a leader")
    return next(m for m in candidates if m.node.is_leader())


def caught_up(leader: Master, member_id: int) -> bool:
    status = leader.node.status()
    peer = status.peers.get(member_id)
    return peer is not None and peer.match >= status.commit


@pytest.mark.parametrize("change", ["steps down", "crashes"])
def test_a_learner_to_be_voter_is_promoted_by_a_leader_that_did_not_add_it(
    tmp_path: Path, change: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quorumfs.master")

    async def scenario() -> None:
        network = LocalNetwork()
        masters = {i: await start_master(tmp_path, network, i, founders=3) for i in (1, 2, 3)}
        try:
            first = await leader_of(masters.values())
            a4, a5 = addresses(4), addresses(5)
            stays = await first.service.add_member(http=a4.http, raft=a4.raft, voter=False)
            to_be = await first.service.add_member(http=a5.http, raft=a5.raft, voter=True)
            assert (stays.id, stays.promote, to_be.id, to_be.promote) == (4, False, 5, True)
            # Neither learner runs yet, so neither can catch up: `first` cannot promote 5.
            assert first.node.status().conf.learners == {4, 5}

            if change == "steps down":
                await first.service.step_down()
            else:
                await stop_master(network, masters.pop(first.id))
            second = await leader_of(m for m in masters.values() if m is not first)
            term = second.node.leader_term()
            shown = {m.id: m for m in second.service.cluster_status().members}
            assert (shown[4].promote, shown[5].promote) == (False, True)

            masters[4] = await start_master(tmp_path, network, 4)
            await until(lambda: caught_up(second, 4), "learner 4 to catch up")
            masters[5] = await start_master(tmp_path, network, 5)
            await until(lambda: 5 in second.node.status().conf.voters, "5 to become a voter")

            # `second` led throughout (same term), so it is the one that promoted 5; 4 was
            # caught up first and looked at first (by id), and is still a learner.
            assert second.node.leader_term() == term
            assert second.node.status().conf.learners == {4}
            shown = {m.id: m for m in second.service.cluster_status().members}
            assert (shown[4].role, shown[4].voter, shown[4].promote) == (
                MemberRole.LEARNER,
                False,
                False,
            )
            assert (shown[5].voter, shown[5].promote) == (True, False)
            assert "master 5 caught up and is now a voter" in caplog.text
        finally:
            for master in list(masters.values()):
                await stop_master(network, master)

    asyncio.run(scenario())
