"""Benchmark (run on demand): InfoBatch's bookkeeping against an epoch's training time, and against RandomSampler.

    python tests/benchmarks/bench_infobatch.py [--sizes 1000000 10000000] [--batch-size 128] [--device cpu]

For N samples, times one pruned epoch's bookkeeping: ``set_epoch`` (threshold, draw, shuffle), iterating the list
and one ``update`` per batch of per-sample losses (the losses and index tensors are made outside the timed window:
the training step produces them anyway). Beside it, measured in the same run: iterating a plain
``RandomSampler`` over N, and the training time of the same epoch, estimated from 100 timed steps of chapter 01's
training loop (MNIST-1D CNN, batch gathered from memory, per-sample loss, backward, SGD) at this batch size.
Prints ratios against both baselines; writes a JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
from torch.utils.data import RandomSampler

from accel.infobatch import InfoBatch
from accel.models.vision import ConvNet1D


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bookkeeping_seconds(n: int, batch_size: int, device: torch.device) -> tuple[float, float]:
    """(seconds for one pruned epoch's bookkeeping, kept fraction). Epoch 1 after an epoch of spread-out scores.

    Timed: set_epoch (threshold, draw, shuffle), iterating the sampler as a DataLoader does, and one update per
    batch. Not timed: making the per-sample losses and the index tensors, which the training step produces anyway.
    """
    sampler = InfoBatch(n, num_epochs=10, prune_ratio=0.5, seed=0)
    generator = torch.Generator(device=device).manual_seed(0)
    sampler.update(torch.arange(n, device=device), torch.rand(n, device=device, generator=generator))  # epoch 0
    sync(device)
    start = time.perf_counter()
    sampler.set_epoch(1)
    order = list(iter(sampler))
    drawn = time.perf_counter() - start
    batches = [torch.tensor(order[i:i + batch_size], device=device) for i in range(0, len(order), batch_size)]
    losses = [torch.rand(len(b), device=device, generator=generator) for b in batches]
    sync(device)
    start = time.perf_counter()
    for index, loss in zip(batches, losses):
        sampler.update(index, loss)
    sync(device)
    return drawn + time.perf_counter() - start, len(order) / n


def random_sampler_seconds(n: int) -> float:
    start = time.perf_counter()
    for _ in RandomSampler(range(n), generator=torch.Generator().manual_seed(0)):
        pass
    return time.perf_counter() - start


def train_seconds_per_sample(batch_size: int, device: torch.device, steps: int = 100) -> float:
    """Seconds per sample of chapter 01's training step: gather the batch from an in-memory MNIST-1D-shaped dataset,
    forward the CNN, per-sample cross-entropy, backward, SGD step (the loop of accel.experiments.infobatch)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, 1, 40, generator=generator).to(device)
    y = torch.randint(0, 10, (50_000,), generator=generator).to(device)
    model = ConvNet1D(10, width=32).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = torch.randint(0, 50_000, (steps + 5, batch_size), generator=generator).to(device)

    def step(index: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x[index]), y[index], reduction="none").mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for index in batches[:5]:  # warm-up
        step(index)
    sync(device)
    start = time.perf_counter()
    for index in batches[5:]:
        step(index)
    sync(device)
    return (time.perf_counter() - start) / (steps * batch_size)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    per_sample = train_seconds_per_sample(args.batch_size, device)
    rows = []
    for n in args.sizes:
        seconds, kept = bookkeeping_seconds(n, args.batch_size, device)
        baseline = random_sampler_seconds(n)
        epoch_train = per_sample * n * kept
        rows.append({"num_samples": n, "kept_fraction": kept, "bookkeeping_s": seconds,
                     "random_sampler_s": baseline, "epoch_training_s": epoch_train,
                     "bookkeeping / training": seconds / epoch_train,
                     "(bookkeeping - RandomSampler) / training": (seconds - baseline) / epoch_train,
                     "bookkeeping / RandomSampler": seconds / baseline})
        print(f"N={n:>11,}: bookkeeping {seconds:7.2f} s = {seconds / epoch_train:6.2%} of the epoch's training "
              f"({epoch_train:8.1f} s, {kept:.0%} kept); {seconds / baseline:5.2f}x a RandomSampler epoch "
              f"({baseline:.2f} s), so {(seconds - baseline) / epoch_train:.2%} more than the sampler it replaces")
    report = {"device": str(device), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "batch_size": args.batch_size,
              "train_seconds_per_sample": per_sample, "rows": rows}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
    return report


if __name__ == "__main__":
    main()
