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

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from accel.experiments import pick_config
from accel.infobatch import InfoBatch
from accel.models.vision import ConvNet1D

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
    threads: int = 1  # intra-op threads per run (1 keeps wall-clock comparisons clean on a small CPU)


CONFIGS = {
    "smoke": Config(dataset="digits", epochs=10, batch_size=32, lr=0.2, seeds=(0,), ratios=(0.5,),
                    sweep_ratios=(0.5,), sweep_deltas=(0.875,), sweep_seeds=(0,), mc_samples=200, mc_draws=100),
    "cpu": Config(),
    "paper": Config(dataset="cifar10", model="resnet18", epochs=200, batch_size=128, lr=0.05, schedule="onecycle",
                    augment=True, mc_samples=256, mc_draws=2000, sweep_seeds=(0,), threads=0),
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
    """The profile's dataset, whole, on ``device`` (small enough for memory; no DataLoader needed)."""
    if cfg.dataset == "digits":
        from accel.datasets.digits import load_digits_1d

        train, test = load_digits_1d(seed=0)
        num_classes = 10
    elif cfg.dataset == "mnist1d":
        from accel.datasets.mnist1d import load_mnist1d

        train, test = load_mnist1d(cfg.num_samples)
        num_classes = 10
    elif cfg.dataset in ("cifar10", "cifar100"):
        from accel.datasets.cifar import load_cifar

        train_split, test_split = load_cifar(cfg.dataset)
        num_classes = len(train_split.classes)
        return Data(train_split.normalized().to(device), train_split.labels.to(device),
                    test_split.normalized().to(device), test_split.labels.to(device), num_classes)
    else:
        raise ValueError(f"Invalid dataset: {cfg.dataset!r}; allowed: digits, mnist1d, cifar10, cifar100")
    return Data(train.x.to(device), train.y.to(device), test.x.to(device), test.y.to(device), num_classes)


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
    seconds: float  # training wall clock, evaluation excluded
    history: list[dict] = field(default_factory=list)  # per epoch: used, pruned, and (when recorded) scores

    @property
    def saved(self) -> float:
        return 1.0 - self.used / self.total


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


def _augment(cfg: Config, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if not cfg.augment:
        return x
    from accel.datasets.cifar import random_crop_flip

    return random_crop_flip(x, generator)


def train(cfg: Config, data: Data, arm: Arm, seed: int, device: torch.device, *,
          progress: Callable[[int], None] | None = None) -> Run:
    """Train one arm from the seed's initialisation; returns accuracy, sample-iterations used and wall clock.

    For InfoBatch arms the history keeps each epoch's scores as they were when its list was drawn (for the loss
    histograms); copying them is outside the timed region."""
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
            scores = sampler.scores.detach().cpu().clone() if sampler is not None else None
            if sampler is not None:
                sampler.set_epoch(epoch)
                order = torch.tensor(list(iter(sampler)), dtype=torch.long)
            elif subsets is not None:
                order = subsets.epoch_indices(epoch)
            else:
                order = torch.randperm(n, generator=order_generator)
            start = time.perf_counter()
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
                    weighted = sampler.update(index_device, losses)
                    loss = weighted if arm.rescale else losses.mean()
                else:
                    loss = losses.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - start
            used += len(order)
            entry = {"epoch": epoch, "used": len(order), "pruned": n - len(order)}
            if scores is not None:
                entry["scores"] = scores.numpy()
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


def table1(cfg: Config, data: Data, device: torch.device, show_progress: bool = True) -> dict[str, list[Run]]:
    """Full data; InfoBatch at each r; static and dynamic random pruning at InfoBatch r=0.5's measured saving.

    Seed-major: for each seed, every arm runs back to back, the random-pruning arms matched to that seed's InfoBatch
    run, so the machine's drift in speed falls on all arms alike."""
    from accel.experiments.progress import progress_bar

    arms = [Arm("full data", "full")] + [infobatch_arm(r, cfg.delta) for r in cfg.ratios]
    reference = infobatch_arm(0.5 if 0.5 in cfg.ratios else cfg.ratios[0]).name
    runs: dict[str, list[Run]] = {}
    total = (len(arms) + 2) * len(cfg.seeds) * cfg.epochs
    with progress_bar(total=total, desc="Table 1", unit="epoch", disable=not show_progress) as bar:
        for seed in cfg.seeds:
            for arm in arms:
                runs.setdefault(arm.name, []).append(train(cfg, data, arm, seed, device, progress=bar.update))
            for arm in matched_arms(cfg, runs[reference][-1].saved):
                runs.setdefault(arm.name, []).append(train(cfg, data, arm, seed, device, progress=bar.update))
    return runs


# --- Table 4 ablation ---------------------------------------------------------------------------------------------

ABLATION = {
    "soft pruning only": dict(rescale=False, anneal=False),
    "+ rescaling": dict(rescale=True, anneal=False),
    "+ annealing": dict(rescale=False, anneal=True),
}


def table4(cfg: Config, data: Data, device: torch.device, show_progress: bool = True) -> dict[str, list[Run]]:
    """The three partial variants of InfoBatch at r = 0.5 (the full method and baselines come from Table 1)."""
    arms = [infobatch_arm(0.5, cfg.delta, name=name, **switches) for name, switches in ABLATION.items()]
    return run_arms(cfg, data, arms, cfg.seeds, device, "Table 4: ablation", show_progress)


# --- Figure 3 sweeps ------------------------------------------------------------------------------------------------

def sweeps(cfg: Config, data: Data, device: torch.device, known: dict[str, list[Run]] | None = None,
           show_progress: bool = True) -> dict[str, dict[float, list[Run]]]:
    """Accuracy and saving against r (delta fixed) and against delta (r = 0.5); re-uses runs already made."""
    known = known or {}
    seeds = list(cfg.sweep_seeds)

    def runs_for(arm: Arm) -> list[Run]:
        have = [r for r in known.get(arm.name, []) if r.seed in seeds]
        missing = [s for s in seeds if s not in {r.seed for r in have}]
        if not missing:
            return sorted(have, key=lambda r: r.seed)
        fresh = run_arms(cfg, data, [arm], missing, device, f"sweep: {arm.name}", show_progress)[arm.name]
        return sorted(have + fresh, key=lambda r: r.seed)

    by_ratio = {r: runs_for(infobatch_arm(r, cfg.delta)) for r in cfg.sweep_ratios}
    by_delta = {d: runs_for(infobatch_arm(0.5, d, name=f"InfoBatch r=0.5 delta={d:g}") if d != cfg.delta
                            else infobatch_arm(0.5, d)) for d in cfg.sweep_deltas}
    return {"ratio": by_ratio, "delta": by_delta}


# --- unbiasedness -------------------------------------------------------------------------------------

def per_sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """[n, num_params]: the gradient of each sample's loss, via torch.func (vmap over grad)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_of(p, xi, yi):
        out = functional_call(model, p, (xi[None],))
        return F.cross_entropy(out, yi[None], label_smoothing=label_smoothing)

    grads = vmap(grad(loss_of), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([g.reshape(len(x), -1) for g in grads.values()], dim=1)


def unbiasedness(cfg: Config, data: Data, device: torch.device, prune_ratio: float = 0.5, seed: int = 0,
                 warmup_epochs: int = 3) -> dict:
    """Monte Carlo: over many pruning draws, does the pruned epoch's gradient average to the full-data gradient?

    A model is trained for ``warmup_epochs`` (so the losses are spread out), then for ``mc_samples`` samples we take
    per-sample gradients g_i and losses (the scores). Each draw d gives kept set K_d and weights w; an estimator's
    gradient is (1/n) Σ_{i in K_d} w_i g_i. Four estimators: prune below the mean or above it, with the 1/(1-r)
    rescale or without. Reported: relative bias ||E[ĝ] - g|| / ||g|| (with its Monte-Carlo standard error) and the
    relative spread of single draws.
    """
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
    g = per_sample_gradients(model, x, y, cfg.label_smoothing).double()  # [n, P]
    with torch.no_grad():
        losses = F.cross_entropy(model(x), y, reduction="none", label_smoothing=cfg.label_smoothing)
    full = g.mean(0)

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
            estimates = effective.to(device) @ g / n  # [draws, P]
            bias = (estimates.mean(0) - full).norm() / full.norm()
            spread = (estimates - full).norm(dim=1) / full.norm()
            stderr = spread.pow(2).mean().sqrt() / math.sqrt(cfg.mc_draws)
            name = f"{'prune ' + side}, {'rescaled' if rescale else 'not rescaled'}"
            out[name] = {"bias": bias.item(), "bias_stderr": stderr.item(), "spread": spread.mean().item(),
                         "kept": (weighted > 0).double().mean().item()}
    return out


def live_run(cfg: Config, data: Data, device: torch.device, prune_ratio: float, delta: float, seed: int = 0) -> dict:
    """The explorer's "run" button: one InfoBatch run and one full-data run at this seed."""
    ib = train(cfg, data, infobatch_arm(prune_ratio, delta), seed, device)
    full = train(cfg, data, Arm("full data", "full"), seed, device)
    return {"InfoBatch accuracy %": ib.accuracy, "full-data accuracy %": full.accuracy,
            "sample-iterations saved": ib.saved, "wall clock saved": 1 - ib.seconds / full.seconds}
