"""``make gpu-check``: every chapter in the ``gpu`` profile and every benchmark on CUDA, recorded under data/results/.

    python -m accel.book.gpu_check [notebooks/01_infobatch.ipynb ...] [--skip-benchmarks]

Each chapter runs in a fresh kernel (``accel.book.build``) into build/gpu/; its results file, which records the
device, versions, commit and seconds, is copied to ``data/results/<chapter>.gpu.json``. Each benchmark under
tests/benchmarks runs with ``--device cuda`` where it takes one and writes ``data/results/bench_<name>.gpu.json``.
Refuses to start without a CUDA device: a gpu-profile run on a CPU would take hours and prove nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "data" / "results"
BENCHMARKS = ROOT / "tests" / "benchmarks"


def benchmark_command(script: Path, out: Path) -> list[str]:
    """The command that runs one benchmark on CUDA and writes its JSON to ``out``."""
    command = [sys.executable, str(script), "--out", str(out)]
    if "--device" in script.read_text():
        command += ["--device", "cuda"]
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="chapters to run (default: every notebooks/NN_*.ipynb)")
    parser.add_argument("--skip-benchmarks", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "build" / "gpu"))
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(f"make gpu-check needs a CUDA device; this torch ({torch.__version__}) sees none. Nothing was run.",
              file=sys.stderr)
        return 2
    from .build import chapters, execute, summary

    out_dir, rows = Path(args.out).resolve(), []
    RESULTS.mkdir(parents=True, exist_ok=True)
    for notebook in chapters(args.notebooks):
        results_path, seconds = execute(notebook, out_dir, "gpu")
        shutil.copyfile(results_path, RESULTS / f"{notebook.stem}.gpu.json")
        rows.append((notebook.stem, seconds, json.loads(results_path.read_text())))
        print(f"{notebook.stem}: {seconds / 60:.1f} min -> {RESULTS / f'{notebook.stem}.gpu.json'}", flush=True)
    print(summary(rows))
    if not args.skip_benchmarks:
        for script in sorted(BENCHMARKS.glob("bench_*.py")):
            out = RESULTS / f"{script.stem}.gpu.json"
            start = time.perf_counter()
            done = subprocess.run(benchmark_command(script, out), cwd=ROOT)
            print(f"{script.stem}: exit {done.returncode}, {time.perf_counter() - start:.0f} s -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
