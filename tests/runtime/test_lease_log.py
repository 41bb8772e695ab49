"""The lease log's events, derived from the core in the scripted ``Cluster`` on a fake clock.

Each node is watched where ``RaftNode`` watches it: after each tick and each Ready
taken. The fake monotonic clock of a node is its tick count times ``TICK``, so every
duration in an event is exact. Then the line format, the rotated file, and the wall
time of a line from the master's ``WallClock`` (which a fault test may shift).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path

from cluster import Cluster

from quorumfs.raft import ConfChange, ConfChangeType, ReadOnlyOption
from quorumfs.runtime.clock import WallClock
from quorumfs.runtime.lease_log import LeaseEvent, LeaseLog, LeaseWatch, format_line

TICK = 0.05
LEASE_MS = 400  # the default lease: election_tick - 2 = 8 ticks of 50 ms


class Watched:
    """A scripted cluster whose every node has a ``LeaseWatch``; ``events[n]`` grows."""

    def __init__(self, size: int = 3) -> None:
        self.c = Cluster(size, read_only=ReadOnlyOption.LEASE)
        self.watches = {n: LeaseWatch(node.raft, TICK) for n, node in self.c.nodes.items()}
        self.events: dict[int, list[LeaseEvent]] = {n: [] for n in self.c.nodes}
        self.c.observers.append(self.observe)
        for n in self.c.nodes:
            self.observe(n, ticked=True)

    def observe(self, node_id: int, ticked: bool) -> None:
        now = self.c.nodes[node_id].raft.ticks * TICK
        self.events[node_id] += self.watches[node_id].observe(now, ticked=ticked)

    def take(self, node_id: int) -> list[tuple[str, dict[str, int | str]]]:
        """The node's events since the last take: (event, fields), the term as a field."""
        taken, self.events[node_id] = self.events[node_id], []
        return [(e.event, {"term": e.term, **dict(e.fields)}) for e in taken]

    def names(self, node_id: int) -> list[str]:
        return [event for event, _ in self.take(node_id)]


def elected(w: Watched, leader: int = 1) -> None:
    """``leader`` wins term 2 and holds the lease; the events so far are taken."""
    w.c.elect(leader)
    w.c.tick([leader], times=2)  # a heartbeat round acknowledged, seen on the next tick
    for n in w.c.nodes:
        w.take(n)


def test_an_election_logs_the_new_term_the_leader_and_the_lease_everywhere() -> None:
    w = Watched()
    assert w.take(2) == [
        (
            "started",
            {
                "term": 1,
                "role": "FOLLOWER",
                "leader": "none",
                "tick_ms": 50,
                "election_ms": 500,
                "lease_ms": LEASE_MS,
            },
        )
    ]
    w.take(1)
    w.c.elect(1)
    w.c.tick([1], times=2)
    assert w.take(1) == [
        (
            "term-change",
            {
                "term": 2,
                "prev_term": 1,
                "role": "CANDIDATE",
                "leader": "none",
                "reason": "campaign",
            },
        ),
        ("leader-known", {"term": 2, "leader": 1, "role": "LEADER"}),
        ("lease-acquired", {"term": 2, "leader": 1, "lease_ms": LEASE_MS, "since_elected_ms": 100}),
    ]
    assert w.take(2) == [
        (
            "term-change",
            {
                "term": 2,
                "prev_term": 1,
                "role": "FOLLOWER",
                "leader": "none",
                "reason": "vote-request",
                "candidate": 1,
            },
        ),
        ("leader-known", {"term": 2, "leader": 1, "role": "FOLLOWER"}),
    ]
    w.c.tick(times=5)  # steady heartbeats: nothing to report
    assert w.take(1) == w.take(2) == []


def test_an_isolated_leader_logs_its_lease_lapsing_then_its_step_down() -> None:
    w = Watched()
    elected(w)
    w.c.isolate(1)
    lapsed_at = None
    while w.c.role(1).value == "LEADER":
        w.c.tick([1])
        if lapsed_at is None and w.events[1]:
            lapsed_at = w.c.nodes[1].raft.ticks
    events = w.take(1)
    assert [e for e, _ in events] == ["lease-lapsed", "step-down"]
    # The last renewal was seen one tick before the cut; the round it renewed was sent a
    # tick earlier still. The lease ends lease_ticks after that send.
    assert events[0][1] == {"term": 2, "since_contact_ms": LEASE_MS, "lease_ms": LEASE_MS}
    assert events[1][1] == {
        "term": 2,
        "reason": "check-quorum",
        "role": "FOLLOWER",
        "leader": "none",
    }
    assert lapsed_at is not None and lapsed_at < w.c.nodes[1].raft.ticks


def test_a_paused_leader_that_catches_up_logs_both_the_lapse_and_the_step_down() -> None:
    w = Watched()
    elected(w)
    w.c.observers.clear()  # a paused process: its ticks run in one go when it resumes
    w.c.isolate(1)
    w.c.tick([1], times=25)
    w.observe(1, ticked=True)
    assert w.take(1) == [
        ("lease-lapsed", {"term": 2, "since_contact_ms": 26 * 50, "lease_ms": LEASE_MS}),
        ("step-down", {"term": 2, "reason": "check-quorum", "role": "FOLLOWER", "leader": "none"}),
    ]


def test_a_late_renewal_is_logged_as_a_gap_and_a_prompt_one_is_not() -> None:
    w = Watched()
    elected(w)
    w.c.isolate(1)
    w.c.tick([1], times=2)  # 3 ticks between renewals: 150 ms, under half the lease
    w.c.heal()
    w.c.tick([1], times=2)
    assert w.take(1) == []
    w.c.isolate(1)
    w.c.tick([1], times=5)  # 6 ticks: 300 ms, over half the lease (200 ms), under the lease
    w.c.heal()
    w.c.tick([1], times=2)
    # The renewal before the cut was of the round sent at the tick before it: that lease
    # ran 8 ticks from then, and 1 of them was left when the next renewal was seen.
    assert w.take(1) == [
        ("lease-renewal-gap", {"term": 2, "gap_ms": 300, "threshold_ms": 200, "left_ms": 50})
    ]


def test_a_transfer_logs_the_lease_revoked_the_step_down_and_the_new_leaders_lease() -> None:
    w = Watched()
    elected(w)
    w.c.nodes[1].transfer_leadership(3)
    w.c.stabilize()
    w.c.tick([3], times=2)
    assert w.take(1) == [
        ("lease-revoked", {"term": 2, "reason": "transfer", "to": 3}),
        (
            "step-down",
            {"term": 2, "reason": "transfer", "role": "FOLLOWER", "leader": "none", "to": 3},
        ),
        (
            "term-change",
            {
                "term": 3,
                "prev_term": 2,
                "role": "FOLLOWER",
                "leader": "none",
                "reason": "vote-request",
                "candidate": 3,
            },
        ),
        ("leader-known", {"term": 3, "leader": 3, "role": "FOLLOWER"}),
    ]
    assert w.names(3) == ["term-change", "leader-known", "lease-acquired"]


def test_a_leader_that_hears_a_newer_term_logs_why_it_stepped_down() -> None:
    w = Watched()
    elected(w)
    w.c.isolate(1)
    w.c.tick([2, 3], times=40)  # they elect one of them; node 1 does not tick: still leads
    [new] = [n for n in (2, 3) if w.c.role(n).value == "LEADER"]
    w.c.heal()
    w.c.tick([new])  # its heartbeat reaches node 1
    events = w.take(1)
    assert [e for e, _ in events] == ["step-down", "term-change"]
    assert events[0][1]["reason"] == "higher-term"
    assert events[1][1]["reason"] == "heard-leader"
    assert events[1][1]["leader"] == new


def test_a_removed_leader_logs_its_step_down() -> None:
    w = Watched()
    elected(w)
    w.c.nodes[1].propose_membership(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    w.c.stabilize()
    assert ("step-down", "removed") in [(e, f.get("reason")) for e, f in w.take(1)]


def test_the_line_format() -> None:
    event = LeaseEvent(5815.0213374, 2, 7, "step-down", (("reason", "transfer"), ("to", 3)))
    assert format_line(event, 1_795_324_800.123456) == (
        "2026-11-22T05:20:00.123456Z mono=5815.021337 node=2 term=7 event=step-down "
        "reason=transfer to=3"
    )


LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z mono=\d+\.\d{6} node=\d+ term=\d+ "
    r"event=[a-z-]+( [a-z_]+=[A-Za-z0-9_-]+)*"
)


def test_the_log_file_is_written_line_by_line_and_rotated(tmp_path: Path) -> None:
    c = Cluster(3, read_only=ReadOnlyOption.LEASE)
    path = tmp_path / "lease.log"
    clock = iter(range(1_000_000))
    log = LeaseLog(
        path, c.nodes[1].raft, TICK, max_bytes=400, backups=2, mono=lambda: float(next(clock))
    )
    c.observers.append(lambda n, ticked: log.observe(ticked=ticked) if n == 1 else None)
    log.observe()
    assert "event=started" in path.read_text()
    c.elect(1)
    leader = 1
    for target in (2, 1, 3, 1):  # leadership goes round: node 1 logs events every time
        c.tick([leader], times=2)
        c.nodes[leader].transfer_leadership(target)
        c.stabilize()
        leader = target
    log.close()
    files = [path, tmp_path / "lease.log.1", tmp_path / "lease.log.2"]
    assert all(f.exists() and f.stat().st_size <= 400 for f in files)
    assert not (tmp_path / "lease.log.3").exists()
    lines = [line for f in reversed(files) for line in f.read_text().splitlines()]
    assert lines and all(LINE.fullmatch(line) for line in lines), lines
    monos = [float(line.split()[1].removeprefix("mono=")) for line in lines]
    assert monos == sorted(monos)
    assert any("event=step-down reason=transfer" in line for line in lines)


def test_a_line_is_stamped_by_the_masters_wall_clock_and_a_jump_moves_only_the_stamp(
    tmp_path: Path,
) -> None:
    c = Cluster(3, read_only=ReadOnlyOption.LEASE)
    path = tmp_path / "lease.log"
    clock = WallClock(offset=3600)
    log = LeaseLog(
        path, c.nodes[1].raft, TICK, mono=lambda: c.nodes[1].raft.ticks * TICK, wall=clock.time
    )
    c.observers.append(lambda n, ticked: log.observe(ticked=ticked) if n == 1 else None)
    log.observe()
    clock.offset = -3600  # back two hours, between two events
    c.elect(1)
    c.tick([1], times=2)
    log.close()

    def stamp(line: str) -> float:
        wall = datetime.strptime(line.split(maxsplit=1)[0], "%Y-%m-%dT%H:%M:%S.%fZ")
        return wall.replace(tzinfo=UTC).timestamp()

    lines = path.read_text().splitlines()
    assert "event=started" in lines[0]
    assert abs(stamp(lines[0]) - (time.time() + 3600)) < 60
    later = lines[1:]
    assert any("event=lease-acquired" in line for line in later)
    assert all(abs(stamp(line) - (time.time() - 3600)) < 60 for line in later)
    # The events are timed on the monotonic clock, which did not jump.
    monos = [float(line.split()[1].removeprefix("mono=")) for line in lines]
    assert monos == sorted(monos)


def test_the_wall_clock_is_the_hosts_plus_the_offset() -> None:
    clock = WallClock()
    assert abs(clock.time() - time.time()) < 1
    clock.offset = -86_400.5
    before = time.time_ns()
    ns, seconds, ms = clock.time_ns(), clock.time(), clock.time_ms()
    after = time.time_ns()
    assert before - 86_400_500_000_000 <= ns <= after - 86_400_500_000_000
    assert abs(seconds - ns / 1e9) < 1
    assert abs(ms - ns // 1_000_000) < 1000
