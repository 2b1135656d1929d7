"""Benchmark (run on demand): InfoBatch's bookkeeping against an epoch's training time, and against RandomSampler.

    python tests/benchmarks/bench_infobatch.py [--sizes 1000000 10000000] [--batch-size 128] [--repeats 5]

For N samples, times one pruned epoch (epoch 1 at r = 0.5, after an epoch of spread-out scores) in three parts:
``set_epoch`` (threshold, draw, shuffle, lookup table), iterating the list as a DataLoader does, and one ``update``
per batch of per-sample losses that require grad, as in training (the loss and index tensors are made outside the
timed window: the training step produces them anyway).

- Bookkeeping, as issue #3 defines it, is set_epoch + update. It is set against the epoch's training time: timed
  steps of chapter 01's training loop in its cpu profile (MNIST-1D CNN, batch gathered from memory, per-sample loss
  with label smoothing, ``.mean()``, backward, SGD; one intra-op thread, as the chapter trains) at this batch size,
  times the batches InfoBatch keeps. Everything is timed at that thread count (--threads).
- That training step already contains the ``.mean()`` which ``update`` replaces, so the net cost is also reported:
  set_epoch + (update - mean), the mean timed over the same loss tensors.
- Iterating the list is what any sampler costs, so set_epoch + iterating is set beside a plain ``RandomSampler``
  epoch over N (its randperm and iteration).

This VM's timings swing with its host's load, so each repeat measures every part back to back, the ratios are formed
within a repeat, and the median over --repeats is reported (with the spread). Writes a JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import RandomSampler

from accel.experiments.infobatch import CONFIGS, learning_rate
from accel.infobatch import InfoBatch
from accel.models.vision import ConvNet1D


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def sampler_seconds(n: int, batch_size: int, device: torch.device) -> dict:
    """Seconds of one pruned epoch's set_epoch, list iteration, updates and plain means; the kept fraction."""
    sampler = InfoBatch(n, num_epochs=10, prune_ratio=0.5, seed=0)
    generator = torch.Generator(device=device).manual_seed(0)
    sampler.update(torch.arange(n, device=device), torch.rand(n, device=device, generator=generator))  # epoch 0
    set_epoch = timed(lambda: sampler.set_epoch(1), device)
    order = []
    iterate = timed(lambda: order.extend(iter(sampler)), device)
    batches = [torch.tensor(order[i:i + batch_size], device=device) for i in range(0, len(order), batch_size)]
    losses = [torch.rand(len(b), device=device, generator=generator).requires_grad_() for b in batches]

    def updates():
        for index, loss in zip(batches, losses):
            sampler.update(index, loss)

    def means():
        for loss in losses:
            loss.mean()

    return {"set_epoch_s": set_epoch, "iterate_s": iterate, "update_s": timed(updates, device),
            "mean_s": timed(means, device), "updates": len(batches), "kept_fraction": len(order) / n}


def random_sampler_seconds(n: int) -> float:
    start = time.perf_counter()
    for _ in RandomSampler(range(n), generator=torch.Generator().manual_seed(0)):
        pass
    return time.perf_counter() - start


def train_seconds_per_sample(batch_size: int, device: torch.device, steps: int = 200) -> float:
    """Seconds per sample of chapter 01's training step (the loop of accel.experiments.infobatch.train, cpu profile):
    gather the batch from an in-memory MNIST-1D-shaped dataset, set the step's learning rate, forward the CNN,
    per-sample cross-entropy with label smoothing, mean, backward, SGD with momentum and weight decay."""
    cfg = CONFIGS["cpu"]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, 1, 40, generator=generator).to(device)
    y = torch.randint(0, 10, (50_000,), generator=generator).to(device)
    model = ConvNet1D(10, width=cfg.width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    batches = torch.randint(0, 50_000, (steps + 5, batch_size), generator=generator).to(device)

    def step(i: int, index: torch.Tensor) -> None:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, i / len(batches))
        losses = F.cross_entropy(model(x[index]), y[index], reduction="none", label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        optimizer.step()

    for i, index in enumerate(batches[:5]):  # warm-up
        step(i, index)

    def train():
        for i, index in enumerate(batches[5:], start=5):
            step(i, index)

    return timed(train, device) / (steps * batch_size)


def one_repeat(n: int, batch_size: int, device: torch.device) -> dict:
    """Every part measured back to back, and the ratios formed from this repeat's own numbers."""
    per_sample = train_seconds_per_sample(batch_size, device)
    part = sampler_seconds(n, batch_size, device)
    baseline = random_sampler_seconds(n)
    epoch_train = per_sample * n * part["kept_fraction"]
    bookkeeping = part["set_epoch_s"] + part["update_s"]
    return {**part, "random_sampler_s": baseline, "epoch_training_s": epoch_train,
            "update_us_per_batch": part["update_s"] / part["updates"] * 1e6,
            "mean_us_per_batch": part["mean_s"] / part["updates"] * 1e6,
            "bookkeeping_s": bookkeeping,
            "bookkeeping / training": bookkeeping / epoch_train,
            "net bookkeeping / training": (bookkeeping - part["mean_s"]) / epoch_train,
            "(set_epoch + iterate) / RandomSampler": (part["set_epoch_s"] + part["iterate_s"]) / baseline}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="medians over this many back-to-back repeats")
    parser.add_argument("--threads", type=int, default=CONFIGS["cpu"].threads,
                        help="torch intra-op threads (default: chapter 01's cpu profile, which trains on one)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    rows = []
    for n in args.sizes:
        repeats = [one_repeat(n, args.batch_size, device) for _ in range(args.repeats)]
        row = {"num_samples": n, "repeats": args.repeats, "updates": repeats[0]["updates"],
               "kept_fraction": repeats[0]["kept_fraction"]}
        for key in repeats[0]:
            if key not in row:
                values = [r[key] for r in repeats]
                row[key] = statistics.median(values)
                row[key + " (min, max)"] = [min(values), max(values)]
        rows.append(row)
        low, high = row["bookkeeping / training (min, max)"]
        print(f"N={n:>11,}: bookkeeping {row['bookkeeping_s']:.2f} s (set_epoch {row['set_epoch_s']:.2f} s + "
              f"{row['updates']:,} updates of {row['update_us_per_batch']:.0f} us) = "
              f"{row['bookkeeping / training']:.2%} of the epoch's training ({row['epoch_training_s']:.0f} s; "
              f"{low:.2%}-{high:.2%} over {args.repeats} repeats); net of the mean it replaces "
              f"({row['mean_us_per_batch']:.0f} us/batch) {row['net bookkeeping / training']:.2%}. "
              f"set_epoch + iterating = {row['(set_epoch + iterate) / RandomSampler']:.2f}x a RandomSampler epoch "
              f"({row['random_sampler_s']:.2f} s)")
    command = ["python tests/benchmarks/bench_infobatch.py", *(sys.argv[1:] if argv is None else argv)]
    report = {"device": str(device), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "command": " ".join(command),
              "rows": rows}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
    return report


if __name__ == "__main__":
    main()
