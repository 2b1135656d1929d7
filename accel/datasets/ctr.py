"""Click-through-rate data for the CowClip chapter: a synthetic twin of Criteo with a known optimum, and fast metrics.

Real click logs have two properties that make large-batch training hard, and the synthetic generator keeps both:

* **Zipf-distributed IDs.** In field ``f`` the ID of frequency rank ``k`` (0 = most frequent) is drawn with
  probability proportional to ``(k + 1) ** -zipf_exponent``. A handful of IDs cover most rows; most IDs are seen a few
  times per epoch. IDs *are* their frequency ranks, so bucketing by frequency is bucketing by ID.
* **Rare IDs that matter (or not).** Every ID carries a first-order weight and a latent vector, and the true logit of a
  row is an FM model of its IDs::

      logit*(x) = bias + sum_f a_f[x_f] + sum_{f<g} <u_f[x_f], u_g[x_g]>,     p*(x) = sigmoid(logit*(x))

  An ID whose expected count in the training set is below ``rare_count`` is *rare*; its weight and vector are drawn
  with their scale multiplied by ``rare_signal``. ``rare_signal = 1`` lets rare IDs carry as much signal as frequent
  ones; ``rare_signal = 0.2`` makes them mostly noise, as in real logs. The bias is solved so the mean click rate is
  ``click_rate``.

Because ``p*`` is known for every row, the physical limit of any model is known too: :func:`bayes_metrics` gives the
Bayes-optimal AUC and log-loss (expected over label draws, and realised on the labels actually drawn). Every result in
the chapter is reported beside them.

``high_frequency_only=True`` builds the paper's Table 1 control: rare IDs carry no signal and are all mapped to one
out-of-vocabulary ID per field (the last row of that field), so the data hold the same frequent IDs and none of the
rare ones, and ``p*`` stays exact.

Generated sets are cached as ``.npy`` files under ``<cache>/ctr-synthetic/<fingerprint>/`` (written into a hidden
folder, then renamed) and opened memory-mapped; the fingerprint hashes the whole spec, so a changed spec never
reads a stale set.

Both the synthetic data and the real loaders in :mod:`accel.datasets.criteo` come back as :class:`CTRData`.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import cache

__all__ = [
    "CTRData",
    "CTRSplit",
    "SyntheticCTRSpec",
    "auc",
    "bayes_metrics",
    "id_counts",
    "logloss",
    "make_synthetic_ctr",
]


# ------------------------------------------------------------------------------------------------------ containers


@dataclass(eq=False)
class CTRSplit:
    """One split. ``ids`` [N, F] per-field local IDs (0 .. field_dims[f]-1, int32); ``dense`` [N, D] float32 or None;
    ``labels`` [N] float32 in {0, 1}; ``click_probability`` [N] float64, the true p*(x) where known (synthetic).

    Cached splits are memory-mapped copy-on-write (``np.load(mmap_mode="c")``): nothing is read until used, and a
    write changes this process's view only, never the cache.
    """

    ids: np.ndarray
    labels: np.ndarray
    dense: np.ndarray | None = None
    click_probability: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(
        self, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(ids int32 [N, F], dense float32 [N, D] or None, labels float32 [N]) as torch tensors.

        Without ``device`` (or on the CPU) they share memory with the arrays (``torch.from_numpy``, no copy, so 45M
        Criteo rows cost nothing until read); on another device they are copied there. Embedding layers accept int32
        ids.
        """
        out = [None if a is None else torch.from_numpy(a) for a in (self.ids, self.dense, self.labels)]
        if device is not None and torch.device(device).type != "cpu":
            out = [None if t is None else t.to(device) for t in out]
        return out[0], out[1], out[2]


@dataclass(eq=False)
class CTRData:
    """A CTR dataset: splits, per-field vocabulary sizes and the metadata it was built with.

    ``field_dims[f]`` is the number of IDs of field ``f`` (an embedding table of that many rows); ``num_dense`` the
    width of ``dense`` (0 when None); ``valid`` exists only for splits that have one (criteo_x4); ``field_names`` and
    ``dense_names`` name the columns where known; ``metadata`` is the manifest (synthetic: the spec and the solved
    true model's facts; Criteo/Avazu: rows, malformed lines, preprocessing, per-field statistics, source hash).
    """

    name: str
    train: CTRSplit
    test: CTRSplit
    field_dims: list[int]
    num_dense: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    valid: CTRSplit | None = None
    field_names: list[str] | None = None
    dense_names: list[str] | None = None

    @property
    def num_fields(self) -> int:
        return len(self.field_dims)

    def __repr__(self) -> str:
        sizes = ", ".join(
            f"{s}={len(getattr(self, s)):,}" for s in ("train", "valid", "test") if getattr(self, s) is not None
        )
        return (
            f"CTRData({self.name!r}, {sizes} rows, {self.num_fields} fields ({sum(self.field_dims):,} ids), "
            f"{self.num_dense} dense)"
        )


# --------------------------------------------------------------------------------------------------------- metrics


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def auc(labels, scores) -> float:
    """ROC AUC of ``scores`` [N] against binary ``labels`` [N] (numpy or torch), ties counted half; O(N log N).

    Equal to the Mann-Whitney U statistic over n_pos·n_neg pairs. Any monotone transform of the scores (logits or
    probabilities) gives the same value. Raises ValueError when the labels hold only one class.
    """
    y, s = _as_numpy(labels).reshape(-1), _as_numpy(scores).astype(np.float64, copy=False).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"Invalid scores: shape {s.shape} does not match labels {y.shape}")
    positive = y > 0.5
    n_pos = int(positive.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"Invalid labels: AUC needs both classes, got {n_pos} positives and {n_neg} negatives")
    order = np.argsort(s, kind="stable")
    sorted_scores = s[order]
    first_of_group = np.empty(len(s), dtype=bool)
    first_of_group[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=first_of_group[1:])
    starts = np.flatnonzero(first_of_group)
    ends = np.append(starts[1:], len(s))
    mean_rank = (starts + ends + 1) / 2.0  # 1-based ranks start+1 .. end, averaged over the tie group
    ranks = mean_rank[np.cumsum(first_of_group) - 1]
    rank_sum = ranks[positive[order]].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels, probabilities, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy in nats of ``probabilities`` [N] (clipped to [eps, 1 - eps]) against ``labels``."""
    y = _as_numpy(labels).astype(np.float64).reshape(-1)
    p = np.clip(_as_numpy(probabilities).astype(np.float64).reshape(-1), eps, 1.0 - eps)
    if y.shape != p.shape:
        raise ValueError(f"Invalid probabilities: shape {p.shape} does not match labels {y.shape}")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def expected_auc(click_probability) -> float:
    """AUC of the true probabilities, expected over the label draws: E[correct pairs] / E[pos-neg pairs].

    Row i is a positive with probability p_i and row j a negative with probability 1 - p_j, independently, so a pair
    (i, j), i != j, is a positive-negative pair with weight p_i (1 - p_j) and is ordered correctly when p_i > p_j
    (half when equal). Sorting once gives both sums in O(N log N).
    """
    p = np.sort(_as_numpy(click_probability).astype(np.float64).reshape(-1))
    q = 1.0 - p
    # weight of negatives strictly below each position, and within its tie group (counted half)
    distinct = np.empty(len(p), dtype=bool)
    distinct[0] = True
    np.not_equal(p[1:], p[:-1], out=distinct[1:])
    group = np.cumsum(distinct) - 1
    q_group = np.bincount(group, weights=q)
    q_below_group = np.concatenate(([0.0], np.cumsum(q_group)[:-1]))
    correct = np.sum(p * (q_below_group[group] + 0.5 * (q_group[group] - q)))  # the row itself is not its own pair
    pairs = p.sum() * q.sum() - np.sum(p * q)
    return float(correct / pairs)


def bayes_metrics(split: CTRSplit) -> dict[str, float]:
    """The physical limit on ``split``: AUC and log-loss of the true click probabilities.

    ``auc`` and ``logloss`` are realised on the split's drawn labels (the numbers a perfect model would score on this
    test set); ``expected_auc`` and ``expected_logloss`` average over label draws (mean binary entropy of p*).
    """
    if split.click_probability is None:
        raise ValueError("Invalid split: its click probabilities are unknown (only synthetic data have them)")
    p = np.asarray(split.click_probability, dtype=np.float64)
    entropy = -(p * np.log(np.clip(p, 1e-300, 1)) + (1 - p) * np.log(np.clip(1 - p, 1e-300, 1)))
    return {
        "auc": auc(split.labels, p),
        "logloss": logloss(split.labels, p),
        "expected_auc": expected_auc(p),
        "expected_logloss": float(entropy.mean()),
        "click_rate": float(np.mean(split.labels)),
    }


def id_counts(ids, field_dims) -> list[np.ndarray]:
    """How many rows hold each ID: one int64 array [field_dims[f]] per field, from ``ids`` [N, F]."""
    ids = _as_numpy(ids)
    return [np.bincount(ids[:, f], minlength=dim) for f, dim in enumerate(field_dims)]


# ----------------------------------------------------------------------------------------------- synthetic twin


@dataclass(frozen=True)
class SyntheticCTRSpec:
    """Everything that defines a synthetic CTR set; the same spec and seed give the same bytes on any machine.

    vocab_sizes: IDs per field (F = len). The default spans 50 .. 20,000 like Criteo's mix of small and huge fields,
        scaled down: 43,950 IDs in all.
    zipf_exponent: s in P(rank k) ∝ (k + 1)^-s. Real logs sit near 1.0-1.2.
    train_rows, test_rows: split sizes (the test set is drawn from the same distribution, separately).
    latent_dim, linear_scale, interaction_scale: the true FM model's size and the standard deviations of its
        first-order weights and latent vector entries (set so the Bayes AUC is near Criteo's 0.8).
    rare_count: an ID is rare when its expected count in ``train_rows`` rows is below this.
    rare_signal: scale of rare IDs' weights and vectors relative to frequent ones (1 = same distribution, 0 = none).
    click_rate: the mean of p* the bias is solved for (Criteo's is about 0.26).
    high_frequency_only: rare IDs carry no signal and are all replaced by one out-of-vocabulary ID per field.
    seed: seeds the weights, the rows and the labels (three independent streams).
    """

    vocab_sizes: tuple[int, ...] = (20_000, 10_000, 5_000, 3_000, 2_000, 1_500, 1_000, 700, 400, 200, 100, 50)
    zipf_exponent: float = 1.1
    train_rows: int = 200_000
    test_rows: int = 100_000
    latent_dim: int = 4
    linear_scale: float = 0.5
    interaction_scale: float = 0.45
    rare_count: float = 20.0
    rare_signal: float = 1.0
    click_rate: float = 0.25
    high_frequency_only: bool = False
    seed: int = 0

    def __post_init__(self):
        """Check every field (ValueError naming it) and store numpy numbers as the Python ones they equal, so that a
        spec built from numpy values is the same spec, with the same fingerprint, as one built from literals."""

        def is_int(value) -> bool:
            return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))

        def is_real(value) -> bool:
            return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)

        def invalid(name: str, expected: str) -> ValueError:
            return ValueError(f"Invalid {name}: {getattr(self, name)!r}; expected {expected}")

        def store(name: str, valid: bool, expected: str, kind: type) -> None:
            if not valid:
                raise invalid(name, expected)
            object.__setattr__(self, name, kind(getattr(self, name)))  # frozen: set the normalised value directly

        sizes = self.vocab_sizes
        if not (isinstance(sizes, (tuple, list)) and sizes and all(is_int(v) and v >= 2 for v in sizes)):
            raise invalid("vocab_sizes", "a non-empty tuple of ints >= 2 (IDs per field)")
        object.__setattr__(self, "vocab_sizes", tuple(int(v) for v in sizes))
        for name, minimum in (("train_rows", 1), ("test_rows", 1), ("latent_dim", 1), ("seed", 0)):
            value = getattr(self, name)
            store(name, is_int(value) and value >= minimum, f"an int >= {minimum}", int)
        store("zipf_exponent", is_real(self.zipf_exponent) and self.zipf_exponent > 0, "a finite number > 0", float)
        for name in ("linear_scale", "interaction_scale", "rare_count", "rare_signal"):
            value = getattr(self, name)
            store(name, is_real(value) and value >= 0, "a finite number >= 0", float)
        store("click_rate", is_real(self.click_rate) and 0 < self.click_rate < 1, "a number in (0, 1)", float)
        flag = self.high_frequency_only
        store("high_frequency_only", isinstance(flag, (bool, np.bool_)), "True or False", bool)

    def fingerprint(self) -> str:
        payload = json.dumps({"version": 2, **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]


def zipf_probabilities(vocab_size: int, exponent: float) -> np.ndarray:
    """P(rank k) ∝ (k + 1)^-exponent for k = 0 .. vocab_size - 1, float64 [vocab_size], summing to 1."""
    weights = np.arange(1, vocab_size + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


def _true_model(spec: SyntheticCTRSpec, rng: np.random.Generator) -> tuple[list, list, list]:
    """Per field: Zipf probabilities [V], first-order weights [V], latent vectors [V, k] (rare IDs scaled)."""
    probs, linear, latent = [], [], []
    for vocab in spec.vocab_sizes:
        p = zipf_probabilities(int(vocab), spec.zipf_exponent)
        rare = p * spec.train_rows < spec.rare_count
        scale = np.where(rare, 0.0 if spec.high_frequency_only else spec.rare_signal, 1.0)
        probs.append(p)
        linear.append(rng.normal(0.0, spec.linear_scale, size=len(p)) * scale)
        latent.append(rng.normal(0.0, spec.interaction_scale, size=(len(p), spec.latent_dim)) * scale[:, None])
    return probs, linear, latent


def _draw_ids(probs: list[np.ndarray], rows: int, rng: np.random.Generator) -> np.ndarray:
    """[rows, F] int32 IDs, column f drawn from probs[f] by inverting its CDF."""
    ids = np.empty((rows, len(probs)), dtype=np.int32)
    for f, p in enumerate(probs):
        cdf = np.cumsum(p)
        cdf[-1] = 1.0
        ids[:, f] = np.searchsorted(cdf, rng.random(rows), side="right")
    return ids


def _logits_without_bias(ids: np.ndarray, linear: list, latent: list, chunk: int = 1 << 18) -> np.ndarray:
    """FM logit of each row minus the bias: sum of first-order weights + 0.5·(|sum v|^2 - sum |v|^2)."""
    out = np.empty(len(ids), dtype=np.float64)
    for start in range(0, len(ids), chunk):
        block = ids[start : start + chunk]
        first = sum(linear[f][block[:, f]] for f in range(block.shape[1]))
        vectors = np.stack([latent[f][block[:, f]] for f in range(block.shape[1])], axis=1)  # [n, F, k]
        second = 0.5 * (np.square(vectors.sum(1)).sum(-1) - np.square(vectors).sum((1, 2)))
        out[start : start + chunk] = first + second
    return out


def _solve_bias(logits: np.ndarray, click_rate: float) -> float:
    """The bias b with mean(sigmoid(logits + b)) = click_rate (bisection; the mean is monotone in b)."""
    low, high = -30.0, 30.0
    for _ in range(100):
        mid = 0.5 * (low + high)
        if np.mean(1.0 / (1.0 + np.exp(-(logits + mid)))) < click_rate:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def _generate(spec: SyntheticCTRSpec) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    weights_rng, rows_rng, labels_rng = (np.random.default_rng([spec.seed, stream]) for stream in (0, 1, 2))
    probs, linear, latent = _true_model(spec, weights_rng)
    ids = _draw_ids(probs, spec.train_rows + spec.test_rows, rows_rng)
    raw = _logits_without_bias(ids, linear, latent)
    bias = _solve_bias(raw[: spec.train_rows], spec.click_rate)
    p = 1.0 / (1.0 + np.exp(-(raw + bias)))
    labels = (labels_rng.random(len(p)) < p).astype(np.float32)

    rare_first = [int(np.sum(pf * spec.train_rows >= spec.rare_count)) for pf in probs]  # ranks >= this are rare
    field_dims = [int(v) for v in spec.vocab_sizes]
    if spec.high_frequency_only:  # every rare ID becomes the field's out-of-vocabulary ID, rank `rare_first`
        for f, first in enumerate(rare_first):
            np.minimum(ids[:, f], first, out=ids[:, f])
            field_dims[f] = first + 1
    n = spec.train_rows
    arrays = {
        "train_ids": ids[:n], "train_labels": labels[:n], "train_p": p[:n],
        "test_ids": ids[n:], "test_labels": labels[n:], "test_p": p[n:],
    }  # fmt: skip
    meta = {
        "field_dims": field_dims,
        "bias": bias,
        "rare_first_rank": rare_first,
        "rare_ids": int(sum(int(v) - r for v, r in zip(spec.vocab_sizes, rare_first))),
        "rare_row_share": float(np.mean([pf[r:].sum() for pf, r in zip(probs, rare_first)])),
    }
    return arrays, meta


def _write_folder(target: Path, arrays: dict[str, np.ndarray], manifest: dict) -> None:
    with cache.atomic_folder(target) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))


_ARRAYS = ("train_ids", "train_labels", "train_p", "test_ids", "test_labels", "test_p")


def make_synthetic_ctr(
    spec: SyntheticCTRSpec | None = None, *, root: str | os.PathLike[str] | None = None, cache_files: bool = True
) -> CTRData:
    """The synthetic CTR set for ``spec`` (default :class:`SyntheticCTRSpec`), generated once and cached.

    Returns :class:`CTRData` with memory-mapped splits (when cached) whose ``click_probability`` holds p*.
    ``metadata`` carries the spec, the fingerprint, the solved bias, the first rare rank per field, how many IDs
    are rare and the share of rows (per field, averaged) that hold a rare ID. ``cache_files=False`` keeps everything
    in memory (tests).
    """
    cache.check_bool("cache_files", cache_files)
    spec = spec or SyntheticCTRSpec()
    name = "synthetic-ctr" + ("-hf" if spec.high_frequency_only else "")
    folder = (Path(root).expanduser() if root is not None else cache.cache_dir()) / "ctr-synthetic" / spec.fingerprint()
    arrays = meta = None
    if cache_files and (folder / "manifest.json").is_file():
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            arrays = {a: np.load(folder / f"{a}.npy", mmap_mode="c") for a in _ARRAYS}
            spec_as_json = json.loads(json.dumps(asdict(spec)))  # tuples come back from JSON as lists
            if manifest.get("spec") != spec_as_json or len(arrays["train_labels"]) != spec.train_rows:
                arrays = None
            meta = manifest.get("meta")
        except (OSError, ValueError, KeyError):
            arrays = None
    if arrays is None:
        arrays, meta = _generate(spec)
        if cache_files:
            manifest = {"name": name, "spec": asdict(spec), "fingerprint": spec.fingerprint(), "meta": meta}
            _write_folder(folder, arrays, manifest)
            arrays = {a: np.load(folder / f"{a}.npy", mmap_mode="c") for a in _ARRAYS}

    def split(prefix: str) -> CTRSplit:
        return CTRSplit(
            ids=arrays[f"{prefix}_ids"], labels=arrays[f"{prefix}_labels"], click_probability=arrays[f"{prefix}_p"]
        )

    metadata = {"spec": asdict(spec), "fingerprint": spec.fingerprint(), **meta}
    return CTRData(name, split("train"), split("test"), list(meta["field_dims"]), 0, metadata)
