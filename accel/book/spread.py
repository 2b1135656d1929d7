"""How far each compared smoke metric moves between CPUs, thread counts and seeds: the measurement behind the tolerances
that the chapters declare (``make spread``).

    python -m accel.book.spread [--levels default avx2 avx512] [--seeds 0 1 2] [--fresh] [notebooks/01_x.ipynb ...]

A CPU without AVX-512 differs from one with it in three places, each of which picks its vector code on its own: torch's
own kernels (``ATEN_CPU_CAPABILITY``), MKL's matrix products (``MKL_ENABLE_INSTRUCTIONS``) and oneDNN's convolutions
(``ONEDNN_MAX_CPU_ISA``). So each instruction-set level is run twice: as a whole machine of that level (all three
capped) and with torch's kernels alone capped (what ``ATEN_CPU_CAPABILITY`` does by itself); the CPU's own level runs as
it is. Levels above what this CPU offers are skipped. One more run uses one intra-op thread (the thread count changes
how reductions split). Every chapter runs in the smoke profile once per (configuration, seed), each in a fresh process.
For each metric that the chapter compares it reports

* ``kernel_spread``: the largest change that the machine alone causes (max over seeds of the range over configurations
  at that seed) — what a machine other than the one that wrote the reference can see;
* ``seed_spread``: the range over seeds on the native configuration — the scale of a chaotic metric;
* the tolerance the chapter declares, and ``margin``: tolerance / kernel_spread (tests require at least 1.5).

``flipping_claims`` names the claims compared by outcome whose outcome differs between configurations at one seed (the
regression cannot compare those). Runs are merged into data/results/smoke_spread.json by configuration, so a later call
with other levels or seeds adds to what is there; tests/test_notebooks.py checks every declared tolerance against it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from .build import chapters
from .regression import load, reference_path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "data" / "results" / "smoke_spread.json"
LEVELS = ("default", "avx2", "avx512")
# Each level as a whole machine: torch's kernels, MKL and oneDNN capped to the same instruction set.
MACHINE_ENV = {
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
CAP_KEYS = tuple(MACHINE_ENV["default"])


def available_levels() -> list[str]:
    """The instruction-set levels this CPU can run, up to the one torch picks by itself."""
    import torch

    best = torch.backends.cpu.get_cpu_capability().lower()
    return list(LEVELS[: LEVELS.index(best) + 1]) if best in LEVELS else ["default"]


def configurations(levels: list[str], seeds: list[int]) -> list[tuple[str, int, dict]]:
    """(name, seed, environment) for every run: each level as a whole machine and as torch's kernels alone, at every
    seed; plus one thread on the native level at the first seed."""
    native = levels[-1]
    configs = []
    for seed in seeds:
        for level in levels:
            if level == native:  # this CPU as it is: every library picks its own code
                configs.append((f"seed={seed} {level}", seed, {}))
                continue
            configs.append((f"seed={seed} {level}", seed, MACHINE_ENV[level]))
            configs.append((f"seed={seed} {level} torch-only", seed, {"ATEN_CPU_CAPABILITY": level}))
    configs.append((f"seed={seeds[0]} {native} threads=1", seeds[0], {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}))
    return configs


def run_one(notebook: Path, seed: int, env_update: dict, out_dir: Path) -> dict:
    """One smoke run in a fresh process with the given environment and seed: its results, or the error."""
    env = {k: v for k, v in os.environ.items() if k not in CAP_KEYS and k != "ACCEL_PROFILE"}
    env.update(env_update)
    code = ("import json, sys; from pathlib import Path; from accel.book.regression import run_smoke; "
            "r = run_smoke(Path(sys.argv[1]), Path(sys.argv[2]), seed=int(sys.argv[3])); print(json.dumps(r))")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(notebook), str(out_dir), str(seed)], env=env,
                          capture_output=True, text=True)
    seconds = round(time.perf_counter() - started, 1)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed", "seconds": seconds}
    return {"results": json.loads(done.stdout.strip().splitlines()[-1]), "seconds": seconds}


def _seed(config: str) -> int:
    return int(config.split()[0].removeprefix("seed="))


def summarize(notebook: str, runs: dict[str, dict]) -> dict:
    """From {config: {"metrics": {name: value}, "claims": {name: passed}, "declared": {name: (abs, rel)}}}: per
    compared metric its values, kernel_spread, seed_spread, tolerance (the reference's, else as declared in the runs)
    and margin; the flipping claims."""
    reference = load(reference_path(notebook)) if reference_path(notebook).exists() else {"metrics": {}}
    declared = {n: tuple(t) for run in runs.values() for n, t in run["declared"].items()}
    declared.update({n: (m["abs"], m["rel"]) for n, m in reference["metrics"].items()})  # what the test compares with
    native = max((c for c in runs if " " in c and len(c.split()) == 2), key=lambda c: LEVELS.index(c.split()[1]),
                 default=None)
    native_level = native.split()[1] if native else None
    metrics = {}
    for name, (abs_tol, rel_tol) in sorted(declared.items()):
        if abs_tol is None and rel_tol is None:
            continue
        values = {c: run["metrics"].get(name) for c, run in runs.items()}
        numeric = {c: v for c, v in values.items() if isinstance(v, (int, float))}
        by_seed: dict[int, list[float]] = {}
        for c, v in numeric.items():
            by_seed.setdefault(_seed(c), []).append(v)
        kernel_spread = max((max(v) - min(v) for v in by_seed.values() if len(v) > 1), default=None)
        on_native = [v for c, v in numeric.items() if c.split()[1:] == [native_level]]
        seed_spread = (max(on_native) - min(on_native)) if len(on_native) > 1 else None
        value = reference["metrics"].get(name, {}).get("value")
        allowed = max(abs_tol or 0.0, (rel_tol or 0.0) * abs(value)) if isinstance(value, (int, float)) else None
        metrics[name] = {"values": values, "kernel_spread": kernel_spread, "seed_spread": seed_spread,
                         "abs": abs_tol, "rel": rel_tol, "allowed": allowed,
                         "margin": (allowed / kernel_spread) if kernel_spread and allowed is not None else None}
    claims: dict[str, dict[str, bool]] = {}
    for c, run in runs.items():
        for name, passed in run["claims"].items():
            claims.setdefault(name, {})[c] = passed
    flipping = []
    for name, seen in claims.items():
        by_seed: dict[int, set] = {}
        for c, passed in seen.items():
            by_seed.setdefault(_seed(c), set()).add(passed)
        if any(len(outcomes) > 1 for outcomes in by_seed.values()):
            flipping.append(name)
    return {"metrics": metrics, "claims": claims, "flipping_claims": sorted(flipping)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="chapters (default: all)")
    parser.add_argument("--levels", nargs="*", default=None, help="default: every level this CPU offers")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--skip-stored", action="store_true", help="run only the configurations not yet stored")
    parser.add_argument("--fresh", action="store_true",
                        help="forget the chapter's stored runs first (its code changed: they measured old code)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    levels = args.levels or available_levels()
    configs = configurations(levels, args.seeds)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report.setdefault("chapters", {})
    with tempfile.TemporaryDirectory() as tmp:
        for notebook in chapters(args.notebooks or None):
            chapter = report["chapters"].setdefault(notebook.stem, {})
            if args.fresh:
                chapter.clear()
            runs = chapter.setdefault("runs", {})
            for name, seed, env in configs:
                if args.skip_stored and "error" not in runs.get(name, {"error": None}):
                    continue
                run = run_one(notebook, seed, env, Path(tmp) / notebook.stem / name.replace(" ", "_"))
                if "error" in run:
                    runs[name] = {"error": run["error"], "seconds": run["seconds"], "env": env}
                    print(f"{notebook.stem} [{name}]: {run['seconds']:.0f} s, FAILED: {run['error']}", flush=True)
                    continue
                results = run["results"]
                runs[name] = {
                    "seconds": run["seconds"], "env": env, "cpu_capability": results["versions"].get("cpu_capability"),
                    "metrics": {n: m["value"] for n, m in results["metrics"].items()},
                    "declared": {n: [m["abs"], m["rel"]] for n, m in results["metrics"].items()},
                    "claims": {n: c["passed"] for n, c in results["claims"].items() if c.get("compare", True)},
                }
                print(f"{notebook.stem} [{name}]: {run['seconds']:.0f} s, {runs[name]['cpu_capability']}", flush=True)
            chapter.update(summarize(notebook.stem, {c: r for c, r in runs.items() if "error" not in r}))
            report.update(levels=levels, written=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
            for name, m in chapter["metrics"].items():
                flag = "" if m["margin"] is None or m["margin"] >= 1.5 else "  <-- tolerance too tight"
                print(f"  {name}: kernel spread {m['kernel_spread']}, seed spread {m['seed_spread']}, "
                      f"allowed {m['allowed']}{flag}")
            for name in chapter["flipping_claims"]:
                print(f"  claim flips between configurations at one seed: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
