"""How far each compared smoke metric moves between CPU kernels, thread counts and seeds: the measurement behind the
tolerances that the chapters declare (``make spread``).

    python -m accel.book.spread [--capabilities default avx2 avx512] [--seeds 0 1 2] [notebooks/01_infobatch.ipynb ...]

Every chapter runs in the smoke profile once per (``ATEN_CPU_CAPABILITY``, seed), each in a fresh kernel, plus once
with one intra-op thread (the vector kernels of a machine are not the only thing that moves a float: the number of
threads changes how reductions split). Capabilities this CPU lacks are skipped (torch falls back silently, which would
measure nothing). For each metric that the chapter compares it reports

* ``kernel_spread``: the largest change that the kernels and the thread count alone cause (max over seeds of the range
  over configurations at that seed) — what a machine other than the one that wrote the reference can see;
* ``seed_spread``: the range over seeds on one configuration — the scale of a chaotic metric, for which three kernels
  are too few samples of how far a rounding difference can carry;
* the tolerance the chapter declares, and ``margin``: tolerance / kernel_spread (it must stay above 1, with room).

Claims compared by outcome are listed with every outcome seen; ``flipping_claims`` names those whose outcome differs
between configurations at one seed (the regression cannot compare those). The report goes to
data/results/smoke_spread.json; tests/test_notebooks.py checks every declared tolerance against it.
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
CAPABILITIES = ("default", "avx2", "avx512")
OUT = ROOT / "data" / "results" / "smoke_spread.json"


def available_capabilities() -> list[str]:
    """The ATEN_CPU_CAPABILITY values this CPU can run (torch uses the best one unless told otherwise)."""
    import torch

    best = torch.backends.cpu.get_cpu_capability().lower()
    order = ["default", "avx2", "avx512"] if best.startswith(("avx", "default")) else ["default", best]
    return order[: order.index(best) + 1] if best in order else ["default", best]


def run_one(notebook: Path, capability: str, seed: int, threads: int | None, out_dir: Path) -> dict:
    """One smoke run in a fresh process with the given kernels, seed and (optionally) thread count."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    env.pop("ACCEL_PROFILE", None)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    code = ("import json, sys; from pathlib import Path; from accel.book.regression import run_smoke; "
            "r = run_smoke(Path(sys.argv[1]), Path(sys.argv[2]), seed=int(sys.argv[3])); print(json.dumps(r))")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(notebook), str(out_dir), str(seed)], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed", "seconds": seconds}
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return {"results": results, "seconds": seconds}


def summarize(notebook: str, runs: list[dict]) -> dict:
    """Per compared metric: values by configuration, kernel_spread, seed_spread, the declared tolerance, margin."""
    reference = load(reference_path(notebook)) if reference_path(notebook).exists() else None
    ok = [r for r in runs if "results" in r]
    metrics = {}
    names = sorted({n for r in ok for n, m in r["results"]["metrics"].items()
                    if m["abs"] is not None or m["rel"] is not None})
    for name in names:
        values = {r["config"]: r["results"]["metrics"].get(name, {}).get("value") for r in ok}
        numeric = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        by_seed: dict[int, list[float]] = {}
        for r in ok:
            if r["config"] in numeric:
                by_seed.setdefault(r["seed"], []).append(numeric[r["config"]])
        kernel_spread = max((max(v) - min(v) for v in by_seed.values() if len(v) > 1), default=None)
        first_config = ok[0]["config"].split(" ", 1)[1] if ok else ""
        same_config = [v for k, v in numeric.items() if k.endswith(first_config)]
        seed_spread = (max(same_config) - min(same_config)) if len(same_config) > 1 else None
        declared = ok[-1]["results"]["metrics"][name]
        value = (reference or {}).get("metrics", {}).get(name, {}).get("value", declared["value"])
        allowed = max(declared["abs"] or 0.0, (declared["rel"] or 0.0) * abs(value)) if isinstance(value, float) else 0
        worst = max((abs(v - value) for v in numeric.values()), default=None) if isinstance(value, float) else None
        metrics[name] = {"values": values, "kernel_spread": kernel_spread, "seed_spread": seed_spread,
                         "abs": declared["abs"], "rel": declared["rel"], "allowed": allowed,
                         "worst_from_reference": worst,
                         "margin": (allowed / kernel_spread) if kernel_spread else None}
    claims = {}
    for r in ok:
        for name, claim in r["results"]["claims"].items():
            if claim.get("compare", True):
                claims.setdefault(name, {})[r["config"]] = claim["passed"]
    return {"runs": [{k: r[k] for k in ("config", "seconds") if k in r} | ({"error": r["error"]} if "error" in r
                     else {}) for r in runs],
            "metrics": metrics, "claims": claims,
            "flipping_claims": sorted(n for n, seen in claims.items() if _flips_at_one_seed(seen, ok))}


def _flips_at_one_seed(outcomes: dict[str, bool], runs: list[dict]) -> bool:
    """Whether a claim's outcome differs between configurations that share a seed (kernels or threads flip it)."""
    by_seed: dict[int, set] = {}
    for r in runs:
        if r["config"] in outcomes:
            by_seed.setdefault(r["seed"], set()).add(outcomes[r["config"]])
    return any(len(seen) > 1 for seen in by_seed.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="chapters (default: all)")
    parser.add_argument("--capabilities", nargs="*", default=None, help="default: every one this CPU offers")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    capabilities = args.capabilities or available_capabilities()
    best = capabilities[-1]
    configs = [(cap, seed, None) for seed in args.seeds for cap in capabilities]
    configs.append((best, args.seeds[0], 1))
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report.setdefault("chapters", {})
    with tempfile.TemporaryDirectory() as tmp:
        for notebook in chapters(args.notebooks or None):
            runs = []
            for capability, seed, threads in configs:
                config = f"seed={seed} {capability}" + (f" threads={threads}" if threads else "")
                run = run_one(notebook, capability, seed, threads, Path(tmp) / notebook.stem / config.replace(" ", "_"))
                run.update(config=config, seed=seed)
                runs.append(run)
                status = run.get("error") or f"{run['results']['versions'].get('cpu_capability', '?')} ok"
                print(f"{notebook.stem} [{config}]: {run['seconds']:.0f} s, {status}", flush=True)
            report["chapters"][notebook.stem] = summarize(notebook.stem, runs)
            report["capabilities"] = capabilities
            report["seeds"] = args.seeds
            report["written"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1) + "\n")
            for name, m in report["chapters"][notebook.stem]["metrics"].items():
                flag = "" if m["margin"] is None or m["margin"] >= 1.5 else "  <-- tolerance too tight"
                print(f"  {name}: kernel spread {m['kernel_spread']}, seed spread {m['seed_spread']}, "
                      f"allowed {m['allowed']:.4g}{flag}")
            for name in report["chapters"][notebook.stem]["flipping_claims"]:
                print(f"  claim flips between configurations: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
