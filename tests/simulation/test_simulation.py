"""The simulator over hundreds of seeds, each with its own mix of faults.

A failure names its seed and the command that replays it with a trace.
``make sim-long`` runs 20,000 seeds (tests/simulation/run_seeds.py).
"""

from __future__ import annotations

import pytest
from scenarios import config_for
from simulator import FAULT_COUNTERS, Simulation, describe_failure, run_seed

DEFAULT_SEEDS = 500


@pytest.mark.parametrize("seed", range(DEFAULT_SEEDS))
def test_seed(seed: int) -> None:
    config = config_for(seed)
    try:
        run_seed(config)
    except AssertionError as error:
        pytest.fail(describe_failure(config, error), pytrace=False)


def test_a_seed_replays_exactly() -> None:
    config = config_for(17)
    first, second = Simulation(config), Simulation(config)
    assert first.run() == second.run()
    assert first.history == second.history
    assert first.applied_log == second.applied_log


def test_runs_exercise_every_kind_of_fault() -> None:
    # Guard against a simulator that quietly stopped injecting faults.
    totals: dict[str, int] = {}
    for seed in range(40):
        stats = run_seed(config_for(seed))
        for name, value in vars(stats).items():
            totals[name] = totals.get(name, 0) + value
    for fault in FAULT_COUNTERS:
        assert totals[fault] > 0, fault
    assert totals["leader_changes"] > 40
    assert totals["ops_ok"] > 10_000
