"""``RaftMasterService``: the master as its HTTP handlers see it, on top of a ``RaftNode``.

It turns namespace commands into proposals, reads into read barriers, and
the node's view of the group into ``ClusterStatus``; it runs membership
changes and leadership transfers, including stepping down (to the voter
``step_down_target`` picks). Every wait is bounded: a request that cannot be
served in time fails with ``ServiceUnavailableError``.

A new master joins as a learner. When it was added to become a voter, that
intent is in the replicated state (``Member.promote``), and whichever master
leads promotes it once it has caught up (``start`` runs the check every few
ticks): a leader that crashes or hands over before then leaves the promotion
to the next one.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from quorumfs.raft import ConfChange, ConfChangeType, Role, Status
from quorumfs.runtime.node import NotLeaderError as NodeNotLeaderError
from quorumfs.runtime.node import OutcomeUnknownError as NodeOutcomeUnknownError
from quorumfs.runtime.node import RaftNode, UnavailableError

from .commands import Command, encode_command
from .contract import (
    ClusterStatus,
    MemberInfo,
    MemberRole,
    NotLeaderError,
    OutcomeUnknownError,
    RejectedError,
    ServiceUnavailableError,
)
from .namespace import Namespace
from .results import Result
from .state_machine import MasterStateMachine, MemberAddresses

__all__ = ["RaftMasterService", "step_down_target"]

logger = logging.getLogger("quorumfs.master")

RETRY_SOON = 0.2
"""Seconds a client is asked to wait after "no leader or quorum right now"."""

PROMOTE_CHECK_TICKS = 4
"""Ticks between two looks, on the leader, for learners to promote."""

_ROLE_NAMES = {
    Role.LEADER: MemberRole.LEADER,
    Role.FOLLOWER: MemberRole.FOLLOWER,
    Role.CANDIDATE: MemberRole.CANDIDATE,
    Role.PRE_CANDIDATE: MemberRole.CANDIDATE,
}


def step_down_target(status: Status) -> int | None:
    """The member a stepping-down leader hands over to: a voter that can lead, the
    one heard from recently before one that was not (it may be down), then the one
    with the longest log (it catches up soonest), then the lowest id. None: no one."""
    candidates = [
        peer
        for peer in status.peers.values()
        if peer.id != status.id and peer.id in status.conf.voters and not peer.is_witness
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p.recent_active, p.match, -p.id)).id


class RaftMasterService:
    def __init__(
        self,
        node: RaftNode,
        state: MasterStateMachine,
        *,
        admin_token: str,
        timeout: float = 3.0,
        promote_lag: int = 100,
    ) -> None:
        self.node = node
        self.node_id = node.id
        self.state = state
        self._admin_token = admin_token
        self.timeout = timeout
        # A learner within this many entries of the leader's commit index is promoted.
        self.promote_lag = promote_lag
        self._membership_lock = asyncio.Lock()
        self._promoter: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start promoting learners to voters (on whichever master leads)."""
        self._promoter = asyncio.create_task(self._promote_learners(), name="quorumfs-promote")

    # -- reads and writes --------------------------------------------------------------

    @property
    def namespace(self) -> Namespace:
        return self.state.namespace

    def is_leader(self) -> bool:
        return self.node.is_leader()

    def leader_term(self) -> int | None:
        """The current term while this master leads, else None."""
        return self.node.leader_term()

    def leader_http(self) -> str | None:
        member = self.state.members.get(self.node.leader)
        return member.http if member is not None else None

    async def execute(self, command: Command) -> Result[Any]:
        result = await self._call(self.node.propose(encode_command(command), self.timeout))
        assert isinstance(result, Result)
        return result

    async def read_barrier(self) -> None:
        await self._call(self.node.read_barrier(self.timeout))

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except NodeNotLeaderError as error:
            raise NotLeaderError(self.leader_http()) from error
        except NodeOutcomeUnknownError as error:
            raise OutcomeUnknownError(str(error)) from error
        except (UnavailableError, TimeoutError) as error:
            reason = str(error) or "no quorum in time"
            # An election or a transfer is over within about an election timeout: ask to
            # retry soon (the client backs off further when it keeps failing).
            raise ServiceUnavailableError(reason, retry_after=RETRY_SOON) from error

    # -- status ----------------------------------------------------------------------------

    def cluster_status(self) -> ClusterStatus:
        status = self.node.status()
        conf = status.conf
        members = []
        for member in sorted(self.state.members.values(), key=lambda m: m.id):
            peer = status.peers.get(member.id)
            if member.id == status.leader:
                role = MemberRole.LEADER
            elif member.id in conf.witnesses:
                role = MemberRole.WITNESS
            elif member.id in conf.learners:
                role = MemberRole.LEARNER
            elif member.id == self.node_id:
                role = _ROLE_NAMES[status.role]
            else:
                role = MemberRole.FOLLOWER
            members.append(
                MemberInfo(
                    id=member.id,
                    http=member.http,
                    raft=member.raft,
                    role=role,
                    voter=member.id in conf.voters,
                    promote=member.promote and member.id in conf.learners,
                    match_index=peer.match if peer is not None else None,
                    last_contact_ms=self._last_contact_ms(
                        member.id, leading=status.role is Role.LEADER
                    ),
                )
            )
        warnings = []
        if len(conf.voters) % 2 == 0:
            warnings.append(
                f"{len(conf.voters)} voters: an even number tolerates no more failures than "
                f"{len(conf.voters) - 1}; add or remove one"
            )
        own_role = _ROLE_NAMES[status.role]
        if self.node_id in conf.learners:
            own_role = MemberRole.LEARNER
        return ClusterStatus(
            id=self.node_id,
            role=own_role,
            term=status.term,
            leader_id=status.leader or None,
            leader_http=self.leader_http(),
            commit_index=status.commit,
            applied_index=status.applied,
            members=members,
            lease_remaining_ms=(
                round(status.lease_remaining_ticks * self.node.options.tick_interval * 1000)
                if status.role is Role.LEADER
                else None
            ),
            warnings=warnings,
        )

    def _last_contact_ms(self, member_id: int, *, leading: bool) -> int | None:
        """On the leader: milliseconds since ``member_id`` was last heard from."""
        if not leading or member_id == self.node_id:
            return None
        seconds = self.node.last_contact(member_id)
        return None if seconds is None else round(seconds * 1000)

    # -- administration --------------------------------------------------------------------

    def admin_token_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self._admin_token)

    async def add_member(self, *, http: str, raft: str, voter: bool) -> MemberInfo:
        async with self._membership_lock:
            for member in self.state.members.values():
                if member.http == http or member.raft == raft:
                    raise RejectedError(
                        f"{http} (raft {raft}) conflicts with member {member.id} "
                        f"({member.http}, raft {member.raft}); remove it first",
                        status=409,
                    )
            member_id = self.state.next_member_id
            context = MemberAddresses(http=http, raft=raft, promote=voter).encode()
            change = ConfChange(ConfChangeType.ADD_LEARNER, member_id, context)
            await self._call(self.node.change_membership(change, self.timeout))
        then = "; it becomes a voter once it has caught up" if voter else ""
        logger.info("added master %d (%s, raft %s) as a learner%s", member_id, http, raft, then)
        return MemberInfo(
            id=member_id, http=http, raft=raft, role=MemberRole.LEARNER, voter=False, promote=voter
        )

    async def _promote_learners(self) -> None:
        """Every few ticks, on the leader: promote a learner that is to become a voter."""
        while True:
            await asyncio.sleep(self.node.options.tick_interval * PROMOTE_CHECK_TICKS)
            if not self.is_leader():
                continue
            try:
                await self._promote_one()
            except Exception:
                logger.exception("promoting learners failed; retrying at the next check")

    async def _promote_one(self) -> None:
        """Promote the first learner (by id) that is to become a voter and whose log is
        within ``promote_lag`` entries of the leader's commit index: one membership
        change at a time, so the others wait for the next check."""
        async with self._membership_lock:
            status = self.node.status()
            learner = next(
                (
                    member
                    for member in sorted(self.state.members.values(), key=lambda m: m.id)
                    if member.promote
                    and member.id in status.conf.learners
                    and member.id in status.peers
                    and status.peers[member.id].match + self.promote_lag >= status.commit
                ),
                None,
            )
            if learner is None:
                return
            # The intent is fulfilled: the voter's context says so.
            context = MemberAddresses(http=learner.http, raft=learner.raft).encode()
            change = ConfChange(ConfChangeType.ADD_VOTER, learner.id, context)
            try:
                await self._call(self.node.change_membership(change, self.timeout))
            except (ServiceUnavailableError, NotLeaderError) as error:
                logger.warning(
                    "promoting master %d to voter failed (%s); retrying at the next check",
                    learner.id,
                    error,
                )
                return
        logger.info("master %d caught up and is now a voter", learner.id)

    async def remove_member(self, member_id: int) -> None:
        if member_id not in self.state.members:
            raise RejectedError(f"no master with id {member_id}", status=404)
        async with self._membership_lock:
            change = ConfChange(ConfChangeType.REMOVE_NODE, member_id)
            await self._call(self.node.change_membership(change, self.timeout))
        logger.info("removed master %d", member_id)

    async def transfer_leadership(self, member_id: int) -> int:
        if member_id not in self.state.members:
            raise RejectedError(f"no master with id {member_id}", status=404)
        if member_id not in self.node.status().conf.voters:
            raise RejectedError(f"master {member_id} is not a voter and cannot lead", status=400)
        if member_id == self.node_id and self.is_leader():
            return member_id
        if not self.is_leader():
            raise NotLeaderError(self.leader_http())
        return int(await self._call(self.node.transfer_leadership(member_id, self.timeout)))

    async def step_down(self) -> int:
        if not self.is_leader():
            raise NotLeaderError(self.leader_http())
        target = step_down_target(self.node.status())
        if target is None:
            raise RejectedError(
                f"master {self.node_id} is the only member that can lead: no other voter "
                "can take over; add a master first (`quorumfs cluster add`)"
            )
        return int(await self._call(self.node.transfer_leadership(target, self.timeout)))

    async def close(self) -> None:
        if self._promoter is not None:
            self._promoter.cancel()
            await asyncio.gather(self._promoter, return_exceptions=True)
