"""Chapter 00, "Where training time goes": a training step taken apart, the overlap law measured, the ledger.

Every time is measured on the reader's machine. The input side is :class:`accel.datasets.signals.CompressedSignals`,
whose read cost is real work set by ``work``; the model is :class:`accel.models.vision.ConvNet1D`. The overlap law and
its measurement live in :mod:`accel.experiments.slow_input`, shared with chapter 02.

Every measurement the notebook shows is made inside a ``@replay.replayable`` function (``step_breakdown``,
``overlap_law_check``, ``ledger_runs``, ``wait_and_step``): a run records what they return, and a later run with
``RESULTS_FROM`` shows those very numbers without measuring again. ``cost_model`` is the probe behind the set-up cell's
estimate; ``TRIMS`` says what a time budget trims.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler, default_collate

from accel.datasets.signals import CompressedSignals
from accel.experiments import pick_config, replay
from accel.experiments.ledger import LedgerEntry, entry_from_runs
from accel.experiments.run_time import Estimate
from accel.experiments.slow_input import (
    accelerator_idle_share,
    calibrate_work,
    downstream_seconds,
    law_check,
    measured_run,
    overlap_steps_per_second,
    single_threaded,
    speed_phrase,
    speedup_cap,
    synchronize,
    upstream_seconds,
)
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
    ratios: tuple[float, ...] = (2.0, 5.0)  # target R = t_up / t_down of the two input sides
    echo_factors: tuple[float, ...] = (1, 2, 4, 8)  # e on both sides of the kink e = R for each R
    law_steps: int = 24  # timed optimizer steps per pipeline measurement (at least 12 fresh batches' worth)
    ledger_ratio: float = 4.0  # R for the ledger's e = 1 vs e = 2 comparison
    ledger_target: float = 0.9  # validation accuracy that counts as "reached"
    ledger_max_steps: int = 240
    ledger_seeds: tuple[int, ...] = (0, 1)
    eval_every: int = 20
    num_val: int = 1024
    repeats: int = 3  # each law row is the median of this many runs, each judged against its own in-run costs


CONFIGS = {
    "smoke": Config(num_samples=1024, width=32, batch_size=64, breakdown_steps=6, warmup_steps=2, ratios=(2.0,),
                    echo_factors=(1, 4), law_steps=12, ledger_max_steps=40, eval_every=10, num_val=256,
                    ledger_target=0.3, ledger_seeds=(0,), repeats=1),
    "cpu": Config(),
    # A T4-class GPU: about 8 fp32 TFLOP/s, taken at 30-40% busy, so about 2.4-3.2 TFLOP/s. An estimate: no GPU was at
    # hand to time it; the set-up cell probes the real device and trims to the budget. ConvNet1D at width w and length
    # L costs about 2·5·(w·L/2 + w²·L/4 + w²·L/8) ≈ 3.75·w²·L FLOPs forward per sample and three times that to train:
    # 11.25 · 384² · 128 ≈ 0.21 GFLOP per sample, × batch 512 ≈ 109 GFLOP per step, so t_down ≈ 35-45 ms. The GPU,
    # not the kernel launches (about 1 ms a step), sets the step time, and reading a 512-sample batch (about 15-20 ms
    # on a Colab CPU core) stays below the R ≈ 2 input side (2 · t_down). Step times, at t_down = 40 ms:
    #   overlap law: per repeat, the sum over R in (2, 5) and e in (1, 2, 4, 8) of (2·ceil(e) + max(64, 12·e)) steps
    #     at max(R, e) / e step times each = 384 + 702 = 1,086; × 3 repeats ≈ 3,260 × 40 ms ≈ 130 s, plus two
    #     calibrations (about 20 s) and 13 dataset builds of 40,960 samples (about 15 s);
    #   ledger: 4 seeds × 300 steps × (4 + 2) step times (R = 4: e = 1 paces 4 t_down a step, e = 2 paces 2 t_down)
    #     = 7,200 × 40 ms ≈ 290 s, plus 15 evaluations of 4,096 samples per run and a calibration (about 20 s);
    #   step breakdown: 110 steps × (20 + 40) ms ≈ 7 s.
    # In all about 8-9 minutes, leaving room under the 15-minute budget for a slower GPU or CPU. The smaller cpu model
    # (width 64, batch 128) reached 90% validation accuracy in about 150 steps; at width 128 and batch 512 it took
    # about 100 (CPU runs), so 300 ledger steps reach the target with room.
    "gpu": Config(num_samples=40_960, width=384, batch_size=512, breakdown_steps=100, warmup_steps=10, law_steps=64,
                  ledger_max_steps=300, ledger_seeds=(0, 1, 2, 3), eval_every=20, num_val=4096),
    # law_steps: 50,000 samples make 196 batches, and a run at e = 1 reads 2 + law_steps of them in its one epoch
    "paper": Config(num_samples=50_000, width=256, batch_size=256, repeats=3, breakdown_steps=100, warmup_steps=10,
                    law_steps=192, ledger_max_steps=2000, num_val=4096),
}


#: What a time budget (BUDGET_MINUTES) trims, in this order, and how far: the ledger's seeds, then the law's repeats,
#: then the ledger's steps and the law's timed steps (``Book.fit``, :func:`accel.book.budget.fit_budget`).
TRIMS = (("ledger_seeds", 1), ("repeats", 1), ("ledger_max_steps", 40), ("law_steps", 12))


def config(profile: str, **overrides) -> Config:
    return pick_config(CONFIGS, profile, **overrides)


# --- the laws ----------------------------------------------------------------------------------------------------

def amdahl_speedup(fraction: float, factor: float) -> float:
    """Whole-step speedup when a ``fraction`` of the time gets ``factor`` times faster: 1 / ((1-p) + p/s)."""
    if not 0 <= fraction <= 1 or factor <= 0:
        raise ValueError(f"Invalid arguments: fraction={fraction!r} (in [0, 1]), factor={factor!r} (> 0)")
    return 1.0 / ((1.0 - fraction) + fraction / factor)


# --- building blocks ---------------------------------------------------------------------------------------------

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
    worker_seeds = torch.Generator().manual_seed(seed)  # without one, the loader draws them from the global RNG
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=False, prefetch_factor=2 if num_workers else None, generator=worker_seeds)


def _train_step(model, optimizer, x, y) -> torch.Tensor:
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


# --- 1. one step taken apart -------------------------------------------------------------------------------------

@replay.replayable
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
    """Where each of the book's four levers pays, and what Amdahl's law says about the part a share can bound.

    Only echoing is a speed-up of one measured share of this step; the other three change how much work a result
    needs (InfoBatch: fewer sample-iterations; CowClip: a larger batch, so fewer steps and better hardware use per
    example; ST-MoE: more parameters at the same compute per token), so their row gives no share-based bound."""
    loading = shares["data loading"]
    return [
        {"lever": "InfoBatch (01)", "what it changes": "fewer sample-iterations per epoch",
         "pays through": "every stage runs fewer times (p = 1)", "share p": 1.0,
         "bound": "= the saving: 1 / (1 − pruned share)"},
        {"lever": "Data Echoing (02)", "what it changes": "reuses data after the slow input stage",
         "pays through": "hides the input side's wait", "share p": loading,
         "bound": f"synchronous: ≤ {1 / (1 - loading):.2f}× (Amdahl); workers: ≤ min(e, R) (overlap law)"},
        {"lever": "CowClip (03)", "what it changes": "keeps accuracy at a much larger batch",
         "pays through": "fewer steps, and a large batch keeps the hardware busy", "share p": None,
         "bound": "none from one step's shares: steps × time per step"},
        {"lever": "ST-MoE (04)", "what it changes": "many experts, each token uses k of them",
         "pays through": "more capacity at about the same FLOPs per token", "share p": None,
         "bound": "none: it buys quality per FLOP, not a faster step"},
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


def trainer_step(model, optimizer) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The trainer's side as the shared measurement wants it: step(x, y) on this model and optimizer."""
    return functools.partial(_train_step, model, optimizer)


@replay.replayable
def overlap_law_check(cfg: Config, device: torch.device, seed: int = 0, progress: bool = True) -> list[dict]:
    """The overlap law on both sides of its kink: for each input side (target R in cfg.ratios) and each e in
    cfg.echo_factors, steps/s measured against e / max(t_up, e·t_down) fed with the same run's costs
    (:func:`accel.experiments.slow_input.law_check`; rows are medians over cfg.repeats runs)."""
    model, optimizer = make_model(cfg, device, seed)
    x, y = next(iter(_loader(make_data(cfg, 1, seed), cfg, 0, seed, 1)))
    return law_check(functools.partial(make_data, cfg, seed=seed), trainer_step(model, optimizer),
                     (x.to(device), y.to(device)), batch_size=cfg.batch_size, ratios=cfg.ratios,
                     factors=cfg.echo_factors, steps=cfg.law_steps, repeats=cfg.repeats, device=device, seed=seed,
                     probe=False, progress=progress)


def live_overlap(cfg: Config, device: torch.device, t_up_ms: float, echo_factor: float, seed: int = 0) -> dict:
    """The explorer's "run" button: build an input side of about ``t_up_ms`` per batch and measure one run."""
    model, optimizer = make_model(cfg, device, seed)
    with single_threaded():
        work = calibrate_work(functools.partial(make_data, cfg, seed=seed), cfg.batch_size, t_up_ms / 1e3, seed)
        run = measured_run(make_data(cfg, work, seed), cfg.batch_size, trainer_step(model, optimizer), echo_factor,
                           cfg.law_steps, seed, device)
    return {"t_up (ms, in the run)": 1e3 * run["t_up"], "t_down (ms, in the run)": 1e3 * run["t_down"],
            "modelled steps/s": overlap_steps_per_second(run["t_up"], run["t_down"], run["echo factor"]),
            "measured steps/s": run["steps/s"]}


# --- 3. the ledger -----------------------------------------------------------------------------------------------

def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = (model(x).argmax(-1) == y).float().mean().item()
    model.train()
    return correct


@replay.replayable
def ledger_runs(cfg: Config, device: torch.device, seed: int = 0, echo_factors=(1, 2)) -> dict:
    """Train the same model from the same start with each e under a slow input side (R = cfg.ledger_ratio), arms
    interleaved per seed (cfg.ledger_seeds, each shifted by ``seed``). Returns per arm one curve per seed of
    ``(fresh examples, steps, seconds, validation accuracy)`` evaluations (the shared ledger's format), and the
    calibration: work, t_down and t_up probed alone."""
    curves: dict[float, list] = {e: [] for e in echo_factors}
    with single_threaded():
        model, optimizer = make_model(cfg, device, seed)
        x, y = next(iter(_loader(make_data(cfg, 1, seed), cfg, 0, seed, 1)))
        t_down = downstream_seconds(trainer_step(model, optimizer), x.to(device), y.to(device), 20, device)
        work = calibrate_work(functools.partial(make_data, cfg, seed=seed), cfg.batch_size,
                              cfg.ledger_ratio * t_down, seed)
        dataset = make_data(cfg, work, seed)
        t_up = upstream_seconds(dataset, cfg.batch_size, 10, seed)
        val = make_data(cfg, 1, seed, split="test")
        xv = torch.stack([val[i][0] for i in range(len(val))]).to(device)
        yv = torch.stack([val[i][1] for i in range(len(val))]).to(device)
        for s in cfg.ledger_seeds:
            for e in echo_factors:
                model, optimizer = make_model(cfg, device, seed + s)
                run = train_pipelined(model, optimizer, dataset, cfg, echo_factor=e, steps=cfg.ledger_max_steps,
                                      seed=seed + s, device=device, evaluate=functools.partial(accuracy, model, xv, yv),
                                      eval_every=cfg.eval_every)
                curves[e].append([(fresh, step, seconds, acc) for step, fresh, seconds, acc in run.curve])
    return {"curves": curves, "work": work, "t_down": t_down, "t_up": t_up}


def ledger_entries(ledger: dict, target: float) -> list[LedgerEntry]:
    """One ledger entry per arm ("echo e=1", "echo e=2", ...) from :func:`ledger_runs`, through the shared path."""
    return [entry_from_runs(f"echo e={e:g}", curves, target) for e, curves in ledger["curves"].items()]


def ledger_flags(entries: list[LedgerEntry], ratio: float, slack: float = 1.05) -> list[str]:
    """A sentence for every echoed arm whose wall-clock gain over "echo e=1" exceeds the law's cap min(e, R), saying
    which part went past it: fewer steps to the target (a repeated batch counted like a fresh one, on the evaluation
    grid), or a per-step time gain above the cap (the machine's speed drifted between the arms)."""
    base = next(e for e in entries if e.arm == "echo e=1")
    flags = []
    for entry in entries:
        e = float(entry.arm.split("=")[1])
        if e == 1 or not entry.seconds_to_target or not base.seconds_to_target:
            continue
        gain, cap = base.seconds_to_target / entry.seconds_to_target, speedup_cap(e, ratio)
        if gain <= slack * cap:
            continue
        steps_gain = base.steps_to_target / entry.steps_to_target
        per_step_gain = gain / steps_gain
        reasons = []
        if steps_gain > 1:
            reasons.append(f"it reached the target in fewer steps ({entry.steps_to_target:,} vs "
                           f"{base.steps_to_target:,}, {steps_gain:.2f}×): the law assumes a repeated batch is worth "
                           "at most a fresh one, and with few seeds and an evaluation every few steps it can look "
                           "worth more")
        if per_step_gain > slack * cap:
            reasons.append(f"its time per step gained {per_step_gain:.2f}× over the baseline's, above the cap: the "
                           "arms ran one after the other and the machine's speed drifted between them")
        flags.append(f"⚠ {entry.arm}: {gain:.2f}× faster to the target, above the law's cap min(e, R) = {cap:.2f}; "
                     + "; ".join(reasons or ["within timing noise of the cap"]) + ".")
    return flags


# --- 4. the drop-in: which law is your loop under? ----------------------------------------------------------------

@replay.replayable  # records the timings for a replay (RESULTS_FROM); leave it out in your own code
def wait_and_step(loader, step: Callable, device: torch.device | str = "cpu") -> tuple[float, float, int]:
    """One pass over ``loader``: seconds spent waiting for the next batch, seconds in ``step(x, y)`` (synchronised
    on a GPU, so the step's queued work counts), and the number of steps."""
    device = torch.device(device)
    wait = seconds = 0.0
    batches, steps = iter(loader), 0
    for _ in range(len(loader)):
        t0 = time.perf_counter()
        x, y = next(batches)
        t1 = time.perf_counter()
        step(x.to(device), y.to(device))
        synchronize(device)
        wait, seconds, steps = wait + t1 - t0, seconds + time.perf_counter() - t1, steps + 1
    return wait, seconds, steps


# --- the two laws side by side -------------------------------------------------------------------------------------

def echo_schedules(t_up: float, t_down: float, factors) -> dict[str, list[float]]:
    """Speedup over the plain synchronous loop (t_up + t_down per step) of echoing e times, in the two schedules:
    "synchronous" (loading and training take turns: Amdahl with p = t_up / (t_up + t_down) and s = e) and
    "pipelined" (a worker loads while the trainer steps: e·(t_up + t_down) / max(t_up, e·t_down))."""
    p = t_up / (t_up + t_down)
    return {"synchronous": [amdahl_speedup(p, e) for e in factors],
            "pipelined": [overlap_steps_per_second(t_up, t_down, e) * (t_up + t_down) for e in factors]}


def record_metrics(results, shares: dict[str, float], law_rows: list[dict], entries: list[LedgerEntry]) -> None:
    """The chapter's regression numbers (``results`` duck-typed: anything with ``metric(name, value, abs=...)``):
    timings are recorded and not compared; counts and the seed-determined qualities are."""
    for stage, share in shares.items():
        results.metric(f"share_{stage}", share)  # timing: recorded, not compared
    results.metric("shares_sum", sum(shares.values()), abs=1e-9)
    ratios = [row["measured / modelled"] for row in law_rows]
    results.metric("law_ratio_median", float(np.median(ratios)))
    results.metric("law_ratio_lowest", float(min(ratios)))
    results.metric("law_settings", len(law_rows), abs=0)
    for entry in entries:
        results.metric(f"ledger_quality_{entry.arm}", entry.quality, abs=0.02)  # kernels: 0 apart; 2.5 steps of 1/128


# --- the run-time estimate (the set-up cell's Book.fit) -------------------------------------------------------------

@dataclass
class Probe:
    """What :func:`probe` measured on this device (seconds), and the batch size it measured at."""

    step: float  # one training step at the config's sizes (one intra-op thread, as the law and the ledger run)
    read: float  # reading one sample at work 1 (decode, fresh noise, collation share): the input side's fixed cost
    work: float  # each further decode pass, per sample
    build: float  # building one stored (compressed) sample of a CompressedSignals
    loader_start: float  # starting a one-worker DataLoader and receiving its first batch, beyond reading that batch
    batch_size: int
    device: str = "cpu"


def probe(cfg: Config, device: torch.device, seed: int = 0) -> Probe:
    """Time the chapter's own pieces at ``cfg``'s sizes on ``device``: three training steps of the config's model
    after two warm-up steps (one intra-op thread, as the runs use; the batch from a seeded torch.Generator), building
    256 samples, reading a batch at work 1 and at work 51, and one one-worker loader start. Leaves the global RNGs
    untouched; about a second at cpu size, a fifth of that at smoke."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg.batch_size, 1, cfg.length, generator=generator).to(device)
    y = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=generator).to(device)
    with single_threaded():
        model, optimizer = make_model(cfg, device, seed)
        for _ in range(2):
            _train_step(model, optimizer, x, y)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(3):
            _train_step(model, optimizer, x, y)
        synchronize(device)
        step = (time.perf_counter() - start) / 3
    size = 256
    small = replace(cfg, num_samples=size)
    start = time.perf_counter()
    dataset = make_data(small, 1, seed)
    build = (time.perf_counter() - start) / size
    batch = min(cfg.batch_size, size)
    reads = []
    for work in (1, 51):
        dataset.work = work
        start = time.perf_counter()
        default_collate([dataset[i] for i in range(batch)])
        reads.append((time.perf_counter() - start) / batch)
    dataset.work = 1
    start = time.perf_counter()
    next(iter(_loader(dataset, replace(small, batch_size=batch), 1, seed, 1)))
    loader_start = max(time.perf_counter() - start - batch * reads[0], 0.0)
    return Probe(step, reads[0], max(reads[1] - reads[0], 0.0) / 50, build, loader_start, cfg.batch_size,
                 device.type)


def estimate(cfg: Config, probe: Probe) -> Estimate:
    """Seconds per section of the chapter at ``cfg`` from the probed costs: every count the config sets (breakdown
    steps; target R values × echo factors × repeats × timed steps for the law; ledger seeds × arms × steps and
    evaluations) times the probed seconds, with the dataset builds, calibrations, probes alone and loader starts the
    code makes. An input side calibrated to R paces a step at max(R, e) / e step times, as the overlap law says."""
    if cfg.batch_size != probe.batch_size:
        raise ValueError(f"Invalid config: batch size {cfg.batch_size}, but the probe ran at {probe.batch_size}; "
                         "probe again at this config's sizes")
    t, batch = probe.step, cfg.batch_size

    def upstream(work: int) -> float:  # seconds per fresh batch of the input side at this decode effort
        return batch * (probe.read + (work - 1) * probe.work)

    def calibration(ratio: float) -> float:  # slow_input.calibrate_work (5 builds, 5 loaders of 10 batches) + 1 build
        return (6 * cfg.num_samples * probe.build + 10 * (upstream(1) + upstream(200)) + 30 * ratio * t
                + 5 * probe.loader_start)

    def pipelined(steps: float, ratio: float, e: float) -> float:  # steps at the overlap law's pace, one loader
        return probe.loader_start + steps * max(ratio, e) / e * t

    sample = cfg.num_samples * probe.build + upstream(1)  # make_data and one synchronous batch
    breakdown = sample + (cfg.warmup_steps + cfg.breakdown_steps) * (upstream(1) + t)
    law = sample + 3 * 23 * t  # t_down probed alone, three times
    for ratio in cfg.ratios:
        law += calibration(ratio)
        for e in cfg.echo_factors:
            law += cfg.repeats * pipelined(2 * math.ceil(e) + max(cfg.law_steps, math.ceil(12 * e)), ratio, e)
    ratio, evaluation = cfg.ledger_ratio, cfg.num_val / batch * t / 3  # a forward pass is about a third of a step
    ledger = (sample + 23 * t + calibration(ratio) + pipelined(12, ratio, 1)  # t_down, work, t_up alone
              + cfg.num_val * (probe.build + probe.read))  # the validation set, read once
    for e in (1, 2):
        ledger += len(cfg.ledger_seeds) * (pipelined(cfg.ledger_max_steps + e, ratio, e)
                                           + cfg.ledger_max_steps // cfg.eval_every * evaluation)
    basis = (f"{1e3 * t:.1f} ms per training step at batch {batch}, {1e6 * probe.read:.0f} µs per sample read + "
             f"{1e6 * probe.work:.2f} µs per decode pass, {1e6 * probe.build:.0f} µs per stored sample, "
             f"{probe.loader_start:.2f} s per loader start ({probe.device})")
    return Estimate({"step breakdown (section 2)": breakdown, "overlap law (section 4)": law,
                     "ledger (section 5)": ledger}, basis)


def cost_model(cfg: Config, device: torch.device) -> Callable[[Config], Estimate]:
    """The set-up cell's cost model for ``Book.fit``: :func:`probe` this device once at ``cfg``'s sizes, and return
    ``Config -> Estimate`` (:func:`estimate` with those costs), which Book.fit evaluates for ``cfg`` and for each
    trimmed config (``TRIMS``)."""
    return functools.partial(estimate, probe=probe(cfg, device))


# --- words and pictures for the notebook ------------------------------------------------------------------------

def ledger_reading(entries: list[LedgerEntry], max_steps: int) -> str:
    """What the ledger says about "echo e=2" against "echo e=1", in sentences chosen from its numbers."""
    base = next(e for e in entries if e.arm == "echo e=1")
    arm = next(e for e in entries if e.arm == "echo e=2")
    missed = [e.arm.replace("echo e=", "e = ") for e in (base, arm) if e.steps_to_target is None]
    if missed:
        return (f"{' and '.join(missed)} did not reach the target on every seed within {max_steps:,} "
                f"steps, so those to-target columns are empty; at the end, e = 2's quality was {arm.quality:.2f} "
                f"against e = 1's {base.quality:.2f}.")
    steps, fresh = arm.steps_to_target / base.steps_to_target, arm.samples_to_target / base.samples_to_target
    worth = ("a repeated batch was worth about as much as a fresh one" if steps <= 1.2 else
             "a repeated batch was worth less than a fresh one, so e = 2 needed more steps")
    return (f"e = 2 needed {steps:.2f}× the steps and {fresh:.2f}× the fresh examples of e = 1 and was "
            f"{speed_phrase(base.seconds_to_target / arm.seconds_to_target)} on the wall clock: {worth}.")


def kink_sentence(ratio: float) -> str:
    """Where the overlap law's kink e = R sits for an input side R times slower than the step, and what it means for
    echoing with one worker, in a sentence."""
    if ratio <= 1:
        return (f"Here $R = {ratio:.2f} \\le 1$: with one worker the step is already the bottleneck (the kink $e = R$ "
                "lies below $e = 1$), so echoing cannot speed it up at all; the worker alone does all there is to do.")
    if ratio < 2:
        return (f"Here $R = {ratio:.2f}$: the kink $e = R$ lies between 1 and 2, so echoing pays only up to "
                f"$e = {ratio:.2f}$ and the rest of $e = 2$'s repeats buy no speed.")
    return (f"Here $R = {ratio:.2f}$: the kink $e = R$ lies at or beyond $e = 2$, so echoing twice is all gain "
            "(by the law).")


def law_readout(t_up_ms: float, t_down_ms: float, echo_factor: float) -> dict[str, float]:
    """The explorer's readout: the overlap law at one setting of its sliders."""
    t_up, t_down = t_up_ms / 1e3, t_down_ms / 1e3
    rate = overlap_steps_per_second(t_up, t_down, echo_factor)
    return {"R = t_up / t_down": t_up / t_down, "steps/s": rate,
            "trainer idle share": accelerator_idle_share(t_up, t_down, echo_factor),
            "fresh batches/s": rate / echo_factor}


def law_plot(ax, knobs: dict, readout: dict, law_rows: list[dict], colors: dict[str, str]) -> None:
    """The explorer's figure: the law at the sliders' setting, and the input side measured nearest the t_up slider:
    what was measured there (squares) beside the law fed with each of those runs' own costs (crosses, dashed line
    through them), so each square is read against its own law, not against one run's costs."""
    grid = np.linspace(1, 16, 300)
    t_up, t_down = knobs["t_up_ms"] / 1e3, knobs["t_down_ms"] / 1e3
    ax.plot(grid, [overlap_steps_per_second(t_up, t_down, e) for e in grid], color=colors["model"], lw=2,
            label="law at the sliders' setting")
    ax.plot([knobs["echo_factor"]], [readout["steps/s"]], "o", color=colors["echo"], ms=10, label="this setting")
    nearest = min(law_rows, key=lambda r: abs(r["t_up (ms)"] - knobs["t_up_ms"]))
    measured = [r for r in law_rows if r["target R"] == nearest["target R"]]
    es = [r["echo factor"] for r in measured]
    ax.plot(es, [r["modelled steps/s"] for r in measured], "x--", color=colors["measured"], ms=9, mew=2, lw=1,
            label=f"law at each measured run's own costs (target R ≈ {nearest['target R']:g})")
    ax.plot(es, [r["measured steps/s"] for r in measured], "s", color=colors["measured"], mfc="none", ms=8,
            label="measured in those runs")
    ax.set_xlabel("echo factor e")
    ax.set_ylabel("steps/s")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    ax.set_title(f"t_up {knobs['t_up_ms']} ms, t_down {knobs['t_down_ms']} ms")


def explorer_knobs(law_rows: list[dict]) -> tuple[dict[str, list], dict[str, float]]:
    """The explorer's controls (round values plus this run's measured costs) and its initial setting: this
    machine's measured step time, the slowest measured input side, e = 2."""
    measured_up = sorted({round(r["t_up (ms)"]) for r in law_rows})
    measured_down = round(float(np.median([r["t_down (ms)"] for r in law_rows])), 1)
    controls = {"t_up_ms": sorted({5, 10, 20, 40, 80, 160, *measured_up}),
                "t_down_ms": sorted({1, 2, 5, 10, 20, 40, measured_down}),
                "echo_factor": [1, 1.5, 2, 3, 4, 6, 8, 12, 16]}
    return controls, {"t_up_ms": measured_up[-1], "t_down_ms": measured_down, "echo_factor": 2}
