"""Which simulator configuration a seed runs with: shared by the tests and replay.py.

Each safety knob gets the environment most likely to expose the rule it
switches off; the same seeds with the knob off must pass.
"""

from __future__ import annotations

from dataclasses import replace

from simulator import Faults, SimConfig

from quorumfs.raft import ReadOnlyOption, TestingKnobs

_STORMY = Faults(
    drop=0.1,
    duplicate=0.03,
    max_delay_steps=30,
    partitions=True,
    crashes=True,
    nemesis_every_ticks=8,
    max_down_ticks=8,
)

KNOB_PROFILES: dict[str, dict[str, object]] = {
    # A voter that forgets its vote across a quick restart votes twice in a term.
    "forget_vote": {"voters": 3, "pre_vote": False, "faults": replace(_STORMY, drop=0.2)},
    # Figure 8 of the Raft paper: leaders that die between persisting and sending
    # leave old-term entries on a few nodes, replicated one entry per message.
    "commit_any_term": {
        "pre_vote": False,
        "max_size_per_msg": 1,
        "faults": Faults(
            drop=0.05,
            max_delay_steps=30,
            crashes=True,
            crash_before_send=0.15,
            nemesis_every_ticks=30,
            max_down_ticks=5,
        ),
    },
    # An old leader partitioned away keeps serving after its lease lapsed.
    "ignore_lease_expiry": {
        "read_only": ReadOnlyOption.LEASE,
        "faults": replace(_STORMY, crashes=False, partition_kinds=("isolate-leader",)),
    },
    # Without pre-vote, a candidate with a stale log can win if voters skip the check.
    "vote_skips_log_check": {"pre_vote": False, "faults": _STORMY},
    # Followers that vote while their leader is alive elect a second leader
    # while the first still holds a lease.
    "ignore_leader_stickiness": {
        "read_only": ReadOnlyOption.LEASE,
        "faults": replace(_STORMY, crashes=False, partition_kinds=("bridge",)),
    },
}


def config_for(seed: int, knob: str | None = None) -> SimConfig:
    """The randomized configuration of ``seed``; with ``knob``, the hunt for its violation."""
    if knob is None:
        return SimConfig.randomized(seed)
    return replace(
        SimConfig.randomized(seed, **KNOB_PROFILES[knob]),
        knobs=TestingKnobs(**{knob: True}),
    )
