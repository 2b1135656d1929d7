"""Run a worker script as two gloo ranks on CPU and collect what each rank saved (shared by the distributed tests).

A worker is called as ``python <worker> <rank> <world_size> <rendezvous file> <output file>`` and saves its record with
torch.save; ``run_two_ranks`` returns (the worker module, imported for its constants, and the two records).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_two_ranks(worker_path: Path, tmp_path: Path, timeout: float = 120) -> tuple[object, list[dict]]:
    import torch

    spec = importlib.util.spec_from_file_location(worker_path.stem, worker_path)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    init_file = tmp_path / "rendezvous"
    outs = [tmp_path / f"rank{r}.pt" for r in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker_path), str(r), "2", str(init_file), str(outs[r])],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for r in range(2)
    ]
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    return worker, [torch.load(out) for out in outs]
