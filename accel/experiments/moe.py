"""Chapter 04, ST-MoE: configs per profile and one function per table or figure.

Every run trains :class:`accel.models.lm.TransformerLM` (byte-level, RMSNorm with scale, GEGLU, an
:class:`accel.moe.MoE` FFN in every second layer) on random windows of a byte corpus (the Python standard library's
source in the smoke and cpu profiles, enwik8 in the gpu and paper profiles) and reports the validation
cross-entropy in nats per byte (lower is better; the paper reports negative log perplexity, higher is better, per
SentencePiece token, so only orderings compare). An :class:`Arm` says what differs from the profile's recipe.

Two regimes:

* the *healthy* recipe (Adam, lr 3e-3, warm-up, cosine decay) for capacity, balance and expert-count tables;
* the *provoked* regime for the stability study: a learning rate 15x higher, no warm-up, and the router computed in
  bfloat16 (``router_dtype=torch.bfloat16``). The paper saw instability only at XL size; a tiny model needs a push,
  and the chapter says so.

The dense baseline at equal active FLOPs (:func:`dense_arm`) keeps the MoE model's every layer and replaces only each
MoE layer by one dense FFN ``top_k`` experts wide (:class:`WideFFN`), so the two differ only where the experts are.

A run *diverges* when its training loss becomes non-finite or exceeds ``Config.diverge_loss`` (twice the loss of a
uniform guess over 256 bytes); it stops there and is counted, not hidden.

The functions that train (:func:`run_arms`, :func:`capacity_table`, :func:`balance_study`,
:func:`expert_count_table`, :func:`routing_by_class`) are ``@replay.replayable``: a chapter run records what they
return, and a later one started with ``RESULTS_FROM`` gets it back without training. So they return runs without
their models (a run keeps its parameter counts); the models stay in the run cache the chapter passes around.
:func:`cost_model` is the set-up cell's estimate of the run time on the reader's device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from accel.datasets.text import TextCorpus, ValidationWindows, load_corpus, random_windows
from accel.experiments import pick_config, replay
from accel.experiments.words import number_text, plural
from accel.models.lm import FeedForward, LMConfig, TransformerLM
from accel.moe import expert_capacity

if TYPE_CHECKING:  # accel.book's type; imported at run time only inside cost_model (the chapters do not import book)
    from accel.experiments.run_time import Estimate

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
    "router_lr": ("router lr ×10", dict(router_lr_mult=10.0)),
    "no_norm": ("no norm before the router", dict(lm={"router_norm": False})),
    "longer": ("2× longer", dict(steps_mult=2.0)),
}



# --- configs -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    corpus: str = "python-stdlib"  # python-stdlib | enwik8
    corpus_bytes: int | None = 4 * 2**20  # python-stdlib only
    corpus_url: str | None = None  # enwik8 only: another source in its format (a mirror, a test fixture); None: the
    corpus_sha256: str | None = None  # public file (accel.datasets.text.ENWIK8_URL) and its pinned SHA-256
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
    val_every: int = 25  # validation-loss curve of the ledger's runs (the MoE recipe and the dense baseline)


CONFIGS = {
    "smoke": Config(d_model=32, n_layers=2, d_ff=64, seq_len=32, batch_size=8, steps=20, warmup=5, log_every=5,
                    eval_windows=32, seeds=(0,), stressor_seeds=(0,), capacity_arms=((1, 1.0, 2.0), (2, 1.25, 2.0)),
                    drop_factors=(1.0, 2.0), expert_counts=(1, 4), corpus_bytes=2**20,
                    stressors=("fp16", "no_norm"), val_every=5),
    "cpu": Config(),
    # A T4-class GPU (about 8 fp32 TFLOP/s; assume 35% of it, 2.8 TFLOP/s, for a model this small) in about 15
    # minutes, on enwik8. An estimate from arithmetic, not a measurement (no GPU was at hand when it was sized):
    #   the model: d_model 256, 4 layers (layers 2 and 4 MoE), 8 GEGLU experts of d_ff 512, top-2: 8.26M parameters,
    #     3,477,504 of them the weights one token multiplies (active_weights: no position table, norms or experts
    #     it does not visit);
    #   FLOPs per token = 6 x 3.48M (Kaplan et al.'s 6N) + 6 x layers x seq_len x d_model (attention) = 22.4M;
    #   one step = 16 windows x 256 bytes = 4,096 tokens (the paper's group size for its uniform-floor numbers)
    #     x 22.4M = 9.2e10 FLOPs, 32 ms at 2.8 TFLOP/s;
    #   runs: 12 stability + 18 stressor + 9 router-precision + 6 capacity + 3 balance + 3 expert-count + 2 ledger
    #     = 53 distinct runs (the others are shared through the run cache) x 400 steps = 21,200 steps ~ 690 s;
    #   evaluation: 183 passes over 256 validation windows (16 forwards, a third of a step each) ~ 30 s;
    #   so about 12 minutes, and the 36 MB enwik8 download once (arithmetic_seconds recomputes the 12 minutes; a test
    #   keeps them between 10 and 15).
    # The set-up cell's probe replaces the 35% guess with this device's measured step time and trims seeds, then
    # steps, to BUDGET_MINUTES (15 by default on a GPU). The stressors are the GPU's own: fp16 autocast with loss
    # scaling (a T4's native half precision), and the router-lr and no-norm pushes; "2x longer" (twice the steps) and
    # Adafactor (whose relative step says nothing about stability here) are left to the paper profile. Learning rate
    # 2e-3 for a model 4x wider than cpu's (3e-3); the provoked regime 15x that, as in the cpu profile.
    "gpu": Config(corpus="enwik8", corpus_bytes=None, d_model=256, n_layers=4, n_heads=4, d_ff=512, seq_len=256,
                  num_experts=8, top_k=2, batch_size=16, steps=400, lr=2e-3, warmup=40, log_every=20,
                  eval_windows=256, stress_lr=3e-2, stressors=("fp16", "router_lr", "no_norm"),
                  capacity_arms=((1, 1.0, 2.0), (1, 1.25, 2.0), (2, 1.0, 2.0), (2, 1.25, 2.0), (2, 2.0, 3.0),
                                 (3, 2.0, 3.0)),
                  expert_counts=(1, 4, 8, 16), val_every=40),
    "paper": Config(corpus="enwik8", corpus_bytes=None, d_model=512, n_layers=8, n_heads=8, d_ff=1024, seq_len=256,
                    num_experts=32, batch_size=32, steps=20_000, lr=1e-3, warmup=1000, log_every=100,
                    eval_windows=2048, stress_lr=1e-2, expert_counts=(1, 4, 8, 16, 32, 64), val_every=1000,
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
    fp16 with dynamic loss scaling). steps_mult: run length relative to ``Config.steps``. dense_at_moe: replace each
    MoE layer by a dense FFN top_k experts wide (:class:`WideFFN`), the equal-active-FLOPs baseline. val_every: also
    evaluate the validation loss every so many steps (``Run.val_curve``; 0: only at the end).
    """

    name: str
    lm: dict = field(default_factory=dict)
    optimizer: str = "adam"
    update_clip: float | None = None
    provoked: bool = False
    router_lr_mult: float = 1.0
    precision: str = "fp32"
    steps_mult: float = 1.0
    dense_at_moe: bool = False
    val_every: int = 0


def recipe_arm(cfg: Config, name: str = "MoE (the recipe)") -> Arm:
    """The chapter's MoE recipe (top-2, CF 1.25/2.0, z-loss 1e-3, balance loss 1e-2, float32 router), with a
    validation curve: the ledger's headline arm and the reference run of several sections (shared through the cache)."""
    return Arm(name, val_every=cfg.val_every)


def dense_arm(cfg: Config, name: str = "dense, same active FLOPs") -> Arm:
    """The equal-active-FLOPs dense baseline: the recipe's model with every MoE layer replaced by one FFN of width
    top_k · d_ff (the non-MoE layers untouched)."""
    return Arm(name, dense_at_moe=True, val_every=cfg.val_every)


def router_precision_arms(cfg: Config) -> list[Arm]:
    """§4's recommendation, tested by training: the router in float32 (the recipe) against the router in bfloat16,
    on the healthy recipe and in the provoked regime (no z-loss in either, so only the router's precision differs)."""
    bf16, fp32 = {"router_dtype": torch.bfloat16}, {"router_dtype": torch.float32}
    return [recipe_arm(cfg, "healthy | float32 router"),
            Arm("healthy | bfloat16 router", {"moe_kwargs": bf16}, val_every=cfg.val_every),
            Arm("provoked | float32 router", {"z_loss_coef": 0.0, "moe_kwargs": fp32}, provoked=True),
            Arm("provoked | bfloat16 router", {"z_loss_coef": 0.0}, provoked=True)]


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
    """The profile's corpus: the standard library's source (cfg.corpus_bytes of it) or enwik8 (downloaded once,
    36 MB, from cfg.corpus_url if set)."""
    if cfg.corpus == "python-stdlib":
        return load_corpus(cfg.corpus, max_bytes=cfg.corpus_bytes)
    return load_corpus(cfg.corpus, url=cfg.corpus_url, sha256=cfg.corpus_sha256)


def _lm_kwargs(cfg: Config, arm: Arm) -> dict:
    """The TransformerLM fields of this arm: the profile's model, the provoked regime's router, the arm's changes."""
    lm = dict(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_ff=cfg.d_ff, seq_len=cfg.seq_len,
              num_experts=cfg.num_experts, top_k=cfg.top_k, capacity_factor=cfg.capacity_factor,
              eval_capacity_factor=cfg.eval_capacity_factor)
    if arm.provoked:
        lm.update(router_init_std=cfg.stress_router_init_std, moe_kwargs={"router_dtype": torch.bfloat16})
    lm.update(arm.lm)
    return lm


class WideFFN(FeedForward):
    """A dense FFN standing where an MoE layer stood: width top_k · d_ff, the FLOPs per token of the top_k experts
    it replaces (its type follows the experts': GEGLU experts give a GEGLU FFN). Built by :func:`wide_ffn_factory`.

    It declares one expert (``num_local_experts``), so ``TransformerLM.num_parameters(active_only=True)`` counts all of
    it as active, has no auxiliary loss, and reports empty router statistics."""

    num_local_experts = 1
    aux_loss = None

    def float_stats(self) -> dict:
        return {}


def wide_ffn_factory(d_model: int, d_ff: int, num_experts: int, *, top_k: int, expert_type: str, **_) -> WideFFN:
    """A ``moe_factory`` for :class:`TransformerLM`: each MoE position gets a :class:`WideFFN` of width top_k · d_ff."""
    return WideFFN(d_model, top_k * d_ff, {"ffn": "gelu", "geglu": "geglu"}[expert_type])


def make_model(cfg: Config, arm: Arm, seed: int, device: torch.device) -> TransformerLM:
    lm = _lm_kwargs(cfg, arm)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's global RNG
        torch.manual_seed(seed)
        if not arm.dense_at_moe:
            model = TransformerLM(**lm)
        else:
            model = TransformerLM(moe_factory=wide_ffn_factory, **lm)
            c = model.config  # TransformerLM leaves MoE positions' init to the layer: give them the dense layers' init
            residual_std = c.init_std / math.sqrt(2 * c.n_layers) if c.scaled_residual_init else c.init_std
            for ffn in model.moe_layers():
                nn.init.normal_(ffn.w_in.weight, std=c.init_std)
                nn.init.normal_(ffn.w_out.weight, std=residual_std)
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
    curve: list[dict]  # every log_every steps: step, loss, mean_logsumexp, max_abs_logit, top_logit, min_logit,
    #                    entropy, dropped (router values: means over MoE layers, max |logit| and min logit extremes)
    val_loss: float  # nats per byte at the eval capacity factor; inf when diverged
    diverged_at: int | None
    seconds: float
    model: nn.Module | None = None
    # with Arm.val_every: (tokens, steps, training seconds, validation loss) every val_every steps and at the end
    val_curve: list[tuple[int, int, float, float]] = field(default_factory=list)
    parameters: int = 0  # the model's, and those one token uses (TransformerLM.num_parameters): kept here so that a
    active_parameters: int = 0  # run handed back without its model (a recorded run) still says what it cost

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def final(self, key: str) -> float:
        return self.curve[-1][key] if self.curve else float("nan")

    def peak(self, key: str) -> float:
        return max((c[key] for c in self.curve), default=float("nan"))


def _moe_summary(model: TransformerLM, inputs: dict | None = None) -> dict:
    """Router statistics of the last forward, averaged over MoE layers (max |logit|: the max over layers).

    With ``inputs`` (MoE layer -> its last input, kept by a forward pre-hook) also the logits' two ends: top_logit,
    the mean over tokens of each token's largest logit (what the z-loss pins: logsumexp ≈ 0 puts it in [-ln E, 0]),
    and min_logit, the smallest logit of any token (free to go very negative)."""
    stats = [s for s in (layer.float_stats() for layer in model.moe_layers()) if s]
    if not stats:
        return {"mean_logsumexp": 0.0, "max_abs_logit": 0.0, "top_logit": 0.0, "min_logit": 0.0, "entropy": 0.0,
                "dropped": 0.0}
    out = {"mean_logsumexp": float(np.mean([s["mean_logsumexp"] for s in stats])),
           "max_abs_logit": float(max(s["max_abs_logit"] for s in stats)),
           "entropy": float(np.mean([s["router_entropy"] for s in stats])),
           "dropped": float(np.mean([s["dropped_fraction"] for s in stats]))}
    if inputs:
        with torch.no_grad():
            logits = [layer.router_logits(x.reshape(-1, x.shape[-1])).float() for layer, x in inputs.items()]
        out["top_logit"] = float(np.mean([h.amax(dim=-1).mean().item() for h in logits]))
        out["min_logit"] = float(min(h.amin().item() for h in logits))
    return out


_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # Arm.precision -> autocast dtype


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
    dtype = _AUTOCAST[arm.precision]
    batches = torch.Generator().manual_seed(seed)  # the same windows for every arm of a seed
    steps = max(1, round(cfg.steps * arm.steps_mult))
    curve, val_curve, diverged_at, start, eval_seconds = [], [], None, time.perf_counter(), 0.0
    inputs: dict = {}  # each MoE layer's last input, for the router-logit statistics
    hooks = [layer.register_forward_pre_hook(lambda module, args: inputs.__setitem__(module, args[0].detach()))
             for layer in model.moe_layers() if hasattr(layer, "router_logits")]
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
            curve.append({"step": step, "loss": value, **_moe_summary(model, inputs)})
            break
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if step % cfg.log_every == 0 or step == steps - 1:
            curve.append({"step": step, "loss": value, **_moe_summary(model, inputs)})
        if arm.val_every and ((step + 1) % arm.val_every == 0 or step == steps - 1):
            tick = time.perf_counter()
            val_curve.append(((step + 1) * cfg.batch_size * cfg.seq_len, step + 1, tick - start - eval_seconds,
                              evaluate(cfg, model, data, device)))
            eval_seconds += time.perf_counter() - tick
    for hook in hooks:
        hook.remove()
    seconds = time.perf_counter() - start - eval_seconds
    if diverged_at is not None:
        val = math.inf
    else:
        val = val_curve[-1][3] if val_curve else evaluate(cfg, model, data, device)
    return Run(arm.name, seed, curve, val, diverged_at, seconds, model if keep_model else None, val_curve,
               model.num_parameters(), model.num_parameters(active_only=True))


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
    was_training = model.training
    layers = [layer for layer in model.moe_layers() if hasattr(layer, "eval_capacity_factor")]  # not WideFFN
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
    lost every assignment, the router entropy, the largest expert's share and each expert's share of the assignments
    (``expert_load``, before capacity; uniform = 1 / E), with the eval capacity factor set to ``factor``."""
    rows = []
    with _eval_capacity(model, factor):
        for x, _ in validation_windows(cfg, data, device):
            model(x)
            rows += [layer.float_stats() for layer in model.moe_layers()]
    return {"dropped": float(np.mean([r["dropped_fraction"] for r in rows])),
            "tokens_dropped": float(np.mean([r["tokens_dropped_fraction"] for r in rows])),
            "entropy": float(np.mean([r["router_entropy"] for r in rows])),
            "max_load": float(np.mean([max(r["expert_load"]) for r in rows])),
            "expert_load": np.mean([r["expert_load"] for r in rows], axis=0).tolist()}


def run_key(cfg: Config, arm: Arm, seed: int) -> str:
    """What determines a run's outcome: the model, the recipe and the arm's settings (not its name), and the seed."""
    recipe = replace(cfg, seeds=(), stressor_seeds=(), stressors=(), capacity_arms=(), capacity_seeds=(),
                     drop_factors=(), expert_counts=(), expert_seeds=())
    return repr((sorted(_lm_kwargs(cfg, arm).items()), replace(arm, name="", lm={}), recipe, seed))


@replay.replayable
def run_arms(cfg: Config, data: TextCorpus, device: torch.device, arms: Iterable[Arm], seeds: Iterable[int], *,
             desc: str, show_progress: bool = True, cache: dict | None = None,
             keep_models: bool = False) -> dict[str, list[Run]]:
    """Every arm for every seed (seeds outermost, so a cut-short sweep still covers every arm). With ``cache`` (a
    dict shared between calls, holding each run with its model), a run already made with the same settings is
    reused. The runs come back without their models (``Run.model`` None: what a recorded run can hand back) unless
    ``keep_models``."""
    from accel.experiments.progress import progress_bar

    arms, seeds = list(arms), list(seeds)
    cache = {} if cache is None else cache
    keys = [(arm, seed, run_key(cfg, arm, seed)) for seed in seeds for arm in arms]
    fresh = len({key for _, _, key in keys if key not in cache})
    runs: dict[str, list[Run]] = {arm.name: [] for arm in arms}
    with progress_bar(total=fresh, desc=desc, disable=not show_progress or not fresh) as bar:
        for arm, seed, key in keys:
            if key not in cache:
                cache[key] = train(cfg, arm, seed, data, device, keep_model=True)
                bar.update()
            runs[arm.name].append(replace(cache[key], arm=arm.name, model=cache[key].model if keep_models else None))
    reused = len(keys) - fresh
    if show_progress and reused:  # a cached run is not re-trained: say so rather than "N runs in 0 s"
        print(f"{desc}: {plural(reused, 'run')} {'more ' if fresh else ''}reused from runs made earlier in the "
              "chapter (same settings and seed), not trained again", flush=True)
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


def capacity_arms(cfg: Config) -> list[Arm]:
    """The Table 8 analogue's arms: one per (top-k, train CF) of ``cfg.capacity_arms``."""
    return [capacity_arm(k, train_cf) for k, train_cf, _ in cfg.capacity_arms]


@replay.replayable
def capacity_table(cfg: Config, data: TextCorpus, device: torch.device, show_progress: bool = True,
                   cache: dict | None = None) -> list[dict]:
    """Table 8 analogue: for each (top-k, train CF), validation loss at eval CF = train CF and at the larger eval CF,
    with the dropped share of assignments at each."""
    arms = capacity_arms(cfg)
    runs = run_arms(cfg, data, device, arms, cfg.capacity_seeds, desc="capacity × top-k", cache=cache,
                    show_progress=show_progress, keep_models=True)
    rows = []
    for (k, train_cf, eval_cf), arm in zip(cfg.capacity_arms, arms):
        for factor in (train_cf, eval_cf):
            losses = [evaluate(cfg, r.model, data, device, factor) for r in runs[arm.name]]
            drops = [routing_at(cfg, r.model, data, device, factor)["dropped"] for r in runs[arm.name]]
            rows.append({"top-k": k, "train CF": train_cf, "eval CF": factor, "val loss": float(np.mean(losses)),
                         "seeds": len(losses),
                         "val loss std": float(np.std(losses, ddof=1)) if len(losses) > 1 else 0.0,
                         "dropped": float(np.mean(drops)),
                         "paper": PAPER_TABLE8.get(k, {}).get((train_cf, factor))})
    return rows


def balance_arms(cfg: Config) -> list[Arm]:
    """The Table 5 analogue's arms: the recipe with the balance loss (1e-2) and without it."""
    return [recipe_arm(cfg, "with balance loss (1e-2)"), Arm("without balance loss", {"balance_loss_coef": 0.0})]


@replay.replayable
def balance_study(cfg: Config, data: TextCorpus, device: torch.device, show_progress: bool = True,
                  cache: dict | None = None) -> dict:
    """Table 5 analogue: the recipe with and without the balance loss (seeds as in cfg.seeds); the dropped share at
    each of cfg.drop_factors (eval), router entropy, and the uniform-routing floor for the same group size. The runs
    come back without their models."""
    arms = balance_arms(cfg)
    runs = run_arms(cfg, data, device, arms, cfg.seeds, desc="balance loss", cache=cache, show_progress=show_progress,
                    keep_models=True)
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
            row[arm.name + " loads"] = np.mean([sorted(m["expert_load"], reverse=True) for m in measured],
                                               axis=0).tolist()
        rows.append(row)
    runs = {name: [replace(r, model=None) for r in rs] for name, rs in runs.items()}
    return {"rows": rows, "runs": runs, "arms": [a.name for a in arms], "tokens": tokens}


def expert_count_arms(cfg: Config) -> list[Arm]:
    """The expert-count sweep's arms, one per count of ``cfg.expert_counts`` at or above top-k, and 1: "1 expert" is
    :func:`dense_arm`, the recipe's count is :func:`recipe_arm` itself (shared with the other sections)."""
    arms = []
    for e in cfg.expert_counts:
        if e == 1:
            arms.append(dense_arm(cfg))
        elif e == cfg.num_experts:
            arms.append(recipe_arm(cfg, f"{e} experts (the recipe)"))
        elif e >= cfg.top_k:
            arms.append(Arm(f"{e} experts", {"num_experts": e}))
    return arms


@replay.replayable
def expert_count_table(cfg: Config, data: TextCorpus, device: torch.device, show_progress: bool = True,
                       cache: dict | None = None) -> list[dict]:
    """Quality against the number of experts at fixed active compute (top-k and d_ff per expert fixed). "1 expert"
    is :func:`dense_arm`: each MoE layer replaced by one FFN top_k · d_ff wide, the same FLOPs per token as every
    sparse arm (see :func:`expert_count_arms`)."""
    arms = expert_count_arms(cfg)
    runs = run_arms(cfg, data, device, arms, cfg.expert_seeds, desc="expert count", cache=cache,
                    show_progress=show_progress)
    rows = []
    for e, arm in zip([e for e in cfg.expert_counts if e == 1 or e >= cfg.top_k], arms):
        first = runs[arm.name][0]
        losses = [r.val_loss for r in runs[arm.name]]
        rows.append({"experts": e, "arm": arm.name, "val loss": float(np.mean(losses)),
                     "val loss std": float(np.std(losses, ddof=1)) if len(losses) > 1 else 0.0,
                     "parameters": first.parameters,
                     "active parameters": first.active_parameters,
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


@replay.replayable
def routing_by_class(cfg: Config, data: TextCorpus, device: torch.device, cache: dict | None = None,
                     show_progress: bool = True) -> tuple[list[str], torch.Tensor]:
    """:func:`expert_by_byte_class` of the recipe's model for the first seed (from ``cache`` when the chapter has
    trained it already; trained here otherwise)."""
    runs = run_arms(cfg, data, device, [recipe_arm(cfg)], cfg.seeds[:1], desc="recipe", cache=cache,
                    show_progress=show_progress, keep_models=True)
    return expert_by_byte_class(cfg, next(iter(runs.values()))[0].model, data, device)


def summarize(values: list[float]) -> tuple[float, float]:
    """(mean, sample std; 0 for one value) of finite values; (nan, nan) if none."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0


def live_run(cfg: Config, data: TextCorpus | None, device: torch.device, num_experts: int, top_k: int,
             capacity_factor: float, z_loss_coef: float, seed: int = 0) -> dict:
    """The explorer's "run" button: train the recipe at this setting and report quality, drops and balance.
    ``data`` None (a chapter rendering a recorded run has loaded none): the profile's corpus is loaded here."""
    data = load_data(cfg) if data is None else data
    arm = Arm("live", {"num_experts": num_experts, "top_k": min(top_k, num_experts), "capacity_factor": capacity_factor,
                       "z_loss_coef": z_loss_coef})
    run = train(replace(cfg, num_experts=num_experts), arm, seed, data, device, keep_model=True)
    routing = routing_at(cfg, run.model, data, device, capacity_factor)
    return {"val loss (nats/byte)": run.val_loss, "dropped at this CF": routing["dropped"],
            "router entropy (nats)": routing["entropy"], "max expert load": routing["max_load"],
            "seconds": run.seconds}


# --- what the chapter costs: the plan of its runs, a probe, the estimate ---------------------------------------------

#: What ``Book.fit`` trims, in order, to fit a time budget: (config field, floor). The stressors' seeds first, then the
#: shared seed list down to two (a paired difference needs two), then the steps of every run.
TRIMS = (("stressor_seeds", 1), ("seeds", 2), ("steps", 100))

#: A T4's fp32 peak (8.1 TFLOP/s) at the 35% a model this small is assumed to reach: the gpu profile's sizing.
T4_FLOPS_PER_SECOND = 0.35 * 8.1e12

def planned_work(cfg: Config) -> dict[str, dict]:
    """What the chapter trains and evaluates, part by part in the notebook's order, with the run cache's sharing
    taken into account: part -> {"runs": [(arm, seed), ...] first trained there, "passes": validation passes (an
    ``evaluate`` or ``routing_at`` over cfg.eval_windows windows) made there, those during training included}."""
    sections = [  # (part, arms, seeds, validation passes per (arm, seed) after training)
        ("Table 4 (stability)", stability_arms(), cfg.seeds, 0),
        ("stressors", stressor_arms(cfg), cfg.stressor_seeds, 0),
        ("router precision", router_precision_arms(cfg), cfg.seeds, 0),
        ("Table 8 (capacity)", capacity_arms(cfg), cfg.capacity_seeds, 4),  # evaluate and routing_at, at two CFs
        ("Table 8 (capacity)", [recipe_arm(cfg)], cfg.seeds, 0),  # the recipe's seed spread
        ("Table 5 (balance)", balance_arms(cfg), cfg.seeds, len(cfg.drop_factors)),
        ("experts", expert_count_arms(cfg), cfg.expert_seeds, 0),
        ("experts", [recipe_arm(cfg)], cfg.seeds[:1], 1),  # routing by byte class
        ("ledger", [dense_arm(cfg), recipe_arm(cfg)], cfg.seeds, 0),
    ]
    seen: set[str] = set()
    work: dict[str, dict] = {}
    for part, arms, seeds, passes in sections:
        entry = work.setdefault(part, {"runs": [], "passes": 0})
        for seed in seeds:
            for arm in arms:
                key = run_key(cfg, arm, seed)
                if key not in seen:
                    seen.add(key)
                    entry["runs"].append((arm, seed))
                    steps = _steps(cfg, arm)
                    entry["passes"] += -(-steps // arm.val_every) if arm.val_every else 1
                entry["passes"] += passes
    return work


def _steps(cfg: Config, arm: Arm) -> int:
    return max(1, round(cfg.steps * arm.steps_mult))


def active_weights(cfg: Config, arm: Arm | None = None) -> int:
    """The weights one token of an arm's model (default: the recipe) multiplies, counted from its configuration:
    attention 4 d², each dense FFN (3 d d_ff GEGLU, 2 d d_ff GELU), each MoE layer's router (d E) and top_k experts
    (a dense arm's WideFFN: the same top_k experts' worth), and the head (V d, tied to the embedding or not). The
    position table and the embedding are looked up, not multiplied, and the norms' scales are left out. Equals
    ``TransformerLM.num_parameters(active_only=True)`` less those (a test checks it)."""
    arm = recipe_arm(cfg) if arm is None else arm
    c = LMConfig(**_lm_kwargs(cfg, arm))
    matrices = {"gelu": 2, "ffn": 2, "geglu": 3, "swiglu": 3}
    ffn = matrices[c.ffn_type] * c.d_model * c.d_ff
    expert = matrices[c.expert_type or c.ffn_type] * c.d_model * c.d_ff
    sparse = len(c.moe_layer_indices)
    moe = c.top_k * expert + (0 if arm.dense_at_moe else c.d_model * c.num_experts)
    return (4 * c.n_layers * c.d_model**2 + (c.n_layers - sparse) * ffn + sparse * moe
            + c.vocab_size * c.d_model)


def flops_per_token(cfg: Config, arm: Arm | None = None) -> float:
    """Training FLOPs per token of an arm's model (default: the recipe), forward and backward: 6 × its
    :func:`active_weights` plus 6 × layers × seq_len × d_model for attention's scores and mixing (Kaplan et al.,
    2020; causal attention counted in full)."""
    return 6.0 * active_weights(cfg, arm) + 6.0 * cfg.n_layers * cfg.seq_len * cfg.d_model


def work_seconds(cfg: Config, step_seconds: Callable[[Arm], float], forward_seconds: float) -> dict[str, float]:
    """Seconds per part of the chapter (:func:`planned_work`): each run's steps at ``step_seconds(arm)``, and each
    validation pass at ``forward_seconds`` per forward of batch_size windows."""
    pass_seconds = -(-cfg.eval_windows // cfg.batch_size) * forward_seconds
    return {part: sum(_steps(cfg, arm) * step_seconds(arm) for arm, _ in w["runs"]) + w["passes"] * pass_seconds
            for part, w in planned_work(cfg).items()}


def arithmetic_seconds(cfg: Config, flops_per_second: float = T4_FLOPS_PER_SECOND) -> dict[str, float]:
    """:func:`work_seconds` from arithmetic alone: a step costs flops_per_token × tokens per step at
    ``flops_per_second``, a validation forward a third of that (forward only: 2 of the 6). How the gpu profile was
    sized (on a T4 at 35% of its fp32 peak, by default); the set-up cell measures instead (:func:`cost_model`)."""
    tokens = cfg.batch_size * cfg.seq_len
    return work_seconds(cfg, lambda arm: flops_per_token(cfg, arm) * tokens / flops_per_second,
                        flops_per_token(cfg) * tokens / 3 / flops_per_second)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_step(cfg: Config, arm: Arm, device: torch.device, steps: int = 3, warmup: int = 2) -> tuple[float, float]:
    """(seconds per training step, seconds per validation forward) of ``arm``'s model at cfg's sizes on ``device``:
    ``warmup`` steps, then the median of ``steps`` timed ones (and of three forwards after one), on random bytes drawn
    from an explicit generator (no global RNG). Each step reads its loss, as :func:`train` does (the same host
    sync)."""
    model = make_model(cfg, arm, 0, device)
    optimizer = make_optimizer(model, arm, cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=arm.precision == "fp16")
    dtype = _AUTOCAST[arm.precision]
    tokens = torch.randint(256, (cfg.batch_size, cfg.seq_len + 1), generator=torch.Generator().manual_seed(0))
    x, y = tokens[:, :-1].contiguous().to(device), tokens[:, 1:].contiguous().to(device)

    def loss_of(inputs, targets):
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = model(inputs)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    def step():
        loss = loss_of(x, y) + model.aux_loss()
        loss.item()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def timed(fn, warm, count):  # the median of count timed calls: a busy machine's outliers do not count
        for _ in range(warm):
            fn()
        seconds = []
        for _ in range(count):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            seconds.append(time.perf_counter() - start)
        return float(np.median(seconds))

    model.train()
    step_s = timed(step, warmup, steps)
    with torch.no_grad(), _eval_capacity(model, -1.0):
        forward_s = timed(lambda: loss_of(x, y).item(), 1, 3)
    return step_s, forward_s


def cost_model(cfg: Config, device: torch.device) -> Callable[[Config], Estimate]:
    """The chapter's run time on ``device`` (``Book.fit``'s probe): returns a function from a config of the same sizes
    (trimmed seeds or steps, say) to an ``accel.experiments.run_time.Estimate``, seconds per part of the chapter.

    The probe (:func:`probe_step`) times the recipe's training step and a validation forward at cfg's sizes (under a
    second at cpu size, a few hundredths at smoke), and, when the profile trains a half-precision arm, that arm's step
    too (slower on a CPU, where half precision is emulated; faster on a GPU). The estimate counts what the config
    trains (:func:`planned_work`: the distinct runs, with the run cache's sharing, and the validation passes) and
    prices each run's steps at the measured step time scaled by its arm's :func:`flops_per_token` (more for top-3,
    the same for more experts), and each validation pass at the measured forward."""
    from accel.experiments.run_time import Estimate  # imported here: see the TYPE_CHECKING import above

    recipe = recipe_arm(cfg)
    step_s, forward_s = probe_step(cfg, recipe, device)
    half = next((arm for w in planned_work(cfg).values() for arm, _ in w["runs"] if arm.precision != "fp32"), None)
    half_ratio = probe_step(cfg, half, device, steps=2)[0] / step_s if half is not None else 1.0
    base = flops_per_token(cfg, recipe)
    basis = (f"{device.type}, a training step of the recipe ({cfg.batch_size * cfg.seq_len:,} tokens) "
             f"{1000 * step_s:.1f} ms, a validation forward {1000 * forward_s:.1f} ms"
             + (f", a {half.precision} step {half_ratio:.2f}× the recipe's" if half is not None else ""))

    def estimate(c: Config) -> Estimate:
        def step_seconds(arm: Arm) -> float:
            return step_s * flops_per_token(c, arm) / base * (half_ratio if arm.precision != "fp32" else 1.0)

        return Estimate(work_seconds(c, step_seconds, forward_s), basis)

    return estimate


# --- analysis helpers the chapter calls (kept here so that tests can call them) ------------------------------------

def mean_std_text(mean: float, std: float, n: int, digits: int = 3) -> str:
    """``mean ± std`` over n seeds, or ``mean (n = 1)`` (the book's MeanStd format, for tables built here)."""
    if n == 1 or not math.isfinite(std):
        return f"{mean:.{digits}f} (n = 1)"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


T_CRITICAL_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired_difference(runs_a: list[Run], runs_b: list[Run], value: Callable[[Run], float] = lambda r: r.val_loss,
                      *, lower_is_better: bool = True) -> dict:
    """Seed-by-seed difference ``value(a) - value(b)`` of two arms trained on the same batches per seed: the per-seed
    differences, their mean and sample std, the 95% t-interval half-width, and a verdict for arm a: "better",
    "worse" or "not resolved" (the interval contains 0, or a single seed)."""
    by_seed = {r.seed: value(r) for r in runs_b}
    diffs = [value(r) - by_seed[r.seed] for r in runs_a if r.seed in by_seed]
    diffs = [d for d in diffs if math.isfinite(d)]
    n = len(diffs)
    mean = float(np.mean(diffs)) if diffs else float("nan")
    std = float(np.std(diffs, ddof=1)) if n > 1 else float("nan")
    half = T_CRITICAL_95.get(n - 1, 1.96) * std / math.sqrt(n) if n > 1 else float("nan")
    if n < 2 or abs(mean) <= half:
        verdict = "not resolved"
    else:
        verdict = "better" if (mean < 0) == lower_is_better else "worse"
    return {"diffs": diffs, "mean": mean, "std": std, "n": n, "half_width": half, "verdict": verdict}


def stability_summary(stability: dict[str, list[Run]]) -> dict[str, dict]:
    """Per arm of the stability study: stable count, val loss, final logsumexp (mean, std), final entropy, the peak
    max |logit|, and the final top and min logits (means over seeds) and their extremes over training."""
    summary = {}
    for name, runs in stability.items():
        summary[name] = {
            "stable": sum(not r.diverged for r in runs), "n": len(runs),
            "val": summarize([r.val_loss for r in runs]),
            "lse": summarize([r.final("mean_logsumexp") for r in runs]),
            "entropy": summarize([r.final("entropy") for r in runs])[0],
            "max_logit": max(r.peak("max_abs_logit") for r in runs),
            "top_logit": summarize([r.final("top_logit") for r in runs])[0],
            "min_logit": summarize([r.final("min_logit") for r in runs])[0],
            "lowest_logit": min(min(c["min_logit"] for c in r.curve) for r in runs),
        }
    return summary


STABILITY_PAPER_NAMES = {"baseline (no z-loss)": "baseline", "z-loss 1e-3": "router z-loss",
                         "update clipping 0.1": "update clipping 0.1"}


def table4_rows(stability: dict[str, list[Run]], baseline: str = "baseline (no z-loss)") -> list[tuple[str, dict]]:
    """Rows for ``paper_vs_ours``: stable runs, quality, and this run's paired difference to the baseline (per-seed
    differences of validation loss, mean ± std, verdict), the final mean logsumexp and the final top logit."""
    summary = stability_summary(stability)
    rows = []
    for name, runs in stability.items():
        s = summary[name]
        paper = PAPER_TABLE4.get(STABILITY_PAPER_NAMES.get(name, ""))
        if name == baseline:
            paired = "—"
        else:
            d = paired_difference(runs, stability[baseline])
            paired = (f"{', '.join(f'{x:+.3f}' for x in d['diffs'])} → {d['mean']:+.3f} ± {d['std']:.3f}: "
                      f"{d['verdict']}" if d["n"] > 1 else f"{d['mean']:+.3f} (n = 1)")
        rows.append((name, {"stable runs": (paper[0] if paper else None, f"{s['stable']}/{s['n']}"),
                            "quality": (paper[1] if paper else None, mean_std_text(*s["val"], s["n"])),
                            "Δ val loss vs baseline, per seed → mean ± std": (None, paired),
                            "final mean logsumexp": (None, mean_std_text(*s["lse"], s["n"], 2)),
                            "final top logit": (None, s["top_logit"])}))
    return rows


def curve_band(runs: list[Run], key: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(steps, mean, std) of ``curve[key]`` over seeds, on the steps every seed logged (a diverged run stops early)."""
    length = min(len(r.curve) for r in runs)
    steps = [c["step"] for c in runs[0].curve[:length]]
    values = np.array([[c[key] for c in r.curve[:length]] for r in runs], dtype=float)
    return steps, values.mean(axis=0), values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(length)


def stressor_rows(stressors: dict[str, list[Run]]) -> list[list]:
    """Rows of the stressor table: stressor, z-loss, diverged k/n, survivors' val loss (mean, std, n), final mean
    logsumexp, final top logit, lowest logit during training."""
    rows = []
    for name, runs in stressors.items():
        stressor, z = name.split(" | ")
        diverged = sum(r.diverged for r in runs)
        val = summarize([r.val_loss for r in runs])
        rows.append([stressor, z, f"{diverged}/{len(runs)}",
                     None if math.isnan(val[0]) else mean_std_text(*val, len(runs) - diverged),
                     summarize([r.final("mean_logsumexp") for r in runs])[0],
                     summarize([r.final("top_logit") for r in runs])[0],
                     min(min(c["min_logit"] for c in r.curve) for r in runs)])
    return rows


def capacity_rows(cap_rows: list[dict]) -> list[tuple[str, dict]]:
    """Rows for ``paper_vs_ours`` from :func:`capacity_table`'s rows."""
    return [(f"top-{r['top-k']}, CF {r['train CF']:g} / {r['eval CF']:g}",
             {"quality": (r["paper"], mean_std_text(r["val loss"], r["val loss std"], r["seeds"])),
              "dropped %": (None, 100 * r["dropped"])})
            for r in cap_rows]


def ledger_target(dense_runs: list[Run]) -> float:
    """The ledger's target validation loss: the dense baseline's worst seed at the end, rounded up to 0.01 (so every
    dense seed reaches it)."""
    return math.ceil(100 * max(r.val_loss for r in dense_runs)) / 100


def cost_summary(runs: dict[str, list[Run]]) -> dict[str, dict]:
    """Per arm: training milliseconds per step (mean, std over seeds), parameters, active parameters, and the
    training memory of the parameters with Adam (float32 weights, gradients and two moments: 16 bytes each)."""
    out = {}
    for name, rs in runs.items():
        steps = [r.val_curve[-1][1] if r.val_curve else len(r.curve) for r in rs]
        ms = summarize([1000 * r.seconds / s for r, s in zip(rs, steps)])
        params = rs[0].parameters
        out[name] = {"ms_per_step": ms, "parameters": params, "active": rs[0].active_parameters,
                     "train_state_mb": 16 * params / 2**20}
    return out


def bench_rows(path=None, tokens: Iterable[int] = (1024, 4096, 16384), experts: int = 8) -> dict:
    """The recorded layer benchmark (``data/results/bench_moe.cpu.json``, from ``tests/benchmarks/bench_moe.py``):
    for each group size and top-k at ``experts`` experts, the median ms of one forward+backward of the dense FFN with
    the same active FLOPs and of accel's MoE at CF 1.25, and their ratio. Returns {"meta": ..., "rows": [...]}."""
    import json
    from pathlib import Path

    path = Path(path) if path else Path(__file__).resolve().parents[2] / "data" / "results" / "bench_moe.cpu.json"
    record = json.loads(path.read_text())
    rows = [{"tokens": r["tokens"], "top_k": r["top_k"], "dense ms": r["ms"]["dense"], "moe ms": r["ms"]["accel_cf"],
             "ratio": r["x_dense"]["accel_cf"]}
            for r in record["rows"] if r["tokens"] in tuple(tokens) and r["experts"] == experts]
    meta = {k: record.get(k) for k in ("device", "cpu_count", "threads", "torch", "d_model", "d_ff", "capacity_factor")}
    return {"meta": meta, "rows": rows}


def record_metrics(results, *, floor=None, bf16_example=None, stability=None, stressors=None, cap_rows=None,
                   balance=None, expert_rows=None, precision=None) -> None:
    """The regression metrics of each study, with the tolerances the measured CPUs justify (``results`` is
    accel.book's Results, duck-typed). The provoked regime is chaotic: other CPUs moved its losses by up to 0.031 and
    its logsumexp by 0.2; the healthy recipe's losses moved by at most 2.4e-7 and its drops not at all."""
    for (t, cf), exact in (floor or {}).items():  # {(tokens, CF): exact floor %}
        results.metric(f"uniform_floor[T={t},CF={cf:g}]", exact, abs=1e-6)
    if bf16_example:
        results.metric("bf16_top_prob_fp32", bf16_example["top probability, float32"], abs=1e-4)
        results.metric("bf16_top_prob_bf16", bf16_example["top probability, bfloat16 logits"], abs=1e-4)
    for name, s in stability_summary(stability or {}).items():
        results.metric(f"stability_val[{name}]", s["val"][0], abs=0.07)
        results.metric(f"stability_lse[{name}]", s["lse"][0], abs=0.5)
    for name, runs in (stressors or {}).items():
        results.metric(f"stressor_diverged[{name}]", sum(r.diverged for r in runs), abs=0)
    for r in cap_rows or []:
        label = f"top-{r['top-k']}, CF {r['train CF']:g} / {r['eval CF']:g}"
        results.metric(f"t8_val[{label}]", r["val loss"], abs=1e-3)
        results.metric(f"t8_dropped[{label}]", r["dropped"], abs=0.01)
    arms = balance["arms"] if balance else []
    for r in balance["rows"] if balance else []:
        results.metric(f"t5_dropped_with[CF={r['CF']:g}]", r[arms[0]], abs=0.01)
        results.metric(f"t5_dropped_without[CF={r['CF']:g}]", r[arms[1]], abs=0.01)
    for r in expert_rows or []:
        results.metric(f"experts_val[{r['arm']}]", r["val loss"], abs=1e-3)
    for name, runs in (precision or {}).items():
        results.metric(f"router_precision_val[{name}]", summarize([r.val_loss for r in runs])[0],
                       abs=0.07 if name.startswith("provoked") else 1e-3)


def with_seed(cfg: Config, seed: int) -> Config:
    """The profile's config with every seed list shifted by ``seed`` (the notebook's SEED parameter)."""
    return replace(cfg, seeds=tuple(seed + s for s in cfg.seeds),
                   stressor_seeds=tuple(seed + s for s in cfg.stressor_seeds),
                   capacity_seeds=tuple(seed + s for s in cfg.capacity_seeds),
                   expert_seeds=tuple(seed + s for s in cfg.expert_seeds))


def explorer_answer(cfg: Config, cap_rows: list[dict], expert_rows: list[dict]) -> Callable[..., dict]:
    """The explorer's instant readout: the exact uniform-routing floor at the chosen (experts, top-k, CF) and this
    run's trained model nearest to it (capacity runs at E = cfg.num_experts, expert-count runs at the recipe's CF),
    with its validation loss and its measured dropped share at the chosen CF's nearest evaluated factor."""
    tokens = cfg.batch_size * cfg.seq_len
    trained = {}
    for r in expert_rows:
        if r["experts"] > 1:
            trained[(r["experts"], cfg.top_k, cfg.capacity_factor)] = (r["arm"], r["val loss"], None)
    for r in cap_rows:
        if r["eval CF"] == r["train CF"]:
            trained[(cfg.num_experts, r["top-k"], r["train CF"])] = (
                f"{cfg.num_experts} experts, top-{r['top-k']}, train CF {r['train CF']:g}", r["val loss"], r["dropped"])

    def distance(key, knobs):
        return abs(math.log2(key[0] / knobs[0])) + abs(key[1] - knobs[1]) + abs(key[2] - knobs[2])

    def answer(num_experts: int, top_k: int, capacity_factor: float, z_loss_coef: float) -> dict:
        k = min(top_k, num_experts)
        name, val, dropped = trained[min(trained, key=lambda key: distance(key, (num_experts, k, capacity_factor)))]
        floor = uniform_drop_floor(tokens, num_experts, capacity_factor, k)
        return {"uniform-routing drop floor": f"{100 * floor:.2f}%",
                "nearest trained model": name, "its val loss (nats/byte)": round(val, 3),
                "its measured dropped share": "—" if dropped is None else f"{100 * dropped:.1f}%",
                "z-loss coefficient": "trained at 1e-3 (run live for others)" if z_loss_coef != 1e-3 else "1e-3"}

    return answer


def precision_rows(precision: dict[str, list[Run]]) -> list[list]:
    """Rows of the router-precision table (from :func:`router_precision_arms`' runs): per regime, the val loss with a
    float32 and a bfloat16 router, the paired bf16 − fp32 difference per seed with its mean ± std and verdict, and
    the final mean top logit of each."""
    rows = []
    for regime in ("healthy", "provoked"):
        fp32, bf16 = precision[f"{regime} | float32 router"], precision[f"{regime} | bfloat16 router"]
        d = paired_difference(bf16, fp32)
        diffs = ", ".join(f"{x:+.3f}" for x in d["diffs"])
        rows.append([regime, mean_std_text(*summarize([r.val_loss for r in fp32]), len(fp32)),
                     mean_std_text(*summarize([r.val_loss for r in bf16]), len(bf16)),
                     f"{diffs} → {d['mean']:+.3f} ± {d['std']:.3f}" if d["n"] > 1 else f"{d['mean']:+.3f} (n = 1)",
                     "bf16 router " + d["verdict"],
                     summarize([r.final("top_logit") for r in fp32])[0],
                     summarize([r.final("top_logit") for r in bf16])[0]])
    return rows


def table5_rows(balance: dict) -> list[list]:
    """Rows of the Table 5 analogue from :func:`balance_study`: eval CF, uniform floor %, with the balance loss %
    (mean ± std over seeds), without %."""
    with_b, without_b = balance["arms"]
    n = len(balance["runs"][with_b])
    return [[f"CF {r['CF']:g}", 100 * r["uniform floor"],
             mean_std_text(100 * r[with_b], 100 * r[with_b + " std"], n, 2),
             mean_std_text(100 * r[without_b], 100 * r[without_b + " std"], n, 2)] for r in balance["rows"]]


def seed_sign_text(d: dict, arm: str) -> str:
    """How the seeds of a :func:`paired_difference` of losses went, counted by sign (a positive difference: ``arm``
    is worse): 'the z-loss is worse on every one of the 3 seeds', '... worse on 2 of the 3 seeds and better on 1'."""
    n, worse, better = len(d["diffs"]), sum(x > 0 for x in d["diffs"]), sum(x < 0 for x in d["diffs"])
    if n == 1:
        return f"{arm} is {'worse' if worse else 'better' if better else 'level'} on the one seed"
    if worse == n or better == n:
        return f"{arm} is {'worse' if worse else 'better'} on every one of the {n} seeds"
    return f"{arm} is worse on {worse} of the {n} seeds and better on {better}"


def difference_text(d: dict, digits: int = 3) -> str:
    """A :func:`paired_difference` as ``+0.012 ± 0.020`` (mean ± std of the per-seed differences), or
    ``+0.012 (n = 1)`` for a single seed."""
    sign = "+" if d["mean"] >= 0 else ""
    return sign + mean_std_text(d["mean"], d["std"], d["n"], digits)


# --- reader-facing wording, chosen from the run's numbers ----------------------------------------------------------

STRESSOR_WHY = {  # id -> what the stressor pushes on, for the chapter's list of the stressors a run has
    "adafactor": "the paper's optimizer with its safety rail, update clipping, removed",
    "fp16": "half-precision autocast with dynamic loss scaling (the router itself in bfloat16)",
    "router_lr": "the router learns 10× faster than the rest of the model",
    "no_norm": "the router sees the raw residual stream, without the normalisation before it",
    "longer": "twice the steps, so the logits have longer to grow",
}


def stressor_list_text(cfg: Config) -> str:
    """Markdown: the stressors this profile runs, each with what it pushes on, and the ones it leaves out."""
    ran = [f"- **{STRESSORS[k][0]}**: {STRESSOR_WHY[k]}" for k in cfg.stressors]
    left = [STRESSORS[k][0] for k in STRESSORS if k not in cfg.stressors]
    text = f"This run's {plural(len(ran), 'stressor')}, each without and with z-loss 1e-3, " \
           f"{plural(len(cfg.stressor_seeds), 'seed')} each:\n\n" + "\n".join(ran)
    if left:
        text += f"\n\nLeft out of this profile: {', '.join(left)}."
        if "fp16" not in cfg.stressors:
            text += " (fp16 because on a CPU half-precision matrix products are emulated and a run takes many times" \
                    " longer.)"
    return text


def stressor_reading_text(rows: list[list], num_experts: int) -> str:
    """Markdown reading of :func:`stressor_rows`: per stressor the final top logit without and with the z-loss
    against the band [-ln E, 0], whether the z-loss held it inside, and the divergences."""
    ln_e = math.log(num_experts)
    by = {}
    for stressor, z, diverged, _, _, top, lowest in rows:
        by.setdefault(stressor, {})[z] = (top, lowest, diverged)
    parts, inside = [], []
    for stressor, arms in by.items():
        no_z, with_z = arms.get("no z-loss"), arms.get("z-loss 1e-3")
        if not (no_z and with_z):
            continue
        held = -ln_e - 0.05 <= with_z[0] <= 0.05
        inside.append(held)
        parts.append(f"{stressor}: {number_text(no_z[0])} without, {number_text(with_z[0])} with the z-loss "
                     f"({'inside' if held else 'outside'} the band; lowest logit {number_text(with_z[1])})")
    n_div = sum(int(d.split("/")[0]) for arms in by.values() for _, _, d in arms.values())
    n_runs = sum(int(d.split("/")[1]) for arms in by.values() for _, _, d in arms.values())
    if all(inside):
        verdict = "the z-loss held the final top logit inside the band under every stressor"
    elif not any(inside):
        verdict = "the z-loss did not hold the final top logit inside the band under any stressor"
    else:
        verdict = (f"the z-loss held the final top logit inside the band under {sum(inside)} of "
                   f"{plural(len(inside), 'stressor')}; elsewhere it only kept it lower")
    text = (f"Final top logit (mean over seeds) against the band $[-\\ln E, 0] = [{-ln_e:.2f}, 0]$ — "
            + "; ".join(parts) + f". So {verdict}. "
            f"{n_div} of {plural(n_runs, 'stressor run')} diverged.")
    if "Adafactor, no update clipping" in by:
        text += " (Adafactor's learning rate is a relative step, not Adam's, so its loss here says nothing about" \
                " stability.)"
    return text


def routing_by_class_text(classes: list[str], shares: torch.Tensor) -> str:
    """Markdown reading of :func:`expert_by_byte_class`: does one expert take the plurality of most classes (load,
    not specialisation), or do classes go to different experts?"""
    top = [int(s.argmax()) for s in shares]
    pct = [100 * float(s.max()) for s in shares]
    common = max(set(top), key=top.count)
    mine = [p for t, p in zip(top, pct) if t == common]
    others = [f"{c} (expert {t}, {p:.0f}%)" for c, t, p in zip(classes, top, pct) if t != common]
    span = f"{min(mine):.0f}%" if round(min(mine)) == round(max(mine)) else f"{min(mine):.0f}–{max(mine):.0f}%"
    if len(mine) * 2 > len(classes):
        text = (f"Expert {common} takes the largest share of {len(mine)} of the {len(classes)} byte classes "
                f"({span})" + (f"; only {', '.join(others)} {'goes' if len(others) == 1 else 'go'} mostly "
                               "elsewhere" if others else "")
                + ". That is one busy expert, not specialisation: at this size and length the router has not "
                  "learned to sort tokens by what they are.")
    else:
        favourites = ", ".join(f"{c}: expert {t}, {p:.0f}%" for c, t, p in zip(classes, top, pct))
        text = (f"The classes' favourite experts differ ({favourites}): "
                "where a class sends most of its tokens to one expert, that expert has specialised on what the token "
                "*is*, not only on its context.")
    return text + " The paper saw experts specialise by token type in its encoder (punctuation, proper nouns, " \
                  "numbers…; §7)."


def toy_moe_lm(make_moe: Callable[[], nn.Module], seed: int, vocab: int = 64, d: int = 32,
               layers: int = 2) -> nn.ModuleDict:
    """The drop-in's toy: an embedding, ``layers`` (RMSNorm, MoE) pairs from ``make_moe`` and a head, initialised from
    ``seed`` without touching the global RNG. Returns ``ModuleDict(embed, norms, moes, head)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        embed, head = nn.Embedding(vocab, d), nn.Linear(d, vocab)
        norms = nn.ModuleList(nn.RMSNorm(d) for _ in range(layers))
        moes = nn.ModuleList(make_moe() for _ in range(layers))
    return nn.ModuleDict({"embed": embed, "norms": norms, "moes": moes, "head": head})
