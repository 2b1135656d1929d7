"""Chapter 04, ST-MoE: configs per profile and one function per table or figure.

Every run trains :class:`accel.models.lm.TransformerLM` (byte-level, RMSNorm with scale, GEGLU, an
:class:`accel.moe.MoE` FFN in every second layer) on random windows of a byte corpus and reports the validation
cross-entropy in nats per byte (lower is better; the paper reports negative log perplexity, higher is better, per
SentencePiece token, so only orderings compare). An :class:`Arm` says what differs from the profile's recipe.

Two regimes:

* the *healthy* recipe (Adam, lr 3e-3, warm-up, cosine decay) for capacity, balance and expert-count tables;
* the *provoked* regime for the stability study: a learning rate 15x higher, no warm-up, and the router computed in
  bfloat16 (``router_dtype=torch.bfloat16``). The paper saw instability only at XL size; a tiny model needs a push,
  and the chapter says so.

A run *diverges* when its training loss becomes non-finite or exceeds ``Config.diverge_loss`` (twice the loss of a
uniform guess over 256 bytes); it stops there and is counted, not hidden.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from accel.datasets.text import TextCorpus, ValidationWindows, load_corpus, random_windows
from accel.experiments import pick_config
from accel.models.lm import TransformerLM
from accel.moe import expert_capacity

# --- paper numbers (ST-MoE, arXiv 2202.08906) -----------------------------------------------------------------------

PAPER_TABLE4 = {  # stability ablation: (fraction of seeds stable, quality = neg. log perplexity, higher is better)
    "baseline": ("4/6", -1.755), "remove GEGLU": ("3/3", -1.849), "remove RMSNorm scale": ("3/3", -2.020),
    "input jitter 1e-2": ("3/3", -1.777), "dropout 0.1": ("3/3", -1.822),
    "update clipping 0.1": ("3/3", -4.206), "router z-loss": ("3/3", -1.741),
}
PAPER_TABLE8 = {  # top-k -> {(train CF, eval CF): neg. log perplexity}, 32 experts, 100k steps
    1: {(0.75, 0.75): -1.428, (0.75, 2.0): -1.404, (1.0, 1.0): -1.397, (1.0, 2.0): -1.384, (1.25, 1.25): -1.378,
        (1.25, 2.0): -1.373},
    2: {(0.75, 0.75): -1.424, (0.75, 2.0): -1.402, (1.0, 1.0): -1.392, (1.0, 2.0): -1.378, (1.25, 1.25): -1.375,
        (1.25, 2.0): -1.369, (2.0, 2.0): -1.360, (2.0, 3.0): -1.359},
    3: {(2.0, 2.0): -1.360, (2.0, 3.0): -1.356},
}
PAPER_TABLE5_DROPPED = {  # fine-tuning, (train CF, eval CF) -> % tokens dropped (with, without the balance loss)
    (0.75, 2.0): (10.6, 15.6), (1.25, 2.0): (0.3, 2.9), (2.0, 3.0): (0.0, 0.4), (4.0, 5.0): (0.0, 0.0),
}
PAPER_UNIFORM_FLOOR = {  # top-1, 32 experts: (tokens, CF) -> % dropped under uniform random routing
    (4096, 1.0): 3.47, (4096, 1.25): 0.01, (1024, 1.0): 6.92, (1024, 1.25): 0.68,
}


# --- the stability study's stressors -------------------------------------------------------------------------------

STRESSORS = {  # id -> (name, what the arm changes)
    "adafactor": ("Adafactor, no update clipping", dict(optimizer="adafactor", update_clip=None)),
    "fp16": ("fp16 autocast + loss scaling", dict(precision="fp16")),
    "router_lr": ("router lr x10", dict(router_lr_mult=10.0)),
    "no_norm": ("no norm before the router", dict(lm={"router_norm": False})),
    "longer": ("2x longer", dict(steps_mult=2.0)),
}



# --- configs -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    corpus: str = "python-stdlib"  # python-stdlib | enwik8
    corpus_bytes: int | None = 4 * 2**20  # python-stdlib only
    # the model (LMConfig fields)
    d_model: int = 64
    n_layers: int = 2  # layer 2 is the MoE layer (moe_every = 2)
    n_heads: int = 4
    d_ff: int = 128
    seq_len: int = 64
    num_experts: int = 8
    top_k: int = 2
    capacity_factor: float = 1.25
    eval_capacity_factor: float = 2.0
    # the healthy recipe
    batch_size: int = 16  # windows per step: batch_size * seq_len tokens per forward (one capacity group)
    steps: int = 200
    lr: float = 3e-3
    warmup: int = 30
    log_every: int = 10
    eval_windows: int = 256
    seeds: tuple[int, ...] = (0, 1, 2)
    diverge_loss: float = 2 * math.log(256)
    # the provoked regime (stability study)
    stress_lr: float = 4.5e-2
    stress_router_init_std: float | None = None  # None: the MoE layer's own init (std 1.0 collapses routing at once)
    stressor_seeds: tuple[int, ...] = (0, 1, 2)
    # fp16 is left out on CPU, where half-precision matrix products are emulated and a run takes many times longer
    stressors: tuple[str, ...] = ("adafactor", "router_lr", "no_norm", "longer")
    # table sweeps
    capacity_arms: tuple[tuple[int, float, float], ...] = (  # (top_k, train CF, eval CF 2); eval also at train CF
        (1, 0.75, 2.0), (1, 1.0, 2.0), (1, 1.25, 2.0), (2, 0.75, 2.0), (2, 1.0, 2.0), (2, 1.25, 2.0), (2, 2.0, 3.0),
        (3, 2.0, 3.0))
    capacity_seeds: tuple[int, ...] = (0,)
    drop_factors: tuple[float, ...] = (0.75, 1.0, 1.25, 2.0)
    expert_counts: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    expert_seeds: tuple[int, ...] = (0,)


CONFIGS = {
    "smoke": Config(d_model=32, n_layers=2, d_ff=64, seq_len=32, batch_size=8, steps=20, warmup=5, log_every=5,
                    eval_windows=32, seeds=(0,), stressor_seeds=(0,), capacity_arms=((1, 1.0, 2.0), (2, 1.25, 2.0)),
                    drop_factors=(1.0, 2.0), expert_counts=(1, 4), corpus_bytes=2**20,
                    stressors=("fp16", "no_norm")),
    "cpu": Config(),
    "paper": Config(corpus="enwik8", corpus_bytes=None, d_model=512, n_layers=8, n_heads=8, d_ff=1024, seq_len=256,
                    num_experts=32, batch_size=32, steps=20_000, lr=1e-3, warmup=1000, log_every=100,
                    eval_windows=2048, stress_lr=1e-2, expert_counts=(1, 4, 8, 16, 32, 64),
                    stressors=tuple(STRESSORS)),
}


def config(profile: str, **overrides) -> Config:
    return pick_config(CONFIGS, profile, **overrides)


@dataclass(frozen=True)
class Arm:
    """What a run changes from the profile's recipe.

    lm: LMConfig fields to override (e.g. ``{"z_loss_coef": 0.0}``). optimizer: "adam" | "adam-clip" (Adam with
    per-tensor update clipping at ``update_clip``, Adafactor's rule) | "adafactor" (torch's, with clipping
    threshold ``update_clip``; None = no clipping). provoked: the stability study's regime (see the module docstring).
    router_lr_mult: the router's learning rate relative to the rest. precision: "fp32" | "bf16" | "fp16" (autocast;
    fp16 with dynamic loss scaling). steps_mult: run length relative to ``Config.steps``.
    """

    name: str
    lm: dict = field(default_factory=dict)
    optimizer: str = "adam"
    update_clip: float | None = None
    provoked: bool = False
    router_lr_mult: float = 1.0
    precision: str = "fp32"
    steps_mult: float = 1.0


def stability_arms() -> list[Arm]:
    """Table 4 analogue, provoked regime: no z-loss, z-loss 1e-3 and 1e-2, and Adam with update clipping 0.1."""
    return [Arm("baseline (no z-loss)", {"z_loss_coef": 0.0}, provoked=True),
            Arm("z-loss 1e-3", {"z_loss_coef": 1e-3}, provoked=True),
            Arm("z-loss 1e-2", {"z_loss_coef": 1e-2}, provoked=True),
            Arm("update clipping 0.1", {"z_loss_coef": 0.0}, optimizer="adam-clip", update_clip=0.1, provoked=True)]


def stressor_arms(cfg: Config) -> list[Arm]:
    """The stressors the feasibility study did not try (cfg.stressors), each without and with z-loss 1e-3, in the
    provoked regime."""
    arms = []
    for key in cfg.stressors:
        if key not in STRESSORS:
            raise ValueError(f"Invalid stressor: {key!r}; allowed: {tuple(STRESSORS)}")
        name, spec = STRESSORS[key]
        for z, label in ((0.0, "no z-loss"), (1e-3, "z-loss 1e-3")):
            lm = {**spec.get("lm", {}), "z_loss_coef": z}
            rest = {k: v for k, v in spec.items() if k != "lm"}
            arms.append(Arm(f"{name} | {label}", lm, provoked=True, **rest))
    return arms


# --- data, model, optimizer ----------------------------------------------------------------------------------------

def load_data(cfg: Config) -> TextCorpus:
    if cfg.corpus == "python-stdlib":
        return load_corpus(cfg.corpus, max_bytes=cfg.corpus_bytes)
    return load_corpus(cfg.corpus)


def _lm_kwargs(cfg: Config, arm: Arm) -> dict:
    """The TransformerLM fields of this arm: the profile's model, the provoked regime's router, the arm's changes."""
    lm = dict(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_ff=cfg.d_ff, seq_len=cfg.seq_len,
              num_experts=cfg.num_experts, top_k=cfg.top_k, capacity_factor=cfg.capacity_factor,
              eval_capacity_factor=cfg.eval_capacity_factor)
    if arm.provoked:
        lm.update(router_init_std=cfg.stress_router_init_std, moe_kwargs={"router_dtype": torch.bfloat16})
    lm.update(arm.lm)
    return lm


def make_model(cfg: Config, arm: Arm, seed: int, device: torch.device) -> TransformerLM:
    lm = _lm_kwargs(cfg, arm)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's global RNG
        torch.manual_seed(seed)
        model = TransformerLM(**lm)
    return model.to(device)


class ClippedAdam(torch.optim.Optimizer):
    """Adam whose update is clipped per tensor: u = m_hat / (sqrt(v_hat) + eps), then u /= max(1, RMS(u) / d).

    The update clipping of Adafactor (Shazeer & Stern, 2018), the paper's "update clipping 0.1" arm, on Adam.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 d: float = 1.0):
        if not lr > 0:
            raise ValueError(f"Invalid lr: {lr!r}; expected > 0")
        if not d > 0:
            raise ValueError(f"Invalid d: {d!r}; expected > 0")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "d": d})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"], state["m"], state["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                state["step"] += 1
                state["m"].lerp_(p.grad, 1 - beta1)
                state["v"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = state["m"] / (1 - beta1 ** state["step"])
                v_hat = state["v"] / (1 - beta2 ** state["step"])
                update = m_hat / (v_hat.sqrt() + group["eps"])
                rms = update.pow(2).mean().sqrt()
                p.sub_(update / torch.clamp(rms / group["d"], min=1.0), alpha=group["lr"])


def make_optimizer(model: nn.Module, arm: Arm, lr: float) -> torch.optim.Optimizer:
    router = [p for n, p in model.named_parameters() if n.endswith("router.weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("router.weight")]
    groups = [{"params": rest, "lr": lr}, {"params": router, "lr": lr * arm.router_lr_mult}]
    if arm.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if arm.optimizer == "adam-clip":
        return ClippedAdam(groups, lr=lr, d=arm.update_clip)
    if arm.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=lr, d=math.inf if arm.update_clip is None else arm.update_clip)
    raise ValueError(f"Invalid optimizer: {arm.optimizer!r}; allowed: adam, adam-clip, adafactor")


# --- one run --------------------------------------------------------------------------------------------------------

@dataclass
class Run:
    arm: str
    seed: int
    curve: list[dict]  # every log_every steps: step, loss, mean_logsumexp, max_abs_logit, entropy, dropped
    val_loss: float  # nats per byte at the eval capacity factor; inf when diverged
    diverged_at: int | None
    seconds: float
    model: nn.Module | None = None

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def final(self, key: str) -> float:
        return self.curve[-1][key] if self.curve else float("nan")

    def peak(self, key: str) -> float:
        return max((c[key] for c in self.curve), default=float("nan"))


def _moe_summary(model: TransformerLM) -> dict:
    """Router statistics of the last forward, averaged over MoE layers (max |logit|: the max over layers)."""
    stats = [layer.float_stats() for layer in model.moe_layers()]
    if not stats:
        return {"mean_logsumexp": 0.0, "max_abs_logit": 0.0, "entropy": 0.0, "dropped": 0.0}
    return {"mean_logsumexp": float(np.mean([s["mean_logsumexp"] for s in stats])),
            "max_abs_logit": float(max(s["max_abs_logit"] for s in stats)),
            "entropy": float(np.mean([s["router_entropy"] for s in stats])),
            "dropped": float(np.mean([s["dropped_fraction"] for s in stats]))}


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to a tenth of the peak at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(cfg: Config, arm: Arm, seed: int, data: TextCorpus, device: torch.device, *,
          keep_model: bool = False) -> Run:
    """Train one arm for one seed; return its curve, validation loss and whether (and when) it diverged."""
    model = make_model(cfg, arm, seed, device)
    lr = cfg.stress_lr if arm.provoked else cfg.lr
    warmup = 0 if arm.provoked else cfg.warmup
    optimizer = make_optimizer(model, arm, lr)
    scaler = torch.amp.GradScaler(device.type, enabled=arm.precision == "fp16")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[arm.precision]
    batches = torch.Generator().manual_seed(seed)  # the same windows for every arm of a seed
    steps = max(1, round(cfg.steps * arm.steps_mult))
    curve, diverged_at, start = [], None, time.perf_counter()
    model.train()
    for step in range(steps):
        for group, mult in zip(optimizer.param_groups, (1.0, arm.router_lr_mult)):
            group["lr"] = _lr_at(step, steps, lr, warmup) * mult
        x, y = random_windows(data.train, cfg.batch_size, cfg.seq_len, batches, device=device)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = model(x)
        ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss = ce + model.aux_loss()
        value = ce.item()
        if not math.isfinite(value) or value > cfg.diverge_loss:
            diverged_at = step
            curve.append({"step": step, "loss": value, **_moe_summary(model)})
            break
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if step % cfg.log_every == 0 or step == steps - 1:
            curve.append({"step": step, "loss": value, **_moe_summary(model)})
    seconds = time.perf_counter() - start
    val = math.inf if diverged_at is not None else evaluate(cfg, model, data, device)
    return Run(arm.name, seed, curve, val, diverged_at, seconds, model if keep_model else None)


def validation_windows(cfg: Config, data: TextCorpus, device: torch.device) -> ValidationWindows:
    return ValidationWindows(data.val, cfg.batch_size, cfg.seq_len, max_windows=cfg.eval_windows, device=device)


@torch.no_grad()
def evaluate(cfg: Config, model: TransformerLM, data: TextCorpus, device: torch.device,
             eval_capacity_factor: float | None = -1.0) -> float:
    """Validation cross-entropy (nats per byte) in eval mode, forwards of batch_size windows (the training group
    size). ``eval_capacity_factor``: -1 keeps the model's own; a number or None (dropless) overrides it."""
    with _eval_capacity(model, eval_capacity_factor):
        total, count = 0.0, 0
        for x, y in validation_windows(cfg, data, device):
            total += F.cross_entropy(model(x).float().flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
    return total / count


@contextmanager
def _eval_capacity(model: TransformerLM, factor: float | None):
    """Eval mode, with every MoE layer's eval capacity factor temporarily replaced (-1: unchanged)."""
    was_training, layers = model.training, model.moe_layers()
    saved = [layer.eval_capacity_factor for layer in layers]
    model.eval()
    if factor != -1.0:
        for layer in layers:
            layer.eval_capacity_factor = factor
    try:
        yield
    finally:
        for layer, old in zip(layers, saved):
            layer.eval_capacity_factor = old
        model.train(was_training)


@torch.no_grad()
def routing_at(cfg: Config, model: TransformerLM, data: TextCorpus, device: torch.device,
               factor: float | None) -> dict:
    """Mean over validation forwards and MoE layers of the dropped share of assignments, the share of tokens that
    lost every assignment, and the router entropy, with the eval capacity factor set to ``factor``."""
    rows = []
    with _eval_capacity(model, factor):
        for x, _ in validation_windows(cfg, data, device):
            model(x)
            rows += [layer.float_stats() for layer in model.moe_layers()]
    return {"dropped": float(np.mean([r["dropped_fraction"] for r in rows])),
            "tokens_dropped": float(np.mean([r["tokens_dropped_fraction"] for r in rows])),
            "entropy": float(np.mean([r["router_entropy"] for r in rows])),
            "max_load": float(np.mean([max(r["expert_load"]) for r in rows]))}


def run_key(cfg: Config, arm: Arm, seed: int) -> str:
    """What determines a run's outcome: the model, the recipe and the arm's settings (not its name), and the seed."""
    recipe = replace(cfg, seeds=(), stressor_seeds=(), stressors=(), capacity_arms=(), capacity_seeds=(),
                     drop_factors=(), expert_counts=(), expert_seeds=())
    return repr((sorted(_lm_kwargs(cfg, arm).items()), replace(arm, name="", lm={}), recipe, seed))


def run_arms(cfg: Config, data: TextCorpus, device: torch.device, arms: Iterable[Arm], seeds: Iterable[int], *,
             desc: str, show_progress: bool = True, cache: dict | None = None) -> dict[str, list[Run]]:
    """Every arm for every seed (seeds outermost, so a cut-short sweep still covers every arm). Runs keep their
    model. With ``cache`` (a dict shared between calls), a run already made with the same settings is reused."""
    from accel.experiments.progress import progress_bar

    arms, seeds = list(arms), list(seeds)
    cache = {} if cache is None else cache
    runs: dict[str, list[Run]] = {arm.name: [] for arm in arms}
    with progress_bar(total=len(arms) * len(seeds), desc=desc, disable=not show_progress) as bar:
        for seed in seeds:
            for arm in arms:
                key = run_key(cfg, arm, seed)
                if key not in cache:
                    cache[key] = train(cfg, arm, seed, data, device, keep_model=True)
                runs[arm.name].append(replace(cache[key], arm=arm.name))
                bar.update()
    return runs


# --- the analytic pieces --------------------------------------------------------------------------------------------

def uniform_drop_floor(tokens: int, num_experts: int, capacity_factor: float, top_k: int = 1) -> float:
    """Expected share of assignments dropped when every token picks its k experts uniformly at random.

    Expert i's load is Binomial(T, k/E) (a token picks k distinct experts, so i is among them with probability
    k/E), and its overflow E[max(0, X - C)] is summed exactly over the binomial pmf. A router that balances
    perfectly *on average* still pays this floor, because the loads of one batch fluctuate.
    """
    c = expert_capacity(tokens, top_k, num_experts, capacity_factor)
    if top_k == num_experts:  # every token goes to every expert: the load is exactly T
        return max(0, tokens - c) / tokens
    p = top_k / num_experts
    x = torch.arange(c + 1, tokens + 1, dtype=torch.float64)
    n = torch.tensor(float(tokens), dtype=torch.float64)
    log_pmf = (torch.lgamma(n + 1) - torch.lgamma(x + 1) - torch.lgamma(n - x + 1)
               + x * math.log(p) + (n - x) * math.log1p(-p))
    overflow = float(((x - c) * log_pmf.exp()).sum())
    return num_experts * overflow / (top_k * tokens)


def simulated_uniform_drops(tokens: int, num_experts: int, capacity_factor: float, top_k: int = 1,
                            trials: int = 2000, seed: int = 0) -> float:
    """Monte-Carlo check of :func:`uniform_drop_floor`: route random tokens uniformly, count the overflow."""
    generator = torch.Generator().manual_seed(seed)
    choices = torch.rand(trials, tokens, num_experts, generator=generator).topk(top_k, dim=-1).indices
    loads = F.one_hot(choices, num_experts).sum(dim=(1, 2))  # [trials, E]
    c = expert_capacity(tokens, top_k, num_experts, capacity_factor)
    return float((loads - c).clamp(min=0).sum() / (trials * tokens * top_k))


def bf16_roundoff_example() -> dict:
    """The paper's selective-precision example: ten router logits of 128 and one of 128.5, softmax in float32 and
    after rounding the logits to bfloat16 (8 significant bits: spacing 1.0 in [128, 256), so 128.5 becomes 128)."""
    logits = torch.tensor([128.0] * 10 + [128.5])
    rounded = logits.to(torch.bfloat16)
    return {"logit 128.5 stored in bfloat16": rounded[-1].item(),
            "top probability, float32": torch.softmax(logits, 0)[-1].item(),
            "top probability, bfloat16 logits": torch.softmax(rounded.float(), 0)[-1].item()}


# --- the tables -----------------------------------------------------------------------------------------------------

def capacity_arm(top_k: int, train_cf: float) -> Arm:
    return Arm(f"top-{top_k}, train CF {train_cf:g}", {"top_k": top_k, "capacity_factor": train_cf})


def capacity_table(cfg: Config, data: TextCorpus, device: torch.device, show_progress: bool = True,
                   cache: dict | None = None) -> list[dict]:
    """Table 8 analogue: for each (top-k, train CF), validation loss at eval CF = train CF and at the larger eval CF,
    with the dropped share of assignments at each."""
    arms = [capacity_arm(k, train_cf) for k, train_cf, _ in cfg.capacity_arms]
    runs = run_arms(cfg, data, device, arms, cfg.capacity_seeds, desc="capacity x top-k", cache=cache,
                    show_progress=show_progress)
    rows = []
    for (k, train_cf, eval_cf), arm in zip(cfg.capacity_arms, arms):
        for factor in (train_cf, eval_cf):
            losses = [evaluate(cfg, r.model, data, device, factor) for r in runs[arm.name]]
            drops = [routing_at(cfg, r.model, data, device, factor)["dropped"] for r in runs[arm.name]]
            rows.append({"top-k": k, "train CF": train_cf, "eval CF": factor, "val loss": float(np.mean(losses)),
                         "val loss std": float(np.std(losses, ddof=1)) if len(losses) > 1 else 0.0,
                         "dropped": float(np.mean(drops)),
                         "paper": PAPER_TABLE8.get(k, {}).get((train_cf, factor))})
    return rows


def balance_study(cfg: Config, data: TextCorpus, device: torch.device, show_progress: bool = True,
                  cache: dict | None = None) -> dict:
    """Table 5 analogue: the recipe with and without the balance loss (seeds as in cfg.seeds); the dropped share at
    each of cfg.drop_factors (eval), router entropy, and the uniform-routing floor for the same group size."""
    arms = [Arm("with balance loss (1e-2)"), Arm("without balance loss", {"balance_loss_coef": 0.0})]
    runs = run_arms(cfg, data, device, arms, cfg.seeds, desc="balance loss", cache=cache, show_progress=show_progress)
    tokens = cfg.batch_size * cfg.seq_len
    rows = []
    for factor in cfg.drop_factors:
        row = {"CF": factor, "uniform floor": uniform_drop_floor(tokens, cfg.num_experts, factor, cfg.top_k)}
        for arm in arms:
            measured = [routing_at(cfg, r.model, data, device, factor) for r in runs[arm.name]]
            row[arm.name] = float(np.mean([m["dropped"] for m in measured]))
            row[arm.name + " std"] = float(np.std([m["dropped"] for m in measured], ddof=1)) if len(measured) > 1 \
                else 0.0
            row[arm.name + " entropy"] = float(np.mean([m["entropy"] for m in measured]))
        rows.append(row)
    return {"rows": rows, "runs": runs, "arms": [a.name for a in arms], "tokens": tokens}


def expert_count_table(cfg: Config, data: TextCorpus, device: torch.device, show_progress: bool = True,
                       cache: dict | None = None) -> list[dict]:
    """Quality against the number of experts at fixed active compute (top-k and d_ff per expert fixed). "1 expert"
    is the dense model with d_ff = top_k · d_ff: the same FLOPs per token as every sparse arm."""
    arms = []
    for e in cfg.expert_counts:
        if e == 1:
            arms.append(Arm("dense (same active FLOPs)", {"moe_every": 0, "d_ff": cfg.top_k * cfg.d_ff}))
        elif e >= cfg.top_k:
            arms.append(Arm(f"{e} experts", {"num_experts": e}))
    runs = run_arms(cfg, data, device, arms, cfg.expert_seeds, desc="expert count", cache=cache,
                    show_progress=show_progress)
    rows = []
    for e, arm in zip([e for e in cfg.expert_counts if e == 1 or e >= cfg.top_k], arms):
        models = [r.model for r in runs[arm.name]]
        losses = [r.val_loss for r in runs[arm.name]]
        rows.append({"experts": e, "arm": arm.name, "val loss": float(np.mean(losses)),
                     "val loss std": float(np.std(losses, ddof=1)) if len(losses) > 1 else 0.0,
                     "parameters": models[0].num_parameters(),
                     "active parameters": models[0].num_parameters(active_only=True),
                     "seconds": float(np.mean([r.seconds for r in runs[arm.name]]))})
    return rows


BYTE_CLASSES: dict[str, Callable[[int], bool]] = {
    "letters": lambda b: chr(b).isalpha(), "digits": lambda b: chr(b).isdigit(), "space": lambda b: b == 32,
    "newline/indent": lambda b: b in (9, 10, 13), "brackets": lambda b: chr(b) in "()[]{}",
    "quotes": lambda b: chr(b) in "\"'", "operators": lambda b: chr(b) in "=+-*/%<>!&|^~:.,;@#_\\`$?",
}


@torch.no_grad()
def expert_by_byte_class(cfg: Config, model: TransformerLM, data: TextCorpus, device: torch.device,
                         layer: int = -1) -> tuple[list[str], torch.Tensor]:
    """Which experts the tokens of each byte class go to (first choice), in one MoE layer: (class names,
    [classes, E] share of each class's tokens per expert). The router sees the residual stream at that depth, so
    the class of the *current* byte is only part of what it routes on."""
    moe = model.moe_layers()[layer]
    captured = []
    handle = moe.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    classes = list(BYTE_CLASSES)
    counts = torch.zeros(len(classes), moe.num_experts)
    try:
        with _eval_capacity(model, -1.0):
            for x, _ in validation_windows(cfg, data, device):
                captured.clear()
                model(x)
                indices, _ = moe.route(captured[0].reshape(-1, moe.d_model))
                first = indices[:, 0].cpu()
                tokens = x.reshape(-1).cpu()
                for c, name in enumerate(classes):
                    mask = torch.tensor([BYTE_CLASSES[name](int(b)) for b in range(256)])[tokens]
                    counts[c] += torch.bincount(first[mask], minlength=moe.num_experts).float()
    finally:
        handle.remove()
    return classes, counts / counts.sum(dim=1, keepdim=True).clamp(min=1)


def summarize(values: list[float]) -> tuple[float, float]:
    """(mean, sample std; 0 for one value) of finite values; (nan, nan) if none."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0


def live_run(cfg: Config, data: TextCorpus, device: torch.device, num_experts: int, top_k: int,
             capacity_factor: float, z_loss_coef: float, seed: int = 0) -> dict:
    """The explorer's "run" button: train the recipe at this setting and report quality, drops and balance."""
    arm = Arm("live", {"num_experts": num_experts, "top_k": min(top_k, num_experts), "capacity_factor": capacity_factor,
                       "z_loss_coef": z_loss_coef})
    run = train(replace(cfg, num_experts=num_experts), arm, seed, data, device, keep_model=True)
    routing = routing_at(cfg, run.model, data, device, capacity_factor)
    return {"val loss (nats/byte)": run.val_loss, "dropped at this CF": routing["dropped"],
            "router entropy (nats)": routing["entropy"], "max expert load": routing["max_load"],
            "seconds": run.seconds}
