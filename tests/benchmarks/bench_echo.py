"""Benchmark (run on demand): the echo stage's own overhead, and how close a pipeline gets to the law.

    python tests/benchmarks/bench_echo.py [--items 200000] [--out results.json]

1. Overhead: items/s through ``accel.echo.echo`` on a fast source (a range), against iterating the source alone,
   for e in {1, 2, 4} with and without a shuffle buffer.
2. Achieved throughput: steps/s of chapter 02's pipeline (slow decode in one worker, device-side echo) as a fraction
   of min(e · upstream rate, downstream rate), at R ≈ 3: with the rates measured inside the same run (the worker's
   CPU per fresh batch, the step's time) and with the rates probed alone just before (see chapter.law_check).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from accel.echo import echo
from accel.experiments import echo as chapter


def stage_overhead(items: int) -> list[dict]:
    start = time.perf_counter()
    for _ in range(items):
        pass
    plain = items / (time.perf_counter() - start)
    rows = []
    for factor in (1, 2, 4):
        for buffer in (0, 1024):
            start = time.perf_counter()
            count = sum(1 for _ in echo(range(items), factor, shuffle_buffer=buffer, seed=0))
            rate = count / (time.perf_counter() - start)
            rows.append({"factor": factor, "shuffle_buffer": buffer, "items/s": rate, "source items/s": plain,
                         "overhead per item (µs)": 1e6 * (1 / rate - 1 / plain)})
            print(f"echo e={factor} buffer={buffer:5d}: {rate / 1e6:6.2f} M items/s "
                  f"({1e6 * (1 / rate - 1 / plain):.2f} µs per item over the bare source)")
    return rows


def achieved_throughput() -> list[dict]:
    cfg = chapter.config("cpu", law_ratios=(3.0,), law_factors=(1, 2, 3, 4), law_repeats=3)
    data = chapter.load_data(cfg)
    rows = chapter.law_check(cfg, data, torch.device("cpu"), show_progress=False)
    for r in rows:
        print(f"R={r['R']:.1f} e={r['echo factor']:g}: {r['measured steps/s']:.1f} steps/s = "
              f"{r['measured / modelled']:.0%} of the bound from this run's rates "
              f"({r['measured / probed law']:.0%} of the bound from rates probed alone)")
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    report = {"stage": stage_overhead(args.items), "pipeline": achieved_throughput()}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
    return report


if __name__ == "__main__":
    main()
