"""Every safety rule is load-bearing: switch one off and the simulator finds a violation.

Each knob of ``TestingKnobs`` disables one rule; ``scenarios.KNOB_PROFILES``
gives the environment that exposes it. The search is deterministic (seeds
from 0), so the seed it finds is the same on every run; that seed must pass
with the rule back on, which shows the rule is what made the difference.
Pre-vote's log check is a liveness rule and is shown by a scripted test in
``tests/raft/test_raft_features.py``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from scenarios import KNOB_PROFILES, config_for
from simulator import run_seed

from quorumfs.raft import TestingKnobs

SEED_BUDGET = 300


@pytest.mark.parametrize("knob", sorted(KNOB_PROFILES))
def test_switching_off_a_safety_rule_lets_the_simulator_find_a_violation(knob: str) -> None:
    for seed in range(SEED_BUDGET):
        config = config_for(seed, knob)
        try:
            run_seed(config)
        except AssertionError:
            run_seed(replace(config, knobs=TestingKnobs()))  # passes with the rule on
            return
    pytest.fail(f"no violation in {SEED_BUDGET} seeds with {knob} switched off")


def test_every_knob_has_a_profile() -> None:
    knobs = set(vars(TestingKnobs()))
    assert set(KNOB_PROFILES) == knobs - {"pre_vote_skips_log_check"}
