"""Chapter 02, Data Echoing: configs per profile and one function per table or figure.

The input side is :class:`accel.datasets.slow.SlowDecoded` (samples stored compressed and decoded with an adjustable
effort) plus an augmentation. In the smoke and cpu profiles the samples are MNIST-1D signals (augmentation: shift,
gain, noise) and the model is chapter 01's 1-D CNN, trained with Adam at one fixed learning rate for every arm. The
paper profile is the paper's own workload: ResNet-32 on CIFAR-10 at batch 128 (augmentation: random crop and flip),
SGD with Nesterov momentum at one fixed learning rate. The paper re-tuned every arm; we do not, and the chapter says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from accel.datasets.cifar import random_crop_flip
from accel.datasets.slow import SlowDecoded, augment_signal
from accel.echo import POINTS, echo, echo_batches, echoing_loader
from accel.experiments import pick_config
from accel.experiments.where_time_goes import overlap_steps_per_second, single_threaded, synchronize
from accel.models.vision import ConvNet1D, resnet32_cifar


@dataclass(frozen=True)
class Config:
    dataset: str = "mnist1d"  # mnist1d | digits | cifar10
    num_samples: int = 12_000  # mnist1d only
    model: str = "cnn1d"  # cnn1d | resnet32
    width: int = 32  # cnn1d only
    batch_size: int = 128
    optimizer: str = "adam"  # adam | sgd (Nesterov momentum 0.9)
    lr: float = 3e-3
    weight_decay: float = 0.0
    target: float = 88.0  # test accuracy % that counts as "reached"
    eval_every: int = 20  # steps between evaluations (evaluation time is excluded from wall clock)
    max_fresh: int = 200_000  # fresh-example budget per run
    shuffle_buffer: int = 1024
    factors: tuple[float, ...] = (1, 2, 4, 8)
    points: tuple[str, ...] = POINTS
    seeds: tuple[int, ...] = (0, 1, 2)
    law_factors: tuple[float, ...] = (1, 1.5, 2, 3, 4, 6)
    law_ratios: tuple[float, ...] = (2.0, 8.0)  # targets; the machine's drift moves the measured R, reported
    law_steps: int = 40  # at least; a window spans at least 12 fresh batches
    law_repeats: int = 5
    wall_ratio: float = 4.0  # R for the wall-clock-to-target comparison
    wall_factors: tuple[float, ...] = (1, 2)
    dup_batch_sizes: tuple[int, ...] = (32, 512)
    dup_buffers: tuple[int, ...] = (0, 16, 128, 1024, 8192)
    dup_factors: tuple[float, ...] = (2, 4)


CONFIGS = {
    "smoke": Config(dataset="digits", batch_size=32, lr=1e-2, target=25.0, eval_every=10, max_fresh=10_000,
                    factors=(1, 2), seeds=(0,), law_factors=(1, 2), law_ratios=(3.0,), law_steps=10, law_repeats=1,
                    wall_factors=(1, 2), dup_buffers=(0, 128), dup_batch_sizes=(32,), dup_factors=(2,),
                    shuffle_buffer=64),
    "cpu": Config(),
    # The paper's ResNet-32 on CIFAR-10 workload at batch 128, on a GPU; the input side is CIFAR images stored
    # compressed and decoded with effort, random crop + flip. The target accuracy is our choice.
    "paper": Config(dataset="cifar10", model="resnet32", optimizer="sgd", lr=0.1, weight_decay=5e-4, target=88.0,
                    eval_every=200, max_fresh=5_000_000, shuffle_buffer=10_000, law_steps=200,
                    seeds=(0, 1, 2), factors=(1, 2, 4, 8, 16), dup_batch_sizes=(128, 1024)),
}


def config(profile: str, **overrides) -> Config:
    return pick_config(CONFIGS, profile, **overrides)


# --- data and model ----------------------------------------------------------------------------------------------

def augment_image(sample: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop (reflect-pad 4) and horizontal flip of one (image [3, 32, 32], label) sample."""
    x, y = sample
    return random_crop_flip(x[None], generator)[0], y


@dataclass
class Data:
    train: SlowDecoded  # work = 1; `with_work` gives a slower copy
    x_test: torch.Tensor
    y_test: torch.Tensor
    augment_one: Callable = augment_signal  # (sample, generator) -> sample: the per-example augmentation (workers)
    augment_many: Callable | None = None  # (x [B, ...], generator) -> x: the same augmentation, a batch at once

    def __post_init__(self):
        if self.augment_many is None:
            self.augment_many = augment_batch


def load_data(cfg: Config) -> Data:
    if cfg.dataset == "mnist1d":
        from accel.datasets.mnist1d import load_mnist1d

        train, test = load_mnist1d(cfg.num_samples)
    elif cfg.dataset == "digits":
        from accel.datasets.digits import load_digits_1d

        train, test = load_digits_1d(seed=0)
    elif cfg.dataset == "cifar10":
        from accel.datasets import cifar

        train_split, test_split = cifar.load_cifar("cifar10")
        return Data(SlowDecoded(train_split.normalized(), train_split.labels), test_split.normalized(),
                    test_split.labels, augment_image, random_crop_flip)
    else:
        raise ValueError(f"Invalid dataset: {cfg.dataset!r}; allowed: mnist1d, digits, cifar10")
    return Data(SlowDecoded(train.x, train.y), test.x, test.y)


def make_model(cfg: Config, seed: int, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's global RNG
        torch.manual_seed(seed)
        if cfg.model == "cnn1d":
            model = ConvNet1D(10, width=cfg.width)
        elif cfg.model == "resnet32":
            model = resnet32_cifar(10)
        else:
            raise ValueError(f"Invalid model: {cfg.model!r}; allowed: cnn1d, resnet32")
    model = model.to(device)
    if cfg.optimizer == "adam":
        return model, torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return model, torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                                      weight_decay=cfg.weight_decay)
    raise ValueError(f"Invalid optimizer: {cfg.optimizer!r}; allowed: adam, sgd")


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> float:
    """Test accuracy in %, evaluated in chunks of ``chunk`` samples (x and y already on the model's device)."""
    model.eval()
    with torch.no_grad():
        correct = sum((model(x[i:i + chunk]).argmax(-1) == y[i:i + chunk]).sum().item()
                      for i in range(0, len(y), chunk))
    model.train()
    return 100.0 * correct / len(y)


def _step(model, optimizer, x, y) -> None:
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


# --- training to a target ------------------------------------------------------------------------------------------

@dataclass
class Run:
    factor: float
    point: str
    seed: int
    curve: list[tuple[int, int, float, float]]  # (step, fresh examples, seconds, test accuracy %)
    target: float

    def first_at_target(self) -> tuple[int, int, float] | None:
        """(steps, fresh examples, seconds) at the first evaluation at or above the target, or None."""
        return next(((s, f, t) for s, f, t, a in self.curve if a >= self.target), None)

    @property
    def fresh_to_target(self) -> int | None:
        hit = self.first_at_target()
        return hit[1] if hit else None

    @property
    def steps_to_target(self) -> int | None:
        hit = self.first_at_target()
        return hit[0] if hit else None

    @property
    def seconds_to_target(self) -> float | None:
        hit = self.first_at_target()
        return hit[2] if hit else None

    def accuracy_at_step(self, step: int) -> float | None:
        """Accuracy at the last evaluation at or before ``step``."""
        points = [a for s, _, _, a in self.curve if s <= step]
        return points[-1] if points else None


def train_to_target(cfg: Config, data: Data, *, factor: float, point: str, seed: int, device: torch.device,
                    work: int = 1, num_workers: int = 1, stop_at_target: bool = True,
                    max_fresh: int | None = None) -> Run:
    """Train through ``echoing_loader`` until the target accuracy (or the fresh-example budget) is reached.

    Fresh examples are counted by the loader (upstream reads that reached training); evaluation runs every
    ``eval_every`` steps with the clock paused."""
    max_fresh = max_fresh or cfg.max_fresh
    model, optimizer = make_model(cfg, seed, device)
    dataset = data.train.with_work(work)
    # Before augmentation, the worker reads and decodes (the slow part) and echoes; each copy is then augmented
    # afresh in the training process, batched. At the other points augmentation precedes the echo, in the worker.
    downstream_augment = point == "before_augment"
    loader = echoing_loader(dataset, batch_size=cfg.batch_size, factor=factor, point=point,
                            augment=None if downstream_augment else data.augment_one,
                            shuffle_buffer=cfg.shuffle_buffer, num_workers=num_workers, seed=seed)
    augment_rng = torch.Generator().manual_seed(seed)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    curve, step, epoch, elapsed = [], 0, 0, 0.0
    done = False
    with single_threaded():
        while not done:
            loader.set_epoch(epoch)
            start = time.perf_counter()
            for x, y in loader:
                if downstream_augment:
                    x = data.augment_many(x, augment_rng)
                _step(model, optimizer, x.to(device), y.to(device))
                step += 1
                if step % cfg.eval_every == 0:
                    elapsed += time.perf_counter() - start
                    curve.append((step, loader.fresh_examples, elapsed, accuracy(model, x_test, y_test)))
                    start = time.perf_counter()
                    if (stop_at_target and curve[-1][3] >= cfg.target) or loader.fresh_examples >= max_fresh:
                        done = True
                        break
            elapsed += time.perf_counter() - start if not done else 0.0
            epoch += 1
    return Run(factor, point, seed, curve, cfg.target)


def augment_batch(x: torch.Tensor, generator: torch.Generator, *, max_shift: int = 3,
                  scale: tuple[float, float] = (0.85, 1.15), noise: float = 0.05) -> torch.Tensor:
    """:func:`augment_signal` for a whole batch x [B, C, L] at once (each row its own shift, gain and noise)."""
    b, _, length = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (b,), generator=generator)
    gains = scale[0] + (scale[1] - scale[0]) * torch.rand(b, generator=generator)
    index = (torch.arange(length)[None, :] - shifts[:, None]) % length  # circular shift per row
    shifted = torch.gather(x, 2, index[:, None, :].expand_as(x))
    return shifted * gains[:, None, None] + noise * torch.randn(x.shape, generator=generator)


def echo_stream(cfg: Config, data: Data, factor: float, point: str, seed: int) -> Iterator[tuple]:
    """In-process, vectorised twin of ``echoing_loader`` for the fresh-examples grid (where time does not matter):
    the echo stage is :func:`accel.echo.echo` over sample reads (or over whole batches), augmentation is batched.

    Yields (x [B, C, L], y [B], fresh examples in this batch), epoch after epoch, without end.
    * before_augment: echo the reads, then augment every copy afresh;
    * after_augment: each read is augmented once, so its copies are identical;
    * batch: fresh batches are read and augmented once, then echoed whole.
    """
    x_all = torch.stack([data.train[i][0] for i in range(len(data.train))])
    y_all = data.train.labels
    n, b = len(y_all), cfg.batch_size
    if n < b:
        raise ValueError(f"Invalid batch_size: {b}; expected at most the dataset's {n} samples")
    for epoch in range(10**9):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        augment_rng = torch.Generator().manual_seed(seed * 100_019 + epoch)
        echo_seed = seed * 100_043 + epoch
        if point == "batch":
            fresh_batches = ((k, order[k:k + b]) for k in range(0, n - b + 1, b))
            read = ((k, data.augment_many(x_all[idx], augment_rng), y_all[idx]) for k, idx in fresh_batches)
            seen: set[int] = set()
            for k, x, y in echo(read, factor, shuffle_buffer=max(1, cfg.shuffle_buffer // b), seed=echo_seed):
                yield x, y, 0 if k in seen else len(y)
                seen.add(k)
            continue
        # after_augment: every read is augmented once, when it is read (here: the whole epoch at once, vectorised)
        augmented = data.augment_many(x_all, augment_rng) if point == "after_augment" else None
        reads = (int(i) for i in order)
        seen = set()
        batch: list[int] = []
        for item in echo(reads, factor, shuffle_buffer=cfg.shuffle_buffer, seed=echo_seed):
            batch.append(item)
            if len(batch) < b:
                continue
            idx = torch.tensor(batch)
            fresh = len(set(batch) - seen)
            seen.update(batch)
            x = data.augment_many(x_all[idx], augment_rng) if point == "before_augment" else augmented[idx]
            yield x, y_all[idx], fresh
            batch = []


def train_on_stream(cfg: Config, data: Data, *, factor: float, point: str, seed: int, device: torch.device) -> Run:
    """Train on :func:`echo_stream` until the target or the fresh-example budget (hardware-independent counts)."""
    model, optimizer = make_model(cfg, seed, device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    curve, fresh, start, paused = [], 0, time.perf_counter(), 0.0
    with single_threaded():
        for step, (x, y, new) in enumerate(echo_stream(cfg, data, factor, point, seed), start=1):
            _step(model, optimizer, x.to(device), y.to(device))
            fresh += new
            if step % cfg.eval_every == 0:
                t = time.perf_counter()
                curve.append((step, fresh, t - start - paused, accuracy(model, x_test, y_test)))
                paused += time.perf_counter() - t
                if curve[-1][3] >= cfg.target or fresh >= cfg.max_fresh:
                    break
    return Run(factor, point, seed, curve, cfg.target)


def fresh_examples_grid(cfg: Config, data: Data, device: torch.device, show_progress: bool = True
                        ) -> dict[tuple[float, str], list[Run]]:
    """Fresh examples (and steps) to the target for every echo factor and insertion point, every seed.

    Hardware-independent, so the upstream is fast here (work = 1). e = 1 is the same at every point: run once."""
    from accel.experiments.progress import progress_bar

    arms = [(1, "none")] + [(e, p) for e in cfg.factors if e != 1 for p in cfg.points]
    runs: dict[tuple[float, str], list[Run]] = {arm: [] for arm in arms}
    total = len(arms) * len(cfg.seeds)
    with progress_bar(total=total, desc="fresh examples to target", disable=not show_progress) as bar:
        for seed in cfg.seeds:
            for e, point in arms:
                runs[(e, point)].append(train_on_stream(cfg, data, factor=e, point=point if e != 1 else "batch",
                                                        seed=seed, device=device))
                bar.update()
    return runs


# --- the law against measurement -----------------------------------------------------------------------------------

def upstream_seconds(dataset, cfg: Config, batches: int, seed: int) -> float:
    """t_up: seconds per fresh batch of the input side alone (one worker reading and decoding), steady state."""
    loader = echoing_loader(dataset, batch_size=cfg.batch_size, factor=1, point="batch", num_workers=1, seed=seed)
    it = iter(loader)
    next(it), next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return (time.perf_counter() - start) / batches


def downstream_seconds(cfg: Config, model, optimizer, data: Data, steps: int, device: torch.device) -> float:
    """t_down: seconds per training step (batched augmentation included) on a batch already in place."""
    x, y = data.x_test[: cfg.batch_size], data.y_test[: cfg.batch_size].to(device)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        _step(model, optimizer, data.augment_many(x, generator).to(device), y)
    start = time.perf_counter()
    for _ in range(steps):
        _step(model, optimizer, data.augment_many(x, generator).to(device), y)
    return (time.perf_counter() - start) / steps


def calibrate_work(cfg: Config, data: Data, t_target: float, seed: int = 0) -> int:
    """The decode effort whose input side takes about ``t_target`` s per batch: the cost is affine in ``work``
    (a fixed part plus a slope), fitted from two probes and corrected twice against the measured loader. The slope is
    at least a tenth of the heavier probe's cost per unit of work: on a busy machine the two probes can come out nearly
    equal, and a flat fit would ask for an effort that takes hours per batch."""
    low, high = 1, 200
    t_low = upstream_seconds(data.train.with_work(low), cfg, 8, seed)
    t_high = upstream_seconds(data.train.with_work(high), cfg, 8, seed)
    slope = max(t_high - t_low, 0.1 * t_high) / (high - low)
    work, measured = low, t_low
    for _ in range(3):
        work = max(1, round(work + (t_target - measured) / slope))
        measured = upstream_seconds(data.train.with_work(work), cfg, 8, seed)
    return work


class _StampedCollate:
    """default_collate plus two clocks read in the calling process: (x, y) -> (x, y, [CPU seconds, wall seconds]).

    Runs in the DataLoader worker, so consecutive fresh batches' CPU stamps differ by the worker's whole cost of one
    batch (reading, decoding, collating, sending): a worker waiting for the trainer sleeps and spends no CPU. The wall
    stamps (perf_counter: the same clock in every process) give the worker's elapsed time per batch. A class so that
    it pickles into workers under any start method."""

    def __call__(self, samples: list) -> tuple:
        clocks = torch.tensor([time.process_time(), time.perf_counter()], dtype=torch.float64)
        return (*default_collate(samples), clocks)


def measured_run(cfg: Config, dataset, model, optimizer, factor: float, steps: int, seed: int, device: torch.device,
                 augment_many: Callable = augment_batch) -> dict:
    """One timed run of the pipeline: the input side in one worker, each fresh batch echoed on the device
    (echo_batches), every copy augmented afresh in the training process.

    Steady state only: the steps of the first two fresh batches (the worker's start and its prefetched batches) are
    not timed, and the window spans at least 12 fresh batches. Returns, for that window:
    steps/s (steps / wall clock); t_up, the worker's CPU seconds per fresh batch (from the stamps that travel with the
    batches); t_down, the seconds per training step (augmentation, forward, backward, update), timed around the step
    (synchronised on an accelerator); echo factor, steps per fresh batch in the window (a fractional e is drawn);
    worker CPU / wall, the worker's CPU seconds per elapsed second over the same batches (below 1 where it waits for
    the trainer, or where it does not get a whole core)."""
    loader = echoing_loader(dataset, batch_size=cfg.batch_size, factor=1, point="batch", num_workers=1, seed=seed,
                            collate_fn=_StampedCollate())
    generator = torch.Generator().manual_seed(seed)
    warm_up, timed_steps = 2 * math.ceil(factor), max(steps, math.ceil(12 * factor))
    count, start, step_seconds, stamps, previous = 0, None, 0.0, [], None
    for batch in echo_batches(loader, factor, seed=seed):
        x, y, stamp = batch
        if start is not None and batch is not previous:
            stamps.append(stamp.tolist())
        previous = batch
        begin = time.perf_counter()
        _step(model, optimizer, augment_many(x, generator).to(device), y.to(device))
        synchronize(device)
        count += 1
        if start is not None:
            step_seconds += time.perf_counter() - begin
        if count == warm_up:
            start = time.perf_counter()
        if count == warm_up + timed_steps:
            break
    else:  # the loader runs one epoch: a window longer than that would be timed over fewer steps than it counts
        raise ValueError(f"Invalid steps: {steps}; one epoch of {len(dataset)} samples at batch size {cfg.batch_size} "
                         f"and echo factor {factor} gave {count} steps, and the window needs {warm_up + timed_steps} "
                         "(warm-up included)")
    wall = time.perf_counter() - start
    (cpu_first, wall_first), (cpu_last, wall_last) = stamps[0], stamps[-1]
    return {"steps/s": timed_steps / wall, "t_up": (cpu_last - cpu_first) / (len(stamps) - 1),
            "t_down": step_seconds / timed_steps, "echo factor": timed_steps / len(stamps),
            "worker CPU / wall": (cpu_last - cpu_first) / (wall_last - wall_first)}


def law_check(cfg: Config, data: Data, device: torch.device, seed: int = 0, show_progress: bool = True) -> list[dict]:
    """Steps/s measured against the law e / max(t_up, e·t_down), for each target R and echo factor e.

    The law is fed twice. First with the costs measured inside each run, in the same window as its steps/s (see
    measured_run): t_up is the worker's CPU per fresh batch, t_down the step's time. This tests what the law says
    about the pipeline (the two sides overlap, and nothing else costs time) whatever the shared machine's speed was in
    that window. Each row's "measured / modelled" is the median over cfg.law_repeats runs of that run's own ratio
    ("spread": their range); its costs, R and steps/s are medians too. Second with costs probed alone (each side
    without the other, before the runs of every e; medians per target R), as one would plan: "measured / probed law"
    adds how the two sides slow each other down on this machine, and the drift between a probe and a run."""
    from accel.experiments.progress import progress_bar

    rows = []
    with single_threaded():
        model, optimizer = make_model(cfg, seed, device)
        t_down_probe = float(np.median([downstream_seconds(cfg, model, optimizer, data, 20, device) for _ in range(5)]))
        bar = progress_bar(total=len(cfg.law_ratios) * len(cfg.law_factors), desc="law", disable=not show_progress)
        for ratio in cfg.law_ratios:
            work = calibrate_work(cfg, data, ratio * t_down_probe, seed)
            dataset = data.train.with_work(work)
            up_probes, down_probes, runs = [], [], {}
            for e in cfg.law_factors:
                runs[e] = []
                up_probes.append(upstream_seconds(dataset, cfg, 8, seed))
                down_probes.append(downstream_seconds(cfg, model, optimizer, data, 20, device))
                for repeat in range(cfg.law_repeats):
                    run = measured_run(cfg, dataset, model, optimizer, e, cfg.law_steps, seed + repeat, device,
                                       data.augment_many)
                    run["modelled"] = overlap_steps_per_second(run["t_up"], run["t_down"], run["echo factor"])
                    runs[e].append(run)
                bar.update()
            probed_up, probed_down = float(np.median(up_probes)), float(np.median(down_probes))
            for e in cfg.law_factors:
                median = {key: float(np.median([run[key] for run in runs[e]])) for key in runs[e][0]}
                ratios = [run["steps/s"] / run["modelled"] for run in runs[e]]
                probed = overlap_steps_per_second(probed_up, probed_down, e)
                rows.append({"target R": ratio, "work": work, "R": median["t_up"] / median["t_down"], "echo factor": e,
                             "t_up (ms)": 1e3 * median["t_up"], "t_down (ms)": 1e3 * median["t_down"],
                             "modelled steps/s": median["modelled"], "measured steps/s": median["steps/s"],
                             "measured / modelled": float(np.median(ratios)),
                             "spread": float(max(ratios) - min(ratios)),
                             "worker CPU / wall": median["worker CPU / wall"],
                             "probed t_up (ms)": 1e3 * probed_up, "probed t_down (ms)": 1e3 * probed_down,
                             "probed law steps/s": probed, "measured / probed law": median["steps/s"] / probed})
        bar.close()
    return rows


# Criterion for "the pipeline reaches the law", as resolvable on a shared 2-core machine. Where the input side is far
# slower than a step (R >= 4) the worker has a core to itself most of the time and every recorded run on the 2-core VM
# reached >= 0.93 of the law; at R ~ 2 the worker, the trainer and the handoff threads contend for the same 2 cores
# and recorded runs reached 0.83-0.95, so the floor there is 0.85 (what every recorded run at R ~ 2 but one met).
LAW_FLOORS = ((4.0, 0.90), (0.0, 0.85))  # (lowest measured R, lowest measured / modelled) from the highest R down


def law_floor(ratio: float) -> float:
    """The lowest acceptable measured / modelled at a measured input-side ratio R (see LAW_FLOORS)."""
    return next(floor for lowest_R, floor in LAW_FLOORS if ratio >= lowest_R)


def law_verdict(rows: list[dict]) -> tuple[bool | None, str]:
    """Whether every law_check row with e <= R reached its floor (law_floor of its R), and the numbers that decided.

    Returns (None, why) when no row has e <= R: on a slow or busy machine the calibration may find no setting where
    the echo factor is below the measured R, and the claim is then not evaluated rather than failed."""
    below = [r for r in rows if r["echo factor"] <= r["R"]]
    if not below:
        measured = ", ".join(f"{r['R']:.1f}" for r in rows)
        return None, f"no setting had e <= R (measured R: {measured}); the machine was too slow or too busy to tell"
    misses = [r for r in below if r["measured / modelled"] < law_floor(r["R"])]
    parts = []
    for high, label in ((True, "R >= 4"), (False, "R < 4")):
        group = [r["measured / modelled"] for r in below if (r["R"] >= 4.0) == high]
        if group:
            parts.append(f"{label}: worst {min(group):.2f} (floor {law_floor(4.0 if high else 0.0):.2f}, "
                         f"{len(group)} settings)")
    return not misses, "; ".join(parts)


# --- wall clock to target under a slow input side ------------------------------------------------------------------

def wall_clock(cfg: Config, data: Data, device: torch.device, show_progress: bool = True) -> dict:
    """e = 1 against e > 1 (echoing before augmentation) with an input side R ≈ wall_ratio times slower than a step;
    arms interleaved per seed. Returns the runs and the measured t_up, t_down."""
    from accel.experiments.progress import progress_bar

    with single_threaded():
        model, optimizer = make_model(cfg, 0, device)
        t_down = float(np.median([downstream_seconds(cfg, model, optimizer, data, 20, device) for _ in range(5)]))
        work = calibrate_work(cfg, data, cfg.wall_ratio * t_down)
        t_up = upstream_seconds(data.train.with_work(work), cfg, 10, 0)
    runs: dict[float, list[Run]] = {e: [] for e in cfg.wall_factors}
    total = len(cfg.seeds) * len(cfg.wall_factors)
    with progress_bar(total=total, desc="wall clock", disable=not show_progress) as bar:
        for seed in cfg.seeds:
            for e in cfg.wall_factors:
                runs[e].append(train_to_target(cfg, data, factor=e, point="before_augment", seed=seed,
                                               device=device, work=work))
                bar.update()
    return {"runs": runs, "work": work, "t_up": t_up, "t_down": t_down}


# --- duplicates per batch ------------------------------------------------------------------------------------------

def duplicates_per_batch(num_items: int, factor: float, batch_size: int, shuffle_buffer: int, seed: int = 0) -> float:
    """Mean number of examples per batch that repeat an example already in the same batch."""
    stream = echo(range(num_items), factor, shuffle_buffer=shuffle_buffer, seed=seed)
    total, batches, batch = 0, 0, []
    for item in stream:
        batch.append(item)
        if len(batch) == batch_size:
            total += batch_size - len(set(batch))
            batches += 1
            batch = []
    return total / max(batches, 1)


def duplicates_table(cfg: Config, num_items: int) -> list[dict]:
    return [{"echo factor": e, "batch size": b, "shuffle buffer": n,
             "duplicates per batch": duplicates_per_batch(num_items, e, b, n),
             "duplicate share": duplicates_per_batch(num_items, e, b, n) / b}
            for e in cfg.dup_factors for b in cfg.dup_batch_sizes for n in cfg.dup_buffers]


def live_run(cfg: Config, data: Data, device: torch.device, factor: float, point: str, ratio: float,
             seed: int = 0) -> dict:
    """The explorer's "run" button: train to the target at (factor, point) with an input side R ≈ ratio."""
    with single_threaded():
        model, optimizer = make_model(cfg, seed, device)
        t_down = downstream_seconds(cfg, model, optimizer, data, 10, device)
    work = calibrate_work(cfg, data, ratio * t_down, seed)
    run = train_to_target(cfg, data, factor=factor, point=point, seed=seed, device=device, work=work)
    return {"fresh examples to target": run.fresh_to_target, "steps to target": run.steps_to_target,
            "seconds to target": run.seconds_to_target,
            "modelled steps/s": overlap_steps_per_second(ratio * t_down, t_down, factor)}


def summarize_runs(runs: list[Run], key: Callable[[Run], float | None]) -> tuple[float | None, float | None, int]:
    """(mean, std, reached) of a per-run quantity over the runs that reached the target."""
    values = [key(r) for r in runs if key(r) is not None]
    if not values:
        return None, None, 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)
