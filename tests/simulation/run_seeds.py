"""Run many simulator seeds in parallel and print what was exercised.

    .venv/bin/python tests/simulation/run_seeds.py --count 20000 [--first 100000] [--jobs 2]

Prints the seeds run, the faults injected by kind, the operations checked and
the time taken; exits 1 after listing the replay command of every failing seed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from scenarios import config_for
from simulator import FAULT_COUNTERS, describe_failure, run_seed

BATCH = 50


def _run_batch(first: int) -> tuple[Counter[str], list[str]]:
    totals: Counter[str] = Counter()
    failures: list[str] = []
    for seed in range(first, first + BATCH):
        config = config_for(seed)
        try:
            stats = run_seed(config)
        except AssertionError as error:
            failures.append(describe_failure(config, error))
            continue
        totals.update({k: v for k, v in vars(stats).items() if v})
        totals["seeds_passed"] += 1
    return totals, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    totals: Counter[str] = Counter()
    failures: list[str] = []
    batches = range(args.first, args.first + args.count, BATCH)
    with ProcessPoolExecutor(args.jobs) as pool:
        for done, (batch_totals, batch_failures) in enumerate(pool.map(_run_batch, batches), 1):
            totals.update(batch_totals)
            failures.extend(batch_failures)
            print(
                f"\r{done * BATCH}/{args.count} seeds, {len(failures)} failing", end="", flush=True
            )
    elapsed = time.monotonic() - started
    print()
    print(
        f"seeds run:          {done * BATCH} ({totals['seeds_passed']} passed) in {elapsed:.0f} s"
    )
    print(f"simulated ticks:    {totals['steps'] // 10}")
    print(f"operations checked: {totals['ops_ok']} ok + {totals['ops_unknown']} unknown outcome")
    print(f"leader changes:     {totals['leader_changes']}")
    for fault in FAULT_COUNTERS:
        print(f"  {fault + ':':22s}{totals[fault]}")
    for failure in failures:
        print(f"\nFAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
