"""The nemesis suite (issue #6): real processes, faults, a checked history.

``test_nemesis_short`` (part of ``make test``): 3 rounds of 40 s on 3 masters (each in
its own network namespace: the test needs root) and 3 volume servers, with every kind of
``harness.FAULT_KINDS`` at least once. ``test_nemesis_long`` (``soak`` marker, ``make
nemesis-long``) runs ``NEMESIS_ROUNDS`` rounds (30 by default), half on 3 masters and
half on 5. ``NEMESIS_SEED`` fixes the seed (the schedule's order and the clients'
choices; the timing of real processes is not replayable). Each run's report is
``artifacts/nemesis/<run>.txt``, with the processes' logs beside it after an anomaly.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest
from harness import FAULT_KINDS, RunResult, run_rounds

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "nemesis"


def _seed() -> int:
    return int(os.environ.get("NEMESIS_SEED") or random.randrange(1_000_000))


def _run(
    tmp_path: Path, name: str, *, rounds: int, duration: float, clients: int, masters: int = 3
) -> RunResult:
    seed = _seed()
    run_name = f"{name}-{masters}m-{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}"
    result = asyncio.run(
        run_rounds(
            tmp_path,
            rounds=rounds,
            duration=duration,
            clients=clients,
            masters=masters,
            seed=seed,
            run_name=run_name,
            artifacts=ARTIFACTS,
        )
    )
    print(result.report)
    assert not result.anomalies, f"anomaly found (report: {result.report_path}):\n{result.report}"
    assert len(result.rounds) == rounds
    return result


@pytest.mark.timeout(600)
def test_nemesis_short(tmp_path: Path) -> None:
    result = _run(tmp_path, "short", rounds=3, duration=40.0, clients=4)
    done = {f.kind for r in result.rounds for f in r.faults}
    assert done == set(FAULT_KINDS), f"faults not injected: {set(FAULT_KINDS) - done}"
    records = [rec for r in result.rounds for rec in r.records]
    acked = {
        kind: sum(1 for rec in records if rec.kind == kind and rec.outcome == "ok")
        for kind in ("put", "read", "create", "rename")
    }
    # Enough happened for the checks to mean something (a stalled cluster fails here).
    assert acked["put"] >= 100 and acked["read"] >= 100, acked
    assert acked["create"] >= 10 and acked["rename"] >= 10, acked


@pytest.mark.soak
@pytest.mark.timeout(int(os.environ.get("NEMESIS_ROUNDS") or 30) * 90 + 600)
@pytest.mark.parametrize("masters", [3, 5])
def test_nemesis_long(tmp_path: Path, masters: int) -> None:
    rounds = int(os.environ.get("NEMESIS_ROUNDS") or 30)
    _run(tmp_path, "long", rounds=(rounds + 1) // 2, duration=40.0, clients=4, masters=masters)
