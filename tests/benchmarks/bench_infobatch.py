"""Benchmark (run on demand): InfoBatch's bookkeeping against an epoch's training time, and against RandomSampler.

    python tests/benchmarks/bench_infobatch.py [--sizes 1000000 10000000] [--batch-size 128] [--device cpu]

For N samples, times one pruned epoch's bookkeeping: ``set_epoch`` (threshold, draw, shuffle), iterating the list
and one ``update`` per batch of per-sample losses. Beside it, measured in the same run: iterating a plain
``RandomSampler`` over N, and the training time of the same epoch, estimated from timed steps of chapter 01's model
(MNIST-1D CNN) at this batch size. Prints ratios against both baselines; writes a JSON with --out.
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
    """(seconds for one pruned epoch's bookkeeping, kept fraction). Epoch 1 after an epoch of spread-out scores."""
    sampler = InfoBatch(n, num_epochs=10, prune_ratio=0.5, seed=0)
    generator = torch.Generator(device=device).manual_seed(0)
    index = torch.arange(n, device=device)
    for i in range(0, n, 1 << 20):  # epoch 0: give every sample a score (not timed)
        sampler.update(index[i:i + (1 << 20)], torch.rand(len(index[i:i + (1 << 20)]), device=device,
                                                             generator=generator))
    sync(device)
    start = time.perf_counter()
    sampler.set_epoch(1)
    order = torch.tensor(list(iter(sampler)), device=device)
    for i in range(0, len(order), batch_size):
        batch = order[i:i + batch_size]
        sampler.update(batch, torch.rand(len(batch), device=device, generator=generator))
    sync(device)
    return time.perf_counter() - start, len(order) / n


def random_sampler_seconds(n: int) -> float:
    start = time.perf_counter()
    for _ in RandomSampler(range(n), generator=torch.Generator().manual_seed(0)):
        pass
    return time.perf_counter() - start


def train_seconds_per_sample(batch_size: int, device: torch.device, steps: int = 30) -> float:
    model = ConvNet1D(10, width=32).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(batch_size, 1, 40, device=device), torch.randint(0, 10, (batch_size,), device=device)
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()  # noqa: E702
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()  # noqa: E702
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
                     "bookkeeping / RandomSampler": seconds / baseline})
        print(f"N={n:>11,}: bookkeeping {seconds:7.2f} s = {seconds / epoch_train:6.2%} of the epoch's training "
              f"({epoch_train:8.1f} s, {kept:.0%} kept); {seconds / baseline:5.2f}x a RandomSampler epoch "
              f"({baseline:.2f} s)")
    report = {"device": str(device), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "batch_size": args.batch_size,
              "train_seconds_per_sample": per_sample, "rows": rows}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
    return report


if __name__ == "__main__":
    main()
