"""Statistics benchmark: the paired bootstrap at the study's size (GSM8k test, 1,319 items; 10,000 resamples), which
`compare` runs once per task and checkpoint pair. Target: under 1 s (it is vectorized: one resample matrix, no Python
loop per resample). A timing lives here, not in the tests, where a loaded machine would make it flake.
    python bench/stats_bench.py [--items 1319] [--resamples 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nexus_eval.comparison.stats import paired_bootstrap  # noqa: E402

TARGET_S = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1319)
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    base = (rng.random(args.items) < 0.30).astype(float)
    other = (rng.random(args.items) < 0.32).astype(float)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        paired_bootstrap(base, other, resamples=args.resamples)
        times.append(time.perf_counter() - start)
    best = min(times)
    verdict = "meets" if best < TARGET_S else "MISSES"
    print(f"paired bootstrap, {args.items} items × {args.resamples} resamples: best of {args.repeats} {best:.3f} s "
          f"({verdict} the {TARGET_S:g} s target)")  # fmt: skip
    print(json.dumps({"items": args.items, "resamples": args.resamples, "seconds": times, "target_s": TARGET_S}))


if __name__ == "__main__":
    main()
