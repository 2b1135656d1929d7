"""Benchmark (run on demand): the cost of CowClip in a CTR training step, dense and sparse embedding gradients.

    python tests/benchmarks/bench_cowclip.py [--batch-size 16384] [--rows 1000000] [--dim 10] [--fields 26]
                                             [--modes dense sparse] [--absent-rows clip] [--repeats 15]
                                             [--device cpu] [--out x.json]

The model is a small CTR network defined here: 26 categorical fields with per-field offsets into one table of --rows
rows (field sizes spread geometrically over four decades, like Criteo's, summing to --rows), dim-10 field embeddings
flattened into an MLP 400-400-400 -> 1 (ReLU), plus 1-dim linear (wide) embeddings on the same ids and a bias.
IDs are drawn per field with a power-law skew (id = floor(size · u^3)), a few batches made up front and cycled.

One training step = forward, batch-mean BCE, backward, optimizer step (``opt.step(ids=ids)``), zero_grad. For each
gradient mode (nn.Embedding(sparse=False): dense [rows, dim] gradients, torch's Adam kernel moving every row;
sparse=True: COO gradients, lazy Adam on the touched rows) two arms run the same accel.cowclip.CowClip recipe (Adam
with an embedding and a dense lr, dense-lr warmup, L2 on the embeddings, batch 16K hyperparameters from
scaled_hparams) and differ only in the clip:
  * baseline: clip=False;
  * cowclip:  clip=True on the dim-10 table (the linear embeddings are not clipped, as in the official code),
              absent_rows as --absent-rows ("clip": the official cnt = 1 clip of every absent row, a pass over the
              whole table for dense gradients; "skip": touched rows only).
Both arms start from the same weights. Times are medians over --repeats steps after --warmup steps, the arms
interleaved step by step (which arm goes first alternates) so that load changes hit both alike; the spread is
(min, max). The fwd+bwd and the optimizer step (L2, clip, Adam) are timed separately as well. Prints ms/step, the
ratio cowclip / baseline of the medians measured in the same run, the median and range of the per-pair ratios (each
cowclip step over the baseline step next to it), samples/s, and the load average before and after (other processes
on a shared machine move every number); writes JSON with --out. The target: CowClip adds at most 5% to the CPU step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

from accel.cowclip import CowClip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def field_sizes(rows: int, fields: int) -> list[int]:
    """Sizes spread geometrically from 1 to 10^4 (relative), at least 1 each, summing to rows exactly."""
    weights = torch.logspace(0, 4, fields, dtype=torch.float64)
    sizes = (weights / weights.sum() * rows).floor().clamp_min(1).long()
    sizes[-1] += rows - int(sizes.sum())
    return sizes.tolist()


class CTRNet(nn.Module):
    """Field embeddings [B, F, dim] flattened into an MLP, plus 1-dim linear embeddings and a bias: a logit [B]."""

    def __init__(self, rows: int, fields: int, dim: int, hidden: tuple[int, ...], sparse: bool):
        super().__init__()
        self.embedding = nn.Embedding(rows, dim, sparse=sparse)
        self.linear = nn.Embedding(rows, 1, sparse=sparse)
        layers, width = [], fields * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))
        self.bias = nn.Parameter(torch.zeros(()))
        with torch.no_grad():
            self.embedding.weight.normal_(0, 1e-2)  # the official init std
            self.linear.weight.zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        deep = self.mlp(self.embedding(ids).flatten(1)).squeeze(1)
        return deep + self.linear(ids).sum(dim=(1, 2)) + self.bias


def make_batches(args, device: torch.device, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    sizes = torch.tensor(field_sizes(args.rows, args.fields))
    offsets = torch.cumsum(sizes, 0) - sizes
    batches = []
    for _ in range(count):
        u = torch.rand(args.batch_size, args.fields, generator=generator)
        ids = (sizes * u.pow(3)).long().clamp_max(sizes - 1) + offsets
        labels = (torch.rand(args.batch_size, generator=generator) < 0.25).float()
        batches.append((ids.to(device), labels.to(device)))
    return batches


def run_mode(sparse: bool, args, device: torch.device) -> dict:
    batches = make_batches(args, device)
    arms = {}
    for name, clip in (("baseline", False), ("cowclip", True)):
        torch.manual_seed(0)
        model = CTRNet(args.rows, args.fields, args.dim, tuple(args.hidden), sparse).to(device)
        opt = CowClip(
            model,
            model.embedding,
            batch_size=args.batch_size,
            warmup_steps=10,
            clip=clip,
            absent_rows=args.absent_rows,
        )
        arms[name] = (model, opt)

    def step(name: str, index: int) -> tuple[float, float, dict]:
        model, opt = arms[name]
        ids, labels = batches[index % len(batches)]
        sync(device)
        start = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(model(ids), labels)
        loss.backward()
        sync(device)
        middle = time.perf_counter()
        opt.step(ids=ids)
        opt.zero_grad()
        sync(device)
        end = time.perf_counter()
        return end - start, end - middle, opt.last_stats

    for index in range(args.warmup):
        for name in arms:
            step(name, index)
    times = {name: {"step": [], "opt": []} for name in arms}
    stats = {}
    for index in range(args.warmup, args.warmup + args.repeats):
        for name in list(arms) if index % 2 == 0 else list(arms)[::-1]:
            total, opt_time, stats[name] = step(name, index)
            times[name]["step"].append(total)
            times[name]["opt"].append(opt_time)

    def median(values):
        return sorted(values)[len(values) // 2]

    out = {"mode": "sparse" if sparse else "dense", "arms": {}}
    for name, t in times.items():
        out["arms"][name] = {
            "ms_step": 1e3 * median(t["step"]),
            "ms_step_min_max": [1e3 * min(t["step"]), 1e3 * max(t["step"])],
            "ms_optimizer": 1e3 * median(t["opt"]),
            "samples_per_s": args.batch_size / median(t["step"]),
        }
    out["ratio"] = out["arms"]["cowclip"]["ms_step"] / out["arms"]["baseline"]["ms_step"]
    pairs = [c / b for c, b in zip(times["cowclip"]["step"], times["baseline"]["step"])]
    out["pair_ratio_median"], out["pair_ratio_min_max"] = median(pairs), [min(pairs), max(pairs)]
    out["clip_stats"] = {k: v for k, v in stats["cowclip"].items() if isinstance(v, (int, float))}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--fields", type=int, default=26)
    parser.add_argument("--hidden", type=int, nargs="+", default=[400, 400, 400])
    parser.add_argument("--modes", nargs="+", default=["dense", "sparse"], choices=["dense", "sparse"])
    parser.add_argument("--absent-rows", default="clip", choices=["clip", "skip"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.rows < args.fields:
        parser.error("--rows must be at least --fields (one row per field)")
    device = torch.device(args.device)
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"{args.rows} rows x dim {args.dim}, {args.fields} fields, MLP {args.hidden}, absent rows {args.absent_rows}, "
        f"median of {args.repeats} steps after {args.warmup} warm-up"
    )
    load_before = os.getloadavg()
    print(f"load average (1, 5, 15 min) before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    print(
        f"{'grads':>6} {'baseline ms':>12} {'cowclip ms':>11} {'ratio':>6} {'pair ratio (min-max)':>21}"
        f" {'opt ms base':>11} {'opt ms clip':>11} {'samples/s base':>14} {'samples/s clip':>14} {'clipped':>8}"
    )
    rows = []
    for mode in args.modes:
        row = run_mode(mode == "sparse", args, device)
        rows.append(row)
        base, clip = row["arms"]["baseline"], row["arms"]["cowclip"]
        low, high = row["pair_ratio_min_max"]
        print(
            f"{mode:>6} {base['ms_step']:12.1f} {clip['ms_step']:11.1f} {row['ratio']:6.3f} "
            f"{row['pair_ratio_median']:6.3f} ({low:.3f}-{high:.3f}) "
            f"{base['ms_optimizer']:11.1f} {clip['ms_optimizer']:11.1f} {base['samples_per_s']:14.0f} "
            f"{clip['samples_per_s']:14.0f} {row['clip_stats']['clip_fraction']:8.2%}",
            flush=True,
        )
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min) after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    report = {
        "device": str(device),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "rows": args.rows,
        "dim": args.dim,
        "fields": args.fields,
        "hidden": args.hidden,
        "absent_rows": args.absent_rows,
        "repeats": args.repeats,
        "load_average_before_after": [load_before, load_after],
        "results": rows,
    }
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
    return report


if __name__ == "__main__":
    main()
