"""``lease.log``: one node's leader leases and leadership changes, one line per event.

This module owns two things: deriving the events from the consensus core's
state (``LeaseWatch``), and writing them, rotated, to a file (``LeaseLog``;
the master keeps it as ``lease.log`` in its directory, 10 MiB per file,
``lease.log.1`` .. ``lease.log.5`` the older ones). The core stays pure: it
only exposes what it already knows (role, term, leader, vote, the transfer
target, and ``Raft.lease_valid_until``, the tick at which the lease ends
unless renewed); the clocks are read here. ``RaftNode`` calls
``LeaseLog.observe`` after every batch of ticks, and whenever it takes a
Ready (before sending its messages), so an event is seen within one tick,
and a leadership transfer is seen before its TimeoutNow leaves. Between
ticks only a change of role, term, leader or transfer target is worth a
look (a lease lapses on a tick, and a renewal waits for the next one): that
check is all a Ready costs.

Line format, fixed and greppable (fields in this order, values without spaces;
the line is wrapped here)::

    2026-11-22T06:00:00.123456Z mono=5815.021337 node=2 term=7 event=lease-acquired
        leader=2 lease_ms=400 since_elected_ms=21

- wall time (UTC, ISO 8601, microseconds) for people, from the master's
  ``clock.WallClock`` (the host's clock, unless a fault test shifted it);
  ``mono``, seconds on the monotonic clock (``time.monotonic``), is what lease
  timing uses: compare ``mono`` values within one master's file (one boot of
  one host);
- ``node``, ``term`` (the term the event belongs to: a step-down carries
  the term that was led), ``event``, then the event's own fields:

=================  ===================================================================
event              fields, and when
=================  ===================================================================
started            role leader tick_ms election_ms lease_ms: the node (re)started
term-change        prev_term role leader reason [candidate]: a new term; reason is
                   ``campaign`` (this node stood), ``heard-leader`` (the new term's
                   leader), ``vote-request`` (voted for ``candidate``) or
                   ``newer-term`` (any other message of a newer term)
leader-known       leader role: the leader of the current term became known here
lease-acquired     leader lease_ms since_elected_ms: this node leads and a quorum
                   acknowledged a heartbeat round of its term (its no-op committed)
lease-renewal-gap  gap_ms threshold_ms left_ms: two lease renewals (a quorum
                   acknowledging a newer heartbeat round) were more than half the
                   lease apart; ``left_ms`` is what the lease had left when renewed
lease-lapsed       since_contact_ms lease_ms: still leading, no renewal for the whole
                   lease: reads now go through ReadIndex
lease-revoked      reason to: a leadership transfer gave the lease up at once
step-down          reason role leader [to]: this node stopped leading; reason is
                   ``transfer`` (to ``to``), ``check-quorum`` (no quorum heard within
                   an election timeout), ``removed`` (no longer a voter) or
                   ``higher-term`` (a newer term's leader or candidate)
=================  ===================================================================

``leader`` is a node id or ``none``; ``role`` is the core's (``LEADER``,
``FOLLOWER``, ``CANDIDATE``, ``PRE_CANDIDATE``). Durations are whole
milliseconds; those counted in ticks (``lease_ms``, ``left_ms``,
``since_contact_ms``) are ticks times the tick length.
"""

from __future__ import annotations

import logging
import logging.handlers
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from quorumfs.raft import NONE, Role
from quorumfs.raft.raft import Raft

__all__ = [
    "LEASE_LOG_BACKUPS",
    "LEASE_LOG_BYTES",
    "LeaseEvent",
    "LeaseLog",
    "LeaseWatch",
    "format_line",
]

LEASE_LOG_BYTES = 10 * 1024 * 1024
"""A lease log file is rotated once it would grow past this."""
LEASE_LOG_BACKUPS = 5
"""Rotated files kept (``lease.log.1`` is the newest of them)."""

Field = tuple[str, int | str]


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    mono: float
    """When it was observed, on the monotonic clock (seconds)."""
    node: int
    term: int
    event: str
    fields: tuple[Field, ...] = ()


def format_line(event: LeaseEvent, wall: float) -> str:
    """The event as one ``lease.log`` line (no newline); ``wall`` is seconds since the
    epoch (``WallClock.time()``)."""
    stamp = datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    head = f"{stamp} mono={event.mono:.6f} node={event.node} term={event.term} event={event.event}"
    return " ".join([head, *(f"{key}={value}" for key, value in event.fields)])


def _node(node_id: int) -> int | str:
    return node_id if node_id != NONE else "none"


class LeaseWatch:
    """Turns successive observations of one core (``raft``) into ``LeaseEvent``s.

    No clock and no I/O: the caller says when each observation happens (``now``,
    monotonic seconds) and how long a tick is; the first observation is ``started``.
    """

    def __init__(self, raft: Raft, tick_interval: float) -> None:
        self._raft = raft
        self._tick_ms = tick_interval * 1000
        self._threshold = tick_interval * raft.lease_ticks / 2
        """Renewals further apart than this (seconds: half the lease) are reported."""
        self._started = False
        self._term = raft.term
        self._role = raft.role
        self._lead = raft.lead
        self._transferee = NONE
        self._until: int | None = None
        """``Raft.lease_valid_until`` at the last observation; None if no lease held then."""
        self._renewed_at = 0.0
        self._leading_since = 0.0

    def observe(self, now: float, *, ticked: bool = True) -> list[LeaseEvent]:
        """What changed since the last observation. ``ticked``: the core ticked since."""
        r = self._raft
        if not ticked and self._started:
            seen = (self._role, self._term, self._lead, self._transferee)
            if (r.role, r.term, r.lead, r.lead_transferee) == seen:
                return []
        events: list[LeaseEvent] = []

        def add(term: int, event: str, *fields: Field) -> None:
            events.append(LeaseEvent(now, r.id, term, event, fields))

        role, term, lead = r.role, r.term, r.lead
        until = r.lease_valid_until()
        if until is not None and until <= r.ticks:
            until = None  # lapsed
        held = self._until if term == self._term else None
        if not self._started:
            self._started = True
            add(
                term,
                "started",
                ("role", role.value),
                ("leader", _node(lead)),
                ("tick_ms", round(self._tick_ms)),
                ("election_ms", self._ms(r.election_timeout)),
                ("lease_ms", self._ms(r.lease_ticks)),
            )
        stepped_down = self._role is Role.LEADER and role is not Role.LEADER
        step_down_reason = self._step_down_reason() if stepped_down else ""
        if held is not None and until is None:
            if role is Role.LEADER and r.lead_transferee != NONE:
                add(term, "lease-revoked", ("reason", "transfer"), ("to", r.lead_transferee))
            elif role is Role.LEADER or step_down_reason == "check-quorum":
                # CheckQuorum waits an election timeout, longer than the lease: it lapsed.
                since_contact = r.ticks - (held - r.lease_ticks)
                add(
                    term,
                    "lease-lapsed",
                    ("since_contact_ms", self._ms(since_contact)),
                    ("lease_ms", self._ms(r.lease_ticks)),
                )
        if stepped_down:
            fields: list[Field] = [
                ("reason", step_down_reason),
                ("role", role.value),
                ("leader", _node(lead)),
            ]
            if self._transferee != NONE:
                fields.append(("to", self._transferee))
            add(self._term, "step-down", *fields)
        if term != self._term:
            reason, extra = self._term_change_reason()
            add(
                term,
                "term-change",
                ("prev_term", self._term),
                ("role", role.value),
                ("leader", _node(lead)),
                ("reason", reason),
                *extra,
            )
        elif lead not in (self._lead, NONE):
            add(term, "leader-known", ("leader", lead), ("role", role.value))
        if role is Role.LEADER and (self._role is not Role.LEADER or term != self._term):
            self._leading_since = now
        if until is not None:
            if held is None:
                add(
                    term,
                    "lease-acquired",
                    ("leader", r.id),
                    ("lease_ms", self._ms(r.lease_ticks)),
                    ("since_elected_ms", round((now - self._leading_since) * 1000)),
                )
                self._renewed_at = now
            elif until > held:
                gap = now - self._renewed_at
                if gap > self._threshold:
                    add(
                        term,
                        "lease-renewal-gap",
                        ("gap_ms", round(gap * 1000)),
                        ("threshold_ms", round(self._threshold * 1000)),
                        ("left_ms", self._ms(max(0, held - r.ticks))),
                    )
                self._renewed_at = now
        self._term, self._role, self._lead = term, role, lead
        self._transferee = r.lead_transferee
        self._until = until
        return events

    def _ms(self, ticks: int) -> int:
        return round(ticks * self._tick_ms)

    def _step_down_reason(self) -> str:
        r = self._raft
        if r.id not in r.conf.voters:
            return "removed"
        if self._transferee != NONE:
            return "transfer"
        return "check-quorum" if r.term == self._term else "higher-term"

    def _term_change_reason(self) -> tuple[str, tuple[Field, ...]]:
        r = self._raft
        if r.vote == r.id and r.role in (Role.CANDIDATE, Role.LEADER):
            return "campaign", ()
        if r.lead != NONE:
            return "heard-leader", ()
        if r.vote != NONE:
            return "vote-request", (("candidate", r.vote),)
        return "newer-term", ()


class LeaseLog:
    """``LeaseWatch`` on the real clocks, writing to a rotated file at ``path``. ``mono``
    times the events; ``wall`` (the master's ``WallClock.time``) only stamps the lines."""

    def __init__(
        self,
        path: Path,
        raft: Raft,
        tick_interval: float,
        *,
        max_bytes: int = LEASE_LOG_BYTES,
        backups: int = LEASE_LOG_BACKUPS,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._watch = LeaseWatch(raft, tick_interval)
        self._mono = mono
        self._wall = wall
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )

    def observe(self, *, ticked: bool = True) -> None:
        events = self._watch.observe(self._mono(), ticked=ticked)
        if not events:
            return
        wall = self._wall()
        for event in events:
            # A record without args is written as given: no %-formatting of the line.
            record = logging.makeLogRecord({"msg": format_line(event, wall)})
            self._handler.handle(record)

    def close(self) -> None:
        self._handler.close()
