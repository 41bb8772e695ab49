"""The Raft protocol: roles, terms, votes, replication, reads and membership.

``Raft`` is a deterministic state machine. It is driven by ``step`` (a
message), ``tick`` (one unit of logical time) and the persistence callback
``on_stable``; it answers by queueing messages in ``self.msgs`` and by moving
its log's committed index. ``RawNode`` (rawnode.py) packages those effects
into ``Ready`` batches; nothing here knows how they are persisted or sent.

Theory of operation
-------------------
One shared ``step`` handles what is common to every role: term comparison,
votes and pre-votes. Everything else goes to the role's own step function,
kept in ``self._step_role`` and swapped on every role change (``_step_leader``,
``_step_candidate``, ``_step_follower``), as is the tick function. There are
no ``if role == ...`` chains in the message path.

Safety rules and where they live (each can be switched off by a test-only
knob in ``TestingKnobs`` to prove it is load-bearing):

- Vote at most once per term, and persist it first: ``self.vote`` only
  changes in ``step`` together with ``term``; the driver persists the hard
  state before sending the vote (Ready contract).
- Vote only for a log at least as up to date as ours (§5.4.1):
  ``RaftLog.is_up_to_date``, checked for votes and pre-votes.
- Commit only entries of the current term by counting (§5.4.2):
  ``_maybe_commit`` passes ``self.term`` to ``RaftLog.maybe_commit``.
- Leader stickiness: a node that heard from a live leader within the minimum
  election timeout ignores (pre-)votes, unless the candidate comes from a
  leadership transfer. A node that has just (re)started behaves as if it had
  heard from a leader, because it may have promised a lease before crashing.
- Leases: a leader serves lease reads only until ``lease_tick`` ticks after
  sending a heartbeat round that a quorum acknowledged. Followers that
  acknowledged it will not vote for ``election_tick`` ticks after receiving
  it (stickiness), which is later than the lease ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from . import quorum
from .config import Config, RandomSource, ReadOnlyOption
from .errors import DroppedError
from .log import RaftLog
from .messages import (
    CAMPAIGN_TRANSFER,
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)
from .progress import Inflights, Progress, ProgressState
from .storage import CompactedError, Storage

__all__ = ["Raft"]

M = MessageType


@dataclass
class _ReadRequest:
    """A ReadIndex request waiting for a quorum to confirm this leader."""

    index: int
    context: bytes
    requester: int  # NONE for a local request, else the follower that forwarded it
    acks: set[int]


@dataclass
class _IncomingSnapshot:
    """Chunks of a snapshot received so far (follower side)."""

    index: int
    term: int
    data: bytearray


class Raft:
    def __init__(self, config: Config, storage: Storage, rng: RandomSource) -> None:
        config.validate()
        self.config = config
        self.id = config.id
        self.rng = rng
        self.knobs = config.knobs
        self.election_timeout = config.election_tick
        self.heartbeat_timeout = config.heartbeat_tick
        self.lease_ticks = config.effective_lease_tick()

        self.log = RaftLog(storage, config.max_apply_bytes)
        hard_state, conf_state = storage.initial_state()

        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []

        self.conf = ConfState()
        self.prs: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}

        # Ticks since this node started: the lease clock. Never reset.
        self.ticks = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout
        # True from a restart until an election timeout passes: the node may have
        # acknowledged a leader's heartbeat (promised it a lease) just before crashing.
        # Set below once the stored term shows that a leader may have existed.
        self._just_started = False

        # Leader only.
        self.lead_transferee = NONE
        # Invariant: no conf change is proposed while one at or below this index is unapplied.
        self.pending_conf_index = 0
        self._heartbeat_round = 0
        self._round_sent_at: dict[int, int] = {}  # heartbeat round -> tick it was sent
        self._read_queue: list[_ReadRequest] = []
        # Set once this term's leader started a leadership transfer; see _handle_transfer.
        self._lease_revoked = False
        self._pending_read_msgs: list[Message] = []  # before the first commit of the term
        self.broadcast_pending = False

        # Follower only.
        self._incoming_snapshot: _IncomingSnapshot | None = None

        self._step_role: Callable[[Message], None] = self._step_follower
        self._tick_role: Callable[[], None] = self._tick_election

        self._apply_conf_state(conf_state)
        if hard_state != HardState():
            self._load_hard_state(hard_state)
        # Term 1 is the bootstrap term (bootstrap.py): no leader was ever elected in it.
        self._just_started = self.term > 1
        self.become_follower(self.term, NONE)

    # -- introspection -----------------------------------------------------

    def hard_state(self) -> HardState:
        vote = NONE if self.knobs.forget_vote else self.vote
        return HardState(term=self.term, vote=vote, commit=self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(leader=self.lead, role=self.role)

    def promotable(self) -> bool:
        """May this node campaign? Voters may; learners, witnesses and non-members may not."""
        return self.id in self.conf.voters and self.id not in self.conf.witnesses

    def committed_in_current_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    def lease_remaining(self) -> int:
        """Ticks the leader lease still holds; 0 when this node holds none."""
        if self.knobs.ignore_lease_expiry and self._may_hold_lease():
            return self.lease_ticks
        until = self.lease_valid_until()
        return 0 if until is None else max(0, until - self.ticks)

    def lease_valid_until(self) -> int | None:
        """The tick (as counted by ``self.ticks``) at which the leader lease ends unless
        a quorum acknowledges a newer heartbeat round: ``lease_ticks`` after the newest
        round a quorum acknowledged was sent. It moves forward on every renewal.

        None when this node can hold no lease (it does not lead, a leadership transfer
        revoked the lease, nothing of its term is committed yet, CheckQuorum is off) or
        no acknowledged round is recent enough to count. Drivers use it to see leases
        being acquired, renewed and lapsing; reads use ``lease_remaining``.
        """
        if not self._may_hold_lease():
            return None
        acked_round = quorum.committed_index(
            self.conf.voters,
            lambda v: self._heartbeat_round if v == self.id else self._acked_round(v),
        )
        sent_at = self._round_sent_at.get(acked_round)
        return None if sent_at is None else sent_at + self.lease_ticks

    def _may_hold_lease(self) -> bool:
        return (
            self.role is Role.LEADER
            and not self._lease_revoked
            and self.config.check_quorum
            and self.committed_in_current_term()
        )

    def _acked_round(self, node: int) -> int:
        pr = self.prs.get(node)
        return pr.acked_round if pr is not None else 0

    # -- role changes ------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(
            0, self.election_timeout
        )
        self.lead_transferee = NONE
        self.votes = {}
        stable_last = self.log.unstable.offset - 1
        for node, pr in list(self.prs.items()):
            fresh = self._new_progress(node, pr.is_learner, pr.is_witness)
            if node == self.id:
                fresh.match = stable_last
            self.prs[node] = fresh
        self.pending_conf_index = 0
        self._read_queue = []
        self._pending_read_msgs = []
        self._round_sent_at = {}
        self._lease_revoked = False
        self.broadcast_pending = False

    def _new_progress(self, node: int, is_learner: bool, is_witness: bool) -> Progress:
        return Progress(
            self.log.last_index() + 1,
            Inflights(self.config.max_inflight_msgs, self.config.max_inflight_bytes),
            is_learner=is_learner,
            is_witness=is_witness,
        )

    def become_follower(self, term: int, lead: int) -> None:
        self._step_role = self._step_follower
        self._tick_role = self._tick_election
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def become_pre_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise AssertionError("a leader cannot become a pre-candidate")
        # A pre-candidate changes neither term nor vote: it only asks.
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election
        self.votes = {}
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE
        self._just_started = False

    def become_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise AssertionError("a leader cannot become a candidate")
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE
        self._just_started = False

    def become_leader(self) -> None:
        if self.role is Role.FOLLOWER:
            raise AssertionError("a follower cannot become leader without an election")
        self._step_role = self._step_leader
        self._tick_role = self._tick_heartbeat
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self.prs[self.id].become_replicate()
        # Conf changes in the uncommitted tail may be pending; be conservative.
        self.pending_conf_index = self.log.last_index()
        # The no-op entry: committing it commits everything before it (§5.4.2, §8).
        self._append_entries([Entry(0, 0)])
        self.broadcast_pending = True

    # -- ticks ---------------------------------------------------------------

    def tick(self) -> None:
        self.ticks += 1
        self._tick_role()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self._just_started = False
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(type=M.HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.config.check_quorum:
                if not self._quorum_active():
                    self.become_follower(self.term, NONE)  # CheckQuorum: we may be isolated
                    return
                for node, pr in self.prs.items():
                    pr.recent_active = node == self.id
            if self.lead_transferee != NONE:
                self.lead_transferee = NONE  # the transfer timed out
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_active(self) -> bool:
        votes = {node: pr.recent_active or node == self.id for node, pr in self.prs.items()}
        return quorum.vote_result(self.conf.voters, votes) is quorum.VoteResult.WON

    # -- the shared step -------------------------------------------------------

    def step(self, m: Message) -> None:
        if m.term > self.term and m.type not in _LOCAL:
            if m.type in (M.VOTE, M.PRE_VOTE):
                forced = m.context == CAMPAIGN_TRANSFER
                if not forced and self._in_lease():
                    return  # a live leader is around: do not let this candidate disrupt it
            if m.type is M.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type is M.PRE_VOTE_RESP and not m.reject:
                pass  # we bump the term only once the pre-vote is won
            elif m.type in (M.APP, M.HEARTBEAT, M.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif 0 < m.term < self.term:
            if m.type in (M.HEARTBEAT, M.APP) and (
                self.config.check_quorum or self.config.pre_vote
            ):
                # A stale leader, probably partitioned away: tell it our term so it steps
                # down, instead of letting it disrupt us later with pre-votes.
                self._send(Message(type=M.APP_RESP, to=m.frm))
            elif m.type is M.PRE_VOTE:
                self._send(Message(type=M.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True))
            return

        if m.type is M.HUP:
            self._hup(transfer=m.context == CAMPAIGN_TRANSFER)
        elif m.type in (M.VOTE, M.PRE_VOTE):
            self._handle_vote_request(m)
        else:
            self._step_role(m)

    def _in_lease(self) -> bool:
        if not self.config.check_quorum or self.knobs.ignore_leader_stickiness:
            return False
        heard_recently = self.election_elapsed < self.election_timeout
        return heard_recently and (self.lead != NONE or self._just_started)

    def _handle_vote_request(self, m: Message) -> None:
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type is M.PRE_VOTE and m.term > self.term)
        )
        skip_log_check = (
            self.knobs.pre_vote_skips_log_check
            if m.type is M.PRE_VOTE
            else self.knobs.vote_skips_log_check
        )
        up_to_date = skip_log_check or self.log.is_up_to_date(m.index, m.log_term)
        response = M.VOTE_RESP if m.type is M.VOTE else M.PRE_VOTE_RESP
        if can_vote and up_to_date:
            # A granted pre-vote answers with the term the candidate will use.
            self._send(Message(type=response, to=m.frm, term=m.term))
            if m.type is M.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(type=response, to=m.frm, term=self.term, reject=True))

    # -- elections -------------------------------------------------------------

    def _hup(self, transfer: bool) -> None:
        if self.role is Role.LEADER or not self.promotable():
            return
        if self._has_unapplied_conf_change():
            return  # our view of the membership may be stale
        if self.config.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _has_unapplied_conf_change(self) -> bool:
        lo = max(self.log.applied + 1, self.log.first_index())
        if lo > self.log.committed:
            return False
        return any(
            e.type is EntryType.CONF_CHANGE for e in self.log.slice(lo, self.log.committed + 1)
        )

    def _campaign(self, *, pre: bool, transfer: bool) -> None:
        if pre:
            self.become_pre_candidate()
            request, term = M.PRE_VOTE, self.term + 1
        else:
            self.become_candidate()
            request, term = M.VOTE, self.term
        if self._record_vote(self.id, True) is quorum.VoteResult.WON:
            self._won_election(pre)
            return
        context = CAMPAIGN_TRANSFER if transfer else b""
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for voter in sorted(self.conf.voters):
            if voter != self.id:
                self._send(
                    Message(
                        type=request,
                        to=voter,
                        term=term,
                        index=last_index,
                        log_term=last_term,
                        context=context,
                    )
                )

    def _record_vote(self, node: int, granted: bool) -> quorum.VoteResult:
        self.votes.setdefault(node, granted)
        return quorum.vote_result(self.conf.voters, self.votes)

    def _won_election(self, pre: bool) -> None:
        if pre:
            self._campaign(pre=False, transfer=False)
        else:
            self.become_leader()

    # -- candidate ---------------------------------------------------------------

    def _step_candidate(self, m: Message) -> None:
        expected = M.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else M.VOTE_RESP
        if m.type is M.PROP:
            raise DroppedError("proposal", "no leader: an election is in progress")
        if m.type in (M.APP, M.HEARTBEAT, M.SNAP):
            # A leader exists in our term (or a newer one, handled in step).
            self.become_follower(m.term, m.frm)
            self._step_follower(m)
        elif m.type is expected:
            result = self._record_vote(m.frm, not m.reject)
            if result is quorum.VoteResult.WON:
                self._won_election(self.role is Role.PRE_CANDIDATE)
            elif result is quorum.VoteResult.LOST:
                self.become_follower(self.term, NONE)
        elif m.type is M.READ_INDEX:
            raise DroppedError("read", "no leader: an election is in progress")
        # Everything else (TIMEOUT_NOW, stale responses) is ignored.

    # -- follower --------------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        if m.type is M.PROP:
            if self.lead == NONE:
                raise DroppedError("proposal", "no leader known")
            if self.config.disable_proposal_forwarding:
                raise DroppedError("proposal", "not the leader and forwarding is disabled")
            self._send(Message(type=M.PROP, to=self.lead, entries=m.entries))
        elif m.type in (M.APP, M.HEARTBEAT, M.SNAP):
            self.election_elapsed = 0
            self.lead = m.frm
            if m.type is M.APP:
                self._handle_append(m)
            elif m.type is M.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot_chunk(m)
        elif m.type is M.TRANSFER_LEADER:
            if self.lead == NONE:
                raise DroppedError("transfer", "no leader known")
            self._send(Message(type=M.TRANSFER_LEADER, to=self.lead, frm=m.frm))
        elif m.type is M.TIMEOUT_NOW:
            # The leader hands over to us: campaign at once, past pre-vote and leases.
            if self.promotable():
                self._hup(transfer=True)
        elif m.type is M.READ_INDEX:
            if self.lead == NONE:
                raise DroppedError("read", "no leader known")
            # Keep the original requester so the answer goes back to it.
            requester = m.frm if m.frm != NONE else self.id
            self._send(Message(type=M.READ_INDEX, to=self.lead, frm=requester, context=m.context))
        elif m.type is M.READ_INDEX_RESP and not m.reject:
            self.read_states.append(ReadState(index=m.index, context=m.context))

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(type=M.APP_RESP, to=m.frm, index=self.log.committed))
            return
        last = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last is not None:
            self._send(Message(type=M.APP_RESP, to=m.frm, index=last))
            return
        # Mismatch: name the latest place our logs could agree, so the leader can
        # skip a whole term's run of entries per round trip instead of one entry.
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index()), m.log_term
        )
        self._send(
            Message(
                type=M.APP_RESP,
                to=m.frm,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self._send(Message(type=M.HEARTBEAT_RESP, to=m.frm, index=m.index, context=m.context))

    def _handle_snapshot_chunk(self, m: Message) -> None:
        assert m.snapshot is not None
        meta = m.snapshot.meta
        incoming = self._incoming_snapshot
        if m.snap_offset == 0:
            incoming = self._incoming_snapshot = _IncomingSnapshot(
                meta.index, meta.term, bytearray()
            )
        if (
            incoming is None
            or (incoming.index, incoming.term) != (meta.index, meta.term)
            or m.snap_offset != len(incoming.data)
        ):
            held = (
                len(incoming.data) if incoming is not None and incoming.index == meta.index else 0
            )
            self._send(
                Message(type=M.SNAP_RESP, to=m.frm, index=meta.index, reject=True, reject_hint=held)
            )
            return
        incoming.data += m.snapshot.data
        if not m.snap_done:
            self._send(
                Message(
                    type=M.SNAP_RESP, to=m.frm, index=meta.index, reject_hint=len(incoming.data)
                )
            )
            return
        self._incoming_snapshot = None
        snapshot = Snapshot(meta=meta, data=bytes(incoming.data))
        if self._restore(snapshot):
            self._send(Message(type=M.APP_RESP, to=m.frm, index=self.log.last_index()))
        else:
            self._send(Message(type=M.APP_RESP, to=m.frm, index=self.log.committed))

    def _restore(self, snapshot: Snapshot) -> bool:
        """Install a snapshot from the leader. False if it brings nothing new."""
        meta = snapshot.meta
        if meta.index <= self.log.committed:
            return False
        if self.log.match_term(meta.index, meta.term):
            # We already have the entries; just learn that they are committed.
            self.log.commit_to(meta.index)
            return False
        self.log.restore(snapshot)
        self.prs = {}
        self._apply_conf_state(meta.conf_state)
        return True

    # -- leader ------------------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        if m.type is M.PROP:
            self._propose(m.entries)
            return
        if m.type is M.READ_INDEX:
            self._handle_read_index(m)
            return
        if m.type is M.TRANSFER_LEADER:
            self._handle_transfer(m.frm)
            return
        pr = self.prs.get(m.frm)
        if pr is None:
            return  # not (or no longer) a member
        if m.type is M.APP_RESP:
            pr.recent_active = True
            self._handle_append_response(m, pr)
        elif m.type is M.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            pr.acked_round = max(pr.acked_round, m.index)
            if pr.stalled(self.log.last_index()):
                pr.become_probe()
            if pr.match < self.log.last_index() or pr.state is not ProgressState.REPLICATE:
                # In PROBE even an empty append is worth sending: it is the probe.
                self._send_append(m.frm, pr, send_if_empty=True)
            if m.context:
                self._ack_read(m.frm, m.context)
        elif m.type is M.SNAP_RESP:
            pr.recent_active = True
            if pr.state is ProgressState.SNAPSHOT and m.index == pr.pending_snapshot:
                pr.snapshot_offset = m.reject_hint
                self._send_snapshot_chunk(m.frm, pr)
        elif m.type is M.UNREACHABLE and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def _propose(self, entries: tuple[Entry, ...]) -> None:
        if self.id not in self.prs:
            raise DroppedError("proposal", "this node was removed from the group")
        if self.lead_transferee != NONE:
            raise DroppedError("proposal", "leadership is being transferred")
        changes = [i for i, e in enumerate(entries) if e.type is EntryType.CONF_CHANGE]
        if len(changes) > 1:
            raise DroppedError("membership change", "one membership change at a time")
        if changes:
            self._check_conf_change(ConfChange.decode(entries[changes[0]].data))
            self.pending_conf_index = self.log.last_index() + changes[0] + 1
        self._append_entries(entries)
        self.broadcast_pending = True

    def _check_conf_change(self, change: ConfChange) -> None:
        if self.pending_conf_index > self.log.applied:
            raise DroppedError("membership change", "another membership change is still pending")
        conf = self.conf
        node = change.node_id
        if node == NONE:
            raise DroppedError("membership change", "node id 0 is reserved")
        if change.type is ConfChangeType.REMOVE_NODE:
            if node not in conf.members():
                raise DroppedError("membership change", f"node {node} is not a member")
            if conf.voters == {node}:
                raise DroppedError("membership change", "cannot remove the last voter")
        elif change.type is ConfChangeType.ADD_VOTER and node in conf.voters:
            if node not in conf.witnesses:
                raise DroppedError("membership change", f"node {node} is already a voter")
        elif change.type is ConfChangeType.ADD_LEARNER and node in conf.learners:
            raise DroppedError("membership change", f"node {node} is already a learner")
        elif change.type is ConfChangeType.ADD_WITNESS and node in conf.members():
            raise DroppedError("membership change", f"node {node} is already a member")

    def _append_entries(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        last = self.log.last_index()
        term = self.term
        stamped = [Entry(last + i, term, e.type, e.data) for i, e in enumerate(entries, start=1)]
        self.log.append(stamped)

    def on_stable(self, index: int) -> None:
        """The driver persisted our log up to ``index``: as leader, that is our own ack."""
        if self.role is Role.LEADER:
            pr = self.prs.get(self.id)
            if pr is not None and pr.maybe_update(index) and self._maybe_commit():
                self.broadcast_pending = True

    def _maybe_commit(self) -> bool:
        index = quorum.committed_index(self.conf.voters, self._match_of)
        if self.knobs.commit_any_term:
            if index > self.log.committed and index <= self.log.last_index():
                self.log.commit_to(index)
                committed = True
            else:
                committed = False
        else:
            committed = self.log.maybe_commit(index, self.term)
        if committed and self._pending_read_msgs and self.committed_in_current_term():
            pending, self._pending_read_msgs = self._pending_read_msgs, []
            for m in pending:
                self._handle_read_index(m)
        return committed

    def _match_of(self, node: int) -> int:
        pr = self.prs.get(node)
        return pr.match if pr is not None else 0

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm, pr, send_if_empty=True)
            return
        was_paused = pr.is_paused()
        if not (
            pr.maybe_update(m.index) or (pr.match == m.index and pr.state is ProgressState.PROBE)
        ):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            pr.become_probe()
            pr.become_replicate()
        elif pr.state is ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self.broadcast_pending = True
        elif was_paused or pr.match < self.log.last_index():
            self._send_all_appends(m.frm, pr)
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send(Message(type=M.TIMEOUT_NOW, to=m.frm))

    def flush_broadcast(self) -> None:
        """Send what accumulated since the last Ready: new entries and the commit index.

        Proposals between two Readys are batched into one append per follower.
        """
        if not self.broadcast_pending:
            return
        self.broadcast_pending = False
        if self.role is not Role.LEADER:
            return
        for node, pr in self.prs.items():
            if node != self.id:
                self._send_append(node, pr, send_if_empty=True)
                self._send_all_appends(node, pr)

    def _send_all_appends(self, node: int, pr: Progress) -> None:
        while pr.next <= self.log.last_index() and self._send_append(node, pr, send_if_empty=False):
            pass

    def _send_append(self, to: int, pr: Progress, *, send_if_empty: bool) -> bool:
        if pr.state is ProgressState.SNAPSHOT:
            self._send_snapshot_chunk(to, pr)
            return False
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        try:
            prev_term = self.log.term(prev_index)
            entries = self.log.entries_from(pr.next, self.config.max_size_per_msg)
        except CompactedError:
            if not pr.recent_active:
                return False  # do not stream a snapshot to a node that may be down
            pr.become_snapshot(self.log.snapshot().meta.index)
            self._send_snapshot_chunk(to, pr)
            return False
        if not entries and not send_if_empty:
            return False
        size = 0
        for entry in entries:
            size += len(entry.data)
        if pr.is_witness:
            entries = [_metadata_only(e) for e in entries]
        self._send(
            Message(
                type=M.APP,
                to=to,
                index=prev_index,
                log_term=prev_term,
                entries=tuple(entries),
                commit=self.log.committed,
            )
        )
        pr.sent_entries(entries[-1].index if entries else prev_index, size)
        return True

    def _send_snapshot_chunk(self, to: int, pr: Progress) -> None:
        snapshot = self.log.snapshot()
        if snapshot.is_empty():
            raise AssertionError("log compacted without a snapshot")
        if pr.pending_snapshot != snapshot.meta.index:
            pr.become_snapshot(snapshot.meta.index)  # a newer snapshot: start over
        offset = pr.snapshot_offset
        chunk = snapshot.data[offset : offset + self.config.snapshot_chunk_bytes]
        data = b"" if pr.is_witness else chunk
        done = pr.is_witness or offset + len(chunk) >= len(snapshot.data)
        self._send(
            Message(
                type=M.SNAP,
                to=to,
                snapshot=Snapshot(meta=snapshot.meta, data=data),
                snap_offset=0 if pr.is_witness else offset,
                snap_done=done,
            )
        )

    def _broadcast_heartbeat(self, context: bytes = b"") -> None:
        if not context and self._read_queue:
            context = self._read_queue[-1].context
        self._heartbeat_round += 1
        self._round_sent_at[self._heartbeat_round] = self.ticks
        horizon = self.ticks - self.lease_ticks
        for old in [r for r, at in self._round_sent_at.items() if at < horizon]:
            del self._round_sent_at[old]
        for node, pr in self.prs.items():
            if node != self.id:
                self._send(
                    Message(
                        type=M.HEARTBEAT,
                        to=node,
                        index=self._heartbeat_round,
                        commit=min(pr.match, self.log.committed),
                        context=context,
                    )
                )

    # -- leadership transfer -------------------------------------------------------

    def _handle_transfer(self, transferee: int) -> None:
        pr = self.prs.get(transferee)
        if pr is None or pr.is_learner or pr.is_witness:
            raise DroppedError("transfer", f"node {transferee} is not a voter that can lead")
        if transferee == self.id:
            return  # already leading
        if self.lead_transferee == transferee:
            return  # already under way
        self.lead_transferee = transferee
        self.election_elapsed = 0  # the transfer is abandoned after one election timeout
        # No more lease reads in this term, even if the transfer is abandoned. The
        # TimeoutNow we send may arrive late: say the transfer times out here, a new
        # heartbeat round is acknowledged by a quorum (renewing the lease), and only
        # then the TimeoutNow reaches the transferee, whose forced election rightly
        # ignores the promises voters made us. It wins while we still trust the lease.
        # ReadIndex has no such hole: it confirms leadership after each read arrives.
        self._lease_revoked = True
        if pr.match == self.log.last_index():
            self._send(Message(type=M.TIMEOUT_NOW, to=transferee))
        else:
            self._send_append(transferee, pr, send_if_empty=True)

    # -- reads ---------------------------------------------------------------------

    def _handle_read_index(self, m: Message) -> None:
        requester = m.frm if m.frm not in (NONE, self.id) else NONE
        if len(self.conf.voters) == 1 and self.id in self.conf.voters:
            self._release_read(_ReadRequest(self.log.committed, m.context, requester, set()))
            return
        if not self.committed_in_current_term():
            # Our commit index may lag the true one until our first entry commits.
            self._pending_read_msgs.append(m)
            return
        if self.config.read_only is ReadOnlyOption.LEASE and self.lease_remaining() > 0:
            self._release_read(_ReadRequest(self.log.committed, m.context, requester, set()))
            return
        if any(r.context == m.context for r in self._read_queue):
            return
        self._read_queue.append(_ReadRequest(self.log.committed, m.context, requester, {self.id}))
        self._broadcast_heartbeat(m.context)

    def _ack_read(self, node: int, context: bytes) -> None:
        for position, request in enumerate(self._read_queue):
            if request.context != context:
                continue
            request.acks.add(node)
            votes = dict.fromkeys(request.acks, True)
            if quorum.vote_result(self.conf.voters, votes) is quorum.VoteResult.WON:
                # Leadership confirmed after every earlier request arrived: release them too.
                released, self._read_queue = (
                    self._read_queue[: position + 1],
                    self._read_queue[position + 1 :],
                )
                for done in released:
                    self._release_read(done)
            return

    def _release_read(self, request: _ReadRequest) -> None:
        if request.requester == NONE:
            self.read_states.append(ReadState(index=request.index, context=request.context))
        else:
            self._send(
                Message(
                    type=M.READ_INDEX_RESP,
                    to=request.requester,
                    index=request.index,
                    context=request.context,
                )
            )

    # -- membership --------------------------------------------------------------------

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        """The application applied a committed membership change: make it effective."""
        voters, learners, witnesses = (
            set(self.conf.voters),
            set(self.conf.learners),
            set(self.conf.witnesses),
        )
        node = change.node_id
        if change.type is ConfChangeType.ADD_VOTER:
            learners.discard(node)
            witnesses.discard(node)
            voters.add(node)
        elif change.type is ConfChangeType.ADD_WITNESS:
            learners.discard(node)
            voters.add(node)
            witnesses.add(node)
        elif change.type is ConfChangeType.ADD_LEARNER:
            voters.discard(node)
            witnesses.discard(node)
            learners.add(node)
        else:
            voters.discard(node)
            learners.discard(node)
            witnesses.discard(node)
        if not voters:
            raise AssertionError("a membership change removed every voter")
        conf = ConfState(frozenset(voters), frozenset(learners), frozenset(witnesses))
        self._apply_conf_state(conf)
        if self.role is Role.LEADER:
            if self.id not in self.conf.voters:
                # Removed (or demoted): hand the group to the others.
                self.become_follower(self.term, NONE)
            else:
                if self.lead_transferee not in (NONE, *self.conf.voters):
                    self.lead_transferee = NONE
                # A smaller quorum may commit more; new members need their first append.
                self._maybe_commit()
                self.broadcast_pending = True
        return conf

    def _apply_conf_state(self, conf: ConfState) -> None:
        self.conf = conf
        for node in list(self.prs):
            if node not in conf.members():
                del self.prs[node]
        for node in sorted(conf.members()):
            learner, witness = node in conf.learners, node in conf.witnesses
            pr = self.prs.get(node)
            if pr is None:
                pr = self.prs[node] = self._new_progress(node, learner, witness)
                if node == self.id:
                    pr.match = self.log.unstable.offset - 1
            pr.is_learner, pr.is_witness = learner, witness

    # -- helpers ---------------------------------------------------------------------------

    def _load_hard_state(self, hard_state: HardState) -> None:
        if hard_state.commit > self.log.last_index():
            raise AssertionError(
                f"hard state commit {hard_state.commit} is past the last index "
                f"{self.log.last_index()}: committed entries are missing from storage"
            )
        self.term = hard_state.term
        self.vote = hard_state.vote
        # A snapshot persisted just before a crash can be newer than the stored commit
        # index; the snapshot itself proves its entries committed.
        self.log.committed = max(self.log.committed, hard_state.commit)

    def _send(self, m: Message) -> None:
        """Queue ``m`` stamped with our id and (unless it is a forwarded request) our term."""
        stamp: dict[str, int] = {}
        if m.frm == NONE:
            stamp["frm"] = self.id
        if m.term == 0 and m.type not in _TERMLESS:
            stamp["term"] = self.term
        self.msgs.append(msgspec.structs.replace(m, **stamp) if stamp else m)


_LOCAL = frozenset({M.HUP, M.PROP, M.TRANSFER_LEADER, M.UNREACHABLE})
# Forwarded requests carry no term: they are valid whatever term the receiver is in.
_TERMLESS = frozenset({M.PROP, M.READ_INDEX, M.TRANSFER_LEADER})


def _metadata_only(entry: Entry) -> Entry:
    """What a witness stores: index, term and type; membership changes in full."""
    if entry.type is EntryType.CONF_CHANGE or not entry.data:
        return entry
    return Entry(entry.index, entry.term, entry.type, b"")
