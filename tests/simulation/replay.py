"""Replay one simulator seed, optionally printing its trace.

    .venv/bin/python tests/simulation/replay.py --seed 1234 [--trace] [--knob forget_vote]

The configuration is derived from the seed exactly as the test suite derives
it (``SimConfig.randomized``); ``--knob`` switches one safety rule off, as the
load-bearing tests do, with the fault mix those tests use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from scenarios import config_for
from simulator import run_seed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--knob", default=None, help="a TestingKnobs field to switch on")
    parser.add_argument("--trace", action="store_true", help="print the run's events")
    args = parser.parse_args()
    config = config_for(args.seed, args.knob)
    print(f"seed {args.seed}: {config}")
    try:
        stats = run_seed(config, trace=print if args.trace else None)
    except AssertionError as error:
        print(f"VIOLATION: {error}")
        return 1
    print(f"ok: {stats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
