"""CowClip: adaptive column-wise clipping of embedding gradients for very large-batch CTR training (Zheng et al.,
"CowClip: Reducing CTR Prediction Model Training Time from 12 hours to 10 minutes on 1 GPU", AAAI 2023,
arXiv 2204.06240; official TensorFlow code: bytedance/LargeBatchCTR).

The problem. A CTR model is a few large embedding tables (one row per categorical ID: a user, an ad, a site) feeding a
small dense network. Growing the batch b with the usual rules (linear or square-root scaling of the learning rate)
breaks on the tables: a frequent ID appears in almost every batch, a rare one at most once per batch whatever b is, so
"fewer steps, hence a larger step" is true for the frequent rows and wrong for the rare ones.

The method (the paper's Algorithm 1). With the batch-mean loss, let g = the gradient of an embedding table, one row
g[k] per ID k, and w[k] the row's weights. For every ID k present in the batch

    cnt_k  = number of samples in the batch that contain ID k
    clip_k = cnt_k · max(r · ||w[k]||, zeta)
    g[k]  <- g[k] · min(1, clip_k / ||g[k]||)            (a row with g[k] = 0 stays 0)

and Adam then steps on the clipped gradient. The threshold grows with the row's own weight norm (an update may change a
row by a bounded fraction of itself: r, 1 by default) and with how many samples pulled on the row in this batch; zeta
keeps freshly initialised, near-zero rows from being frozen. Dense weights are not clipped. ``cowclip`` is that
formula, vectorised over rows; ``clip_embedding_grad_`` applies it in place to an embedding's ``.grad``, counting
cnt from the batch's ids.

The recipe around it (the official code's training set-up, ``CowClip`` below, and ``scaled_hparams``): relative to a
base batch (1024), the embedding learning rate is fixed (1e-4), the dense learning rate grows with sqrt(b / base)
(8e-4 at 1K on Criteo), the L2 coefficient lambda on the embedding tables grows with b / base (1e-5 per 1K), r = 1 and
zeta = 1e-5 (Criteo); two Adams (Keras epsilon 1e-7), and the dense learning rate warms up linearly from ~0 over the
first epoch, then stays constant.

What the official code does differently from the paper (a faithful port must choose; this module implements the
paper's formula by default and the code's with ``threshold="official"``):
  * Threshold: ``clip = r · cnt · max(||w||, r · sqrt(dim) · zeta)`` (its lower bound is ``--clip · sqrt(dim) ·
    --bound`` with --clip = r and --bound = zeta). With r = 1, the recipe's value, this is the paper's formula with
    an effective zeta of sqrt(dim) · zeta (sqrt(10) · zeta for the usual dim 10).
  * Absent rows: its gradients are dense over the whole table, because the L2 penalty lambda · sum ||W||^2 covers
    every row; rows not in the batch carry only 2 · lambda · w and are clipped with cnt = 1. Since
    ||2 · lambda · w|| <= r · ||w|| whenever 2 · lambda <= r, that clip never binds in the recipe (it would only if
    other gradient reached absent rows); ``absent_rows="skip"`` gives the same result with work proportional to the
    rows touched, not the table.
  * Only the dim-d field embeddings are clipped; the 1-dim "linear" (wide) embeddings get the embedding learning rate
    and the L2 penalty but no clip.
  * Counts: per field, unique-with-counts of that field's column, i.e. samples containing the ID.

Counting rule here (``row_counts``): ids of shape [B, ...] (2 or more dims) count each row once per sample (the
first dim), however many times the sample holds it; 0- or 1-dim ids count occurrences. With per-field offsets into
one shared table a sample never holds a row twice, so both rules agree with the paper's "samples containing k".

Dense and sparse gradients. ``nn.Embedding(sparse=False)`` gives a dense [rows, dim] gradient (zero on absent rows,
unless something such as L2 wrote there); the clip is then two row-norm reductions over the table and a multiply of
the rows it binds on (absent_rows="clip") or a gather and scatter of the touched rows ("skip").
``nn.Embedding(sparse=True)`` gives a sparse COO gradient with one entry per lookup; it is coalesced (duplicates
summed), its rows are clipped, and the clipped, coalesced sparse tensor is written back to ``.grad``. Both paths clip
the touched rows identically.

Host syncs. ``cowclip`` reads one bool (the check that counts are finite and >= 0). ``clip_embedding_grad_`` reads
each id column's min and max for the range check of ids, and three numbers for its statistics (one transfer each),
plus a nonzero() (its size): of the rows the clip binds on (absent_rows="clip" on a dense gradient) or of the touched
rows (absent_rows="skip" on a dense gradient, or return_rows); ``CowClip.step`` adds nothing else.

Cost (tests/benchmarks/bench_cowclip.py: batch 16K, 1M x 10 table, MLP 400-400-400, 2-core CPU): the whole-table
dense clip is two row-norm reductions (one pass over the gradient, one over the weights) plus a multiply of the rows
it binds on, ~10 ms on a ~370 ms step (the step 1.03-1.04x the same recipe without the clip); on sparse gradients it
is a few ms (1.01x; the coalesce, which the L2 term and lazy Adam need anyway, is the expensive part).

Usage: ``CowClip`` is a torch.optim.Optimizer; the batch's ids go to its step (its docstring shows schedulers,
torch.amp, accel's CTR models, and frameworks that call step() themselves).

>>> import torch, torch.nn.functional as F
>>> from torch import nn
>>> model = nn.Sequential(nn.Embedding(1000, 10), nn.Flatten(), nn.Linear(26 * 10, 16), nn.ReLU(), nn.Linear(16, 1))
>>> opt = CowClip(model, model[0], batch_size=8192, warmup_steps=100)  # hparams: scaled_hparams(8192)
>>> ids, labels = torch.randint(0, 1000, (8192, 26)), torch.rand(8192).round()  # a batch, 26 ids per sample
>>> loss = F.binary_cross_entropy_with_logits(model(ids).squeeze(1), labels)
>>> loss.backward()
>>> opt.step(ids=ids)  # ids: what the clipped table took, e.g. [B, F] global ids with per-field offsets
>>> opt.zero_grad()
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.optim.adam import adam as torch_adam

THRESHOLDS = ("paper", "official")
ABSENT_ROWS = ("clip", "skip")
WARMUP_START_LR = 1e-8  # the official warmup's first learning rate (Keras PolynomialDecay from 1e-8 to lr)

# ----------------------------------------------------------------------------------------------------- validation


def _invalid(name: str, value, expected: str) -> ValueError:
    return ValueError(f"Invalid {name}: {value!r}; expected {expected}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_positive_real(name: str, value) -> float:
    if not (_is_real(value) and value > 0):
        raise _invalid(name, value, f"a finite number {name} > 0")
    return float(value)


def _check_nonnegative_real(name: str, value) -> float:
    if not (_is_real(value) and value >= 0):
        raise _invalid(name, value, f"a finite number {name} >= 0")
    return float(value)


def _check_positive_int(name: str, value) -> int:
    if not (_is_int(value) and value >= 1):
        raise _invalid(name, value, "an int >= 1")
    return int(value)


def _check_bool(name: str, value, allow_none: bool = False) -> bool | None:
    if not (isinstance(value, bool) or (allow_none and value is None)):
        raise _invalid(name, value, "True or False" + (" or None" if allow_none else ""))
    return value


def _check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _invalid(name, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def _table(embedding, name: str = "embedding") -> tuple[torch.Tensor, object]:
    """(weight, to_rows) of a table: its [rows, dim] weight, and what turns the ids its forward takes into rows.

    An nn.Embedding / nn.EmbeddingBag (any module with a 2-D .weight) or a weight tensor: ids are rows (to_rows is
    None). A module holding its table as ``.table`` with a ``global_ids(ids)`` method (accel.models.ctr's
    FieldEmbedding): ids are its per-field local ids, to_rows its global_ids.
    """
    weight, to_rows = embedding, None
    if isinstance(embedding, nn.Module):
        inner = getattr(embedding, "table", None)
        if not hasattr(embedding, "weight") and isinstance(inner, nn.Module) and hasattr(embedding, "global_ids"):
            weight, to_rows = inner.weight, embedding.global_ids
        else:
            weight = getattr(embedding, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise _invalid(name, embedding, "an nn.Embedding or its [rows, dim] weight Parameter")
    return weight, to_rows


# ---------------------------------------------------------------------------------------------------- the clip


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types (norms of bf16/fp16 rows lose too much), float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def _row_norms(rows: torch.Tensor) -> torch.Tensor:
    dtype = _compute_dtype(rows.dtype)
    return torch.linalg.vector_norm(rows, dim=1, dtype=None if dtype == rows.dtype else dtype)


def _clip_bound_(
    weight_norm: torch.Tensor, counts: torch.Tensor, r: float, zeta: float, threshold: str, dim: int
) -> torch.Tensor:
    """The clip threshold per row, computed in place in weight_norm [rows] (counts: [rows], any number type)."""
    clip = weight_norm
    if threshold == "paper":  # cnt · max(r · ||w||, zeta)
        if r != 1:
            clip.mul_(r)
        clip.clamp_min_(zeta)
    else:  # official: r · cnt · max(||w||, r · sqrt(dim) · zeta)
        clip.clamp_min_(r * math.sqrt(dim) * zeta)
        if r != 1:
            clip.mul_(r)
    return clip.mul_(counts)


def _row_scale(
    grad_norm: torch.Tensor,
    weight_norm: torch.Tensor,
    counts: torch.Tensor,
    r: float,
    zeta: float,
    threshold: str,
    dim: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale [rows], binds [rows] bool): scale = min(1, clip / ||g||), and whether the clip binds (||g|| > clip).

    grad_norm, weight_norm: [rows] float temporaries, both overwritten (in-place ops: on a 1M-row table every
    fresh [rows] buffer costs page faults). counts: [rows], any number type. No host sync, no NaN (a zero row gets
    a scale of 1, or 0 when clip = 0, and stays zero either way).
    """
    clip = _clip_bound_(weight_norm, counts, r, zeta, threshold, dim)
    binds = grad_norm > clip
    # min(1, clip / ||g||) = clip / max(||g||, clip); the floor keeps 0 / 0 (a zero row with clip 0) at 0, not NaN
    denominator = torch.maximum(grad_norm, clip, out=grad_norm).clamp_min_(torch.finfo(clip.dtype).tiny)
    return clip.div_(denominator), binds


def cowclip(
    grad: torch.Tensor,
    weight: torch.Tensor,
    counts: torch.Tensor,
    r: float = 1.0,
    zeta: float = 1e-5,
    *,
    threshold: str = "paper",
) -> torch.Tensor:
    """Clipped gradient rows, g · min(1, cnt · max(r · ||w||, zeta) / ||g||) row by row (Algorithm 1); a new tensor.

    grad, weight: [rows, dim], the rows' gradients and current weights (same shape, any device; weight is not
    modified). counts: [rows], int or float, the number of samples in the batch containing each row's ID (finite and
    >= 0, checked with one host sync; a count of 0 clips the row to zero). r > 0: the coefficient; zeta >= 0: the
    threshold's lower bound.
    threshold: "paper" (the formula above) or "official", the LargeBatchCTR code's r · cnt · max(||w||, r · sqrt(dim)
    · zeta), equal to the paper's with zeta · sqrt(dim) when r = 1 (module docstring).
    Norms and scales are computed in float32 for half-precision inputs (float64 stays float64); the result has grad's
    dtype. Rows with zero gradient stay exactly zero. Returns [rows, dim].
    """
    r, zeta = _check_positive_real("r", r), _check_nonnegative_real("zeta", zeta)
    _check_choice("threshold", threshold, THRESHOLDS)
    if not isinstance(grad, torch.Tensor) or grad.ndim != 2 or not grad.is_floating_point():
        raise _invalid("grad", getattr(grad, "shape", grad), "a floating-point tensor [rows, dim]")
    if not isinstance(weight, torch.Tensor) or weight.shape != grad.shape:
        raise _invalid("weight", getattr(weight, "shape", weight), f"a tensor of grad's shape {tuple(grad.shape)}")
    if not isinstance(counts, torch.Tensor) or counts.shape != grad.shape[:1]:
        raise _invalid("counts", getattr(counts, "shape", counts), f"a tensor of shape ({grad.shape[0]},)")
    if counts.dtype == torch.bool or counts.is_complex():
        raise _invalid("counts", counts.dtype, "an int or float tensor")
    valid = counts >= 0  # False for NaN too
    if counts.is_floating_point():
        valid &= counts.isfinite()
    if not bool(valid.all()):  # the one host sync: a negative count would flip the row's sign
        row = int((~valid).nonzero()[0, 0])
        raise ValueError(f"Invalid counts: {counts[row].item()} at row {row}; expected finite counts >= 0")
    grad_norm = _row_norms(grad)
    weight_norm = _row_norms(weight.detach()).to(grad_norm.dtype)
    scale, _ = _row_scale(grad_norm, weight_norm, counts.to(grad.device), r, zeta, threshold, grad.shape[1])
    return (grad.to(scale.dtype) * scale.unsqueeze(1)).to(grad.dtype)


def row_counts(ids: torch.Tensor, num_rows: int) -> torch.Tensor:
    """cnt per row of a table of num_rows rows: LongTensor [num_rows] (0 for rows absent from the batch).

    ids: integer tensor of row indices in [0, num_rows). Shape [B, ...] (2 or more dims): the first dim is the
    sample, and a row counts once per sample that holds it (the paper's "samples containing the ID"). Shape [] or
    [N]: every occurrence counts (bincount). Raises ValueError for ids out of range; the range check reads each
    column's min and max (one host sync), and when the columns' ranges do not overlap (per-field offsets into one
    table: no sample can hold a row twice) the counts are a plain bincount, else each sample's ids are sorted first.
    """
    num_rows = _check_positive_int("num_rows", num_rows)
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise _invalid("ids", ids, "an integer tensor of row indices")
    if ids.numel() == 0:
        return torch.zeros(num_rows, dtype=torch.long, device=ids.device)
    per_sample = ids.ndim >= 2 and ids[0].numel() > 1
    columns = ids.reshape(ids.shape[0], -1) if per_sample else ids.reshape(-1, 1)
    lows, highs = torch.stack(torch.aminmax(columns, dim=0)).tolist()  # the range check's host sync
    low, high = min(lows), max(highs)
    if low < 0 or high >= num_rows:
        raise _invalid("ids", f"values in [{low}, {high}]", f"row indices in [0, {num_rows - 1}]")
    ids = ids.long()
    spans = sorted(zip(lows, highs))
    if per_sample and any(prev_high >= next_low for (_, prev_high), (next_low, _) in zip(spans, spans[1:])):
        ordered = columns.long().sort(dim=1).values
        repeat = ordered[:, 1:] == ordered[:, :-1]  # a sample's second, third, ... copy of a row
        # repeats go to a spare bin num_rows that is cut off: no compaction, no host sync
        ordered[:, 1:].masked_fill_(repeat, num_rows)
        return torch.bincount(ordered.reshape(-1), minlength=num_rows + 1)[:num_rows]
    return torch.bincount(ids.reshape(-1), minlength=num_rows)


@torch.no_grad()
def clip_embedding_grad_(
    embedding,
    ids: torch.Tensor,
    r: float = 1.0,
    zeta: float = 1e-5,
    *,
    threshold: str = "paper",
    absent_rows: str = "clip",
    return_rows: bool = False,
) -> dict:
    """Clip an embedding table's gradient in place with CowClip, counting cnt from this batch's ids.

    embedding: an nn.Embedding (or nn.EmbeddingBag, or its [rows, dim] weight Parameter, or accel.models.ctr's
    FieldEmbedding) whose .grad is set, dense or sparse COO. ids: integer tensor, what the embedding's forward took:
    the row indices this batch looked up (e.g. [B, F] global ids with per-field offsets), or a FieldEmbedding's local
    ids [B, F]; counted by ``row_counts``: per sample for 2+ dims, per occurrence for 1 dim. r, zeta, threshold: as
    in ``cowclip``. absent_rows: what to do with rows that have a gradient but no id in the batch (a dense grad with
    L2 on the whole table): "clip" them with cnt = 1, as the official code does, or "skip" them (left unclipped).
    A dense .grad is modified in place; a sparse one is coalesced, clipped and stored back into .grad.

    Returns Python numbers: rows_touched (distinct rows in ids), rows_clipped (touched rows whose clip bound,
    ||g|| > clip), clip_fraction (rows_clipped / rows_touched, 0.0 if none), absent_rows_clipped (absent rows the
    clip bound on). With return_rows=True also tensors on the table's device: rows [n] (the touched rows, ascending),
    counts [n] (their cnt), clipped [n] bool (whether the clip bound), clipped_rows (rows[clipped]).
    """
    param, to_rows = _table(embedding)
    r, zeta = _check_positive_real("r", r), _check_nonnegative_real("zeta", zeta)
    _check_choice("threshold", threshold, THRESHOLDS)
    _check_choice("absent_rows", absent_rows, ABSENT_ROWS)
    _check_bool("return_rows", return_rows)
    return _clip_rows_(param, _table_counts(param, to_rows, ids), r, zeta, threshold, absent_rows, return_rows)


def _table_counts(param: torch.Tensor, to_rows, ids) -> torch.Tensor:
    """row_counts of ids for the table param, which must have a gradient: every check of a clip, done before it."""
    if param.grad is None:
        raise RuntimeError("The embedding's weight has no gradient (.grad is None): call loss.backward() first")
    if isinstance(ids, torch.Tensor):
        ids = ids.to(param.device)
        if to_rows is not None:
            ids = to_rows(ids)
    return row_counts(ids, param.shape[0])


def _scale_rows_(tensor: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor) -> None:
    """tensor[rows] *= scale[:, None], in place (rows: distinct row indices)."""
    tensor.index_copy_(0, rows, tensor.index_select(0, rows).mul_(scale.unsqueeze(1).to(tensor.dtype)))


@torch.no_grad()
def _clip_rows_(
    param: torch.Tensor,
    counts: torch.Tensor,
    r: float,
    zeta: float,
    threshold: str,
    absent_rows: str,
    return_rows: bool,
) -> dict:
    """clip_embedding_grad_ on validated arguments, counts [rows] from _table_counts."""
    grad = param.grad
    num_rows, dim = param.shape
    weight = param.detach()
    rows_touched = counts.count_nonzero()

    if grad.is_sparse:
        grad = grad.coalesce()  # duplicates summed: one entry per row
        grad_rows, values = grad.indices()[0], grad.values()
        cnt = counts.index_select(0, grad_rows)
        present = cnt > 0
        scale, binds = _row_scale(
            _row_norms(values), _row_norms(weight.index_select(0, grad_rows)), cnt.clamp_min(1), r, zeta, threshold, dim
        )
        if absent_rows == "skip":
            binds &= present
            scale = torch.where(present, scale, torch.ones_like(scale))
        clipped_values = values * scale.unsqueeze(1).to(values.dtype)
        param.grad = torch.sparse_coo_tensor(
            grad.indices(), clipped_values, grad.shape, is_coalesced=True, check_invariants=False
        )
        clipped_touched = binds & present
        totals = torch.stack([rows_touched, clipped_touched.count_nonzero(), (binds & ~present).count_nonzero()])
        if return_rows:
            bound = torch.zeros(num_rows, dtype=torch.bool, device=grad_rows.device)
            bound[grad_rows[clipped_touched]] = True
    elif absent_rows == "clip":  # the whole table: two row-norm reductions, then only the rows the clip binds on
        grad_norm = _row_norms(grad)
        cnt = counts.to(grad_norm.dtype).clamp_min_(1)  # absent rows: cnt = 1
        clip = _clip_bound_(_row_norms(weight).to(grad_norm.dtype), cnt, r, zeta, threshold, dim)
        binds = grad_norm > clip
        bound_rows = binds.nonzero().squeeze(1)  # a host sync; usually few rows
        # clip / ||g|| on those rows (||g|| > clip >= 0; the floor only guards a subnormal norm)
        scale = clip[bound_rows].div_(grad_norm[bound_rows].clamp_min_(torch.finfo(clip.dtype).tiny))
        _scale_rows_(grad, bound_rows, scale)
        touched_bound = counts[bound_rows].count_nonzero()
        totals = torch.stack([rows_touched, touched_bound, bound_rows.numel() - touched_bound])
        if return_rows:
            bound = binds & (counts > 0)
    else:  # skip absent rows: gather the touched rows, clip them, scatter them back
        rows = counts.nonzero().squeeze(1)
        rows_grad = grad.index_select(0, rows)
        scale, binds = _row_scale(
            _row_norms(rows_grad),
            _row_norms(weight.index_select(0, rows)),
            counts.index_select(0, rows),
            r,
            zeta,
            threshold,
            dim,
        )
        grad.index_copy_(0, rows, rows_grad * scale.unsqueeze(1).to(grad.dtype))
        totals = torch.stack([rows_touched, binds.count_nonzero(), torch.zeros_like(rows_touched)])
        if return_rows:
            bound = torch.zeros(num_rows, dtype=torch.bool, device=rows.device)
            bound[rows[binds]] = True

    rows_touched, rows_clipped, absent_clipped = totals.tolist()  # the statistics' host sync
    stats = {
        "rows_touched": rows_touched,
        "rows_clipped": rows_clipped,
        "clip_fraction": rows_clipped / rows_touched if rows_touched else 0.0,
        "absent_rows_clipped": absent_clipped,
    }
    if return_rows:
        rows = counts.nonzero().squeeze(1)
        clipped = bound[rows]
        stats.update(rows=rows, counts=counts[rows], clipped=clipped, clipped_rows=rows[clipped])
    return stats


# -------------------------------------------------------------------------------------------- the scaling rule


def scaled_hparams(
    batch_size: int,
    *,
    base_batch_size: int = 1024,
    base_lr: float = 8e-4,
    base_l2: float = 1e-5,
    embed_lr: float = 1e-4,
) -> dict:
    """The CowClip scaling rule from a base batch: {"lr", "embed_lr", "l2"} for batch_size, as Python floats.

    lr = base_lr · sqrt(batch_size / base_batch_size)  (dense weights), embed_lr = embed_lr (fixed: rare IDs appear
    at most once per batch whatever its size, so their number of updates does not fall as the batch grows), l2 =
    base_l2 · batch_size / base_batch_size (the L2 coefficient lambda on the embedding tables). The defaults are the
    official Criteo settings: 1K = 1024 gives 8e-4 / 1e-4 / 1e-5, 128K gives 90.51e-4 / 1e-4 / 128e-5.
    """
    batch_size = _check_positive_int("batch_size", batch_size)
    base_batch_size = _check_positive_int("base_batch_size", base_batch_size)
    base_lr = _check_positive_real("base_lr", base_lr)
    base_l2 = _check_nonnegative_real("base_l2", base_l2)
    embed_lr = _check_positive_real("embed_lr", embed_lr)
    ratio = batch_size / base_batch_size
    return {"lr": base_lr * math.sqrt(ratio), "embed_lr": embed_lr, "l2": base_l2 * ratio}


# ------------------------------------------------------------------------------------- training integration


def _parameters_of(items, name: str) -> list[torch.Tensor]:
    """Parameters from a module, a parameter, or an iterable of either (order kept, duplicates dropped)."""
    if items is None:
        return []
    if isinstance(items, (nn.Module, torch.Tensor)):
        items = [items]
    if not isinstance(items, Iterable):
        raise _invalid(name, items, "a module, a Parameter, or a list of them")
    params: dict[int, torch.Tensor] = {}
    for item in items:
        if isinstance(item, nn.Module):
            for p in item.parameters():
                params.setdefault(id(p), p)
        elif isinstance(item, torch.Tensor):
            params.setdefault(id(item), item)
        else:
            raise _invalid(name, item, "a module, a Parameter, or a list of them")
    return list(params.values())


# the device types torch has a fused Adam kernel for (torch.optim.Adam(fused=True))
FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")


def _fused_supported(params: list[torch.Tensor]) -> bool:
    return all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)


class CowClip(torch.optim.Optimizer):
    """The official CowClip training recipe as a torch.optim.Optimizer for any PyTorch CTR model.

    Three parameter groups (``param_groups``; a group with no parameters is left out), each with its own "lr" and
    "l2" and a "name":
      * "clipped_embedding": the tables given as ``embeddings`` (lr embed_lr, L2 l2, "clip": clip);
      * "embedding": the other embedding parameters, e.g. the 1-dim linear (wide) embeddings (embed_lr, l2, no clip);
      * "dense": every other trainable parameter (lr, no L2, "warmup_steps": warmup_steps).
    Each ``step()``: (1) L2 on the groups with l2 > 0: 2 · l2 · W added to their gradients (the gradient of
    l2 · sum ||W||^2 over the whole table: every row of a dense gradient; for a sparse gradient only the rows this
    batch touched, as a lazy/sparse optimizer must); (2) the CowClip clip on the tables of a group with "clip" set
    (L2 term included, as the official code does); (3) Adam with Keras's epsilon on every group, at the group's lr.

    The batch's ids. The clip counts, per row, the samples of this batch that looked the row up: pass the ids to
    ``step(ids=ids)`` (or through ``torch.amp.GradScaler.step(opt, ids=ids)``), or hand them over earlier with
    ``set_ids(ids)`` where a framework calls ``step()`` itself (Lightning, the HF Trainer). ids are what the clipped
    table's forward took: row indices [B, ...] for an nn.Embedding / nn.EmbeddingBag (a row counts once per sample,
    the first dim), a FieldEmbedding's local ids [B, F] (mapped to rows by its global_ids), or a list of those, one
    per table in ``embeddings`` order. A step uses them once; with gradient accumulation pass the whole batch's ids
    (the micro-batches' ids concatenated). Ignored when no group clips.

    Learning rates. group["lr"] is read at every step, so torch.optim.lr_scheduler schedulers (LambdaLR, ...) drive
    it. The recipe's dense warm-up is applied on top and never written into the group: while a group's step count is
    below its "warmup_steps", it uses WARMUP_START_LR + (group["lr"] - WARMUP_START_LR) · step / warmup_steps (the
    official linear ramp from 1e-8, reaching whatever lr the group has at the end). warmup_steps=0 leaves the ramp to
    a scheduler of your own. Adam's epsilon is placed as Keras places it (1e-7, Keras's default, added to sqrt(v)
    before bias correction, as torch.optim.SparseAdam also does; torch.optim.Adam adds it after, so each step calls
    torch's Adam with eps / sqrt(1 - beta2^t), the same update. It matters early in training, where sqrt(v) of rarely
    updated rows is near eps).

    Dense and sparse gradients. A parameter with a dense gradient is updated by torch's Adam kernel (fused where this
    torch supports it and fused is not False), which, like the official code, moves every row every step (the L2
    gradient is nonzero everywhere). One with a sparse gradient (nn.Embedding(sparse=True)) gets lazy Adam: only the
    rows in the gradient move, as in torch.optim.SparseAdam.

    model: the nn.Module being trained (its parameters with requires_grad are optimized; the model's loss should
    carry no L2 of its own on the embeddings). embeddings: the table(s) to clip: an nn.Embedding / nn.EmbeddingBag,
    its weight, accel.models.ctr's FieldEmbedding, or a list; in the official code the dim-d field embeddings (the
    1-dim linear embeddings are not clipped); None or [] for none. batch_size: the training batch, for the scaling
    rule. warmup_steps: the dense warm-up's length (the official: one epoch of steps), 0 for none. embedding_params:
    the parameters (or modules) that get embed_lr and L2; default: the weights of every nn.Embedding /
    nn.EmbeddingBag in model; the clipped tables are always included. clip: False runs the same recipe without the
    clip (an ablation; the group's "clip" flag). r, zeta, threshold, absent_rows: the clip's, as in
    ``clip_embedding_grad_``. base_batch_size, base_lr, base_l2, embed_lr: the scaling rule's inputs
    (``scaled_hparams``). lr, l2: override the scaled dense lr / L2 coefficient directly (e.g. "no scaling":
    lr=base_lr, l2=base_l2). betas, eps: Adam's. return_rows: put each clipped table's per-row statistics
    (``clip_embedding_grad_``'s tensors) in last_stats under "tables". fused: torch's fused Adam kernel for dense
    gradients (None: where this torch supports it; True: require it; False: torch's multi-tensor loop).

    Attributes: lr, embed_lr, l2 (the recipe's values at construction), tables (the clipped tables' weights), steps
    (steps taken), dense_lr (the dense lr the next step uses), last_stats (the last step's: step, lr and embed_lr
    (the dense and embedding lr it used) and, with the clip, rows_touched, rows_clipped, clip_fraction,
    absent_rows_clipped summed over the clipped tables).
    state_dict() / load_state_dict() are torch.optim.Optimizer's: the param groups (their lr, step counts, flags) and
    each parameter's Adam state.

    A plain nn.Embedding + MLP model:

    >>> import torch, torch.nn.functional as F
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Embedding(100, 8), nn.Flatten(), nn.Linear(3 * 8, 16), nn.ReLU(), nn.Linear(16, 1))
    >>> opt = CowClip(model, model[0], batch_size=256, warmup_steps=10)
    >>> [(group["name"], group["lr"]) for group in opt.param_groups]
    [('clipped_embedding', 0.0001), ('dense', 0.0004)]
    >>> ids, labels = torch.randint(0, 100, (256, 3)), torch.rand(256).round()  # a batch: 3 ids per sample
    >>> for _ in range(3):
    ...     loss = F.binary_cross_entropy_with_logits(model(ids).squeeze(1), labels)
    ...     loss.backward()
    ...     opt.step(ids=ids)
    ...     opt.zero_grad()
    >>> opt.steps, opt.last_stats["rows_touched"]
    (3, 100)

    accel's DeepFM, under a scheduler and torch.amp (CPU bf16 here; the GradScaler unscales the gradients before the
    clip, and skips the step when they hold an inf or NaN):

    >>> from accel.models.ctr import DeepFM
    >>> model = DeepFM([50, 20, 5], mlp_dims=(8,), generator=torch.Generator().manual_seed(0))
    >>> opt = CowClip(model, model.embedding, batch_size=256, warmup_steps=5)
    >>> [group["name"] for group in opt.param_groups]  # embedding: the linear part's 1-dim table
    ['clipped_embedding', 'embedding', 'dense']
    >>> halve = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5**epoch)
    >>> scaler = torch.amp.GradScaler("cpu")
    >>> ids = torch.stack([torch.randint(0, size, (256,)) for size in (50, 20, 5)], dim=1)  # local ids per field
    >>> labels = (ids[:, 0] < 10).float()
    >>> for _ in range(2):
    ...     with torch.autocast("cpu", dtype=torch.bfloat16):
    ...         loss = F.binary_cross_entropy_with_logits(model(ids).float(), labels)
    ...     scaler.scale(loss).backward()
    ...     scaler.step(opt, ids=ids)  # unscale, then opt.step(ids=ids) unless a gradient is not finite
    ...     scaler.update()
    ...     opt.zero_grad()
    ...     halve.step()
    >>> [group["lr"] for group in opt.param_groups]
    [2.5e-05, 2.5e-05, 0.0001]

    Where a framework calls ``step()`` itself, hand the ids over first: ``opt.set_ids(ids)``, then ``opt.step()``.
    """

    def __init__(
        self,
        model: nn.Module,
        embeddings=None,
        *,
        batch_size: int,
        warmup_steps: int = 0,
        embedding_params=None,
        clip: bool = True,
        r: float = 1.0,
        zeta: float = 1e-5,
        threshold: str = "paper",
        absent_rows: str = "clip",
        base_batch_size: int = 1024,
        base_lr: float = 8e-4,
        base_l2: float = 1e-5,
        embed_lr: float = 1e-4,
        lr: float | None = None,
        l2: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        return_rows: bool = False,
        fused: bool | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise _invalid("model", model, "an nn.Module")
        hparams = scaled_hparams(
            batch_size, base_batch_size=base_batch_size, base_lr=base_lr, base_l2=base_l2, embed_lr=embed_lr
        )
        self.lr = hparams["lr"] if lr is None else _check_positive_real("lr", lr)
        self.l2 = hparams["l2"] if l2 is None else _check_nonnegative_real("l2", l2)
        self.embed_lr = hparams["embed_lr"]
        self.batch_size = int(batch_size)
        if not (_is_int(warmup_steps) and warmup_steps >= 0):
            raise _invalid("warmup_steps", warmup_steps, "an int >= 0")
        _check_bool("clip", clip)
        _check_bool("fused", fused, allow_none=True)
        self.r, self.zeta = _check_positive_real("r", r), _check_nonnegative_real("zeta", zeta)
        self.threshold = _check_choice("threshold", threshold, THRESHOLDS)
        self.absent_rows = _check_choice("absent_rows", absent_rows, ABSENT_ROWS)
        _check_betas(betas)
        eps = _check_nonnegative_real("eps", eps)
        self.return_rows = _check_bool("return_rows", return_rows)

        # the parameters: clipped tables, other embedding parameters (embed_lr, L2), the rest (dense lr)
        all_params = {id(p): p for p in model.parameters() if p.requires_grad}
        tables = embeddings if isinstance(embeddings, (list, tuple)) else ([] if embeddings is None else [embeddings])
        resolved = [_table(t, "embeddings") for t in tables]
        self.tables = [weight for weight, _ in resolved]
        self._to_rows = {id(weight): to_rows for weight, to_rows in resolved}
        for table in self.tables:
            if id(table) not in all_params:
                raise _invalid("embeddings", tuple(table.shape), "tables that are trainable parameters of model")
        if embedding_params is None:
            embedding_modules = (m for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)))
            chosen = [m.weight for m in embedding_modules if id(m.weight) in all_params]
        else:
            chosen = _parameters_of(embedding_params, "embedding_params")
            for p in chosen:
                if id(p) not in all_params:
                    raise _invalid("embedding_params", tuple(p.shape), "trainable parameters of model")
        table_ids = {id(t) for t in self.tables}
        others = list({id(p): p for p in chosen if id(p) not in table_ids}.values())
        embedding_ids = table_ids | {id(p) for p in others}
        dense = [p for i, p in all_params.items() if i not in embedding_ids]
        groups = [
            {"name": "clipped_embedding", "params": self.tables, "lr": self.embed_lr, "l2": self.l2, "clip": clip},
            {"name": "embedding", "params": others, "lr": self.embed_lr, "l2": self.l2},
            {"name": "dense", "params": dense, "lr": self.lr, "warmup_steps": int(warmup_steps)},
        ]
        for group in groups:
            group["fused"] = _fused_supported(group["params"]) if fused is None else fused
            if group["fused"] and not _fused_supported(group["params"]):
                raise _invalid("fused", fused, f"None or False: a fused Adam needs float parameters on {FUSED_DEVICES}")
        defaults = {
            "lr": self.lr, "l2": 0.0, "clip": False, "warmup_steps": 0, "betas": (float(betas[0]), float(betas[1])),
            "eps": eps, "fused": False, "step": 0,
        }  # fmt: skip
        self._ids = None
        self.last_stats: dict = {}
        super().__init__([group for group in groups if group["params"]], defaults)

    def add_param_group(self, param_group: dict) -> None:
        """torch.optim.Optimizer's, with every setting validated; "clip" only for tables given as `embeddings`."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            if not (_is_real(group["lr"]) and group["lr"] >= 0):
                raise _invalid("lr", group["lr"], "a finite number lr >= 0")
            _check_nonnegative_real("l2", group["l2"])
            _check_nonnegative_real("eps", group["eps"])
            _check_betas(group["betas"])
            _check_bool("clip", group["clip"])
            _check_bool("fused", group["fused"])
            for name in ("warmup_steps", "step"):
                if not (_is_int(group[name]) and group[name] >= 0):
                    raise _invalid(name, group[name], "an int >= 0")
            if group["clip"] and any(id(p) not in self._to_rows for p in group["params"]):
                raise _invalid("clip", True, "False for parameters not given as `embeddings` (no ids to count)")
        except ValueError:
            self.param_groups.pop()
            raise

    # ------------------------------------------------------------------------------------------ learning rates

    @staticmethod
    def _group_lr(group: dict, step: int) -> float:
        """The lr a group uses at step `step`: group["lr"], ramped up linearly during its warm-up."""
        lr, warmup_steps = group["lr"], group["warmup_steps"]
        if step >= warmup_steps:
            return lr
        return WARMUP_START_LR + (lr - WARMUP_START_LR) * step / warmup_steps

    def _dense_group(self) -> dict | None:
        return next((group for group in self.param_groups if group.get("name") == "dense"), None)

    def lr_at(self, step: int) -> float:
        """The dense learning rate of step `step` (0-based) at the dense group's current lr: linear from
        WARMUP_START_LR to it over warmup_steps, then constant."""
        group = self._dense_group()
        return self.lr if group is None else self._group_lr(group, step)

    @property
    def steps(self) -> int:
        """Steps taken (each group counts them in its "step", saved by state_dict)."""
        return max(group["step"] for group in self.param_groups)

    @property
    def dense_lr(self) -> float:
        """The dense learning rate the next step() uses."""
        return self.lr_at(self.steps)

    # ------------------------------------------------------------------------------------------ the step

    def set_ids(self, ids) -> None:
        """Hand over this batch's ids for the next step() (a tensor, or a list with one per clipped table); see the
        class docstring. Replaces ids set before; step() uses them once."""
        self._ids = ids

    def _counts(self, ids) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(table, counts) for each table of a group that clips, every check done before anything changes."""
        clipped = [p for group in self.param_groups if group["clip"] for p in group["params"]]
        if not clipped:
            return []
        if ids is None:
            raise _invalid("ids", ids, "the batch's ids: opt.step(ids=ids), or opt.set_ids(ids) before opt.step()")
        if isinstance(ids, torch.Tensor):
            ids = [ids]
        if not isinstance(ids, (list, tuple)) or len(ids) != len(self.tables):
            raise _invalid("ids", type(ids).__name__, f"a tensor per clipped table ({len(self.tables)}), in order")
        ids_of = {id(table): table_ids for table, table_ids in zip(self.tables, ids)}
        return [(p, _table_counts(p, self._to_rows[id(p)], ids_of[id(p)])) for p in clipped]

    @torch.no_grad()
    def step(self, closure=None, *, ids=None):
        """One training step on the gradients in .grad: L2, clip, Adam (class docstring). Returns closure's loss.

        closure: re-evaluates the model and returns the loss (torch.optim's contract), or None. ids: this batch's ids
        (class docstring), or None for the ones given to set_ids(). The step's statistics go to last_stats.
        """
        if closure is not None and not callable(closure):  # step(ids) was the API before CowClip was an Optimizer
            raise _invalid(
                "closure", type(closure).__name__, "a callable returning the loss, or None (ids: step(ids=))"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # every check first (ids in range, gradients present): a rejected step leaves every .grad as it was
        counts = self._counts(self._ids if ids is None else ids)
        self._ids = None
        used = {group.get("name"): self._group_lr(group, group["step"]) for group in self.param_groups}
        embed_lr = used.get("clipped_embedding", used.get("embedding", self.embed_lr))
        stats: dict = {"step": self.steps, "lr": used.get("dense", self.lr), "embed_lr": embed_lr}
        for group in self.param_groups:
            if group["l2"]:
                _add_l2_(group["params"], group["l2"])
        if counts:
            tables = [
                _clip_rows_(table, table_counts, self.r, self.zeta, self.threshold, self.absent_rows, self.return_rows)
                for table, table_counts in counts
            ]
            for key in ("rows_touched", "rows_clipped", "absent_rows_clipped"):
                stats[key] = sum(t[key] for t in tables)
            stats["clip_fraction"] = stats["rows_clipped"] / stats["rows_touched"] if stats["rows_touched"] else 0.0
            if self.return_rows:
                stats["tables"] = tables
        for group in self.param_groups:
            _adam_step(group, self.state, self._group_lr(group, group["step"]))
            group["step"] += 1
        self.last_stats = stats
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        _check_bool("set_to_none", set_to_none)
        super().zero_grad(set_to_none=set_to_none)


def _check_betas(betas) -> None:
    if not (isinstance(betas, Sequence) and len(betas) == 2 and all(_is_real(b) and 0 <= b < 1 for b in betas)):
        raise _invalid("betas", betas, "two numbers in [0, 1)")


@torch.no_grad()
def _add_l2_(params: list[torch.Tensor], l2: float) -> None:
    """grad += 2 · l2 · W: every row of a dense gradient, only the rows of a sparse one (lazy updates move no other)."""
    for p in params:
        grad = p.grad
        if grad is None:
            continue
        if grad.is_sparse:
            grad = grad.coalesce()
            rows = grad.indices()[0]
            values = grad.values() + (2 * l2) * p.detach().index_select(0, rows).to(grad.dtype)
            p.grad = torch.sparse_coo_tensor(
                grad.indices(), values, grad.shape, is_coalesced=True, check_invariants=False
            )
        else:
            grad.add_(p.detach().to(grad.dtype), alpha=2 * l2)


@torch.no_grad()
def _adam_step(group: dict, state: dict, lr: float) -> None:
    """Adam with Keras's epsilon on a group's parameters that have a gradient, at learning rate lr.

    Dense gradients: torch's Adam kernel, with eps / sqrt(1 - beta2^t) (t: this step, 1-based), which is Keras's eps
    added to sqrt(v) before bias correction. Sparse gradients: lazy Adam on the gradient's rows. The state per
    parameter is torch.optim.Adam's: step, exp_avg, exp_avg_sq.
    """
    beta1, beta2 = group["betas"]
    t = group["step"] + 1  # this step, 1-based: Keras counts one clock for all variables (its iterations)
    dense, sparse = [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        if not state[p]:
            on_device = group["fused"] and not p.grad.is_sparse
            state[p] = {
                "step": torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu"),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
        (sparse if p.grad.is_sparse else dense).append(p)
    if dense:
        states = [state[p] for p in dense]
        torch_adam(
            dense,
            [p.grad for p in dense],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            [s["step"] for s in states],
            fused=True if group["fused"] else None,
            has_complex=any(p.is_complex() for p in dense),
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=lr,
            weight_decay=0.0,
            eps=group["eps"] / math.sqrt(1 - beta2**t),  # Keras's eps (docstring)
            maximize=False,
        )
    step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)  # with sqrt(v) + eps below: Keras's eps
    for p in sparse:
        s = state[p]
        s["step"] += 1
        grad = p.grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        # m += (1 - beta1) (g - m) and v += (1 - beta2) (g^2 - v) on the rows (torch.optim.SparseAdam's arithmetic)
        old_exp_avg, old_exp_avg_sq = s["exp_avg"].index_select(0, rows), s["exp_avg_sq"].index_select(0, rows)
        exp_avg_step = values.sub(old_exp_avg).mul_(1 - beta1)
        exp_avg_sq_step = values.pow(2).sub_(old_exp_avg_sq).mul_(1 - beta2)
        s["exp_avg"].index_add_(0, rows, exp_avg_step)
        s["exp_avg_sq"].index_add_(0, rows, exp_avg_sq_step)
        exp_avg, exp_avg_sq = exp_avg_step.add_(old_exp_avg), exp_avg_sq_step.add_(old_exp_avg_sq)
        p.index_add_(0, rows, (-step_size * exp_avg.div_(exp_avg_sq.sqrt_().add_(group["eps"]))).to(p.dtype))
