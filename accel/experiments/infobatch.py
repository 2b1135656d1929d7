"""Chapter 01, InfoBatch: configs per profile and one function per reproduced table or figure.

Every arm trains the same model from the same initialisation (per seed) and differs only in which samples each
epoch uses and how their losses are weighted:

* ``full``       every sample, every epoch;
* ``static``     a fixed random subset, chosen once (static random pruning);
* ``dynamic``    a fresh random subset each epoch, no rescaling, full data from delta·C on (the paper's Random*);
* ``infobatch``  :class:`accel.infobatch.InfoBatch`, with switches for the Table 4 ablation (rescale, anneal).

The learning-rate schedule follows training *progress* (epoch + fraction of this epoch's steps), so it stays exact
when pruning changes an epoch's length (a step-count schedule fixed up front would not reach its end).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from accel.experiments import pick_config, replay
from accel.experiments.words import plural
from accel.infobatch import InfoBatch
from accel.models.vision import ConvNet1D

if TYPE_CHECKING:  # the chapter modules do not import accel.book at run time (book -> experiments, one way)
    from accel.experiments.run_time import Estimate

PAPER_TABLE1_CIFAR10 = {  # ResNet-18, CIFAR-10, accuracy % at prune ratio 30 / 50 / 70 (paper Table 1)
    "full": 95.6, "static": {0.3: 94.6, 0.5: 93.3, 0.7: 90.2}, "dynamic": {0.3: 94.8, 0.5: 94.5, 0.7: 93.0},
    "infobatch": {0.3: 95.6, 0.5: 95.1, 0.7: 94.7},
}
PAPER_TABLE4_CIFAR100_R18 = {  # CIFAR-100, r = 0.5, ResNet-18, accuracy % (paper Table 4, each ±0.2)
    "Random*": 77.3, "soft pruning only": 77.5, "+ rescaling": 78.1, "+ annealing": 77.7,
    "+ rescaling + annealing (InfoBatch)": 78.2, "full data": 78.2,
}


@dataclass(frozen=True)
class Config:
    dataset: str = "mnist1d"  # digits | mnist1d | cifar10 | cifar100
    num_samples: int = 12_000  # MNIST-1D size (train + test)
    train_samples: int = 0  # 0: every training sample; else a class-balanced subset of about this many
    test_samples: int = 0  # 0: the whole test set; else a class-balanced subset (every epoch is evaluated on it)
    model: str = "cnn1d"  # cnn1d | resnet18
    width: int = 32
    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    schedule: str = "cosine"  # cosine | onecycle (by training progress)
    augment: bool = False  # random crop + flip (CIFAR)
    delta: float = 0.875
    ratios: tuple[float, ...] = (0.3, 0.5, 0.7)
    seeds: tuple[int, ...] = (0, 1, 2)
    sweep_ratios: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    sweep_deltas: tuple[float, ...] = (0.5, 0.75, 0.875, 1.0)
    sweep_seeds: tuple[int, ...] = (0, 1)
    mc_samples: int = 1000  # samples whose per-sample gradients the Monte-Carlo check uses
    mc_draws: int = 2000
    mc_warmup_epochs: int = 3  # full-data epochs before the Monte-Carlo check, so that the losses are spread out
    threads: int = 1  # intra-op threads per run (1 keeps wall-clock comparisons clean on a small CPU)
    target_accuracy: float = 95.5  # the ledger's target: test accuracy %, first crossing (evaluated every epoch)


CONFIGS = {
    "smoke": Config(dataset="digits", epochs=10, batch_size=32, lr=0.2, seeds=(0,), ratios=(0.5,),
                    sweep_ratios=(0.3, 0.5), sweep_deltas=(0.875,), sweep_seeds=(0,), mc_samples=200, mc_draws=100,
                    target_accuracy=90.0),
    "cpu": Config(),
    # gpu: the paper's model and recipe (ResNet-18, SGD 0.05 with OneCycle, crop + flip, batch 128, label smoothing) on
    # real CIFAR-10, cut to fit about 15 minutes on a T4. Arithmetic (an estimate: no GPU was at hand to measure it):
    # ResNet-18 for 32x32 inputs is ~0.56 GFLOPs forward per image, ~1.7 GFLOPs per training image (x3); a T4 gives
    # ~8 fp32 TFLOP/s, ~2.8 at 35% use: ~0.6 ms per training image, ~0.2 ms per test image. With 8,000 training images
    # (800 per class) and 10 epochs, one full-data run is 80,000 sample-iterations (~48 s). Pruning skips r x ~0.65 (the
    # below-mean share) in epochs 1-8, so per seed Table 1 (full, r = 0.3/0.5/0.7, two matched random arms) is ~4.7
    # runs' worth and Table 4 ~2.2; times 2 seeds: ~13.7 runs. The sweeps add r = 0.9 and delta = 0.5 and 1 at one
    # seed (~2.1), Table 1's per-epoch test evaluations 120 x 2,000 images (~50 s), the Monte Carlo one warm-up epoch
    # and 64 per-sample gradients (~10 s). Total ~15.8 x 48 s + 60 s = ~14 min. The set-up cell probes the real
    # device, prints its own estimate and trims (TRIMS) to BUDGET_MINUTES, 15 by default on this profile.
    "gpu": Config(dataset="cifar10", model="resnet18", train_samples=8_000, test_samples=2_000, epochs=10,
                  batch_size=128, lr=0.05, schedule="onecycle", augment=True, seeds=(0, 1),
                  sweep_ratios=(0.3, 0.5, 0.7, 0.9), sweep_deltas=(0.5, 0.875, 1.0), sweep_seeds=(0,), mc_samples=64,
                  mc_draws=1000, mc_warmup_epochs=1, threads=0, target_accuracy=60.0),
    "paper": Config(dataset="cifar10", model="resnet18", epochs=200, batch_size=128, lr=0.05, schedule="onecycle",
                    augment=True, mc_samples=256, mc_draws=2000, sweep_seeds=(0,), threads=0,
                    target_accuracy=94.5),
}


def config(profile: str, **overrides) -> Config:
    return pick_config(CONFIGS, profile, **overrides)


# --- data and model ----------------------------------------------------------------------------------------------

@dataclass
class Data:
    x: torch.Tensor  # float [n, C, L] or [n, 3, 32, 32], on the training device
    y: torch.Tensor  # int64 [n]
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


def load_data(cfg: Config, device: torch.device) -> Data:
    """The profile's dataset on ``device`` (small enough for memory; no DataLoader needed): whole, or the class-balanced
    subsets ``train_samples`` / ``test_samples`` ask for."""
    if cfg.dataset == "digits":
        from accel.datasets.digits import load_digits_1d

        train, test = load_digits_1d(seed=0)
        x, y, x_test, y_test, num_classes = train.x, train.y, test.x, test.y, 10
    elif cfg.dataset == "mnist1d":
        from accel.datasets.mnist1d import load_mnist1d

        train, test = load_mnist1d(cfg.num_samples)
        x, y, x_test, y_test, num_classes = train.x, train.y, test.x, test.y, 10
    elif cfg.dataset in ("cifar10", "cifar100"):
        from accel.datasets.cifar import load_cifar

        train_split, test_split = load_cifar(cfg.dataset)
        x, y, x_test, y_test = (train_split.normalized(), train_split.labels, test_split.normalized(),
                                test_split.labels)
        num_classes = len(train_split.classes)
    else:
        raise ValueError(f"Invalid dataset: {cfg.dataset!r}; allowed: digits, mnist1d, cifar10, cifar100")
    (x, y), (x_test, y_test) = balanced_subset(x, y, cfg.train_samples), balanced_subset(x_test, y_test,
                                                                                        cfg.test_samples)
    return Data(x.to(device), y.to(device), x_test.to(device), y_test.to(device), num_classes)


def balanced_subset(x: torch.Tensor, y: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count // classes`` samples of each class, in their original order (0 or ``count`` >= len: all)."""
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"Invalid sample count: {count!r}; expected 0 (all) or a positive int")
    if count == 0 or count >= len(y):
        return x, y
    classes = torch.unique(y)
    per_class = max(1, count // len(classes))
    keep = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in classes]).sort().values
    return x[keep], y[keep]


class LazyData:
    """``load_data(cfg, device)``, run on first use of the data. A chapter rendered from a recorded run
    (``RESULTS_FROM``) reads the sizes from the recording (``data_sizes``) and never loads, or downloads, the data,
    unless a live run asks for it."""

    def __init__(self, cfg: Config, device: torch.device):
        self._cfg, self._device, self._data = cfg, device, None

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._data is None:
            self._data = load_data(self._cfg, self._device)
        return getattr(self._data, name)


def open_data(cfg: Config, device: torch.device) -> LazyData:
    """The profile's dataset, loaded when first used (see ``LazyData``)."""
    return LazyData(cfg, device)


@dataclass(frozen=True)
class DataSizes:
    train: int
    test: int
    num_classes: int


@replay.replayable
def data_sizes(data: Data) -> DataSizes:
    """How many training and test samples, and classes, the chapter's data has (recorded, so a rendered run needs no
    data)."""
    return DataSizes(len(data.y), len(data.y_test), data.num_classes)


def make_model(cfg: Config, num_classes: int, seed: int, device: torch.device) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's global RNG
        torch.manual_seed(seed)
        if cfg.model == "cnn1d":
            model = ConvNet1D(num_classes, width=cfg.width)
        elif cfg.model == "resnet18":
            from accel.models.vision import resnet18_cifar

            model = resnet18_cifar(num_classes)
        else:
            raise ValueError(f"Invalid model: {cfg.model!r}; allowed: cnn1d, resnet18")
    return model.to(device)


def learning_rate(cfg: Config, progress: float) -> float:
    """lr at training progress in [0, 1]: cosine from lr to 0, or OneCycle (30% warm-up from lr/25, then to lr/25e4)."""
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "onecycle":
        start, end, peak = cfg.lr / 25, cfg.lr / 25 / 1e4, 0.3
        if progress < peak:
            return start + (cfg.lr - start) * 0.5 * (1 - math.cos(math.pi * progress / peak))
        return end + (cfg.lr - end) * 0.5 * (1 + math.cos(math.pi * (progress - peak) / (1 - peak)))
    raise ValueError(f"Invalid schedule: {cfg.schedule!r}; allowed: cosine, onecycle")


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> float:
    """Accuracy in percent."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            correct += (model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum().item()
    model.train()
    return 100.0 * correct / len(y)


# --- arms --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arm:
    """One way of choosing each epoch's samples. ``keep`` is the kept fraction for static/dynamic pruning."""

    name: str
    kind: str  # full | static | dynamic | infobatch
    prune_ratio: float = 0.0
    delta: float = 0.875
    rescale: bool = True
    keep: float = 1.0


def infobatch_arm(prune_ratio: float, delta: float = 0.875, *, rescale: bool = True, anneal: bool = True,
                  name: str | None = None) -> Arm:
    return Arm(name or f"InfoBatch r={prune_ratio:g}", "infobatch", prune_ratio, delta if anneal else 1.0, rescale)


@dataclass
class Run:
    arm: str
    seed: int
    accuracy: float  # test accuracy %, end of training
    used: int  # sample-iterations trained
    total: int  # sample-iterations of full-data training (N · epochs)
    seconds: float  # training wall clock (the epoch's draw included), evaluation excluded
    # per epoch: used, pruned, steps, seconds, draw_seconds, update_seconds; for InfoBatch, below_mean (the share of
    # samples whose score is below the mean when the epoch's list is drawn) and, in the epochs asked for
    # (score_epochs), the scores themselves; accuracy when the run records its curve
    history: list[dict] = field(default_factory=list)

    @property
    def saved(self) -> float:
        return 1.0 - self.used / self.total

    @property
    def curve(self) -> list[tuple[int, int, float, float]]:
        """One ``(sample-iterations, steps, seconds, test accuracy %)`` point per epoch, cumulative: the ledger's
        input (``accel.experiments.ledger.entry_from_runs``). Needs a run made with ``record_curve=True``."""
        if not self.history or "accuracy" not in self.history[0]:
            raise ValueError(f"Invalid run for a curve: {self.arm!r} seed {self.seed} has no per-epoch accuracy; "
                             "train it with record_curve=True")
        points, used, steps, seconds = [], 0, 0, 0.0
        for h in self.history:
            used, steps, seconds = used + h["used"], steps + h["steps"], seconds + h["seconds"]
            points.append((used, steps, seconds, h["accuracy"]))
        return points


class _FixedOrDynamicSubset:
    """Static or dynamic random pruning: ``keep``·N samples per epoch, drawn once or per epoch; full from delta·C."""

    def __init__(self, n: int, arm: Arm, epochs: int, seed: int):
        self.n, self.arm, self.epochs, self.seed = n, arm, epochs, seed
        self.fixed = self._draw(-1)

    def _draw(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, 17, epoch + 1])
                                                      .generate_state(1)[0]))
        return torch.randperm(self.n, generator=generator)[: int(round(self.arm.keep * self.n))]

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        if self.arm.kind == "static":
            subset = self.fixed
        elif epoch >= self.arm.delta * self.epochs:
            subset = torch.arange(self.n)
        else:
            subset = self._draw(epoch)
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, 23, epoch])
                                                      .generate_state(1)[0]))
        return subset[torch.randperm(len(subset), generator=generator)]


@contextlib.contextmanager
def intra_op_threads(threads: int):
    """``torch.set_num_threads(threads)`` inside the block, the previous count after it (0: leave it as it is)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _augment(cfg: Config, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if not cfg.augment:
        return x
    from accel.datasets.cifar import random_crop_flip

    return random_crop_flip(x, generator)


def train(cfg: Config, data: Data, arm: Arm, seed: int, device: torch.device, *,
          progress: Callable[[int], None] | None = None, record_curve: bool = False,
          score_epochs: Collection[int] = ()) -> Run:
    """Train one arm from the seed's initialisation; returns accuracy, sample-iterations used and wall clock.

    The timed region is the epoch's draw (the sampler's bookkeeping) and its steps; each epoch also records the draw's
    and ``update``'s own seconds, so the method's overhead can be shown apart. For InfoBatch arms the history keeps
    each epoch's share of samples below the mean score, and in ``score_epochs`` the scores themselves, as they were
    when the list was drawn (for the loss histograms); reading them is outside the timed region, as is the per-epoch
    test evaluation of ``record_curve``."""
    n = len(data.y)
    model = make_model(cfg, data.num_classes, seed, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                nesterov=False)
    sampler = (InfoBatch(n, cfg.epochs, arm.prune_ratio, arm.delta, seed=seed) if arm.kind == "infobatch" else None)
    subsets = _FixedOrDynamicSubset(n, arm, cfg.epochs, seed) if arm.kind in ("static", "dynamic") else None
    augment_generator = torch.Generator(device=device).manual_seed(seed)
    order_generator = torch.Generator().manual_seed(seed)
    history, used, seconds = [], 0, 0.0
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        for epoch in range(cfg.epochs):
            scores = sampler.scores.detach().cpu().numpy().copy() if sampler is not None else None
            start = time.perf_counter()
            if sampler is not None:
                sampler.set_epoch(epoch)
                order = torch.tensor(list(iter(sampler)), dtype=torch.long)
            elif subsets is not None:
                order = subsets.epoch_indices(epoch)
            else:
                order = torch.randperm(n, generator=order_generator)
            draw_seconds, update_seconds = time.perf_counter() - start, 0.0
            steps = math.ceil(len(order) / cfg.batch_size)
            for step in range(steps):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(cfg, (epoch + step / steps) / cfg.epochs)
                index = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                index_device = index.to(device)
                x = _augment(cfg, data.x[index_device], augment_generator)
                losses = F.cross_entropy(model(x), data.y[index_device], reduction="none",
                                         label_smoothing=cfg.label_smoothing)
                if sampler is not None:
                    tick = time.perf_counter()
                    weighted = sampler.update(index_device, losses)
                    update_seconds += time.perf_counter() - tick
                    loss = weighted if arm.rescale else losses.mean()
                else:
                    loss = losses.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            epoch_seconds = time.perf_counter() - start
            seconds += epoch_seconds
            used += len(order)
            entry = {"epoch": epoch, "used": len(order), "pruned": n - len(order), "steps": steps,
                     "seconds": epoch_seconds, "draw_seconds": draw_seconds, "update_seconds": update_seconds}
            if scores is not None:
                entry["below_mean"] = float((scores < scores.mean()).mean())
                if epoch in score_epochs:
                    entry["scores"] = scores
            if record_curve:
                entry["accuracy"] = evaluate(model, data.x_test, data.y_test)
            history.append(entry)
            if progress is not None:
                progress(1)
    finally:
        torch.set_num_threads(threads)
    return Run(arm.name, seed, evaluate(model, data.x_test, data.y_test), used, n * cfg.epochs, seconds, history)


def run_arms(cfg: Config, data: Data, arms: list[Arm], seeds, device: torch.device, desc: str = "",
             show_progress: bool = True) -> dict[str, list[Run]]:
    """Every arm at every seed, with one progress bar over all epochs.

    Seed-major order (all arms of seed 0, then of seed 1, ...): a shared machine's speed drifts over minutes, and
    interleaving keeps that drift out of the wall-clock comparison between arms."""
    from accel.experiments.progress import progress_bar

    results: dict[str, list[Run]] = {arm.name: [] for arm in arms}
    total = len(arms) * len(seeds) * cfg.epochs
    with progress_bar(total=total, desc=desc, unit="epoch", disable=not show_progress) as bar:
        for seed in seeds:
            for arm in arms:
                results[arm.name].append(train(cfg, data, arm, seed, device, progress=bar.update))
    return results


def summarize(runs: list[Run], full: list[Run] | None = None) -> dict[str, float]:
    """Mean ± std of accuracy, mean saved sample-iterations, and wall-clock saved against matched full runs."""
    acc = np.array([r.accuracy for r in runs])
    out = {"accuracy": float(acc.mean()), "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
           "saved": float(np.mean([r.saved for r in runs])), "seconds": float(np.mean([r.seconds for r in runs]))}
    if full:
        out["wall_saved"] = 1.0 - out["seconds"] / float(np.mean([r.seconds for r in full]))
    return out


# --- Table 1 ------------------------------------------------------------------------------------------------------

def matched_arms(cfg: Config, saved: float) -> list[Arm]:
    """Static and dynamic random pruning that skip the same share ``saved`` of sample-iterations overall."""
    keep = 1.0 - saved
    # Random* prunes only before delta·C, so its keep rate there must be lower to match the overall saving.
    pruned_epochs = math.ceil(cfg.delta * cfg.epochs)
    dynamic_keep = max(0.0, 1.0 - saved * cfg.epochs / pruned_epochs)
    return [Arm("static random (matched saving)", "static", keep=keep),
            Arm("Random* dynamic (matched saving)", "dynamic", keep=dynamic_keep, delta=cfg.delta)]


def reference_arm(cfg: Config) -> str:
    """The InfoBatch arm the chapter looks inside and matches the random prunings to: r = 0.5, else the first r."""
    return infobatch_arm(0.5 if 0.5 in cfg.ratios else cfg.ratios[0]).name


def histogram_epochs(cfg: Config) -> list[int]:
    """The epochs whose score histograms the chapter shows: 1 (the first scored by the model), a quarter and half
    through, the last before annealing and the last."""
    anneal_from = math.ceil(cfg.delta * cfg.epochs)
    return sorted({1, max(1, cfg.epochs // 4), max(1, cfg.epochs // 2), max(1, anneal_from - 1), cfg.epochs - 1})


@replay.replayable
def table1(cfg: Config, data: Data, device: torch.device, show_progress: bool = True) -> dict[str, list[Run]]:
    """Full data; InfoBatch at each r; static and dynamic random pruning at InfoBatch r=0.5's measured saving.
    Every run records its per-epoch test accuracy (the ledger's curves); the reference arm's first seed also keeps its
    scores in the ``histogram_epochs``.

    Seed-major: for each seed, every arm runs back to back, the random-pruning arms matched to that seed's InfoBatch
    run, so the machine's drift in speed falls on all arms alike."""
    from accel.experiments.progress import progress_bar

    arms = [Arm("full data", "full")] + [infobatch_arm(r, cfg.delta) for r in cfg.ratios]
    reference = reference_arm(cfg)
    runs: dict[str, list[Run]] = {}
    total = (len(arms) + 2) * len(cfg.seeds) * cfg.epochs
    with progress_bar(total=total, desc="Table 1", unit="epoch", disable=not show_progress) as bar:
        for seed in cfg.seeds:
            for arm in arms:
                keep = histogram_epochs(cfg) if arm.name == reference and seed == cfg.seeds[0] else ()
                runs.setdefault(arm.name, []).append(train(cfg, data, arm, seed, device, progress=bar.update,
                                                           record_curve=True, score_epochs=keep))
            for arm in matched_arms(cfg, runs[reference][-1].saved):
                runs.setdefault(arm.name, []).append(train(cfg, data, arm, seed, device, progress=bar.update,
                                                           record_curve=True))
    return runs


STATIC, DYNAMIC = "static random (matched saving)", "Random* dynamic (matched saving)"
# The paper's Table 1 columns are overall prune ratios (30 / 50 / 70% of the sample-iterations; InfoBatch's 50 and 70
# are reached by also cutting epochs). Our rows InfoBatch r = 0.3 / 0.5 / 0.7 sit beside the column of the same number.
# The paper's headline: InfoBatch "losslessly saves 40% overall cost" on CIFAR-10/100, ImageNet-1K and ADE20K
# (abstract; Table 2: ImageNet-1K ResNet-50, 17.5 h -> 10.5 h).
PAPER_SAVING = 40.0


def paired_gaps(runs: list[Run], full: list[Run]) -> list[float]:
    """Accuracy minus the full-data run's accuracy of the same seed, in points (arms share each seed's init)."""
    by_seed = {r.seed: r.accuracy for r in full}
    return [r.accuracy - by_seed[r.seed] for r in runs]


def table1_rows(cfg: Config, runs: dict[str, list[Run]], stat: Callable) -> list[tuple[str, dict]]:
    """Rows for a "paper | this run" Table 1: accuracy %, Δ vs full data (points, paired by seed), sample-iterations
    saved % and wall clock saved %. ``stat`` turns a list of per-seed values into a cell (e.g. ``MeanStd.of``)."""
    paper, full = PAPER_TABLE1_CIFAR10, runs["full data"]
    full_seconds = {r.seed: r.seconds for r in full}

    def ours(name: str) -> dict:
        rs = runs[name]
        return {"accuracy %": stat([r.accuracy for r in rs]), "Δ vs full": stat(paired_gaps(rs, full)),
                "saved %": stat([100 * r.saved for r in rs]),
                "wall clock saved %": stat([100 * (1 - r.seconds / full_seconds[r.seed]) for r in rs])}

    def row(name: str, accuracy, saving) -> tuple[str, dict]:
        mine = ours(name)
        gap = None if accuracy is None else round(accuracy - paper["full"], 1)
        return (name, {"accuracy %": (accuracy, mine["accuracy %"]), "Δ vs full": (gap, mine["Δ vs full"]),
                       "saved %": (saving, mine["saved %"]), "wall clock saved %": (None, mine["wall clock saved %"])})

    rows = [row("full data", paper["full"], 0.0)]
    rows += [row(infobatch_arm(r).name, paper["infobatch"].get(r), 100 * r if r in paper["infobatch"] else None)
             for r in cfg.ratios]
    rows += [row(STATIC, paper["static"][0.3], 30.0), row(DYNAMIC, paper["dynamic"][0.3], 30.0)]
    return rows


def arm_points(runs: dict[str, list[Run]]) -> dict[str, dict[str, float]]:
    """Per arm, for an accuracy-vs-saving figure: mean and std over seeds of saved % and accuracy %."""
    out = {}
    for name, rs in runs.items():
        saved, acc = np.array([100 * r.saved for r in rs]), np.array([r.accuracy for r in rs])
        ddof = 1 if len(rs) > 1 else 0
        out[name] = {"saved": float(saved.mean()), "saved_std": float(saved.std(ddof=ddof)),
                     "accuracy": float(acc.mean()), "accuracy_std": float(acc.std(ddof=ddof))}
    return out


PAPER_TABLE1_POINTS = {  # (saved %, accuracy %) per arm from the paper's Table 1 (CIFAR-10, ResNet-18)
    "InfoBatch": [(100 * r, a) for r, a in PAPER_TABLE1_CIFAR10["infobatch"].items()],
    "static random": [(100 * r, a) for r, a in PAPER_TABLE1_CIFAR10["static"].items()],
    "Random* (dynamic)": [(100 * r, a) for r, a in PAPER_TABLE1_CIFAR10["dynamic"].items()],
}


def summaries(runs: dict[str, list[Run]]) -> dict[str, dict[str, float]]:
    """``summarize`` of every arm against the full-data runs."""
    return {name: summarize(rs, runs["full data"]) for name, rs in runs.items()}


def paired_wall_saved(runs: list[Run], full: list[Run]) -> float:
    """Wall clock saved, as a fraction, the one way this chapter shows it: each seed's run against the same seed's
    full-data run, then the mean over seeds (Table 1's "wall clock saved %" column, which adds the std)."""
    full_seconds = {r.seed: r.seconds for r in full}
    return float(np.mean([1.0 - r.seconds / full_seconds[r.seed] for r in runs]))


def overhead(runs: list[Run], full: list[Run]) -> dict[str, float]:
    """InfoBatch's bookkeeping against a full-data epoch: mean seconds per epoch of the draw (set_epoch and reading
    the list) and of ``update``, each as a share of the full-data run's time, and the gap between sample-iterations
    saved and wall clock saved (both fractions of the full-data run; wall clock paired by seed, as in Table 1)."""
    full_seconds = float(np.mean([r.seconds for r in full]))
    draw = float(np.mean([sum(h["draw_seconds"] for h in r.history) for r in runs]))
    update = float(np.mean([sum(h["update_seconds"] for h in r.history) for r in runs]))
    full_draw = float(np.mean([sum(h["draw_seconds"] for h in r.history) for r in full]))
    saved = float(np.mean([r.saved for r in runs]))
    wall_saved = paired_wall_saved(runs, full)
    epochs = len(runs[0].history)
    return {"draw_ms_per_epoch": 1000 * draw / epochs, "update_ms_per_epoch": 1000 * update / epochs,
            "full_epoch_ms": 1000 * full_seconds / epochs,
            "bookkeeping_share": (draw + update - full_draw) / full_seconds, "saved": saved, "wall_saved": wall_saved,
            "gap": saved - wall_saved}


def ledger_curves(runs: list[Run]) -> list[list[tuple[int, int, float, float]]]:
    """Per seed, the run's (samples, steps, seconds, accuracy) curve: the input of ``entry_from_runs``."""
    return [r.curve for r in runs]


def first_epoch_reaching(run: Run, target: float) -> int | None:
    """The first epoch (0-based) whose test accuracy reaches ``target``, or None."""
    return next((h["epoch"] for h in run.history if h.get("accuracy", -1.0) >= target), None)


def random_model_share(scores: np.ndarray, num_classes: int, width: float = 0.05) -> float:
    """Share of scores within ``width`` of ln(num_classes): the loss of a uniform prediction (with or without label
    smoothing), which samples scored while the model was still random carry."""
    return float(np.mean(np.abs(np.asarray(scores) - math.log(num_classes)) < width))


def record_metrics(results, table1_runs: dict[str, list[Run]], ablation_runs: dict[str, list[Run]] | None = None,
                   **values: float) -> None:
    """The chapter's regression metrics with their tolerances (``results`` is the notebook's results object)."""
    tolerances = {"below_mean_share": 0.02,  # CPU kernels: up to 0.007 apart
                  "mc_bias_infobatch": 0.006,  # CPU kernels: up to 0.0024 apart
                  "mc_bias_hard": 0.05}  # CPU kernels: up to 0.019 apart
    for name, value in values.items():
        results.metric(name, value, abs=tolerances.get(name))
    for name, s in summaries(table1_runs).items():
        # accuracy is chaotic in training: other CPU kernels moved it by up to 1.7 points, seeds by up to 4.5
        results.metric(f"t1_accuracy[{name}]", s["accuracy"], abs=4.0)
        results.metric(f"t1_saved[{name}]", s["saved"], abs=0.007)  # CPU kernels: up to 0.0028 apart
        results.metric(f"t1_wall_saved[{name}]", s.get("wall_saved", 0.0))  # timing: recorded, not compared
    for name, rs in (ablation_runs or {}).items():
        results.metric(f"t4_accuracy[{name}]", float(np.mean([r.accuracy for r in rs])), abs=4.0)  # kernels: <= 1.7


def family(name: str) -> str:
    """The kind of arm a Table 1 name belongs to (for one colour and marker per kind in a figure)."""
    if name.startswith("InfoBatch"):
        return "InfoBatch"
    if name.startswith("static random"):
        return "static random"
    if name.startswith("Random*"):
        return "Random* (dynamic)"
    if name == "full data":
        return "full data"
    raise ValueError(f"Invalid arm name: {name!r}; expected InfoBatch..., static random..., Random*... or full data")


def short_name(name: str) -> str:
    """A figure label: "r=0.5" for InfoBatch arms, "static" and "Random*" for the random prunings."""
    return {"InfoBatch": name.removeprefix("InfoBatch "), "static random": "static", "Random* (dynamic)": "Random*",
            "full data": "full"}[family(name)]


def _pm(mean: float, std: float, n: int, digits: int = 2, sign: bool = False, unit: str = "") -> str:
    """``mean ± std`` over ``n`` seeds, or ``mean (n = 1)`` for a single seed (no spread to show)."""
    value = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return f"{value}{unit} (n = 1)" if n < 2 else f"{value} ± {std:.{digits}f}{unit}"


def _values(xs) -> str:
    """Knob values as prose: ``"0.5"``, ``"0.5 and 0.875"``, ``"0.1, 0.3 and 0.5"``."""
    xs = [f"{x:g}" for x in xs]
    return xs[0] if len(xs) == 1 else f"{', '.join(xs[:-1])} and {xs[-1]}"


DATASET_NAMES = {"digits": "scikit-learn's 8×8 handwritten digits (read as 1-D signals of 64 pixels)",
                 "mnist1d": "MNIST-1D (Greydanus and Kobak)", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
MODEL_NAMES = {"cnn1d": "a small 1-D CNN", "resnet18": "ResNet-18"}


def describe_setup(cfg: Config, num_train: int) -> str:
    """One sentence naming this run's model, dataset, schedule and seeds, from the config."""
    return (f"This run: {MODEL_NAMES.get(cfg.model, cfg.model)} (`{cfg.model}`) on "
            f"{DATASET_NAMES.get(cfg.dataset, cfg.dataset)}, {num_train:,} training samples, "
            f"{plural(cfg.epochs, 'epoch')}, {plural(len(cfg.seeds), 'seed')}.")


def _paired(runs: list[Run], other: list[Run]) -> tuple[float, float]:
    """Mean and std (ddof 1; 0 for one seed) over seeds of ``runs``' accuracy minus ``other``'s, same seed."""
    by_seed = {r.seed: r.accuracy for r in other}
    gaps = np.array([r.accuracy - by_seed[r.seed] for r in runs])
    return float(gaps.mean()), float(gaps.std(ddof=1)) if len(gaps) > 1 else 0.0


def table1_commentary(cfg: Config, runs: dict[str, list[Run]]) -> str:
    """Markdown: where the Table 1 analogue agrees with the paper and where it does not, from the runs."""
    paper, full = PAPER_TABLE1_CIFAR10, runs["full data"]
    ib_name = infobatch_arm(0.5 if 0.5 in cfg.ratios else cfg.ratios[0]).name
    ib, static, dynamic = (_paired(runs[name], full) for name in (ib_name, STATIC, DYNAMIC))
    saved = float(np.mean([r.saved for r in runs[ib_name]]))
    k = len(full)
    lines = [f"* **Against full data** (points, paired by seed, mean ± std): {ib_name} {_pm(*ib, k, sign=True)} "
             f"(paper at its 50% column {paper['infobatch'][0.5] - paper['full']:+.1f}); static random "
             f"{_pm(*static, k, sign=True)} (paper at 30% {paper['static'][0.3] - paper['full']:+.1f}); "
             f"Random* {_pm(*dynamic, k, sign=True)} "
             f"(paper at 30% {paper['dynamic'][0.3] - paper['full']:+.1f})."]
    same_order = ib[0] > max(static[0], dynamic[0])
    lines.append("* **Ordering:** " + ("as in the paper, InfoBatch sits above both random prunings at equal cost."
                                       if same_order else "unlike the paper, InfoBatch does not sit above both random "
                                       "prunings at equal cost here."))
    if -static[0] > -(paper["static"][0.3] - paper["full"]) + 0.5:
        lines.append(f"* **Random pruning costs more here:** {-static[0]:.1f} points for static random against "
                     f"{paper['full'] - paper['static'][0.3]:.1f} in the paper, at a similar saving "
                     f"({100 * saved:.0f}% against 30%). A likely reason: a small dataset learned by a small model "
                     "has less redundancy to spare, so the samples a random rule drops still carry signal; "
                     "InfoBatch drops only samples the model already fits, and rescales the rest.")
    # dynamic against static random: the paper's Random* beats static random at every prune ratio
    d = _paired(runs[DYNAMIC], runs[STATIC])
    keep_dynamic = matched_arms(cfg, saved)[1].keep
    pruned_epochs = math.ceil(cfg.delta * cfg.epochs)
    paper_d = {r: paper["dynamic"][r] - paper["static"][r] for r in (0.3, 0.5, 0.7)}
    where = (f"the paper finds Random* ahead of static random at every ratio (by {paper_d[0.3]:+.1f}, "
             f"{paper_d[0.5]:+.1f} and {paper_d[0.7]:+.1f} points at 30, 50 and 70%)")
    if k < 2:
        verdict = (f"one seed cannot tell the two random prunings apart (Random* − static = {d[0]:+.2f} points), "
                   f"while {where}")
    elif abs(d[0]) <= 2 * d[1]:
        verdict = (f"the two random prunings are within the seeds' spread of each other here (Random* − static = "
                   f"{_pm(*d, k, sign=True)} points, paired by seed), where {where}")
    elif d[0] < 0:
        verdict = f"Random* is *worse* than static random here ({_pm(*d, k, sign=True)} points, paired), while {where}"
    else:
        verdict = f"Random* is ahead of static random here too ({_pm(*d, k, sign=True)} points, paired), and {where}"
    last, schedule = plural(cfg.epochs - pruned_epochs, "epoch"), plural(cfg.epochs, "epoch")
    lines.append(f"* **Dynamic against static random pruning:** {verdict}. The two are not pruned alike at equal cost: "
                 f"Random* trains on every sample in its last {last}, so in epochs "
                 f"0–{pruned_epochs - 1} it must skip {1 - keep_dynamic:.0%} of the data, where static random skips "
                 f"the same {saved:.0%} every epoch. Random*'s advantage in the paper is that over 200 epochs every "
                 f"sample is seen again and again; over {schedule} of a small model the harder per-epoch "
                 "pruning weighs as much as the fresh subsets, and neither rule knows which samples matter.")
    for r in cfg.ratios:
        rs = runs[infobatch_arm(r).name]
        lines.append(f"* InfoBatch r = {r:g} saved {np.mean([x.saved for x in rs]):.0%} of sample-iterations "
                     f"and {paired_wall_saved(rs, full):.0%} of wall clock (paired by seed, as in Table 1).")
    return "\n".join(lines)


# --- Table 4 ablation ---------------------------------------------------------------------------------------------

ABLATION = {
    "soft pruning only": dict(rescale=False, anneal=False),
    "+ rescaling": dict(rescale=True, anneal=False),
    "+ annealing": dict(rescale=False, anneal=True),
}


@replay.replayable
def table4(cfg: Config, data: Data, device: torch.device, show_progress: bool = True) -> dict[str, list[Run]]:
    """The three partial variants of InfoBatch at r = 0.5 (the full method and baselines come from Table 1)."""
    arms = [infobatch_arm(0.5, cfg.delta, name=name, **switches) for name, switches in ABLATION.items()]
    return run_arms(cfg, data, arms, cfg.seeds, device, "Table 4: ablation", show_progress)


# --- Figure 3 sweeps ------------------------------------------------------------------------------------------------

def sweep_arms(cfg: Config) -> dict[str, dict[float, Arm]]:
    """The sweeps' arms: InfoBatch at each r of ``sweep_ratios`` (delta fixed), and at r = 0.5 for each delta of
    ``sweep_deltas`` (the default delta's arm is Table 1's)."""
    return {"ratio": {r: infobatch_arm(r, cfg.delta) for r in cfg.sweep_ratios},
            "delta": {d: infobatch_arm(0.5, d, name=f"InfoBatch r=0.5 delta={d:g}") if d != cfg.delta
                      else infobatch_arm(0.5, d) for d in cfg.sweep_deltas}}


@replay.replayable
def sweeps(cfg: Config, data: Data, device: torch.device, known: dict[str, list[Run]] | None = None,
           show_progress: bool = True) -> dict[str, dict[float, list[Run]]]:
    """Accuracy and saving against r (delta fixed) and against delta (r = 0.5); re-uses runs already made. The runs
    come without their per-epoch history: the sweeps show end-of-run numbers only, and the recorded results file
    then holds no second copy of Table 1's histories."""
    known = known or {}
    seeds = list(cfg.sweep_seeds)

    def runs_for(arm: Arm) -> list[Run]:
        have = [r for r in known.get(arm.name, []) if r.seed in seeds]
        missing = [s for s in seeds if s not in {r.seed for r in have}]
        if not missing:
            return sorted(have, key=lambda r: r.seed)
        fresh = run_arms(cfg, data, [arm], missing, device, f"sweep: {arm.name}", show_progress)[arm.name]
        return sorted(have + fresh, key=lambda r: r.seed)

    return {kind: {x: [replace(run, history=[]) for run in runs_for(arm)] for x, arm in arms.items()}
            for kind, arms in sweep_arms(cfg).items()}


def table4_rows(table1_runs: dict[str, list[Run]], ablation_runs: dict[str, list[Run]],
                stat: Callable) -> list[tuple[str, dict]]:
    """Rows for a "paper | this run" Table 4: accuracy %, Δ vs full data (points, paired by seed) and saved %, from
    Random* up to the whole method; the paper's rows are CIFAR-100 ResNet-18 at r = 0.5."""
    paper, full = PAPER_TABLE4_CIFAR100_R18, table1_runs["full data"]
    arms = [("Random*", table1_runs[DYNAMIC])] + [(name, ablation_runs[name]) for name in ABLATION]
    arms += [("+ rescaling + annealing (InfoBatch)", table1_runs[infobatch_arm(0.5).name]), ("full data", full)]
    return [(name, {"accuracy %": (paper[name], stat([r.accuracy for r in rs])),
                    "Δ vs full": (round(paper[name] - paper["full data"], 1), stat(paired_gaps(rs, full))),
                    "saved %": (None, stat([100 * r.saved for r in rs]))}) for name, rs in arms]


def sweep_rows(cfg: Config, sweep: dict[str, dict[float, list[Run]]], stat: Callable) -> list[list]:
    """One row per sweep setting: setting, accuracy %, sample-iterations saved %; the setting both sweeps share
    (r = 0.5 at the default δ) appears once."""
    rows = [[f"r = {x:g}, δ = {cfg.delta:g}", stat([r.accuracy for r in rs]), stat([100 * r.saved for r in rs])]
            for x, rs in sweep["ratio"].items()]
    rows += [[f"r = 0.5, δ = {x:g}", stat([r.accuracy for r in rs]), stat([100 * r.saved for r in rs])]
             for x, rs in sweep["delta"].items() if not (x == cfg.delta and 0.5 in sweep["ratio"])]  # shown above
    return rows


def table4_commentary(table1_runs: dict[str, list[Run]], ablation_runs: dict[str, list[Run]]) -> str:
    """Markdown: each ingredient's gain over soft pruning alone, here and in the paper's Table 4."""
    paper = PAPER_TABLE4_CIFAR100_R18
    soft = ablation_runs["soft pruning only"]
    arms = {"+ rescaling": ablation_runs["+ rescaling"], "+ annealing": ablation_runs["+ annealing"],
            "+ rescaling + annealing (InfoBatch)": table1_runs[infobatch_arm(0.5).name]}
    gains = {name: _paired(rs, soft) for name, rs in arms.items()}
    lines = [f"* **{name}:** {_pm(*g, len(soft), sign=True)} points over soft pruning alone here (paired by seed); "
             "paper "
             f"{paper[name] - paper['soft pruning only']:+.1f}." for name, g in gains.items()]
    here = {k: gains[f"+ {k}"][0] for k in ("rescaling", "annealing")}
    there = {k: paper[f"+ {k}"] - paper["soft pruning only"] for k in ("rescaling", "annealing")}
    bigger_here, bigger_there = (max(d, key=d.get) for d in (here, there))
    pair_here = f"{here[bigger_here]:+.2f} against {here[min(here, key=here.get)]:+.2f} points"
    pair_there = f"{there[bigger_there]:+.1f} against {there[min(there, key=there.get)]:+.1f}"
    if bigger_here == bigger_there:
        compare = (f"* {bigger_here.capitalize()} contributes more than "
                   f"{'annealing' if bigger_here == 'rescaling' else 'rescaling'} here ({pair_here}), as in the paper "
                   f"({pair_there}).")
    else:
        compare = (f"* Here {bigger_here} contributes more ({pair_here}); in the paper {bigger_there} does "
                   f"({pair_there}).")
    if len(soft) < 2:
        compare += " With one seed, differences of a point or so are within what another seed could change."
    soft_vs_random = _paired(soft, table1_runs[DYNAMIC])[0]
    paper_soft = paper["soft pruning only"] - paper["Random*"]
    if soft_vs_random > paper_soft + 0.3:
        compare += (f" Soft pruning alone is {soft_vs_random:+.2f} points against Random* (paper {paper_soft:+.1f}): "
                    "choosing *which* samples to skip by their loss is worth more here than in the paper.")
    elif soft_vs_random < paper_soft - 0.3:
        compare += (f" Soft pruning alone is {soft_vs_random:+.2f} points against Random* (paper {paper_soft:+.1f}): "
                    "without the rescale, choosing which samples to skip by their loss is worth less here than in the "
                    "paper.")
    else:
        compare += (f" Soft pruning alone is {soft_vs_random:+.2f} points against Random* (paper {paper_soft:+.1f}), "
                    "close to the paper's gain.")
    lines.append(compare)
    return "\n".join(lines)


def sweep_arrays(runs_by: dict[float, list[Run]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(knob values [k], accuracy % [k, seeds], saved % [k, seeds])`` of one sweep."""
    xs = np.array(list(runs_by), dtype=float)
    acc = np.array([[r.accuracy for r in runs_by[x]] for x in runs_by])
    saved = np.array([[100 * r.saved for r in runs_by[x]] for x in runs_by])
    return xs, acc, saved


def accuracy_range(values, min_span: float = 3.0, pad: float = 0.3) -> tuple[float, float]:
    """An accuracy axis that shows every value with ``pad`` to spare and spans at least ``min_span`` points, so that
    differences well inside the seeds' spread do not fill the axis and read as a trend."""
    lo, hi = float(np.min(values)) - pad, float(np.max(values)) + pad
    if hi - lo < min_span:
        middle = (hi + lo) / 2
        lo, hi = middle - min_span / 2, middle + min_span / 2
    return lo, min(hi, 100.0)


def sweep_commentary(cfg: Config, sweep: dict[str, dict[float, list[Run]]], full_runs: list[Run]) -> str:
    """Markdown: the prune-ratio and annealing sweeps against the paper's Figure 3 (a sweep of one value is said to be
    a single setting, not a range)."""
    full = np.array([r.accuracy for r in full_runs])
    full_std = float(full.std(ddof=1)) if len(full) > 1 else 0.0
    margin = max(0.5, 2 * full_std)
    seeds = plural(len(cfg.sweep_seeds), "seed")
    acc_r = {x: float(np.mean([r.accuracy for r in rs])) for x, rs in sweep["ratio"].items()}
    flat = [x for x, a in acc_r.items() if a >= full.mean() - margin]
    paper_r = ("the paper's Figure 3 is flat up to r = 0.5 and falls towards r = 0.9 (to about 77% on CIFAR-100).")
    if len(acc_r) == 1:
        (x, a), = acc_r.items()
        within = "within" if flat else "not within"
        line = (f"* **Prune ratio:** this profile runs r = {x:g} only ({seeds}), so there is no curve to read: "
                f"{a:.2f}% is {within} {margin:.2f} points (max(0.5, 2 std)) of full data ({full.mean():.2f}%); "
                + paper_r)
    else:
        which = (f"r = {_values(flat)}" if flat else "none of them")
        line = (f"* **Prune ratio** (swept: {_values(acc_r)}; {seeds}): mean accuracy within {margin:.2f} points "
                f"(max(0.5, 2 std)) of full data for {which}; " + paper_r)
    lines = [line]
    acc_d = {x: float(np.mean([r.accuracy for r in rs])) for x, rs in sweep["delta"].items()}
    saved_d = {x: float(np.mean([r.saved for r in rs])) for x, rs in sweep["delta"].items()}
    paper_d = "the paper's Figure 3 is flat for δ in 0.75–0.875 and lower from 0.9."
    if len(acc_d) == 1:
        (x, a), = acc_d.items()
        lines.append(f"* **Annealing point:** this profile runs δ = {x:g} only ({a:.2f}%, {seeds}), so it says "
                     f"nothing about where to anneal; {paper_d}")
        return "\n".join(lines)
    spread = max(acc_d.values()) - min(acc_d.values())
    line = (f"* **Annealing point:** across δ = {_values(acc_d)}, the mean accuracy varies by {spread:.2f} points "
            f"({seeds}; the full-data seeds' std is {full_std:.2f}); " + paper_d)
    if 1.0 in acc_d and cfg.delta in acc_d:
        gain = acc_d[cfg.delta] - acc_d[1.0]
        line += (f" Annealing from δ = {cfg.delta:g} instead of never (δ = 1) changed accuracy by {gain:+.2f} points "
                 f"and cost {100 * (saved_d[1.0] - saved_d[cfg.delta]):.1f} points of saving "
                 f"({saved_d[1.0]:.0%} saved without it, {saved_d[cfg.delta]:.0%} with it). ")
        line += ("At this scale annealing bought nothing measurable: the change is inside the seeds' spread, while "
                 "the saving it gives up is not." if abs(gain) <= margin else "Annealing matters at this scale.")
    lines.append(line)
    return "\n".join(lines)


def ledger_commentary(cfg: Config, entries: list, arm: str, cost: dict[str, float]) -> str:
    """Markdown: the ledger's headline in words, and why the wall-clock saving differs from the sample saving
    (``cost`` from ``overhead``)."""
    by_arm = {e.arm: e for e in entries}
    full, ib = by_arm["full data"], by_arm[arm]
    if ib.samples_to_target is None or full.samples_to_target is None:
        head = (f"Not every seed of {'full data' if full.samples_to_target is None else arm} reached "
                f"{cfg.target_accuracy:g}% test accuracy within the schedule, so the ledger has no cost to compare.")
    else:
        head = (f"To {cfg.target_accuracy:g}% test accuracy (first crossing), {arm} needed "
                f"{ib.samples_to_target / full.samples_to_target:.2f}× the full-data run's sample-iterations, "
                f"{ib.steps_to_target / full.steps_to_target:.2f}× its optimizer steps and "
                f"{ib.seconds_to_target / full.seconds_to_target:.2f}× its wall clock.")
    missed = [e.arm for e in entries if e.samples_to_target is None]
    if missed:
        head += f" Never reached by every seed: {', '.join(missed)}."
    gap = 100 * cost["gap"]
    why = (f"Over the whole schedule it skipped {cost['saved']:.1%} of the sample-iterations and saved "
           f"{cost['wall_saved']:.1%} of the wall clock. The method's own bookkeeping, measured inside the runs, is "
           f"{cost['draw_ms_per_epoch']:.1f} ms per epoch for the draw and {cost['update_ms_per_epoch']:.1f} ms per "
           f"epoch in `update`, against {cost['full_epoch_ms']:.0f} ms for a full-data epoch: "
           f"{100 * cost['bookkeeping_share']:.1f}% of the full-data run's time. ")
    if gap > 0:
        why += (f"The wall-clock saving is {gap:.1f} points below the sample saving; the bookkeeping accounts for "
                f"{min(gap, 100 * cost['bookkeeping_share']):.1f} of them. The rest is work that does not shrink with "
                "the epoch (each epoch's loop set-up and partial last batch) and the machine's drift in speed between "
                "runs, which on a shared machine is of the same order.")
    else:
        why += (f"The wall-clock saving is {-gap:.1f} points *above* the sample saving: the bookkeeping is smaller "
                "than the drift in the machine's speed between runs, which decides the last point or two.")
    return head + "\n\n" + why


def takeaways(cfg: Config, runs: dict[str, list[Run]], sweep: dict[str, dict[float, list[Run]]], mc: dict,
              cost: dict[str, float], below_mean_share: float) -> dict:
    """The chapter's summary (Markdown bullets) and its "when it pays" benefit, cost and rule, each sentence with
    this run's numbers."""
    full = runs["full data"]
    ib_name = infobatch_arm(0.5 if 0.5 in cfg.ratios else cfg.ratios[0]).name
    ib, s_full, s_ib = runs[ib_name], summarize(full), summarize(runs[ib_name], full)
    gap, static, dynamic = (_paired(runs[name], full) for name in (ib_name, STATIC, DYNAMIC))
    bias, hard = mc["prune below mean, rescaled"]["bias"], mc["prune below mean, not rescaled"]["bias"]
    n, epochs = ib[0].history[0]["used"], len(ib[0].history)
    early_epochs = min(5, epochs)
    early = float(np.mean([sum(h["pruned"] for h in r.history[:early_epochs]) / (n * early_epochs) for r in ib]))
    acc_d = {x: float(np.mean([r.accuracy for r in rs])) for x, rs in sweep["delta"].items()}
    saved_d = {x: float(np.mean([r.saved for r in rs])) for x, rs in sweep["delta"].items()}
    summary = [
        "* InfoBatch is a sampler and one line in the loss: per-sample losses in, a weighted mean out. Its bookkeeping "
        f"(a mean and a random draw per epoch, a score write per batch) took {100 * cost['bookkeeping_share']:.1f}% "
        "of the full-data run's time here.",
        f"* The rescale is what keeps the gradient unbiased: {bias:.1%} bias with it, {hard:.0%} without (section 4). "
        "The side that is pruned changes the variance, not the bias.",
        f"* At r = {ib[0].arm.split('=')[-1]} it skipped {s_ib['saved']:.0%} of the sample-iterations (the paper's "
        f"headline: {PAPER_SAVING:.0f}% of the overall cost, abstract and Table 2): less than r, because only the "
        f"{below_mean_share:.0%} of samples below the mean are candidates, and epoch 0 and the annealing epochs prune "
        "nothing.",
        f"* Accuracy: {_pm(s_ib['accuracy'], s_ib['accuracy_std'], len(ib), unit='%')} against "
        f"{_pm(s_full['accuracy'], s_full['accuracy_std'], len(full), unit='%')} for full data "
        f"({gap[0]:+.2f} points, paired by seed). Random pruning at the "
        f"same cost: static {static[0]:+.2f}, Random* {dynamic[0]:+.2f} points.",
    ]
    if 1.0 in acc_d and cfg.delta in acc_d:
        summary.append(f"* Annealing (δ = {cfg.delta:g} against never, δ = 1) changed accuracy by "
                       f"{acc_d[cfg.delta] - acc_d[1.0]:+.2f} points at this scale and cost "
                       f"{100 * (saved_d[1.0] - saved_d[cfg.delta]):.1f} points of saving.")
    benefit = [
        f"{s_ib['saved']:.0%} fewer sample-iterations and {paired_wall_saved(ib, full):.0%} less wall clock than full "
        f"data over the {epochs}-epoch schedule, at {_pm(*gap, len(ib), sign=True)} points of test accuracy against "
        "full data.",
        f"At the same saving, random pruning lost {-static[0]:.2f} (static) and {-dynamic[0]:.2f} (Random*) points: "
        "the choice of *which* samples to skip is what makes the saving free.",
    ]
    cost_items = [
        f"Time: {cost['draw_ms_per_epoch']:.1f} ms per epoch to draw the list and {cost['update_ms_per_epoch']:.1f} ms "
        f"per epoch in `update` ({100 * cost['bookkeeping_share']:.1f}% of the full-data run). Memory: one float per "
        f"sample for the scores ({4 * n / 1e3:,.0f} kB here; 5 MB for ImageNet's 1.28 M images).",
        "Code: an index with every batch, per-sample losses (`reduction=\"none\"`), and a learning-rate schedule that "
        "follows training progress, since a step-count schedule fixed up front would not reach its end.",
        f"Short schedules save less: epoch 0 and the last {1 - cfg.delta:.1%} of epochs prune nothing; over this run's "
        f"first {plural(early_epochs, 'epoch')} r = 0.5 skipped {early:.0%} of the sample-iterations, against "
        f"{s_ib['saved']:.0%} over all {epochs}.",
    ]
    if 1.0 in acc_d and cfg.delta in acc_d:
        cost_items.append(f"Annealing's cost: {100 * (saved_d[1.0] - saved_d[cfg.delta]):.1f} points of saving for "
                          f"{acc_d[cfg.delta] - acc_d[1.0]:+.2f} points of accuracy at this scale.")
    rule = ("Use it when a run goes over the same data for many epochs and most samples are fitted long before the end "
            "(a skewed loss distribution): the saving is close to r × the below-mean share, and the accuracy stays at "
            "the full-data level. It does not pay on short schedules (little is pruned), when the learning-rate "
            "schedule is a fixed step budget you cannot re-base on progress, or on data with little redundancy, "
            "where the skipped samples still carry signal; and the wall clock falls only where the forward and "
            "backward passes dominate the step, not where data loading does.")
    return {"summary": "\n".join(summary), "benefit": benefit, "cost": cost_items, "rule": rule}


def key_results(cfg: Config, runs: dict[str, list[Run]]) -> list[tuple[str, str, str]]:
    """The chapter's key results as (label, this run, paper)."""
    full = runs["full data"]
    ib_name = infobatch_arm(0.5 if 0.5 in cfg.ratios else cfg.ratios[0]).name
    s_full, s_ib = summarize(full), summarize(runs[ib_name], full)
    static, dynamic = (_paired(runs[name], full) for name in (STATIC, DYNAMIC))
    paper = PAPER_TABLE1_CIFAR10
    return [
        (f"{ib_name} vs full data, test accuracy %",
         f"{_pm(s_ib['accuracy'], s_ib['accuracy_std'], len(full))} vs "
         f"{_pm(s_full['accuracy'], s_full['accuracy_std'], len(full))} ({cfg.model} on {cfg.dataset})",
         f"{paper['infobatch'][0.5]} vs {paper['full']} (CIFAR-10 ResNet-18, Table 1); 76.5 vs 76.4 (ImageNet-1K "
         "ResNet-50, Table 2)"),
        (f"{ib_name}: cost saved", f"{s_ib['saved']:.0%} of sample-iterations, "
         f"{paired_wall_saved(runs[ib_name], full):.0%} of wall clock "
         f"({cfg.epochs} epochs)", f"{PAPER_SAVING:.0f}% of overall cost (abstract; Table 2: 17.5 h → 10.5 h)"),
        ("Random pruning at the same saving, accuracy vs full data (points)",
         f"static {static[0]:+.2f}, Random* {dynamic[0]:+.2f}",
         f"static {paper['static'][0.3] - paper['full']:+.1f}, Random* {paper['dynamic'][0.3] - paper['full']:+.1f} "
         "at 30% (Table 1)"),
    ]


def explorer_start(sweep: dict[str, dict[float, list[Run]]]) -> dict[str, float]:
    """The explorer's first setting: r = 0.5 without annealing (δ = 1) when swept, else the nearest values."""
    ratios, deltas = list(sweep["ratio"]), list(sweep["delta"])
    return {"prune_ratio": 0.5 if 0.5 in ratios else ratios[len(ratios) // 2],
            "delta": 1.0 if 1.0 in deltas else deltas[-1]}


def sweep_readout(cfg: Config, sweep: dict[str, dict[float, list[Run]]], full_accuracy: float, prune_ratio: float,
                  delta: float) -> dict[str, float]:
    """The explorer's instant answer at (r, δ), from the sweeps: accuracy and saving along each sweep."""
    at_r, at_d = sweep["ratio"][prune_ratio], sweep["delta"][delta]
    return {f"accuracy % at r={prune_ratio:g}, δ={cfg.delta:g}": float(np.mean([r.accuracy for r in at_r])),
            f"saved % at r={prune_ratio:g}": 100 * float(np.mean([r.saved for r in at_r])),
            f"accuracy % at r=0.5, δ={delta:g}": float(np.mean([r.accuracy for r in at_d])),
            f"saved % at δ={delta:g}": 100 * float(np.mean([r.saved for r in at_d])),
            "full-data accuracy %": full_accuracy}


# --- unbiasedness -------------------------------------------------------------------------------------

def _per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      label_smoothing: float) -> dict[str, torch.Tensor]:
    """Per parameter, [n, *shape]: the gradient of each sample's loss, via torch.func (vmap over grad)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_of(p, xi, yi):
        out = functional_call(model, p, (xi[None],))
        return F.cross_entropy(out, yi[None], label_smoothing=label_smoothing)

    return vmap(grad(loss_of), in_dims=(None, 0, 0))(params, x, y)


def gradient_gram(model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """[n, n] float64: the inner products g_i · g_j of the per-sample gradients, summed parameter by parameter (no
    [n, num_params] copy in float64: ResNet-18's 11 M parameters would need 90 MB per sample). A model with batch norm
    should be in eval mode, so that a sample's gradient does not depend on the rest of its batch."""
    grads = _per_sample_grads(model, x, y, label_smoothing)
    gram = torch.zeros(len(x), len(x), dtype=torch.float64, device=x.device)
    for g in grads.values():
        flat = g.reshape(len(x), -1).double()
        gram += flat @ flat.T
    return gram


@replay.replayable
def unbiasedness(cfg: Config, data: Data, device: torch.device, prune_ratio: float = 0.5, seed: int = 0,
                 warmup_epochs: int | None = None) -> dict:
    """Monte Carlo: over many pruning draws, does the pruned epoch's gradient average to the full-data gradient?

    A model is trained for ``warmup_epochs`` (None: the config's ``mc_warmup_epochs``; so the losses are spread out),
    then for ``mc_samples`` samples we take per-sample gradients g_i and losses (the scores), in eval mode. Each draw d
    gives kept set K_d and weights w; an estimator's gradient is ĝ_d = (1/n) Σ_{i in K_d} w_i g_i. Four estimators:
    prune below the mean or above it, with the 1/(1-r) rescale or without. Reported: relative bias
    ||E[ĝ] - g|| / ||g|| (with its Monte-Carlo standard error) and the relative spread of single draws.

    Every norm is a quadratic form in the Gram matrix K_ij = g_i · g_j: with a_d = (w_d - 1)/n (w_d the draw's weights,
    0 for a pruned sample), ĝ_d - g = Σ_i a_di g_i, so ||ĝ_d - g||² = a_d K a_dᵀ. Nothing of size draws × parameters
    is formed, which keeps ResNet-18 within a GPU's memory. Runs with the config's ``threads``, as ``train`` does.
    """
    with intra_op_threads(cfg.threads):
        return _unbiasedness(cfg, data, device, prune_ratio, seed,
                             cfg.mc_warmup_epochs if warmup_epochs is None else warmup_epochs)


def _unbiasedness(cfg: Config, data: Data, device: torch.device, prune_ratio: float, seed: int,
                  warmup_epochs: int) -> dict:
    warm = replace(cfg, epochs=warmup_epochs)
    model = make_model(cfg, data.num_classes, seed, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(warm.epochs):
        order = torch.randperm(len(data.y), generator=generator)
        for i in range(0, len(order), cfg.batch_size):
            index = order[i:i + cfg.batch_size].to(device)
            loss = F.cross_entropy(model(data.x[index]), data.y[index], label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    n = min(cfg.mc_samples, len(data.y))
    subset = torch.randperm(len(data.y), generator=generator)[:n].to(device)
    x, y = data.x[subset], data.y[subset]
    model.eval()  # batch norm: each sample's loss and gradient on its own, with the running statistics
    gram = gradient_gram(model, x, y, cfg.label_smoothing)  # [n, n]
    with torch.no_grad():
        losses = F.cross_entropy(model(x), y, reduction="none", label_smoothing=cfg.label_smoothing)
    full_norm = gram.sum().clamp(min=0).sqrt() / n  # ||g||, g = (1/n) Σ g_i

    def draws(above: bool) -> torch.Tensor:
        """[draws, n] kept-mask × weight of each draw, from the real sampler (scores negated to prune above)."""
        sampler = InfoBatch(n, 10 * cfg.mc_draws, prune_ratio, delta=1.0, seed=seed)
        sampler.update(torch.arange(n), (-losses if above else losses).cpu().float())
        rows = torch.zeros(cfg.mc_draws, n, dtype=torch.float64)
        for d in range(cfg.mc_draws):
            sampler.set_epoch(d + 1)
            kept = torch.tensor(list(iter(sampler)))
            rows[d, kept] = sampler.weights(kept).double()
        return rows

    out = {"n": n, "draws": cfg.mc_draws, "prune_ratio": prune_ratio, "losses": losses.cpu().numpy()}
    for side, above in (("below mean", False), ("above mean", True)):
        weighted = draws(above)
        for rescale in (True, False):
            effective = weighted if rescale else (weighted > 0).double()
            a = (effective.to(device) - 1.0) / n  # [draws, n]: ĝ_d - g = a_d @ [g_i]
            mean_a = a.mean(0)
            bias = (mean_a @ gram @ mean_a).clamp(min=0).sqrt() / full_norm
            spread = ((a @ gram) * a).sum(1).clamp(min=0).sqrt() / full_norm
            stderr = spread.pow(2).mean().sqrt() / math.sqrt(cfg.mc_draws)
            name = f"{'prune ' + side}, {'rescaled' if rescale else 'not rescaled'}"
            out[name] = {"bias": bias.item(), "bias_stderr": stderr.item(), "spread": spread.mean().item(),
                         "kept": (weighted > 0).double().mean().item()}
    return out


def live_run(cfg: Config, data: Data, device: torch.device, prune_ratio: float, delta: float, seed: int = 0) -> dict:
    """The explorer's "run" button: one InfoBatch run and one full-data run at this seed. Not recorded: it trains live
    at whatever the reader chose, also when the rest of the chapter is rendered from a recorded run."""
    ib = train(cfg, data, infobatch_arm(prune_ratio, delta), seed, device)
    full = train(cfg, data, Arm("full data", "full"), seed, device)
    return {"InfoBatch accuracy %": ib.accuracy, "full-data accuracy %": full.accuracy,
            "sample-iterations saved %": 100 * ib.saved, "wall clock saved %": 100 * (1 - ib.seconds / full.seconds)}


# --- run time: the probe and the cost model -----------------------------------------------------------------------

#: What ``Book.fit`` trims, in this order, to fit BUDGET_MINUTES: the sweeps' seeds, then the tables' seeds (each down
#: to one), then epochs (down to 4: epoch 0 and the annealing epochs prune nothing, so fewer leaves little to prune).
TRIMS = (("sweep_seeds", 1), ("seeds", 1), ("epochs", 4))

#: The share of samples below the mean score that the estimate assumes while InfoBatch prunes (the cpu profile's run
#: measured 0.68); it sets how many steps the pruned runs are expected to take.
ASSUMED_BELOW_MEAN = 0.65
#: A per-sample gradient (vmap over grad) against one sample's share of a batched training step: a rough factor (the
#: smoke profile's small CNN on a CPU measured about 20; the part is small either way).
PER_SAMPLE_GRADIENT_FACTOR = 20.0


@dataclass(frozen=True)
class Probe:
    """Seconds measured on the reader's device at a config's sizes (``probe``)."""

    step_s: float  # one training step of ``batch`` samples: augment, forward, per-sample loss, backward, SGD step
    batch: int
    eval_s: float  # one test sample's forward pass, batched as ``evaluate`` does
    draw_s: float  # one InfoBatch draw over the training set: set_epoch and reading the list
    mc_draw_s: float  # one Monte-Carlo draw over ``mc_samples`` samples: set_epoch, the list and its weights
    train: int  # training samples
    test: int  # test samples


def probe(cfg: Config, data: Data, device: torch.device, steps: int = 3, warmup: int = 2) -> Probe:
    """Time ``steps`` training steps of the chapter's model at ``cfg``'s batch size on ``device`` (after ``warmup``
    steps), a batched test forward pass, and InfoBatch's draws. The model is a throwaway; every random number comes
    from its own generator."""
    n, test = len(data.y), len(data.y_test)
    generator = torch.Generator().manual_seed(0)
    augment_generator = torch.Generator(device=device).manual_seed(0)
    model = make_model(cfg, data.num_classes, 0, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    index = torch.randperm(n, generator=generator)[:cfg.batch_size].to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step() -> None:
        losses = F.cross_entropy(model(_augment(cfg, data.x[index], augment_generator)), data.y[index],
                                 reduction="none", label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        optimizer.step()

    with intra_op_threads(cfg.threads):
        for _ in range(warmup):
            step()
        sync()
        tick = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        step_s = (time.perf_counter() - tick) / steps
        m = min(test, 512)
        evaluate(model, data.x_test[:m], data.y_test[:m])
        tick = time.perf_counter()
        evaluate(model, data.x_test[:m], data.y_test[:m])
        eval_s = (time.perf_counter() - tick) / m

    def draw_seconds(size: int, weights: bool) -> float:
        sampler = InfoBatch(size, 10, 0.5, delta=1.0, seed=0)
        sampler.update(torch.arange(size), torch.rand(size, generator=generator))
        tick = time.perf_counter()
        for epoch in (1, 2):
            sampler.set_epoch(epoch)
            kept = torch.tensor(list(iter(sampler)))
            if weights:
                sampler.weights(kept)
        return (time.perf_counter() - tick) / 2

    return Probe(step_s, len(index), eval_s, draw_seconds(n, False), draw_seconds(min(cfg.mc_samples, n), True), n,
                 test)


def expected_used(cfg: Config, arm: Arm, n: int) -> list[int]:
    """Samples each epoch of ``arm`` is expected to train on: InfoBatch skips r of the ``ASSUMED_BELOW_MEAN`` share in
    its pruning epochs (1 to delta·C); static and Random* keep their ``keep`` share (Random* only before delta·C)."""
    if arm.kind == "full":
        return [n] * cfg.epochs
    if arm.kind == "infobatch":
        below = int(round(ASSUMED_BELOW_MEAN * n))
        pruned = below - math.floor((1 - arm.prune_ratio) * below)
        return [n - pruned if 1 <= epoch < arm.delta * cfg.epochs else n for epoch in range(cfg.epochs)]
    kept = int(round(arm.keep * n))
    if arm.kind == "static":
        return [kept] * cfg.epochs
    return [kept if epoch < arm.delta * cfg.epochs else n for epoch in range(cfg.epochs)]


def estimate(cfg: Config, measured: Probe) -> Estimate:
    """Seconds per part of the chapter at ``cfg``'s counts (arms × seeds × epochs × steps), from the probe's
    seconds per step (scaled to ``cfg``'s batch size, compute-bound), per test sample and per draw."""
    from accel.experiments.run_time import Estimate  # imported here: see the TYPE_CHECKING import above

    n, step_s = measured.train, measured.step_s * cfg.batch_size / measured.batch

    def run_s(arm: Arm, evaluations: int) -> float:
        used = expected_used(cfg, arm, n)
        draws = cfg.epochs * measured.draw_s if arm.kind == "infobatch" else 0.0
        return sum(math.ceil(u / cfg.batch_size) for u in used) * step_s + draws + evaluations * measured.test * \
            measured.eval_s

    reference = infobatch_arm(0.5 if 0.5 in cfg.ratios else cfg.ratios[0], cfg.delta)
    saved = 1 - sum(expected_used(cfg, reference, n)) / (n * cfg.epochs)
    table1_arms = [Arm("full data", "full")] + [infobatch_arm(r, cfg.delta) for r in cfg.ratios]
    table1_arms += matched_arms(cfg, saved)
    ablation = [infobatch_arm(0.5, cfg.delta, name=name, **switches) for name, switches in ABLATION.items()]
    known = {arm.name for arm in table1_arms + ablation}
    sweep_s = 0.0
    for arms in sweep_arms(cfg).values():
        for arm in arms.values():
            missing = [s for s in cfg.sweep_seeds if arm.name not in known or s not in cfg.seeds]
            sweep_s += len(missing) * run_s(arm, 1)
    mc_n = min(cfg.mc_samples, n)
    monte_carlo = (cfg.mc_warmup_epochs * math.ceil(n / cfg.batch_size) * step_s
                   + mc_n * PER_SAMPLE_GRADIENT_FACTOR * step_s / cfg.batch_size
                   + 2 * cfg.mc_draws * measured.mc_draw_s + mc_n * measured.eval_s)
    parts = {"Table 1": len(cfg.seeds) * sum(run_s(arm, cfg.epochs + 1) for arm in table1_arms),
             "Table 4": len(cfg.seeds) * sum(run_s(arm, 1) for arm in ablation),
             "sweeps": sweep_s, "Monte Carlo": monte_carlo}
    basis = (f"{1000 * measured.step_s:.1f} ms per training step of {measured.batch} {cfg.model} samples, "
             f"{1e6 * measured.eval_s:.0f} µs per test sample; InfoBatch's saving from an assumed "
             f"{ASSUMED_BELOW_MEAN:.0%} of samples below the mean")
    return Estimate(parts, basis)


def cost_model(cfg: Config, data: Data, device: torch.device) -> Callable[[Config], Estimate]:
    """``Book.fit``'s cost model: probe this device once at ``cfg``'s sizes (``probe``: a few training steps, well
    under a second at smoke size), and return ``Config -> Estimate``, the seconds per part of the chapter (Table 1,
    Table 4, sweeps, Monte Carlo) of any config that differs from ``cfg`` in seeds, epochs or sweep seeds."""
    measured = probe(cfg, data, device)
    return lambda c: estimate(c, measured)
