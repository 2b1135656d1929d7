"""Chapter 03, CowClip: configs per profile, one training function, and one function per table or figure.

Every run trains a CTR model (:mod:`accel.models.ctr`, DeepFM unless an arm says otherwise) with the official recipe
through :class:`accel.cowclip.CowClip`: two Adams (Keras epsilon 1e-7), batch-mean BCE, the dense learning rate warmed
up linearly over the first epoch, L2 on the embedding tables, and (when the arm says so) the CowClip clip on the
dim-d field embeddings. What an arm changes is the batch size and the *scaling rule* that maps the base batch's
hyperparameters to it:

=========  ==================  ======================  ====================  =====
rule       dense lr            embedding lr            L2 (embeddings)       clip
=========  ==================  ======================  ====================  =====
none       base                base                    base · k              no
sqrt       base · sqrt(k)      base · sqrt(k)          base · k              no
linear     base · k            base · k                base · k              no
cowclip    base · sqrt(k)      base (fixed)            base · k              yes
=========  ==================  ======================  ====================  =====

where k = batch / base batch. Every rule scales L2 as CowClip does (the penalty is added once per step, so k times
fewer steps per epoch need a k times larger coefficient to regularise an epoch as much), so the rules differ only in
their learning rates and the clip; ``Arm.scale_l2=False`` keeps the base L2 instead. ``cowclip`` with ``clip=False``
is the rule without the clip (the ablation the paper implies).

The data are the synthetic twin of :mod:`accel.datasets.ctr` (its true click probability gives the Bayes-optimal AUC
every table shows) in three variants: ``signal`` (rare IDs carry as much signal as frequent ones), ``noise`` (rare IDs
mostly noise, as in real logs) and ``hf`` (the high-frequency-only copy of ``signal``). The gpu and paper profiles
train on Criteo instead (:mod:`accel.datasets.criteo`; the gpu profile on its first 4M lines), where only ``signal``
(the data as they are) and ``hf`` (IDs seen fewer than ``hf_min_count`` times mapped to one out-of-vocabulary ID per
field) exist. :func:`data_source` gets Criteo (from $ACCEL_CRITEO_PATH, or downloaded and trusted on first use) or,
when it cannot be downloaded, falls back to the synthetic twin with a note.

Runs are independent given (config, arm, seed), so :func:`run_arms` spreads them over worker processes (one thread
each) and keeps a cache so that a run two tables share is trained once. The same seed gives the same numbers.
:func:`run_plan` lists every run_arms call the notebook makes; :func:`cost_model` turns it and a short probe into the
set-up cell's time estimate, and ``TRIMS`` says what a time budget may cut. ``data_source``, ``overview`` and
``run_arms`` are replayable (:mod:`accel.experiments.replay`): a results file renders the chapter without training.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from accel.cowclip import CowClip
from accel.datasets.cache import ChecksumError, DownloadError
from accel.datasets.criteo import CRITEO_ARCHIVE_BYTES, CRITEO_URL
from accel.datasets.ctr import CTRData, SyntheticCTRSpec, auc, bayes_metrics, id_counts, logloss, make_synthetic_ctr
from accel.experiments import pick_config, replay
from accel.experiments.words import plural  # noqa: F401  (chapter.plural in the notebook)
from accel.models.ctr import make_ctr_model

# --- paper numbers (official LargeBatchCTR README, DeepFM on Criteo, one V100) -----------------------------------

PAPER_CRITEO = {  # batch -> (dense lr, L2, zeta, AUC %, minutes)
    1024: (8e-4, 1e-5, 1e-5, 80.86, 768), 2048: (11.31e-4, 2e-5, 1e-5, 80.93, 390),
    4096: (16e-4, 4e-5, 1e-5, 80.97, 204), 8192: (22.62e-4, 8e-5, 1e-5, 80.97, 102),
    16384: (32e-4, 16e-5, 1e-5, 80.94, 48), 32768: (45.25e-4, 32e-5, 1e-5, 80.95, 27),
    65536: (64e-4, 64e-5, 1e-5, 80.96, 15), 131072: (90.50e-4, 128e-5, 1e-5, 80.90, 9),
}  # fmt: skip
PAPER_CRITEO_STEPS_PER_EPOCH = {1024: 40_300, 131072: 315}

CRITEO_PATH_ENV = "ACCEL_CRITEO_PATH"
RULES = ("none", "sqrt", "linear", "cowclip")
RULE_NAMES = {"none": "no scaling", "sqrt": "sqrt scaling", "linear": "linear scaling", "cowclip": "CowClip"}
FREQUENCY_BUCKETS = (1, 10, 100, 1000)  # an ID's count in the training split: [1, 10), [10, 100), [100, 1000), 1000+


# --- configs -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One profile: the data, the model, the base recipe, the batch range and how many seeds each table uses."""

    dataset: str = "synthetic"  # synthetic | criteo (gpu, paper)
    # the synthetic twin; for the Criteo profiles, the stand-in when Criteo cannot be downloaded (data_source)
    data: SyntheticCTRSpec = SyntheticCTRSpec(train_rows=400_000, test_rows=100_000, linear_scale=0.45,
                                              interaction_scale=0.12)  # fmt: skip
    criteo_rows: int | None = None  # Criteo: the first this many labelled lines of train.txt (None: all 45.8M)
    criteo_url: str = CRITEO_URL  # where Criteo is downloaded from when $ACCEL_CRITEO_PATH names no local copy
    noise_rare_signal: float = 0.2  # the "noise" regime: rare IDs' effects scaled by this
    hf_min_count: int = 20  # Criteo's high-frequency-only copy: values seen fewer times share one ID
    model: str = "deepfm"
    embed_dim: int = 10
    mlp_dims: tuple[int, ...] = (64, 64)
    # the base recipe, tuned at the base batch; scaled to larger batches by a rule
    base_batch: int = 256
    base_lr: float = 1e-3
    base_embed_lr: float = 1e-3
    base_l2: float = 1e-4
    r: float = 1.0
    zeta: float = 1e-5
    epochs: int = 2
    multipliers: tuple[int, ...] = (8, 32, 128)  # larger batches = base_batch · multiplier
    hf_multipliers: tuple[int, ...] = (8, 32, 128)  # Table 1 on the high-frequency-only copy
    seeds: tuple[int, ...] = (0, 1, 2)  # main table, clip ablation, other models
    table1_seeds: tuple[int, ...] = (0, 1)  # Table 1 (both data sets); the noise regime uses the first
    other_models: tuple[str, ...] = ("wide_deep", "dcn", "dcn_v2")
    step_matched_steps: int = 160  # the largest batch trained this many steps (many epochs)
    step_matched_seeds: tuple[int, ...] = (0, 1)  # the rule comparison; the noise regime and no-clip arm use the first
    sweep_multiplier: int = 8
    sweep: tuple[tuple[float, float], ...] = ((1.0, 1e-3), (1.0, 1e-2), (0.1, 1e-5), (0.01, 1e-5), (0.001, 1e-5))
    eval_batch: int = 65_536
    workers: int = 2  # processes for independent runs (each one thread); 0 runs in this process
    live_epochs: int = 1
    ledger_margin: float = 0.01  # the ledger's target: the base batch's final AUC minus this


# The stand-in for Criteo in the gpu and paper profiles when it cannot be downloaded: the synthetic twin with enough
# rows that the largest batch (1,024 x 128) still gets 15 steps per epoch.
CRITEO_TWIN = SyntheticCTRSpec(train_rows=2_000_000, test_rows=200_000, linear_scale=0.45, interaction_scale=0.12)

# The gpu profile: the paper's model and recipe (DeepFM, MLP 400-400-400, embedding dim 10, base batch 1,024, dense lr
# 8e-4, embedding lr 1e-4, L2 1e-5, batches up to 128K) on real Criteo, cut to fit ~15 minutes on a T4. An estimate,
# not measured on a T4 (none here); the set-up cell's probe measures the reader's GPU and trims to the budget:
# * data: the first 4,000,000 lines of train.txt (3.6M train / 0.4M test; roughly the first 15 hours of day 1),
#   ~3M distinct IDs (guessed from Criteo's growth of IDs with rows; a 30M-row table would not fit the budget).
# * FLOPs: MLP input 26 x 10 + 13 = 273; 273·400 + 2·400·400 + 400 = 0.43M multiply-adds a sample, so ~2.6 MFLOP a
#   sample for forward + backward (FM and lookups are negligible). At ~2.8 TFLOP/s (35% of a T4's 8.1): ~0.9 µs a
#   sample, ~1 µs with the lookups.
# * The optimizer touches the whole table every step (dense gradients, Adam): ~3M x 10 floats x ~12 reads and writes
#   = ~1.5 GB, ~6 ms at ~250 GB/s, plus ~4 ms of launches and the clip's statistics: ~10 ms a step at any batch.
#   So a step takes ~11 ms at 1K, 18 ms at 8K, 43 ms at 32K and 141 ms at 128K; one epoch of 3.6M rows takes
#   39 s at 1K (3,515 steps), 8 s at 8K, 5 s at 32K and 4 s at 128K (27 steps).
# * The chapter, one seed, one epoch: A1 full data and high-frequency copy 2 x 88 s; A2 recipe and no-clip arms
#   110 s; A3 six step-matched runs at 128K x 200 steps (7.4 epochs) 169 s; A4 three more models at 1K and 128K
#   128 s; B4 three (r, zeta) settings at 8K 24 s; evaluations ~5 s: ~610 s, about 10 minutes, plus ~3 minutes to
#   download (4.6 GB), hash and parse the data once per runtime.
GPU = Config(dataset="criteo", data=CRITEO_TWIN, criteo_rows=4_000_000, mlp_dims=(400, 400, 400), base_batch=1024,
             base_lr=8e-4, base_embed_lr=1e-4, base_l2=1e-5, epochs=1, multipliers=(8, 32, 128),
             hf_multipliers=(8, 32, 128), seeds=(0,), table1_seeds=(0,), step_matched_steps=200,
             step_matched_seeds=(0,), sweep=((1.0, 1e-3), (0.1, 1e-5), (0.01, 1e-5)), workers=0, live_epochs=1)

CONFIGS = {
    "smoke": Config(data=SyntheticCTRSpec(vocab_sizes=(2000, 500, 200, 100, 50), train_rows=20_000, test_rows=10_000,
                                          linear_scale=0.45, interaction_scale=0.12),
                    base_batch=64, multipliers=(8, 32), hf_multipliers=(32,), epochs=1, seeds=(0,), table1_seeds=(0,),
                    mlp_dims=(16,), other_models=("dcn",), step_matched_steps=30, step_matched_seeds=(0,),
                    sweep=((0.01, 1e-5),), workers=0),
    "cpu": Config(),
    "gpu": GPU,
    # the paper profile: DeepFM on all of Criteo with the official recipe at 1K ... 128K, 10 epochs (hours on a GPU)
    "paper": Config(dataset="criteo", data=CRITEO_TWIN, mlp_dims=(400, 400, 400), base_batch=1024, base_lr=8e-4,
                    base_embed_lr=1e-4, base_l2=1e-5, epochs=10, multipliers=(8, 32, 128), hf_multipliers=(8, 32, 128),
                    step_matched_steps=31_500, step_matched_seeds=(0,), workers=0, live_epochs=1),
}  # fmt: skip

#: What ``Book.fit`` may trim to fit a time budget, in this order, each to its floor: the seeds first, then the
#: secondary sections' settings (B4's sweep, A4's other models), then the epochs.
TRIMS = (("seeds", 1), ("table1_seeds", 1), ("step_matched_seeds", 1), ("sweep", 1), ("other_models", 1),
         ("epochs", 1))


def config(profile: str, **overrides) -> Config:
    return pick_config(CONFIGS, profile, **overrides)


@dataclass(frozen=True)
class Arm:
    """What a run changes from the profile's recipe."""

    name: str
    rule: str = "cowclip"
    multiplier: int = 1  # batch = base_batch · multiplier
    clip: bool | None = None  # None: the rule's own (only cowclip clips)
    data: str = "signal"  # signal | noise | hf
    model: str | None = None  # None: the profile's
    epochs: float | None = None  # None: the profile's
    steps: int | None = None  # train exactly this many steps instead of epochs
    r: float | None = None
    zeta: float | None = None
    scale_l2: bool = True  # L2 coefficient · k (every rule); False keeps the base coefficient
    l2_mult: float = 1.0  # on top of the rule (0: no L2 at all, the control for the L2-under-Adam shrinkage)
    embed_lr_mult: float = 1.0  # on top of the rule (e.g. a fixed embedding lr that is still too small)

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"Invalid rule: {self.rule!r}; allowed: {RULES}")
        if self.data not in ("signal", "noise", "hf"):
            raise ValueError(f"Invalid data: {self.data!r}; allowed: 'signal', 'noise', 'hf'")


def hyperparameters(cfg: Config, arm: Arm) -> dict:
    """Batch size, dense lr, embedding lr, L2, clip, r, zeta of an arm (the table in the module docstring)."""
    k = arm.multiplier
    rule = arm.rule
    power = {"none": 0.0, "sqrt": 0.5, "linear": 1.0, "cowclip": 0.5}[rule]
    lr = cfg.base_lr * k**power
    embed_lr = (cfg.base_embed_lr if rule == "cowclip" else cfg.base_embed_lr * k**power) * arm.embed_lr_mult
    l2 = cfg.base_l2 * (k if arm.scale_l2 else 1) * arm.l2_mult
    clip = (rule == "cowclip") if arm.clip is None else arm.clip
    return {
        "batch_size": cfg.base_batch * k, "lr": lr, "embed_lr": embed_lr, "l2": l2, "clip": clip,
        "r": cfg.r if arm.r is None else arm.r, "zeta": cfg.zeta if arm.zeta is None else arm.zeta,
    }  # fmt: skip


# --- data ---------------------------------------------------------------------------------------------------------


def data_spec(cfg: Config, variant: str) -> SyntheticCTRSpec:
    if variant == "signal":
        return cfg.data
    if variant == "noise":
        return replace(cfg.data, rare_signal=cfg.noise_rare_signal)
    if variant == "hf":
        return replace(cfg.data, high_frequency_only=True)
    raise ValueError(f"Invalid data variant: {variant!r}; allowed: 'signal', 'noise', 'hf'")


@lru_cache(maxsize=8)
def _cached_data(spec: SyntheticCTRSpec) -> CTRData:
    return make_synthetic_ctr(spec)


@lru_cache(maxsize=2)
def _cached_criteo(path: str | None, url: str, rows: int | None, min_count: int | None) -> CTRData:
    from accel.datasets.criteo import load_criteo

    if path is not None and not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"Invalid environment variable {CRITEO_PATH_ENV}: {path!r} is not a file; point it at "
                                "the Criteo Kaggle archive (.tar.gz) or train.txt, or unset it to download Criteo")
    return load_criteo(path=path, url=url, max_rows=rows, min_count=min_count)


def load_data(cfg: Config, variant: str = "signal") -> CTRData:
    """The data set of a variant: synthetic (generated once, then memory-mapped from the cache) or, for the gpu and
    paper profiles, Criteo Kaggle with the official preprocessing (``hf``: values seen fewer than ``hf_min_count``
    times share one ID; ``criteo_rows``: the first lines of train.txt only). Criteo is read from the file named by
    $ACCEL_CRITEO_PATH (the archive or train.txt) when it is set, else downloaded from ``cfg.criteo_url`` and trusted
    on first use (Criteo publishes no checksum: the first download's SHA-256 is recorded beside it and checked on
    every later use; see accel.datasets.criteo.load_criteo). :func:`data_source` decides, once per run, whether
    Criteo can be had at all."""
    if cfg.dataset == "criteo":
        if variant not in ("signal", "hf"):
            raise ValueError(f"Invalid data variant for Criteo: {variant!r}; allowed: 'signal', 'hf'")
        return _cached_criteo(os.environ.get(CRITEO_PATH_ENV) or None, cfg.criteo_url, cfg.criteo_rows,
                              cfg.hf_min_count if variant == "hf" else None)
    return _cached_data(data_spec(cfg, variant))


@replay.replayable
def data_source(cfg: Config) -> tuple[Config, str | None]:
    """(the config this run trains with, a note for the reader). Synthetic profiles: unchanged, no note. Criteo
    profiles: Criteo is loaded (downloaded the first time, or read from $ACCEL_CRITEO_PATH) and the note says how it
    was checked. Where the download is impossible (no network, a server error, refused), the run falls back to the
    synthetic twin (``cfg.data``) and the note says so and names $ACCEL_CRITEO_PATH. A checksum or size mismatch is
    not a fallback: it raises :class:`~accel.datasets.cache.ChecksumError` naming the file and both hashes."""
    if cfg.dataset != "criteo":
        return cfg, None
    try:
        data = load_data(cfg, "signal")
    except ChecksumError:
        raise
    except DownloadError as error:
        twin = replace(cfg, dataset="synthetic")
        reason = str(error).split(". ")[0]
        size = f" ({CRITEO_ARCHIVE_BYTES:,} bytes)" if cfg.criteo_url == CRITEO_URL else ""
        return twin, (
            f"Criteo could not be downloaded ({reason}), so this run trains on the synthetic twin instead "
            f"({twin.data.train_rows:,} training rows, {len(twin.data.vocab_sizes)} fields; the recipe and batch "
            f"sizes are the profile's). To train on Criteo, download {cfg.criteo_url}{size} where you have network "
            f"and set the environment variable {CRITEO_PATH_ENV} to that file (the .tar.gz or train.txt) before "
            "starting the chapter."
        )
    local = os.environ.get(CRITEO_PATH_ENV)
    rows = "all" if cfg.criteo_rows is None else f"the first {cfg.criteo_rows:,}"
    how = f"read from {local} (${CRITEO_PATH_ENV})" if local else data.metadata.get("source_check", "")
    return cfg, (f"Criteo Kaggle, {rows} labelled lines of train.txt, official preprocessing: {len(data.train):,} "
                 f"training and {len(data.test):,} test rows. Archive: {how}.")


@lru_cache(maxsize=4)
def frequency_bucket_of_rows(data: CTRData) -> torch.Tensor:
    """Bucket index [total rows] of every global embedding row: its ID's count in the training split, bucketed by
    FREQUENCY_BUCKETS (bucket 0 also holds IDs never seen in training)."""
    counts = np.concatenate(id_counts(data.train.ids, data.field_dims))
    return torch.from_numpy(np.maximum(np.searchsorted(FREQUENCY_BUCKETS, counts, side="right") - 1, 0))


def bucket_labels() -> list[str]:
    edges = list(FREQUENCY_BUCKETS)
    return [f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])] + [f"{edges[-1]}+"]


@torch.no_grad()
def bucket_norms(weight: torch.Tensor, buckets: torch.Tensor) -> list[float]:
    """Mean row norm ||w_k|| [per frequency bucket] of an embedding table [rows, dim] (buckets: [rows] indices)."""
    norms = weight.detach().float().norm(dim=1)
    total = torch.bincount(buckets, weights=norms, minlength=len(FREQUENCY_BUCKETS))
    count = torch.bincount(buckets, minlength=len(FREQUENCY_BUCKETS)).clamp_min(1)
    return (total / count).tolist()


# --- one run -----------------------------------------------------------------------------------------------------


@dataclass
class Run:
    arm: str
    seed: int
    hparams: dict
    auc: float
    logloss: float
    auc_per_epoch: list[float]  # test AUC after each epoch (and at the end of a step-matched run)
    steps: int
    steps_per_epoch: int
    epochs: float
    seconds: float
    clip_fraction: float | None  # rows clipped / rows touched, over all steps (None without the clip)
    bucket_touched: list[int] = field(default_factory=list)  # touched-row events per frequency bucket
    bucket_clipped: list[int] = field(default_factory=list)
    curve_points: list[tuple] = field(default_factory=list)  # per evaluation: (samples, steps, seconds, test AUC)
    norm_init: list[float] = field(default_factory=list)  # mean ||w_k|| per frequency bucket at initialisation
    norm_end: list[float] = field(default_factory=list)  # ... and at the end of training


def absent_rows(hp: dict) -> str:
    """How the clip treats rows absent from the batch. The official code clips them with cnt = 1, but their only
    gradient is the L2 term 2·l2·w, which that clip cannot bind on while 2·l2 <= r (||2·l2·w|| <= r·||w||); then
    "skip" gives the same result for a third of the work. Otherwise (tiny r, large L2) the official treatment."""
    return "skip" if 2 * hp["l2"] <= hp["r"] else "clip"


def make_model(cfg: Config, arm: Arm, data: CTRData, seed: int, device: torch.device):
    generator = torch.Generator().manual_seed(seed)
    model = make_ctr_model(arm.model or cfg.model, data.field_dims, embed_dim=cfg.embed_dim, mlp_dims=cfg.mlp_dims,
                           num_dense=data.num_dense, generator=generator).to(device)  # fmt: skip
    model.embedding.check_ids = False  # ids are checked once, on the whole split, below
    model.linear.check_ids = False
    return model


@torch.no_grad()
def predict(model, ids: torch.Tensor, dense: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Logits [N] in batches, in eval mode."""
    model.eval()
    out = [model(ids[i : i + batch], None if dense is None else dense[i : i + batch])
           for i in range(0, len(ids), batch)]
    model.train()
    return torch.cat(out)


def train(cfg: Config, arm: Arm, seed: int, data: CTRData | None = None, device: torch.device | str | None = None, *,
          keep_model: bool = False, progress=None) -> Run:  # fmt: skip
    """Train one arm for one seed; returns the :class:`Run` (with ``.model`` attached when keep_model).

    device: None picks CUDA when present (the paper profile), else the CPU; worker processes always use the CPU.
    """
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    data = data if data is not None else load_data(cfg, arm.data)
    hp = hyperparameters(cfg, arm)
    batch = hp["batch_size"]
    ids, dense, labels = data.train.tensors(device)
    test_ids, test_dense, test_labels = data.test.tensors(device)
    n = len(labels)
    if batch > n:
        raise ValueError(f"Invalid batch: {batch} is larger than the training split ({n} rows)")
    steps_per_epoch = n // batch  # the last partial batch is dropped, so every step has the arm's batch size
    total_steps = arm.steps if arm.steps is not None else round((arm.epochs or cfg.epochs) * steps_per_epoch)
    model = make_model(cfg, arm, data, seed, device)
    buckets = frequency_bucket_of_rows(data).to(device)
    norm_init = bucket_norms(model.embedding.table.weight, buckets)
    optimizer = CowClip(model, model.embedding, batch_size=batch, warmup_steps=steps_per_epoch, clip=hp["clip"],
                        r=hp["r"], zeta=hp["zeta"], embed_lr=hp["embed_lr"], lr=hp["lr"], l2=hp["l2"],
                        return_rows=hp["clip"], absent_rows=absent_rows(hp))  # fmt: skip
    touched = torch.zeros(len(FREQUENCY_BUCKETS), dtype=torch.long, device=device)
    clipped = torch.zeros_like(touched)
    generator = torch.Generator().manual_seed(seed + 1_000_003)  # the data order; the model used `seed`
    curve, points, start, step = [], [], time.perf_counter(), 0
    scores, scored_at = None, -1  # the test logits and the step they were computed at
    while step < total_steps:
        order = torch.randperm(n, generator=generator).to(device)
        for i in range(min(steps_per_epoch, total_steps - step)):
            index = order[i * batch : (i + 1) * batch]
            x = ids[index]
            logits = model(x, None if dense is None else dense[index])
            loss = F.binary_cross_entropy_with_logits(logits, labels[index])
            loss.backward()
            optimizer.step(ids=x)  # the FieldEmbedding's local ids: the clip counts rows from them
            optimizer.zero_grad()
            if hp["clip"]:
                table_stats = optimizer.last_stats["tables"][0]
                b = buckets[table_stats["rows"]]
                touched += torch.bincount(b, minlength=len(FREQUENCY_BUCKETS))
                clipped += torch.bincount(b[table_stats["clipped"]], minlength=len(FREQUENCY_BUCKETS))
            step += 1
            if progress is not None:
                progress(step, total_steps)
        if not math.isfinite(loss.item()):
            break
        scores, scored_at = predict(model, test_ids, test_dense, cfg.eval_batch), step
        curve.append(auc(test_labels, scores) if torch.isfinite(scores).all() else float("nan"))
        points.append((step * batch, step, time.perf_counter() - start, curve[-1]))
    seconds = time.perf_counter() - start
    if scored_at != step:  # stopped on a non-finite loss before evaluating
        scores = predict(model, test_ids, test_dense, cfg.eval_batch)
    finite = bool(torch.isfinite(scores).all())
    probabilities = torch.sigmoid(scores)
    run = Run(
        arm=arm.name, seed=seed, hparams=hp,
        auc=auc(test_labels, scores) if finite else float("nan"),
        logloss=logloss(test_labels, probabilities) if finite else float("nan"),
        auc_per_epoch=curve, steps=step, steps_per_epoch=steps_per_epoch, epochs=step / steps_per_epoch,
        seconds=seconds,
        clip_fraction=float(clipped.sum() / touched.sum().clamp_min(1)) if hp["clip"] else None,
        bucket_touched=touched.tolist(), bucket_clipped=clipped.tolist(), curve_points=points,
        norm_init=norm_init, norm_end=bucket_norms(model.embedding.table.weight, buckets),
    )  # fmt: skip
    if keep_model:
        run.model = model
    return run


# --- many runs -------------------------------------------------------------------------------------------------


def run_key(cfg: Config, arm: Arm, seed: int) -> tuple:
    """What determines a run's outcome: the recipe, the arm's settings (not its name) and the seed."""
    recipe = replace(cfg, seeds=(), table1_seeds=(), other_models=(), step_matched_seeds=(), sweep=(), workers=0,
                     hf_multipliers=(), multipliers=())
    hp = hyperparameters(cfg, arm)  # arms that resolve to the same settings share one run
    same = replace(arm, name="", clip=hp["clip"], model=arm.model or cfg.model, r=hp["r"], zeta=hp["zeta"])
    return (repr(recipe), repr(same), seed)


def _worker_init() -> None:
    torch.set_num_threads(1)


def _run_job(cfg: Config, arm: Arm, seed: int) -> Run:
    return train(cfg, arm, seed, device="cpu")


@replay.replayable
def run_arms(cfg: Config, arms: Iterable[Arm], seeds: Iterable[int], *, desc: str = "runs", show_progress: bool = True,
             cache: dict | None = None) -> dict[str, list[Run]]:  # fmt: skip
    """Every arm for every seed, {arm name: [Run per seed]}. Runs not in ``cache`` are trained, in ``cfg.workers``
    processes of one thread each (0: here). Data are generated (and cached on disk) before the workers start.
    Replayable: a chapter rendered from a results file (RESULTS_FROM) gets the recorded runs back, in call order."""
    from accel.experiments.progress import progress_bar

    arms, seeds = list(arms), list(seeds)
    cache = {} if cache is None else cache
    todo = {}
    for seed in seeds:
        for arm in arms:
            key = run_key(cfg, arm, seed)
            if key not in cache and key not in todo:
                todo[key] = (arm, seed)
    for variant in {arm.data for arm, _ in todo.values()}:
        load_data(cfg, variant)
    with progress_bar(total=len(todo), desc=desc, disable=not show_progress or not todo) as bar:
        if cfg.workers and len(todo) > 1:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(cfg.workers, mp_context=context, initializer=_worker_init) as pool:
                futures = {pool.submit(_run_job, cfg, arm, seed): key for key, (arm, seed) in todo.items()}
                for future in as_completed(futures):
                    cache[futures[future]] = future.result()
                    bar.update()
        else:
            for key, (arm, seed) in todo.items():
                cache[key] = train(cfg, arm, seed)
                bar.update()
    return {arm.name: [replace(cache[run_key(cfg, arm, seed)], arm=arm.name) for seed in seeds] for arm in arms}


def summarize(values: Iterable[float]) -> tuple[float, float]:
    """(mean, sample std) — std 0 for one value."""
    values = [float(v) for v in values]
    mean = float(np.mean(values))
    return mean, float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def paired_difference(a: list[Run], b: list[Run]) -> tuple[float, float]:
    """Mean and std over seeds of AUC(a) - AUC(b), seed by seed (the runs share data and test set)."""
    by_seed = {r.seed: r.auc for r in b}
    return summarize([r.auc - by_seed[r.seed] for r in a if r.seed in by_seed])


# --- what the chapter trains, section by section (the notebook and the cost model both read these) -------------


def plain_arms(cfg: Config) -> list[Arm]:
    """A2's comparison: the base batch and square-root scaling of every lr at every larger batch."""
    return [a for a in table1_arms(cfg) if a.name == "base" or a.rule == "sqrt"]


def step_variants(cfg: Config) -> tuple[str, ...]:
    """The data variants of A3's step-matched runs (the noise regime exists only for the synthetic twin)."""
    return ("signal", "hf", "noise") if cfg.dataset == "synthetic" else ("signal", "hf")


def regime_groups(cfg: Config) -> list[tuple[str, list[Arm], tuple[int, ...]]]:
    """A3's epoch-matched runs at the largest batch, rare IDs as signal or mostly noise (synthetic twin only):
    (progress label, arms, seeds) per run_arms call."""
    if cfg.dataset != "synthetic":
        return []
    k = max(cfg.multipliers)
    return [(f"{variant}, epoch-matched", [Arm(f"{variant}: base", rule="none", data=variant),
                                           Arm(f"{variant}: sqrt ×{k}", rule="sqrt", multiplier=k, data=variant),
                                           Arm(f"{variant}: CowClip ×{k}", multiplier=k, data=variant)], seeds)
            for variant, seeds in (("signal", cfg.table1_seeds), ("noise", cfg.table1_seeds[:1]))]  # fmt: skip


def step_matched_groups(cfg: Config) -> list[tuple[str, list[Arm], tuple[int, ...]]]:
    """A3's step-matched runs at the largest batch: the rule comparison on every variant (the noise variant: the
    first seed), then the no-clip and no-L2 controls (the first seed)."""
    k, s = max(cfg.multipliers), cfg.step_matched_steps
    groups = []
    for variant in step_variants(cfg):
        seeds = cfg.step_matched_seeds if variant != "noise" else cfg.step_matched_seeds[:1]
        groups.append((f"{variant}, step-matched", [
            Arm(f"{variant}: sqrt ×{k}, {s} steps", rule="sqrt", multiplier=k, steps=s, data=variant),
            Arm(f"{variant}: CowClip ×{k}, {s} steps", multiplier=k, steps=s, data=variant)], seeds))  # fmt: skip
    controls = [Arm(f"signal: CowClip rule, no clip ×{k}, {s} steps", multiplier=k, steps=s, clip=False),
                Arm(f"signal: CowClip ×{k}, {s} steps, no L2", multiplier=k, steps=s, l2_mult=0.0)]
    groups.append(("no clip, no L2", controls, cfg.step_matched_seeds[:1]))
    return groups


def model_arms(cfg: Config) -> list[Arm]:
    """A4: every model with the CowClip recipe at the base batch and the largest, epoch-matched."""
    k = max(cfg.multipliers)
    return [Arm(f"{name} ×{m}", multiplier=m, model=name) for name in (cfg.model, *cfg.other_models) for m in (1, k)]


def sweep_arms(cfg: Config) -> list[Arm]:
    """B4: CowClip at ``sweep_multiplier`` for the profile's (r, zeta) and every swept pair, and without the clip."""
    m = cfg.sweep_multiplier
    return [*(Arm(f"r {r:g}, zeta {z:g}", multiplier=m, r=r, zeta=z) for r, z in ((cfg.r, cfg.zeta), *cfg.sweep)),
            Arm("no clip", multiplier=m, clip=False)]


def run_plan(cfg: Config) -> list[tuple[str, str, list[Arm], tuple[int, ...]]]:
    """Every run_arms call of the chapter, in the notebook's order: (part, progress label, arms, seeds)."""
    plan = [("A1 Table 1", "Table 1, full data", table1_arms(cfg, "signal"), cfg.table1_seeds),
            ("A1 Table 1", "Table 1, high-frequency only", table1_arms(cfg, "hf", cfg.hf_multipliers),
             cfg.table1_seeds),
            ("A2 recipe", "CowClip", cowclip_arms(cfg, clip=True), cfg.seeds),
            ("A2 recipe", "CowClip rule, no clip", cowclip_arms(cfg, clip=False), cfg.seeds),
            ("A2 recipe", "base and sqrt", plain_arms(cfg), cfg.seeds)]  # fmt: skip
    plan += [("A3 steps vs epochs", *group) for group in (*regime_groups(cfg), *step_matched_groups(cfg))]
    plan += [("A4 models", "models", model_arms(cfg), cfg.seeds),
             ("B4 sweep", "r, zeta sweep", sweep_arms(cfg), cfg.seeds[:1])]
    return plan


# --- the data at a glance (replayable: a recorded run's figure needs no data) ---------------------------------


@dataclass
class Overview:
    """What the chapter shows about its data before training: sizes, the Bayes-optimal limits (synthetic twin only),
    the ID-frequency curves (log-spaced ranks, enough to draw them) and the updates-per-epoch figure's points."""

    name: str
    train_rows: int
    test_rows: int
    field_dims: list[int]
    limits: dict[str, dict] | None  # {"signal" | "hf" | "noise": bayes_metrics} or None (real data)
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # label -> (ranks, training rows holding the ID of that rank)
    bucket_id_share: list[float]
    bucket_row_share: list[float]
    update_centres: list[float]  # mean occurrences per bin (updates_by_occurrence)
    updates: dict[int, list[float]]  # batch size -> mean steps that update an ID, per bin

    @property
    def num_fields(self) -> int:
        return len(self.field_dims)


def _rank_curve(sorted_counts: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(ranks, counts) at ~``points`` log-spaced ranks (first and last included) of a descending count curve's
    nonzero part: what a log-log plot of it needs."""
    seen = sorted_counts[sorted_counts > 0]
    ranks = np.unique(np.round(np.logspace(0, np.log10(max(len(seen), 1)), points)).astype(np.int64))
    ranks = ranks[ranks <= len(seen)]
    return ranks, seen[ranks - 1].astype(np.int64)


@replay.replayable
def overview(cfg: Config, seed: int, max_rows: int = 1_000_000) -> Overview:
    """The data's sizes, limits and frequency figures (``seed``: the epoch order of the updates figure; sets larger
    than ``max_rows`` rows are represented by a random ``max_rows`` of them there)."""
    data = load_data(cfg)
    freq = id_frequency(data)
    dims = list(data.field_dims)
    biggest, smallest = int(np.argmax(dims)), int(np.argmin(dims))
    pooled = np.sort(np.concatenate(freq["sorted_counts"]))[::-1]
    curves = {"all fields": _rank_curve(pooled),
              f"largest field ({dims[biggest]:,} IDs)": _rank_curve(freq["sorted_counts"][biggest]),
              f"smallest field ({dims[smallest]:,} IDs)": _rank_curve(freq["sorted_counts"][smallest])}  # fmt: skip
    batches = [cfg.base_batch * k for k in (1, *cfg.multipliers)]
    counts, updates = updates_per_epoch(data, batches, seed=seed, max_rows=max_rows)
    centres, per_batch = updates_by_occurrence(counts, updates)
    limits = ({variant: bayes(cfg, variant) for variant in ("signal", "hf", "noise")}
              if cfg.dataset == "synthetic" else None)  # fmt: skip
    return Overview(name=data.name, train_rows=len(data.train), test_rows=len(data.test), field_dims=dims,
                    limits=limits, curves=curves, bucket_id_share=freq["bucket_id_share"],
                    bucket_row_share=freq["bucket_row_share"], update_centres=centres, updates=per_batch)


# --- run time on this device, and trimming to a budget -----------------------------------------------------------


def _time_steps(cfg: Config, data: CTRData, multiplier: int, device: torch.device, generator: torch.Generator,
                steps: int) -> float:  # fmt: skip
    """Seconds per training step (the median of ``steps``, after one warm-up step) of the chapter's model and
    optimizer at ``base_batch · multiplier`` (the CowClip recipe), on random rows of the training split."""
    arm = Arm("probe", multiplier=multiplier)
    hp = hyperparameters(cfg, arm)
    batch = min(hp["batch_size"], len(data.train))
    model = make_model(cfg, arm, data, int(torch.randint(0, 2**31 - 1, (1,), generator=generator)), device)
    optimizer = CowClip(model, model.embedding, batch_size=batch, warmup_steps=10, clip=hp["clip"], r=hp["r"],
                        zeta=hp["zeta"], embed_lr=hp["embed_lr"], lr=hp["lr"], l2=hp["l2"], return_rows=hp["clip"],
                        absent_rows=absent_rows(hp))  # fmt: skip
    index = torch.randint(0, len(data.train), (batch,), generator=generator).numpy()
    x = torch.from_numpy(np.asarray(data.train.ids[index])).to(device)
    dense = None if data.train.dense is None else torch.from_numpy(np.asarray(data.train.dense[index])).to(device)
    y = torch.from_numpy(np.asarray(data.train.labels[index])).to(device)

    def step():
        loss = F.binary_cross_entropy_with_logits(model(x, dense), y)
        loss.backward()
        optimizer.step(ids=x)
        optimizer.zero_grad()

    step()  # warm-up: allocations, kernel selection
    seconds = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))  # one stalled step (a late kernel choice, a busy core) does not set the pace


def _time_eval(cfg: Config, data: CTRData, device: torch.device) -> float:
    """Seconds per test row of an evaluation (one eval batch of the test split, after a warm-up pass)."""
    model = make_model(cfg, Arm("probe"), data, 0, device)
    rows = min(cfg.eval_batch, len(data.test))
    ids, dense, _ = data.test.tensors(device)
    ids, dense = ids[:rows], None if dense is None else dense[:rows]
    predict(model, ids, dense, cfg.eval_batch)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    predict(model, ids, dense, cfg.eval_batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / rows


def cost_model(cfg: Config, device: torch.device | str | None = None, steps: int = 3):
    """The probe: time ``steps`` training steps of the chapter's model (their median, after a warm-up step) at the
    base batch and at the largest batch on this device (CUDA when present, as :func:`train` picks; one thread when the
    runs go to worker processes, as theirs do), and one evaluation batch. Returns ``Config -> Estimate``: the seconds
    of each part of the chapter, from the runs :func:`run_plan` lists (each distinct run once, as :func:`run_arms`'s
    cache trains it), steps x (fixed + per-sample cost, a line through the two probed batches) plus the evaluations;
    the other models are assumed to cost what DeepFM does; divided by the worker processes when there are any. The
    data (a Criteo download, say) are loaded before and not counted."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    data = load_data(cfg)
    generator = torch.Generator().manual_seed(20230101)
    big = max(cfg.multipliers)
    threads = torch.get_num_threads()
    if cfg.workers:
        torch.set_num_threads(1)
    try:
        small_s = _time_steps(cfg, data, 1, device, generator, steps)
        big_s = _time_steps(cfg, data, big, device, generator, steps)
        eval_row_s = _time_eval(cfg, data, device)
    finally:
        torch.set_num_threads(threads)
    b0, b1 = cfg.base_batch, min(cfg.base_batch * big, len(data.train))
    per_sample = max(big_s - small_s, 0.0) / max(b1 - b0, 1)
    fixed = max(small_s - per_sample * b0, 0.0)
    train_rows, test_rows = len(data.train), len(data.test)
    basis = (f"{device.type}, a step at batch {b0:,} {1e3 * small_s:.1f} ms, at {b1:,} {1e3 * big_s:.0f} ms; "
             f"evaluation {1e6 * eval_row_s:.2f} µs a row" + (f"; {cfg.workers} worker processes" if cfg.workers
                                                              else ""))  # fmt: skip

    def estimate(c: Config):
        from accel.experiments.run_time import Estimate

        parts: dict[str, float] = {}
        seen = set()
        for part, _, arms, seeds in run_plan(c):
            parts.setdefault(part, 0.0)
            for seed in seeds:
                for arm in arms:
                    key = run_key(c, arm, seed)
                    if key in seen:
                        continue
                    seen.add(key)
                    batch = c.base_batch * arm.multiplier
                    per_epoch = max(train_rows // batch, 1)
                    n = arm.steps if arm.steps is not None else round((arm.epochs or c.epochs) * per_epoch)
                    parts[part] += n * (fixed + per_sample * batch) + math.ceil(n / per_epoch) * test_rows * eval_row_s
        parallel = max(1, c.workers)
        return Estimate({part: seconds / parallel for part, seconds in parts.items()}, basis)

    return estimate


# --- the chapter's analyses --------------------------------------------------------------------------------------


def id_frequency(data: CTRData) -> dict:
    """For the log-log plot: each field's ID counts sorted descending, and the share of IDs / rows per bucket."""
    counts = id_counts(data.train.ids, data.field_dims)
    everything = np.concatenate(counts)
    seen = everything[everything > 0]
    bucket = np.searchsorted(FREQUENCY_BUCKETS, seen, side="right") - 1
    return {
        "sorted_counts": [np.sort(c)[::-1] for c in counts],
        "bucket_id_share": [float(np.mean(bucket == i)) for i in range(len(FREQUENCY_BUCKETS))],
        "bucket_row_share": [float(seen[bucket == i].sum() / seen.sum()) for i in range(len(FREQUENCY_BUCKETS))],
        "ids_seen": int(len(seen)),
        "ids_total": int(len(everything)),
    }


def updates_per_epoch(data: CTRData, batch_sizes: Iterable[int], seed: int = 0,
                      max_rows: int = 2_000_000) -> tuple[np.ndarray, dict[int, np.ndarray]]:  # fmt: skip
    """How many steps of one shuffled epoch touch each ID (global row), for each batch size.

    Returns (occurrences [rows] int64: how many of the epoch's rows hold each ID, {batch size: updates [rows] int64}).
    A frequent ID is in nearly every batch, so its update count is ~ the number of steps and falls as 1/b; a rare ID
    is in at most a few batches whatever b is, so its count barely moves. Sets larger than ``max_rows`` (Criteo) are
    represented by a random ``max_rows`` of their rows, which keeps the memory to a few hundred MB.
    """
    generator = np.random.default_rng(seed)
    order = generator.permutation(len(data.train))[:max_rows]
    offsets = np.concatenate([[0], np.cumsum(data.field_dims)[:-1]])
    rows = np.asarray(data.train.ids[order], dtype=np.int64) + offsets  # [m, F], in epoch order
    total = int(sum(data.field_dims))
    updates = {}
    for b in batch_sizes:
        steps = len(rows) // b
        step_of_row = np.repeat(np.arange(steps), b)
        keys = np.unique(step_of_row[:, None] * total + rows[: steps * b])  # distinct (step, row) pairs
        updates[int(b)] = np.bincount(keys % total, minlength=total)
    return np.bincount(rows.reshape(-1), minlength=total), updates


def updates_by_occurrence(counts: np.ndarray, updates: dict[int, np.ndarray],
                          bins: int = 30) -> tuple[list[float], dict[int, list[float]]]:  # fmt: skip
    """For the updates figure: IDs binned by occurrences on a log grid; (mean occurrences per bin, {batch size: mean
    updates per bin}), empty bins left out."""
    edges = np.unique(np.logspace(0, np.log10(counts.max() + 1), bins).astype(int))
    which = np.digitize(counts, edges)
    used = [i for i in range(1, len(edges)) if (which == i).any()]
    centres = [float(counts[which == i].mean()) for i in used]
    return centres, {b: [float(per_id[which == i].mean()) for i in used] for b, per_id in updates.items()}


def table1_arms(cfg: Config, data: str = "signal", multipliers: Iterable[int] | None = None) -> list[Arm]:
    """The base batch, and no / sqrt / linear scaling at every larger batch (default: the profile's)."""
    arms = [Arm("base", rule="none", multiplier=1, data=data)]
    for k in cfg.multipliers if multipliers is None else multipliers:
        arms += [Arm(f"{rule} ×{k}", rule=rule, multiplier=k, data=data) for rule in ("none", "sqrt", "linear")]
    return arms


def cowclip_arms(cfg: Config, data: str = "signal", clip: bool = True, base: bool = True) -> list[Arm]:
    """The CowClip recipe at the base batch and every larger one (with or without the clip)."""
    tag = "CowClip" if clip else "CowClip rule, no clip"
    ks = ((1,) if base else ()) + tuple(cfg.multipliers)
    return [Arm(f"{tag} ×{k}", rule="cowclip", multiplier=k, clip=clip, data=data) for k in ks]


def scaling_table(runs: dict[str, list[Run]], base_name: str = "base") -> list[dict]:
    """Rows of {arm, batch, AUC mean/std, gap to base (paired), steps per epoch} for a table."""
    base = runs[base_name]
    rows = []
    for name, arm_runs in runs.items():
        mean, std = summarize(r.auc for r in arm_runs)
        gap, gap_std = paired_difference(arm_runs, base) if name != base_name else (0.0, 0.0)
        rows.append({"arm": name, "batch": arm_runs[0].hparams["batch_size"], "auc": mean, "auc std": std,
                     "gap": gap, "gap std": gap_std, "steps/epoch": arm_runs[0].steps_per_epoch,
                     "seconds": float(np.mean([r.seconds for r in arm_runs]))})  # fmt: skip
    return rows


def binding_by_bucket(runs: dict[str, list[Run]]) -> dict[str, list[float]]:
    """Clip binding rate per frequency bucket (rows clipped / rows touched, summed over steps and seeds) per arm."""
    out = {}
    for name, arm_runs in runs.items():
        touched = np.sum([r.bucket_touched for r in arm_runs], axis=0)
        clipped = np.sum([r.bucket_clipped for r in arm_runs], axis=0)
        out[name] = [float(c / t) if t else float("nan") for c, t in zip(clipped, touched)]
    return out


def bayes(cfg: Config, variant: str = "signal") -> dict[str, float]:
    return bayes_metrics(load_data(cfg, variant).test)


def hparams_table(cfg: Config) -> list[dict]:
    """Each rule's (dense lr, embedding lr, L2, clip) at every batch of the profile."""
    rows = []
    for k in (1, *cfg.multipliers):
        for rule in RULES:
            hp = hyperparameters(cfg, Arm("", rule=rule, multiplier=k))
            rows.append({"batch": hp["batch_size"], "rule": RULE_NAMES[rule], **{key: hp[key] for key in
                         ("lr", "embed_lr", "l2", "clip")}})  # fmt: skip
    return rows


def live_run(cfg: Config, *, multiplier: int, rule: str = "cowclip", r: float | None = None,
             zeta: float | None = None, data: str = "signal", seed: int = 0) -> dict:  # fmt: skip
    """The explorer's "run live" button: one run in this process for ``cfg.live_epochs`` epochs; a readout dict."""
    arm = Arm("live", rule=rule, multiplier=multiplier, r=r, zeta=zeta, data=data, epochs=cfg.live_epochs)
    run = train(cfg, arm, seed)
    return {"AUC (live)": run.auc, "epochs": run.epochs, "steps": run.steps,
            "clip binding rate": "—" if run.clip_fraction is None else f"{100 * run.clip_fraction:.2f}%",
            "seconds": run.seconds}  # fmt: skip


def run_record(run: Run) -> dict:
    """A Run as plain data for the results file."""
    record = asdict(run)
    record.pop("model", None)
    return record



# --- the notebook's tables and figures, as plain data (the notebook wraps cells in its own MeanStd) ---------------

BENCH_PATH = Path(__file__).resolve().parents[2] / "data" / "results" / "bench_cowclip.cpu.json"


def seeded(cfg: Config, seed: int) -> Config:
    """The profile with every seed list shifted by ``seed`` (the notebook's SEED; 0 gives the recorded run)."""

    def shift(seeds):
        return tuple(seed + s for s in seeds)

    return replace(cfg, seeds=shift(cfg.seeds), table1_seeds=shift(cfg.table1_seeds),
                   step_matched_seeds=shift(cfg.step_matched_seeds))  # fmt: skip


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample std, n): the arguments of the book's MeanStd."""
    values = [float(v) for v in values]
    return (*summarize(values), len(values))


def mean_auc(runs: list[Run]) -> float:
    return float(np.mean([r.auc for r in runs]))


def gap(runs: list[Run], base: list[Run]) -> tuple[float, float, int]:
    """Paired AUC difference runs − base over the seeds both have: (mean, std, n)."""
    by_seed = {r.seed: r.auc for r in base}
    return mean_std(r.auc - by_seed[r.seed] for r in runs if r.seed in by_seed)


def rule_curve(runs: dict[str, list[Run]], rule: str, base: str = "base") -> tuple[list[int], list[float], list[float]]:
    """(multipliers, mean AUC, std AUC) of one rule's arms named "<rule> ×k", with the base batch as ×1."""
    prefix = "CowClip ×" if rule == "cowclip" else f"{rule} ×"
    names = [base] + [n for n in runs if n.startswith(prefix) and n.split("×")[1].isdigit()]
    ks = [1] + [int(n.split("×")[1]) for n in names[1:]]
    stats = [mean_std(r.auc for r in runs[n]) for n in names]
    return ks, [s[0] for s in stats], [s[1] for s in stats]


def table1_rows(table1: dict[str, list[Run]], table1_hf: dict[str, list[Run]], cell) -> list[list]:
    """Rows of the Table 1 analogue: arm, batch, steps/epoch, AUC and paired gap on the full data and on the
    high-frequency-only copy (None where the copy has no such arm). ``cell(mean, std, n)`` builds a table cell."""
    rows = []
    for name, runs in table1.items():
        full = [cell(*mean_std(r.auc for r in runs)), cell(*gap(runs, table1["base"]))]
        hf = ([cell(*mean_std(r.auc for r in table1_hf[name])), cell(*gap(table1_hf[name], table1_hf["base"]))]
              if name in table1_hf else [None, None])  # fmt: skip
        rows.append([name, f"{runs[0].hparams['batch_size']:,}", runs[0].steps_per_epoch, *full, *hf])
    return rows


def hf_control(full: dict[str, list[Run]], hf: dict[str, list[Run]], names: Iterable[str],
               base: str = "base", hf_base: str | None = None) -> dict[str, dict]:  # fmt: skip
    """For each arm name: its paired gap (mean, std, n) to the base on the full data and on the high-frequency-only
    copy, and their ratio hf / full (how much of the loss is left once the rare IDs are gone)."""
    out = {}
    for name in names:
        f, h = gap(full[name], full[base]), gap(hf[name], hf[hf_base or base])
        out[name] = {"full": f, "hf": h, "ratio": h[0] / f[0] if f[0] else float("nan")}
    return out


def main_rows(cfg: Config, cowclip_runs: dict[str, list[Run]], plain: dict[str, list[Run]], cell) -> list[tuple]:
    """paper_vs_ours rows of the main table: per k the batch, steps per epoch, AUC of the CowClip recipe and of
    sqrt scaling, and the recipe's paired gap to its base batch; the paper's Criteo numbers beside them."""
    rows = []
    base = cowclip_runs["CowClip ×1"]
    for k in (1, *cfg.multipliers):
        on = cowclip_runs[f"CowClip ×{k}"]
        sqrt_runs = plain["base"] if k == 1 else plain[f"sqrt ×{k}"]
        paper = PAPER_CRITEO.get(1024 * k)
        paper_gap = None if paper is None else (paper[3] - PAPER_CRITEO[1024][3]) / 100
        rows.append((f"×{k}", {
            "batch": (f"{k}K", f"{on[0].hparams['batch_size']:,}"),
            "steps/epoch": (PAPER_CRITEO_STEPS_PER_EPOCH.get(1024 * k), on[0].steps_per_epoch),
            "AUC CowClip": (None if paper is None else paper[3] / 100, cell(*mean_std(r.auc for r in on))),
            "CowClip − its ×1": (paper_gap, cell(*gap(on, base)) if k > 1 else None),
            "AUC sqrt, all lrs": (None, cell(*mean_std(r.auc for r in sqrt_runs))),
        }))  # fmt: skip
    return rows


def ablation(cfg: Config, cowclip_runs: dict[str, list[Run]], noclip_runs: dict[str, list[Run]]) -> list[tuple]:
    """Per batch multiplier k: (k, paired AUC difference clip − no clip: mean, std, n, the clip's binding rate)."""
    out = []
    for k in (1, *cfg.multipliers):
        on, off = cowclip_runs[f"CowClip ×{k}"], noclip_runs[f"CowClip rule, no clip ×{k}"]
        out.append((k, *gap(on, off), float(np.mean([r.clip_fraction for r in on]))))
    return out


def binding_rows(runs: dict[str, list[Run]]) -> list[list]:
    """Per arm: name, steps, the clip's binding rate (% of touched rows) per frequency bucket and over all rows."""
    rates = binding_by_bucket(runs)
    return [[name, arm_runs[0].steps, *[None if v != v else 100 * v for v in rates[name]],
             100 * float(np.mean([r.clip_fraction for r in arm_runs]))] for name, arm_runs in runs.items()]  # fmt: skip


def norm_rows(runs: dict[str, list[Run]]) -> list[list]:
    """Per arm: name, steps, L2 coefficient, mean ||w_k|| at the end per frequency bucket (mean over seeds)."""
    return [[name, arm_runs[0].steps, arm_runs[0].hparams["l2"],
             *np.mean([r.norm_end for r in arm_runs], axis=0).tolist()] for name, arm_runs in runs.items()]  # fmt: skip


def regime_rows(runs: dict[str, list[Run]], cell) -> list[list]:
    """Rows of the epoch- vs step-matched table: arm, batch, steps, epochs, the seeds averaged, AUC (mean ± std over
    those seeds)."""
    return [[name, f"{r[0].hparams['batch_size']:,}", r[0].steps, f"{r[0].epochs:.1f}", seed_label(x.seed for x in r),
             cell(*mean_std(x.auc for x in r))] for name, r in runs.items()]  # fmt: skip


def model_rows(cfg: Config, models: dict[str, list[Run]], k: int, cell) -> list[list]:
    """Per model: AUC at the base batch and at ×k (the CowClip recipe, epoch-matched), the paired gap, and seconds."""
    rows = []
    for name in (cfg.model, *cfg.other_models):
        small, big = models[f"{name} ×1"], models[f"{name} ×{k}"]
        rows.append([name, cell(*mean_std(r.auc for r in small)), cell(*mean_std(r.auc for r in big)),
                     cell(*gap(big, small)), float(np.mean([r.seconds for r in small])),
                     float(np.mean([r.seconds for r in big]))])  # fmt: skip
    return rows


def throughput_rows(cfg: Config, cowclip_runs: dict[str, list[Run]]) -> list[list]:
    """Per batch: batch, steps, seconds, samples/s, ms per step, samples/s relative to the base batch (one thread,
    per-epoch evaluation included)."""
    rows = []
    for k in (1, *cfg.multipliers):
        runs = cowclip_runs[f"CowClip ×{k}"]
        seconds = float(np.mean([r.seconds for r in runs]))
        samples = runs[0].steps * runs[0].hparams["batch_size"]
        rows.append([f"{runs[0].hparams['batch_size']:,}", runs[0].steps, seconds, samples / seconds,
                     1000 * seconds / runs[0].steps])
    return [row + [row[3] / rows[0][3]] for row in rows]


def paper_speedup() -> dict[str, float]:
    """The official Criteo README's time ratio 1K → 128K (DeepFM, one V100) against the 128× fewer steps: the per-step
    cost of a 128K step relative to a 1K step."""
    t1, t128 = PAPER_CRITEO[1024][4], PAPER_CRITEO[131072][4]
    steps1, steps128 = PAPER_CRITEO_STEPS_PER_EPOCH[1024], PAPER_CRITEO_STEPS_PER_EPOCH[131072]
    return {"minutes_1k": t1, "minutes_128k": t128, "speedup": t1 / t128, "steps_ratio": steps1 / steps128,
            "step_cost_ratio": (t128 / steps128) / (t1 / steps1)}  # fmt: skip


def clip_cost(path: str | os.PathLike | None = None) -> list[dict] | None:
    """The clip's own cost from the recorded benchmark (tests/benchmarks/bench_cowclip.py; data/results/
    bench_cowclip.cpu.json): per gradient mode, medians over its recorded runs of the step time and optimizer time
    with and without the clip. None when the file is not there (e.g. a pip-installed package)."""
    try:
        with open(path or BENCH_PATH) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    modes = {}
    for run in record["runs"]:
        for result in run["results"]:
            modes.setdefault(result["mode"], []).append((result, run))
    out = []
    for mode, entries in modes.items():
        def med(f, entries=entries):
            return float(np.median([f(r) for r, _ in entries]))

        run = entries[0][1]
        out.append({"mode": mode, "batch": run["batch_size"], "rows": run["rows"], "threads": run["threads"],
                    "ms_step": med(lambda r: r["arms"]["baseline"]["ms_step"]),
                    "ms_step_clip": med(lambda r: r["arms"]["cowclip"]["ms_step"]),
                    "ms_opt": med(lambda r: r["arms"]["baseline"]["ms_optimizer"]),
                    "ms_opt_clip": med(lambda r: r["arms"]["cowclip"]["ms_optimizer"]),
                    "ratio": med(lambda r: r["pair_ratio_median"]), "runs": len(entries)})  # fmt: skip
    return out


def ledger_curves(runs: list[Run]) -> list[list[tuple]]:
    """Per seed, the run's evaluations as (samples, steps, seconds, test AUC) for accel.experiments.ledger."""
    return [list(r.curve_points) for r in runs]


def explorer_index(cfg: Config, groups: Iterable[dict[str, list[Run]]], sweep: dict[str, list[Run]]) -> dict:
    """{(multiplier, rule, r, zeta): (arm name, mean AUC)} of every trained epoch-matched setting, for the explorer."""
    trained = {}
    for runs in groups:
        for name, arm_runs in runs.items():
            hp = arm_runs[0].hparams
            if "no clip" in name or arm_runs[0].steps != round(cfg.epochs * arm_runs[0].steps_per_epoch):
                continue
            rule = "cowclip" if name.startswith("CowClip") else ("none" if name == "base" else name.split(" ×")[0])
            trained[(hp["batch_size"] // cfg.base_batch, rule, hp["r"], hp["zeta"])] = (
                f"{name} ({seed_label(r.seed for r in arm_runs)})", mean_auc(arm_runs))
    for name, arm_runs in sweep.items():
        hp = arm_runs[0].hparams
        if hp["clip"]:
            key = (hp["batch_size"] // cfg.base_batch, "cowclip", hp["r"], hp["zeta"])
            trained.setdefault(key, (f"{name} ×{key[0]} ({seed_label(r.seed for r in arm_runs)})", mean_auc(arm_runs)))
    return trained


def nearest(trained: dict, multiplier: int, rule: str, r: float, zeta: float) -> tuple[str, float]:
    """The trained setting closest to the asked one (batch on a log scale, the rule, and r, zeta for CowClip)."""
    def distance(key):
        knobs = abs(math.log10(key[2] / r)) + abs(math.log10(max(key[3], 1e-9) / max(zeta, 1e-9)))
        return abs(math.log2(key[0] / multiplier)) + 3 * (key[1] != rule) + knobs * (rule == "cowclip")

    return trained[min(trained, key=distance)]


def record_metrics(results, *, limit=None, table1=None, cowclip_runs=None, regimes=None, models=None) -> None:
    """The regression tolerances of the numbers a smoke re-run must reproduce (``results``: the book's Results,
    duck-typed). CPU kernels put identical runs up to ~1.3e-7 apart, hence abs=1e-5 on AUCs."""
    if limit:
        results.metric("bayes_auc", limit["auc"], abs=1e-9)
    for prefix, runs in (("table1_auc", table1), ("cowclip_auc", cowclip_runs), ("regime_auc", regimes)):
        for name, arm_runs in (runs or {}).items():
            key = name.replace("CowClip ×", "x") if prefix == "cowclip_auc" else name
            results.metric(f"{prefix}[{key}]", mean_auc(arm_runs), abs=1e-5)
    for name, arm_runs in (models or {}).items():
        if name.endswith(" ×1"):
            results.metric(f"model_auc[{name[:-3]} x1]", mean_auc(arm_runs), abs=1e-5)


# --- display helpers (wording and the explorer's look-ups) ---------------------------------------------------------
def seed_label(seeds: Iterable[int]) -> str:
    """'seed 0', 'seeds 0–2' (a consecutive run), 'seeds 0, 2, 5': which seeds a mean is over."""
    seeds = sorted(set(seeds))
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}–{seeds[-1]}"
    return "seeds " + ", ".join(map(str, seeds))


# reader names of the data variants (the arms' name prefixes are the codes)
VARIANT_NAMES = {"signal": "full data", "hf": "high-frequency IDs only", "noise": "rare IDs mostly noise"}


def zeta_label(zeta: float) -> str:
    """ζ for display in scientific notation: 1e-05, 1e-03."""
    return f"{zeta:.0e}"


def toy_problem(generator: torch.Generator, seed: int, vocab: int = 1000, fields: int = 4, batch: int = 512):
    """The drop-in's toy: an nn.Embedding + MLP (seeded init, global RNG untouched) and one batch of random ids with a
    learnable label (the first field's id below vocab/4)."""
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Embedding(vocab, 8), nn.Flatten(), nn.Linear(fields * 8, 16), nn.ReLU(),
                              nn.Linear(16, 1))
    ids = torch.randint(0, vocab, (batch, fields), generator=generator)
    return model, ids, (ids[:, 0] < vocab // 4).float()


def explorer_readout(cfg: Config, trained: dict, multiplier: int, rule: str, r: float, zeta: float) -> dict:
    """The explorer's instant readout: the scaled hyperparameters and the nearest trained setting's measured AUC."""
    hp = hyperparameters(cfg, Arm("x", rule=rule, multiplier=multiplier, r=r, zeta=zeta))
    name, value = nearest(trained, multiplier, rule, r, zeta)
    return {"batch": hp["batch_size"], "dense lr": f"{hp['lr']:.2e}", "embedding lr": f"{hp['embed_lr']:.2e}",
            "L2": f"{hp['l2']:.1e}", "nearest trained setting": name, "its AUC": value}


def strongest_rule(table1: dict[str, list[Run]], k: int, rules=("none", "sqrt", "linear")) -> tuple[str, float]:
    """The plain rule with the highest mean test AUC at ×k in Table 1: (rule, AUC)."""
    aucs = {rule: mean_auc(table1[f"{rule} ×{k}"]) for rule in rules if f"{rule} ×{k}" in table1}
    best = max(aucs, key=aucs.get)
    return best, aucs[best]


def sweep_summary(sweep: dict[str, list[Run]], cfg: Config) -> str:
    """One paragraph on the r, zeta sweep, worded from the values swept and the measured binding rates and AUCs."""
    rows = {name: runs[0] for name, runs in sweep.items()}
    off = next((run for run in rows.values() if run.clip_fraction is None), None)
    clipped = {name: run for name, run in rows.items() if run.clip_fraction is not None}
    default = next((run for run in clipped.values() if (run.hparams["r"], run.hparams["zeta"]) == (cfg.r, cfg.zeta)),
                   None)
    parts = []
    zetas = sorted({run.hparams["zeta"] for run in clipped.values() if run.hparams["r"] == cfg.r})
    if len(zetas) > 1 and default is not None:
        lifted = [run for run in clipped.values() if run.hparams["r"] == cfg.r and run.hparams["zeta"] > cfg.zeta]
        parts.append(f"At r = {cfg.r:g}, raising ζ from {zeta_label(cfg.zeta)} to "
                     + ", ".join(zeta_label(run.hparams["zeta"]) for run in lifted) + " moves the binding rate from "
                     f"{100 * default.clip_fraction:.4f}% to "
                     + ", ".join(f"{100 * run.clip_fraction:.4f}%" for run in lifted) + ".")
    else:
        parts.append(f"This sweep keeps ζ at {zeta_label(cfg.zeta)} and varies only r.")
    most = max(clipped.values(), key=lambda run: run.clip_fraction, default=None)
    if most is not None and off is not None:
        diff = most.auc - off.auc
        verdict = ("costs AUC" if diff < -1e-4 else "buys AUC" if diff > 1e-4 else "leaves AUC about where it was")
        parts.append(f"The setting that binds most (r = {most.hparams['r']:g}, ζ = {zeta_label(most.hparams['zeta'])}, "
                     f"{100 * most.clip_fraction:.1f}% of touched rows) ends at {most.auc:.4f} against {off.auc:.4f} "
                     f"without the clip ({diff:+.4f}): here binding more {verdict}.")
    return " ".join(parts)
