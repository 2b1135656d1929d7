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
mostly noise, as in real logs) and ``hf`` (the high-frequency-only copy of ``signal``). The paper profile trains on
Criteo instead (:mod:`accel.datasets.criteo`), where only ``signal`` (the data as they are) and ``hf`` (IDs seen
fewer than ``hf_min_count`` times mapped to one out-of-vocabulary ID per field) exist.

Runs are independent given (config, arm, seed), so :func:`run_arms` spreads them over worker processes (one thread
each) and keeps a cache so that a run two tables share is trained once. The same seed gives the same numbers.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from accel.cowclip import CowClip
from accel.datasets.ctr import CTRData, SyntheticCTRSpec, auc, bayes_metrics, id_counts, logloss, make_synthetic_ctr
from accel.experiments import pick_config
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

    dataset: str = "synthetic"  # synthetic | criteo (paper profile)
    data: SyntheticCTRSpec = SyntheticCTRSpec(train_rows=400_000, test_rows=100_000, linear_scale=0.45,
                                              interaction_scale=0.12)  # fmt: skip
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
    hf_multipliers: tuple[int, ...] = (8, 128)  # Table 1 on the high-frequency-only copy
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


CONFIGS = {
    "smoke": Config(data=SyntheticCTRSpec(vocab_sizes=(2000, 500, 200, 100, 50), train_rows=20_000, test_rows=10_000,
                                          linear_scale=0.45, interaction_scale=0.12),
                    base_batch=64, multipliers=(8, 32), hf_multipliers=(32,), epochs=1, seeds=(0,), table1_seeds=(0,),
                    mlp_dims=(16,), other_models=("dcn",), step_matched_steps=30, step_matched_seeds=(0,),
                    sweep=((0.01, 1e-5),), workers=0),
    "cpu": Config(),
    # the paper profile: DeepFM on Criteo with the official recipe at 1K ... 128K (a GPU and the real data needed)
    "paper": Config(dataset="criteo", mlp_dims=(400, 400, 400), base_batch=1024, base_lr=8e-4, base_embed_lr=1e-4,
                    base_l2=1e-5, epochs=10, multipliers=(8, 32, 128), hf_multipliers=(8, 32, 128),
                    step_matched_steps=31_500, step_matched_seeds=(0,), workers=0, live_epochs=1),
}  # fmt: skip


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
    l2 = cfg.base_l2 * (k if arm.scale_l2 else 1)
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
def _cached_criteo(min_count: int | None) -> CTRData:
    from accel.datasets.criteo import load_criteo

    return load_criteo(path=os.environ.get(CRITEO_PATH_ENV), min_count=min_count)


def load_data(cfg: Config, variant: str = "signal") -> CTRData:
    """The data set of a variant: synthetic (generated once, then memory-mapped from the cache) or, for the paper
    profile, Criteo Kaggle with the official preprocessing (``hf``: values seen fewer than ``hf_min_count`` times
    share one ID). Criteo has no published checksum, so it is read from the file named by $ACCEL_CRITEO_PATH (the
    downloaded archive or train.txt; see accel.datasets.criteo)."""
    if cfg.dataset == "criteo":
        if variant not in ("signal", "hf"):
            raise ValueError(f"Invalid data variant for Criteo: {variant!r}; allowed: 'signal', 'hf'")
        return _cached_criteo(cfg.hf_min_count if variant == "hf" else None)
    return _cached_data(data_spec(cfg, variant))


@lru_cache(maxsize=4)
def frequency_bucket_of_rows(data: CTRData) -> torch.Tensor:
    """Bucket index [total rows] of every global embedding row: its ID's count in the training split, bucketed by
    FREQUENCY_BUCKETS (bucket 0 also holds IDs never seen in training)."""
    counts = np.concatenate(id_counts(data.train.ids, data.field_dims))
    return torch.from_numpy(np.maximum(np.searchsorted(FREQUENCY_BUCKETS, counts, side="right") - 1, 0))


def bucket_labels() -> list[str]:
    edges = list(FREQUENCY_BUCKETS)
    return [f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])] + [f"{edges[-1]}+"]


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
    optimizer = CowClip(model, model.embedding, batch_size=batch, warmup_steps=steps_per_epoch, clip=hp["clip"],
                        r=hp["r"], zeta=hp["zeta"], embed_lr=hp["embed_lr"], lr=hp["lr"], l2=hp["l2"],
                        return_rows=hp["clip"], absent_rows=absent_rows(hp))  # fmt: skip
    buckets = frequency_bucket_of_rows(data).to(device)
    touched = torch.zeros(len(FREQUENCY_BUCKETS), dtype=torch.long, device=device)
    clipped = torch.zeros_like(touched)
    generator = torch.Generator().manual_seed(seed + 1_000_003)  # the data order; the model used `seed`
    curve, start, step = [], time.perf_counter(), 0
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
        bucket_touched=touched.tolist(), bucket_clipped=clipped.tolist(),
    )  # fmt: skip
    if keep_model:
        run.model = model
    return run


# --- many runs -------------------------------------------------------------------------------------------------


def run_key(cfg: Config, arm: Arm, seed: int) -> tuple:
    """What determines a run's outcome: the recipe, the arm's settings (not its name) and the seed."""
    recipe = replace(cfg, seeds=(), table1_seeds=(), other_models=(), step_matched_seeds=(), sweep=(), workers=0,
                     hf_multipliers=(), multipliers=())
    return (repr(recipe), repr(replace(arm, name="")), seed)


def _worker_init() -> None:
    torch.set_num_threads(1)


def _run_job(cfg: Config, arm: Arm, seed: int) -> Run:
    return train(cfg, arm, seed, device="cpu")


def run_arms(cfg: Config, arms: Iterable[Arm], seeds: Iterable[int], *, desc: str = "runs", show_progress: bool = True,
             cache: dict | None = None) -> dict[str, list[Run]]:  # fmt: skip
    """Every arm for every seed, {arm name: [Run per seed]}. Runs not in ``cache`` are trained, in ``cfg.workers``
    processes of one thread each (0: here). Data are generated (and cached on disk) before the workers start."""
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

