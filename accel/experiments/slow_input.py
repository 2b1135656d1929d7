"""A slow input side and the overlap law, measured: the one implementation chapters 00 and 02 share.

The picture: an input side (read, decode, augment) in one DataLoader worker produces a fresh batch every ``t_up``
seconds while the training process takes ``t_down`` seconds per step; each fresh batch is used ``e`` times (data
echoing). In steady state the slower side sets the pace, and the **overlap law** says

    steps/s = e / max(t_up, e · t_down),        R = t_up / t_down,

so echoing raises steps/s in proportion to ``e`` while ``e <= R`` and not at all beyond (the kink at ``e = R``).

How it is measured (``measured_run``): the worker stamps each fresh batch with its own CPU clock, so ``t_up`` is the
worker's busy seconds per fresh batch *in the very window* whose steps/s is measured, and ``t_down`` is the training
step timed around itself in that window. On a shared machine whose speed drifts by tens of percent within a minute,
these in-run costs are what make the law testable; costs probed alone (each side without the other, before the run)
are reported beside them as the numbers one would plan with.

The input side's cost is a dial, not a sleep: a dataset built by ``dataset_at(work)`` decodes each sample with
``work`` passes (the sample is the same whatever the work), and ``calibrate_work`` finds the work for a target
``t_up``. Everything takes the trainer's step as a callable ``step(x, y)``, so each chapter brings its own model,
optimizer and augmentation.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from accel.echo import echo_batches, echoing_loader
from accel.experiments.words import plural

Step = Callable[[torch.Tensor, torch.Tensor], object]  # step(x, y): one training step on a batch (augmentation too)


# --- the law -----------------------------------------------------------------------------------------------------

def overlap_steps_per_second(t_up: float, t_down: float, echo_factor: float = 1.0) -> float:
    """Steps/s of a pipeline whose input side takes ``t_up`` s per fresh batch (overlapped with training) and whose
    step takes ``t_down`` s, each fresh batch used ``echo_factor`` times: e / max(t_up, e·t_down)."""
    if not t_up >= 0 or not t_down > 0 or not echo_factor >= 1:
        raise ValueError(f"Invalid arguments: t_up={t_up!r} (>= 0), t_down={t_down!r} (> 0), "
                         f"echo_factor={echo_factor!r} (>= 1)")
    return echo_factor / max(t_up, echo_factor * t_down)


def accelerator_idle_share(t_up: float, t_down: float, echo_factor: float = 1.0) -> float:
    """Share of wall clock the trainer waits for data: 1 - e·t_down / max(t_up, e·t_down)."""
    return 1.0 - t_down * overlap_steps_per_second(t_up, t_down, echo_factor)


def speedup_cap(echo_factor: float, ratio: float) -> float:
    """The law's cap on the wall-clock gain of echoing at the same number of steps: min(e, max(R, 1)) (nothing to
    gain when R <= 1; a repeated batch is worth at most a fresh one, so at most e)."""
    return min(echo_factor, max(ratio, 1.0))


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


def upstream_seconds(dataset, batch_size: int, batches: int, seed: int = 0) -> float:
    """t_up probed alone: seconds per fresh batch of the input side (one worker reading and decoding), steady state."""
    loader = echoing_loader(dataset, batch_size=batch_size, factor=1, point="batch", num_workers=1, seed=seed)
    it = iter(loader)
    next(it), next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return (time.perf_counter() - start) / batches


def downstream_seconds(step: Step, x: torch.Tensor, y: torch.Tensor, steps: int, device: torch.device) -> float:
    """t_down probed alone: seconds per ``step(x, y)`` on a batch already in place (three untimed steps first)."""
    for _ in range(3):
        step(x, y)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    synchronize(device)
    return (time.perf_counter() - start) / steps


def calibrate_work(dataset_at: Callable[[int], object], batch_size: int, t_target: float, seed: int = 0, *,
                   high: int = 200) -> int:
    """The decode effort whose input side takes about ``t_target`` s per batch through the one-worker loader.

    The cost is affine in ``work`` (a fixed part plus a slope), fitted from probes at work 1 and ``high`` and
    corrected three times against the measured loader. The slope is at least a tenth of the heavier probe's cost per
    unit of work: on a busy machine the two probes can come out nearly equal, and a flat fit would ask for an effort
    that takes hours per batch."""
    if not t_target > 0:
        raise ValueError(f"Invalid t_target: {t_target!r}; expected seconds > 0")
    t_low = upstream_seconds(dataset_at(1), batch_size, 8, seed)
    t_high = upstream_seconds(dataset_at(high), batch_size, 8, seed)
    slope = max(t_high - t_low, 0.1 * t_high) / (high - 1)
    work, measured = 1, t_low
    for _ in range(3):
        work = max(1, round(work + (t_target - measured) / slope))
        measured = upstream_seconds(dataset_at(work), batch_size, 8, seed)
    return work


class StampedCollate:
    """default_collate plus two clocks read in the calling process: (x, y) -> (x, y, [CPU seconds, wall seconds]).

    Runs in the DataLoader worker, so consecutive fresh batches' CPU stamps differ by the worker's whole cost of one
    batch (reading, decoding, collating, sending): a worker waiting for the trainer sleeps and spends no CPU. A class
    so that it pickles into workers under any start method."""

    def __call__(self, samples: list) -> tuple:
        clocks = torch.tensor([time.process_time(), time.perf_counter()], dtype=torch.float64)
        return (*default_collate(samples), clocks)


def measured_run(dataset, batch_size: int, step: Step, factor: float, steps: int, seed: int,
                 device: torch.device) -> dict:
    """One timed run of the pipeline: the input side in one worker, each fresh batch echoed ``factor`` times on the
    device (``echo_batches``), every copy passed to ``step(x, y)`` in the training process.

    Steady state only: the steps of the first two fresh batches (the worker's start, its prefetched batches) are not
    timed, and the window spans at least 12 fresh batches. Returns, for that window: "steps/s"; "t_up", the worker's
    CPU seconds per fresh batch (stamps that travel with the batches); "t_down", seconds per step timed around the
    step; "echo factor", steps per fresh batch (a fractional e is drawn); "worker CPU / wall" (below 1 where the worker
    waits for the trainer, or does not get a whole core)."""
    loader = echoing_loader(dataset, batch_size=batch_size, factor=1, point="batch", num_workers=1, seed=seed,
                            collate_fn=StampedCollate())
    warm_up, timed_steps = 2 * math.ceil(factor), max(steps, math.ceil(12 * factor))
    count, start, step_seconds, stamps, previous = 0, None, 0.0, [], None
    for batch in echo_batches(loader, factor, seed=seed):
        x, y, stamp = batch
        if start is not None and batch is not previous:
            stamps.append(stamp.tolist())
        previous = batch
        begin = time.perf_counter()
        step(x.to(device), y.to(device))
        synchronize(device)
        count += 1
        if start is not None:
            step_seconds += time.perf_counter() - begin
        if count == warm_up:
            start = time.perf_counter()
        if count == warm_up + timed_steps:
            break
    else:  # the loader runs one epoch: a window longer than that would be timed over fewer steps than it counts
        raise ValueError(f"Invalid steps: {steps}; one epoch of {len(dataset)} samples at batch size {batch_size} "
                         f"and echo factor {factor} gave {count} steps, and the window needs {warm_up + timed_steps} "
                         "(warm-up included)")
    wall = time.perf_counter() - start
    (cpu_first, wall_first), (cpu_last, wall_last) = stamps[0], stamps[-1]
    return {"steps/s": timed_steps / wall, "t_up": (cpu_last - cpu_first) / (len(stamps) - 1),
            "t_down": step_seconds / timed_steps, "echo factor": timed_steps / len(stamps),
            "worker CPU / wall": (cpu_last - cpu_first) / (wall_last - wall_first)}


def law_check(dataset_at: Callable[[int], object], step: Step, sample: tuple[torch.Tensor, torch.Tensor], *,
              batch_size: int, ratios: Sequence[float], factors: Sequence[float], steps: int, repeats: int,
              device: torch.device, seed: int = 0, probe: bool = True, progress: bool = True,
              desc: str = "overlap law") -> list[dict]:
    """Steps/s measured against the overlap law for each target R (an input side calibrated to R·t_down) and e.

    The law is fed with the costs measured inside each run (``measured_run``); each row's "measured / modelled" is
    the median over ``repeats`` runs of that run's own ratio ("spread": their range); its costs, R and steps/s are
    medians too, "e / R" is e over that R, and "runs" keeps every run's (e / R, measured / modelled). With ``probe``,
    the costs are also probed alone before the runs of every e (medians per target R): "measured / probed law".
    ``sample`` is one (x, y) batch on the device, for probing t_down before calibration."""
    from accel.experiments.progress import progress_bar

    rows = []
    with single_threaded():
        t_down_probe = float(np.median([downstream_seconds(step, *sample, 20, device) for _ in range(3)]))
        bar = progress_bar(total=len(ratios) * len(factors) * repeats, desc=desc, unit="timed runs",
                           disable=not progress)  # counts every run: settings × repeats
        for ratio in ratios:
            work = calibrate_work(dataset_at, batch_size, ratio * t_down_probe, seed)
            dataset = dataset_at(work)
            up_probes, down_probes, runs = [], [], {}
            for e in factors:
                if probe:
                    up_probes.append(upstream_seconds(dataset, batch_size, 8, seed))
                    down_probes.append(downstream_seconds(step, *sample, 20, device))
                runs[e] = []
                for repeat in range(repeats):
                    run = measured_run(dataset, batch_size, step, e, steps, seed + repeat, device)
                    run["modelled"] = overlap_steps_per_second(run["t_up"], run["t_down"], run["echo factor"])
                    runs[e].append(run)
                    bar.update()
            for e in factors:
                median = {key: float(np.median([run[key] for run in runs[e]])) for key in runs[e][0]}
                ratios_e = [run["steps/s"] / run["modelled"] for run in runs[e]]
                R = median["t_up"] / median["t_down"]
                row = {"target R": ratio, "work": work, "R": R, "echo factor": e, "e / R": e / R,
                       "t_up (ms)": 1e3 * median["t_up"], "t_down (ms)": 1e3 * median["t_down"],
                       "modelled steps/s": median["modelled"], "measured steps/s": median["steps/s"],
                       "measured / modelled": float(np.median(ratios_e)),
                       "spread": float(max(ratios_e) - min(ratios_e)),
                       "worker CPU / wall": median["worker CPU / wall"],
                       "runs": [(e * run["t_down"] / run["t_up"], run["steps/s"] / run["modelled"])
                                for run in runs[e]]}
                if probe:
                    probed_up, probed_down = float(np.median(up_probes)), float(np.median(down_probes))
                    probed = overlap_steps_per_second(probed_up, probed_down, e)
                    row.update({"probed t_up (ms)": 1e3 * probed_up, "probed t_down (ms)": 1e3 * probed_down,
                                "probed law steps/s": probed, "measured / probed law": median["steps/s"] / probed})
                rows.append(row)
        bar.close()
    return rows


# --- the verdict -------------------------------------------------------------------------------------------------

# Criterion for "the pipeline reaches the law", as resolvable on a shared 2-core machine. Where the input side is far
# slower than a step (R >= 4) the worker has a core to itself most of the time and every recorded run on the 2-core VM
# reached >= 0.93 of the law; at R ~ 2 the worker, the trainer and the handoff threads contend for the same 2 cores
# and recorded runs reached 0.83-0.95, so the floor there is 0.85 (what every recorded run at R ~ 2 but one met).
LAW_FLOORS = ((4.0, 0.90), (0.0, 0.85))  # (lowest measured R, lowest measured / modelled) from the highest R down
CEILING_SLACK = 1.05  # timing noise allowed above the law before "the law is a ceiling" fails


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
            floor, worst = law_floor(4.0 if high else 0.0), min(group)
            # three decimals, and the comparison in words: 0.896 must never read as the floor 0.90
            parts.append(f"{label}: worst {worst:.3f} {'<' if worst < floor else '>='} floor {floor:.2f}"
                         f" ({plural(len(group), 'setting')}" + (f", {sum(v < floor for v in group)} below"
                                                                 if worst < floor else "") + ")")
    return not misses, "; ".join(parts)


def ceiling_verdict(rows: list[dict]) -> tuple[bool, str]:
    """Whether no law_check row beats the law by more than CEILING_SLACK (timing noise), and the highest ratio."""
    highest = max(r["measured / modelled"] for r in rows)
    return highest <= CEILING_SLACK, (f"highest measured / modelled {highest:.3f} over {plural(len(rows), 'setting')}"
                                      f" (limit {CEILING_SLACK:.2f})")


def kink_sides(rows: list[dict]) -> dict[str, int]:
    """How many law_check rows sit on each side of the kink, per target R: {"R ≈ 2: e < R": 2, ...}."""
    counts: dict[str, int] = {}
    for r in rows:
        key = f"R ≈ {r['target R']:g}: " + ("e <= R" if r["echo factor"] <= r["R"] else "e > R")
        counts[key] = counts.get(key, 0) + 1
    return counts


# --- words for measured numbers (chapters 00 and 02) -------------------------------------------------------------

def value_range(values: Sequence[float], digits: int = 2) -> str:
    """"0.58" for one value (or equal ones), "0.58–0.69" for several."""
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return low if low == high else f"{low}–{high}"


def speed_phrase(ratio: float) -> str:
    """A time ratio (baseline seconds / method seconds) in words: "1.60× faster", "2.50× slower", "as fast"."""
    if not ratio or not math.isfinite(ratio):
        return "not measured"
    if f"{ratio:.2f}" == "1.00":
        return "about as fast"
    return f"{ratio:.2f}× faster" if ratio > 1 else f"{1 / ratio:.2f}× slower"


def ratio_summary(values: Sequence[float]) -> str:
    """Median of measured / modelled ratios in words: "0.68 (range 0.60–0.76, 2 settings)", "0.58 (1 setting)"."""
    if not values:
        return "not measured (no setting fell there)"
    spread = f"range {value_range(values)}, " if len(values) > 1 else ""
    return f"{float(np.median(values)):.2f} ({spread}{plural(len(values), 'setting')})"
