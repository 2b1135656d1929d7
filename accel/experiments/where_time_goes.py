"""Chapter 00, "Where training time goes": a training step taken apart, the overlap law measured, the ledger.

Everything here runs on the reader's machine; nothing is a constant from elsewhere. The input side is
:class:`accel.datasets.signals.CompressedSignals`, whose read cost is real work set by ``work``; the model is
:class:`accel.models.vision.ConvNet1D`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler

from accel.datasets.signals import CompressedSignals
from accel.experiments import pick_config
from accel.experiments.ledger import LedgerEntry
from accel.models.vision import ConvNet1D

STAGES = ("data loading", "host→device copy", "forward", "backward", "optimizer")


@dataclass(frozen=True)
class Config:
    """Sizes of one profile. Times are measured, so a config only sets how much is measured."""

    num_samples: int = 8192
    length: int = 128
    num_classes: int = 10
    noise: float = 0.6
    width: int = 64
    batch_size: int = 128
    lr: float = 0.05
    breakdown_steps: int = 40  # timed steps for the per-stage breakdown
    warmup_steps: int = 5  # untimed steps first (allocator, worker start-up, caches)
    ratios: tuple[float, ...] = (0.5, 4.0)  # R = t_up / t_down at which the overlap law is checked
    echo_factors: tuple[float, ...] = (1, 1.5, 2, 3, 4)
    law_steps: int = 24  # optimizer steps per pipeline measurement
    ledger_ratio: float = 4.0  # R for the ledger's e = 1 vs e = 2 comparison
    ledger_target: float = 0.9  # validation accuracy that counts as "reached"
    ledger_max_steps: int = 240
    eval_every: int = 20
    num_val: int = 1024
    repeats: int = 3  # each law row is the median of this many (t_up, t_down, run) triples


CONFIGS = {
    "smoke": Config(num_samples=1024, width=32, batch_size=64, breakdown_steps=6, warmup_steps=2, ratios=(3.0,),
                    echo_factors=(1, 2), law_steps=12, ledger_max_steps=40, eval_every=10, num_val=256,
                    ledger_target=0.3, repeats=1),
    "cpu": Config(),
    "paper": Config(num_samples=50_000, width=256, batch_size=256, repeats=3, breakdown_steps=100, warmup_steps=10,
                    law_steps=200, ledger_max_steps=2000, num_val=4096),
}


def config(profile: str, **overrides) -> Config:
    return pick_config(CONFIGS, profile, **overrides)


# --- the laws ----------------------------------------------------------------------------------------------------

def overlap_steps_per_second(t_up: float, t_down: float, echo_factor: float = 1.0) -> float:
    """Steps/s of a pipeline whose input side takes ``t_up`` s per fresh batch (overlapped with training) and whose
    step takes ``t_down`` s, each fresh batch used ``echo_factor`` times: e / max(t_up, e·t_down)."""
    if t_up < 0 or t_down <= 0 or echo_factor < 1:
        raise ValueError(f"Invalid arguments: t_up={t_up!r} (>= 0), t_down={t_down!r} (> 0), "
                         f"echo_factor={echo_factor!r} (>= 1)")
    return echo_factor / max(t_up, echo_factor * t_down)


def accelerator_idle_share(t_up: float, t_down: float, echo_factor: float = 1.0) -> float:
    """Share of wall clock the accelerator waits for data: 1 - e·t_down / max(t_up, e·t_down)."""
    return 1.0 - echo_factor * t_down * overlap_steps_per_second(t_up, t_down, echo_factor) / echo_factor


def amdahl_speedup(fraction: float, factor: float) -> float:
    """Whole-step speedup when a ``fraction`` of the time gets ``factor`` times faster: 1 / ((1-p) + p/s)."""
    if not 0 <= fraction <= 1 or factor <= 0:
        raise ValueError(f"Invalid arguments: fraction={fraction!r} (in [0, 1]), factor={factor!r} (> 0)")
    return 1.0 / ((1.0 - fraction) + fraction / factor)


# --- building blocks ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """One intra-op thread for the training process while a DataLoader worker holds the other core; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a clock read next includes it; nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(cfg: Config, device: torch.device, seed: int) -> tuple[ConvNet1D, torch.optim.Optimizer]:
    with torch.random.fork_rng(devices=[]):  # initialise from our seed without leaving the global RNG changed
        torch.manual_seed(seed)
        model = ConvNet1D(cfg.num_classes, width=cfg.width).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)


def make_data(cfg: Config, work: int, seed: int, split: str = "train") -> CompressedSignals:
    size = cfg.num_samples if split == "train" else cfg.num_val
    return CompressedSignals(size, cfg.length, cfg.num_classes, noise=cfg.noise, work=work, seed=seed, split=split)


def _loader(dataset, cfg: Config, num_workers: int, seed: int, num_batches: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, num_samples=num_batches * cfg.batch_size, generator=generator)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=False, prefetch_factor=2 if num_workers else None)


def _train_step(model, optimizer, x, y) -> torch.Tensor:
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


# --- 1. one step taken apart -------------------------------------------------------------------------------------

def step_breakdown(cfg: Config, device: torch.device, seed: int = 0, work: int = 1) -> dict[str, np.ndarray]:
    """Seconds spent in each stage of ``breakdown_steps`` training steps (data loaded synchronously in this process,
    so its cost is visible): {stage: array [breakdown_steps]}."""
    dataset = make_data(cfg, work, seed)
    model, optimizer = make_model(cfg, device, seed)
    batches = iter(_loader(dataset, cfg, 0, seed, cfg.warmup_steps + cfg.breakdown_steps))
    times = {stage: [] for stage in STAGES}
    for step in range(cfg.warmup_steps + cfg.breakdown_steps):
        t0 = time.perf_counter()
        x, y = next(batches)
        t1 = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        synchronize(device)
        t2 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        synchronize(device)
        t3 = time.perf_counter()
        loss.backward()
        synchronize(device)
        t4 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        t5 = time.perf_counter()
        if step >= cfg.warmup_steps:
            for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                times[stage].append(seconds)
    return {stage: np.asarray(v) for stage, v in times.items()}


def lever_table(shares: dict[str, float]) -> list[dict]:
    """Where each of the book's four levers acts, and Amdahl's bound on what it can give on this machine."""
    levers = [
        ("InfoBatch (01)", "fewer samples: every stage, fewer times", 1.0, 1 / (1 - 0.4)),
        ("Data Echoing (02)", "a cheaper input side: data loading", shares["data loading"], 2.0),
        ("CowClip (03)", "bigger batches: per-step costs (optimizer)", shares["optimizer"], 8.0),
        ("ST-MoE (04)", "sparse compute: forward and backward", shares["forward"] + shares["backward"], 2.0),
    ]
    return [
        {"lever": name, "acts on": where, "share p": p, "factor s": s, "bound at s": amdahl_speedup(p, s),
         "bound at s=∞": math.inf if p >= 1 else 1 / (1 - p)}
        for name, where, p, s in levers
    ]


# --- 2. the overlap law, measured --------------------------------------------------------------------------------

@dataclass
class PipelineRun:
    """What one pipelined run did. Times exclude evaluation and the first batch (worker start-up)."""

    echo_factor: float
    steps: int
    fresh_examples: int
    seconds: float
    idle_seconds: float
    curve: list[tuple[int, int, float, float]]  # (step, fresh examples, seconds, validation accuracy)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds

    @property
    def idle_share(self) -> float:
        return self.idle_seconds / self.seconds


def train_pipelined(model, optimizer, dataset, cfg: Config, *, echo_factor: float, steps: int, seed: int,
                    device: torch.device, evaluate: Callable[[], float] | None = None,
                    eval_every: int = 0) -> PipelineRun:
    """Train ``steps`` optimizer steps with the input side in one DataLoader worker (overlapping the training
    process) and each fresh batch used floor(e) times, plus once more with probability frac(e)."""
    if echo_factor < 1:
        raise ValueError(f"Invalid echo_factor: {echo_factor!r}; expected >= 1")
    rng = np.random.default_rng([seed, 7])
    batches = iter(_loader(dataset, cfg, 1, seed, steps + 1))
    x, y = next(batches)  # worker start-up is not part of the steady state
    step = fresh = 0
    idle = 0.0
    curve = []
    start = time.perf_counter()
    paused = 0.0
    while step < steps:
        repeats = int(echo_factor) + int(rng.random() < echo_factor - int(echo_factor))
        x, y = x.to(device), y.to(device)
        fresh += len(y)
        for _ in range(repeats):
            if step == steps:
                break
            _train_step(model, optimizer, x, y)
            step += 1
            if evaluate is not None and eval_every and step % eval_every == 0:
                synchronize(device)
                t = time.perf_counter()
                curve.append((step, fresh, t - start - paused, evaluate()))
                paused += time.perf_counter() - t
        if step < steps:
            synchronize(device)
            t = time.perf_counter()
            x, y = next(batches)
            idle += time.perf_counter() - t
    synchronize(device)
    return PipelineRun(echo_factor, step, fresh, time.perf_counter() - start - paused, idle, curve)


def upstream_seconds(dataset, cfg: Config, batches: int, seed: int) -> float:
    """t_up: seconds per batch of the input side alone, through the same one-worker DataLoader."""
    it = iter(_loader(dataset, cfg, 1, seed, batches + 2))
    next(it), next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return (time.perf_counter() - start) / batches


def downstream_seconds(model, optimizer, dataset, cfg: Config, steps: int, device: torch.device) -> float:
    """t_down: seconds per training step on a batch already in place."""
    x, y = next(iter(_loader(dataset, cfg, 0, 0, 1)))
    x, y = x.to(device), y.to(device)
    for _ in range(3):
        _train_step(model, optimizer, x, y)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        _train_step(model, optimizer, x, y)
    synchronize(device)
    return (time.perf_counter() - start) / steps


PROBE_WORK = 512  # the heavier of the two probe settings: decoding then dominates a read, so the slope stands out


def _estimate_work(cfg: Config, t_target: float, seed: int) -> int:
    """A linear fit of seconds per batch against work, from work 1 and PROBE_WORK. Each cost is the fastest of three
    passes (a busy machine only ever slows a pass down), and the slope is at least a tenth of the heavier cost per unit
    of work, so that noise can never make the fit flat and the answer enormous."""
    probe = max(8, min(cfg.batch_size, 64))

    def seconds_per_batch(work: int) -> float:
        dataset = make_data(replace(cfg, num_samples=probe), work, seed)
        fastest = math.inf
        for _ in range(3):
            start = time.perf_counter()
            for i in range(probe):
                dataset[i]
            fastest = min(fastest, time.perf_counter() - start)
        return fastest / probe * cfg.batch_size

    light, heavy = seconds_per_batch(1), seconds_per_batch(PROBE_WORK)
    per_work = max(heavy - light, 0.1 * heavy) / (PROBE_WORK - 1)
    return max(1, round((t_target - light) / per_work) + 1)


def calibrate_work(cfg: Config, t_target: float, seed: int = 0) -> int:
    """The ``work`` whose input side takes about ``t_target`` seconds per batch through the one-worker loader:
    a linear fit of the read cost in this process, then one correction against the loader's measured rate."""
    work = _estimate_work(cfg, t_target, seed)
    measured = upstream_seconds(make_data(cfg, work, seed), cfg, 6, seed)
    return max(1, round(work * t_target / measured))


def overlap_law_check(cfg: Config, device: torch.device, seed: int = 0, progress: bool = True) -> list[dict]:
    """For each R in cfg.ratios and e in cfg.echo_factors: measured steps/s and idle share beside the law's.

    A shared or throttled machine drifts by tens of percent within a minute, so each pipelined run is paired with its
    own t_up and t_down measured just before it, and each row is the median of ``cfg.repeats`` such triples.
    """
    from accel.experiments.progress import progress_bar

    rows = []
    with single_threaded():
        model, optimizer = make_model(cfg, device, seed)
        t_down_probe = downstream_seconds(model, optimizer, make_data(cfg, 1, seed), cfg, 20, device)
        bar = progress_bar(total=len(cfg.ratios) * len(cfg.echo_factors), desc="overlap law", disable=not progress)
        for ratio in cfg.ratios:
            work = calibrate_work(cfg, ratio * t_down_probe, seed)
            dataset = make_data(cfg, work, seed)
            for e in cfg.echo_factors:
                triples = []
                for repeat in range(cfg.repeats):
                    t_up = upstream_seconds(dataset, cfg, max(6, cfg.law_steps // 6), seed + repeat)
                    t_down = downstream_seconds(model, optimizer, dataset, cfg, 10, device)
                    run = train_pipelined(model, optimizer, dataset, cfg, echo_factor=e, steps=cfg.law_steps,
                                          seed=seed + repeat, device=device)
                    triples.append((run.steps_per_second / overlap_steps_per_second(t_up, t_down, e), t_up, t_down,
                                    run))
                _, t_up, t_down, run = sorted(triples, key=lambda t: t[0])[len(triples) // 2]
                rows.append({
                    "target R": ratio, "work": work, "t_up (ms)": 1e3 * t_up, "t_down (ms)": 1e3 * t_down,
                    "R": t_up / t_down, "echo factor": e,
                    "modelled steps/s": overlap_steps_per_second(t_up, t_down, e),
                    "measured steps/s": run.steps_per_second,
                    "measured / modelled": run.steps_per_second / overlap_steps_per_second(t_up, t_down, e),
                    "modelled idle": accelerator_idle_share(t_up, t_down, e),
                    "measured idle": run.idle_share,
                })
                bar.update()
        bar.close()
    return rows


# --- 3. the ledger -----------------------------------------------------------------------------------------------

def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = (model(x).argmax(-1) == y).float().mean().item()
    model.train()
    return correct


def ledger_example(cfg: Config, device: torch.device, seed: int = 0, echo_factors=(1, 2)) -> dict:
    """Train the same model from the same start with e = 1 and e = 2 under a slow input side (R = ledger_ratio):
    fresh examples, steps and seconds to the target accuracy, and accuracy at the end of the step budget."""
    entries, curves = [], {}
    with single_threaded():
        model, optimizer = make_model(cfg, device, seed)
        t_down = downstream_seconds(model, optimizer, make_data(cfg, 1, seed), cfg, 10, device)
        work = calibrate_work(cfg, cfg.ledger_ratio * t_down, seed)
        dataset = make_data(cfg, work, seed)
        val = make_data(cfg, 1, seed, split="test")
        xv = torch.stack([val[i][0] for i in range(len(val))]).to(device)
        yv = torch.stack([val[i][1] for i in range(len(val))]).to(device)
        for e in echo_factors:
            model, optimizer = make_model(cfg, device, seed)
            run = train_pipelined(model, optimizer, dataset, cfg, echo_factor=e, steps=cfg.ledger_max_steps,
                                  seed=seed, device=device, evaluate=functools.partial(accuracy, model, xv, yv),
                                  eval_every=cfg.eval_every)
            hit = next((point for point in run.curve if point[3] >= cfg.ledger_target), None)
            entries.append(LedgerEntry(
                arm=f"echo e={e}", samples_to_target=hit[1] if hit else None, steps_to_target=hit[0] if hit else None,
                seconds_to_target=hit[2] if hit else None, quality=run.curve[-1][3] if run.curve else float("nan"),
            ))
            curves[e] = run.curve
    return {"entries": entries, "curves": curves, "work": work, "t_down": t_down}


def live_overlap(cfg: Config, device: torch.device, t_up_ms: float, echo_factor: float, seed: int = 0) -> dict:
    """The explorer's "run" button: build an input side of about ``t_up_ms`` per batch and measure."""
    with single_threaded():
        model, optimizer = make_model(cfg, device, seed)
        dataset = make_data(cfg, calibrate_work(cfg, t_up_ms / 1e3, seed), seed)
        t_up = upstream_seconds(dataset, cfg, 8, seed)
        t_down = downstream_seconds(model, optimizer, dataset, cfg, 10, device)
        run = train_pipelined(model, optimizer, dataset, cfg, echo_factor=echo_factor, steps=cfg.law_steps,
                              seed=seed, device=device)
    return {
        "t_up (ms, measured)": 1e3 * t_up, "t_down (ms, measured)": 1e3 * t_down,
        "modelled steps/s": overlap_steps_per_second(t_up, t_down, echo_factor),
        "measured steps/s": run.steps_per_second, "measured idle share": run.idle_share,
    }
