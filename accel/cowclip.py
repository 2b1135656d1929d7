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
unless something such as L2 wrote there); the clip is then two row-norm reductions and one multiply over the table
(absent_rows="clip") or a gather and scatter of the touched rows ("skip"). ``nn.Embedding(sparse=True)`` gives a
sparse COO gradient with one entry per lookup; it is coalesced (duplicates summed), its rows are clipped, and the
clipped, coalesced sparse tensor is written back to ``.grad``. Both paths clip the touched rows identically.

Host syncs. ``cowclip`` reads one bool (the check that counts are finite and >= 0). ``clip_embedding_grad_`` reads
two numbers for the range check of ids and three for its statistics (Python ints, one transfer each), plus a
nonzero() (its size) for absent_rows="skip" on a dense gradient or for return_rows; ``CowClip.step`` adds nothing
else.

Cost (tests/benchmarks/bench_cowclip.py: batch 16K, 1M x 10 table, MLP 400-400-400, 2-core CPU): the whole-table
dense clip is two row-norm reductions and one multiply, 15-25 ms on a ~500 ms step; on sparse gradients it is
~10 ms (the coalesce, which the L2 term and SparseAdam need anyway, is the expensive part, ~50 ms).

Usage (three lines in a training loop):

    opt = CowClip(model, model.embedding, batch_size=8192, warmup_steps=steps_per_epoch)  # hparams: scaled_hparams
    ...
    loss.backward()
    stats = opt.step(ids)        # ids: the batch's row ids into the clipped table, e.g. [B, F] with field offsets
    opt.zero_grad()
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import nn

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


def _table(embedding, name: str = "embedding") -> torch.Tensor:
    """The [rows, dim] weight of an nn.Embedding / nn.EmbeddingBag (or any module with .weight), or the tensor."""
    weight = embedding.weight if isinstance(embedding, nn.Module) else embedding
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise _invalid(name, embedding, "an nn.Embedding or its [rows, dim] weight Parameter")
    return weight


# ---------------------------------------------------------------------------------------------------- the clip


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types (norms of bf16/fp16 rows lose too much), float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def _row_norms(rows: torch.Tensor) -> torch.Tensor:
    dtype = _compute_dtype(rows.dtype)
    return torch.linalg.vector_norm(rows, dim=1, dtype=None if dtype == rows.dtype else dtype)


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
    clip = weight_norm
    if threshold == "paper":  # cnt · max(r · ||w||, zeta)
        if r != 1:
            clip.mul_(r)
        clip.clamp_min_(zeta)
    else:  # official: r · cnt · max(||w||, r · sqrt(dim) · zeta)
        clip.clamp_min_(r * math.sqrt(dim) * zeta)
        if r != 1:
            clip.mul_(r)
    clip.mul_(counts)
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
    sample, and a row counts once per sample that holds it (the paper's "samples containing the ID"), found by sorting
    each sample's ids. Shape [] or [N]: every occurrence counts (bincount). Raises ValueError for ids out of range
    (one host sync for the min and max).
    """
    num_rows = _check_positive_int("num_rows", num_rows)
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise _invalid("ids", ids, "an integer tensor of row indices")
    if ids.numel() == 0:
        return torch.zeros(num_rows, dtype=torch.long, device=ids.device)
    low, high = torch.stack(torch.aminmax(ids)).tolist()  # the range check's host sync
    if low < 0 or high >= num_rows:
        raise _invalid("ids", f"values in [{low}, {high}]", f"row indices in [0, {num_rows - 1}]")
    ids = ids.long()
    if ids.ndim >= 2 and ids[0].numel() > 1:
        ordered = ids.reshape(ids.shape[0], -1).sort(dim=1).values
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

    embedding: an nn.Embedding (or nn.EmbeddingBag, or its [rows, dim] weight Parameter) whose .grad is set, dense or
    sparse COO. ids: integer tensor, the row indices this batch looked up (e.g. [B, F] global ids with per-field
    offsets), counted by ``row_counts``: per sample for 2+ dims, per occurrence for 1 dim. r, zeta, threshold: as in
    ``cowclip``. absent_rows: what to do with rows that have a gradient but no id in the batch (a dense grad with L2
    on the whole table): "clip" them with cnt = 1, as the official code does, or "skip" them (left unclipped).
    A dense .grad is modified in place; a sparse one is coalesced, clipped and stored back into .grad.

    Returns Python numbers: rows_touched (distinct rows in ids), rows_clipped (touched rows whose clip bound,
    ||g|| > clip), clip_fraction (rows_clipped / rows_touched, 0.0 if none), absent_rows_clipped (absent rows the
    clip bound on). With return_rows=True also tensors on the table's device: rows [n] (the touched rows, ascending),
    counts [n] (their cnt), clipped [n] bool (whether the clip bound), clipped_rows (rows[clipped]).
    """
    param = _table(embedding)
    r, zeta = _check_positive_real("r", r), _check_nonnegative_real("zeta", zeta)
    _check_choice("threshold", threshold, THRESHOLDS)
    _check_choice("absent_rows", absent_rows, ABSENT_ROWS)
    _check_bool("return_rows", return_rows)
    return _clip_rows_(param, _table_counts(param, ids), r, zeta, threshold, absent_rows, return_rows)


def _table_counts(param: torch.Tensor, ids) -> torch.Tensor:
    """row_counts of ids for the table param, which must have a gradient: every check of a clip, done before it."""
    if param.grad is None:
        raise RuntimeError("The embedding's weight has no gradient (.grad is None): call loss.backward() first")
    return row_counts(ids.to(param.device) if isinstance(ids, torch.Tensor) else ids, param.shape[0])


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
    touched = counts > 0
    weight = param.detach()

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
        totals = torch.stack(
            [touched.count_nonzero(), clipped_touched.count_nonzero(), (binds & ~present).count_nonzero()]
        )
        if return_rows:
            bound = torch.zeros(num_rows, dtype=torch.bool, device=grad_rows.device)
            bound[grad_rows[clipped_touched]] = True
    elif absent_rows == "clip":  # the whole table: two row-norm reductions and one multiply
        grad_norm, weight_norm = _row_norms(grad), _row_norms(weight)
        cnt = counts.to(grad_norm.dtype).clamp_min_(1)  # absent rows: cnt = 1
        scale, binds = _row_scale(grad_norm, weight_norm, cnt, r, zeta, threshold, dim)
        grad.mul_(scale.unsqueeze(1).to(grad.dtype))
        bound = binds & touched
        all_bound, touched_bound = binds.count_nonzero(), bound.count_nonzero()
        totals = torch.stack([touched.count_nonzero(), touched_bound, all_bound - touched_bound])
    else:  # skip absent rows: gather the touched rows, clip them, scatter them back
        rows = touched.nonzero().squeeze(1)
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
        totals = torch.stack(
            [touched.count_nonzero(), binds.count_nonzero(), torch.zeros_like(touched.count_nonzero())]
        )
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
        rows = touched.nonzero().squeeze(1)
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


def _adam(params: list, lr: float, betas: tuple[float, float], eps: float, fused: bool | None):
    """torch.optim.Adam, fused (one kernel for all parameters) where this torch supports it and fused is not False.

    The fused kernel updates every parameter in one pass instead of a per-parameter loop of several, which matters for
    the large embedding table the recipe updates whole every step. The update is the same (up to float rounding order).
    """
    if not params:
        return None
    if fused is not False:
        try:
            return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)
        except (RuntimeError, TypeError, ValueError):
            if fused:
                raise
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)


class CowClip:
    """The official CowClip training recipe as an optimizer for any PyTorch CTR model.

    Two Adams: embedding parameters at the fixed ``embed_lr``; every other parameter at the dense ``lr``, warmed up
    linearly from WARMUP_START_LR (1e-8, the official start) at step 0 to lr at step warmup_steps, constant after.
    Each ``step(ids)``: (1) L2 on the embedding parameters: 2 · l2 · W added to their gradients (the gradient of
    l2 · sum ||W||^2 over the whole table: every row of a dense gradient; for a sparse gradient only the rows this
    batch touched, as a lazy/sparse optimizer must); (2) the CowClip clip on the clipped tables' gradients (L2 term
    included, as the official code does); (3) the Adam steps.

    model: the nn.Module being trained (its parameters with requires_grad are optimized; the model's loss should
    carry no L2 of its own on the embeddings). embeddings: the table(s) to clip (nn.Embedding, its weight, or a
    list), e.g. the dim-d field embeddings; the 1-dim linear embeddings are not clipped in the official code; None
    or [] for none. batch_size: the training batch, for the scaling rule. warmup_steps: the dense warmup's length
    (the official: one epoch of steps), 0 for none. embedding_params: the parameters (or modules) that get embed_lr
    and L2; default: the weights of every nn.Embedding / nn.EmbeddingBag in model; the clipped tables are always
    included. clip: False runs the same recipe without the clip (an ablation); step(ids) then ignores ids.
    r, zeta, threshold, absent_rows: the clip's, as in ``clip_embedding_grad_``. base_batch_size, base_lr, base_l2,
    embed_lr: the scaling rule's inputs (``scaled_hparams``). lr, l2: override the scaled dense lr / L2 coefficient
    directly (e.g. "no scaling": lr=base_lr, l2=base_l2). betas, eps: Adam's, with eps placed as Keras places it
    (1e-7, Keras's default, added to sqrt(v) before bias correction, as torch.optim.SparseAdam also does; plain
    torch.optim.Adam adds it after, so each step sets its eps to eps / sqrt(1 - beta2^t), which is the same update.
    It matters early in training, where sqrt(v) of rarely updated rows is near eps). return_rows: put each clipped
    table's per-row statistics (``clip_embedding_grad_``'s tensors) in the step's stats under "tables".

    Sparse embeddings (nn.Embedding(sparse=True)) are updated by torch.optim.SparseAdam (lazy Adam: only the touched
    rows move, the step count is global); dense ones by torch.optim.Adam, which, like the official code, moves every
    row every step (the L2 gradient is nonzero everywhere). Whether a table is sparse is read from its module's
    ``sparse`` flag, so pass tables that live in model. fused: use torch's fused Adam for the dense-gradient
    parameters (None: where this torch supports it; True: require it; False: the per-parameter loop).

    Attributes: lr, embed_lr, l2 (the values in use), steps (steps taken), dense_lr (the dense lr the next step
    uses), last_stats (the last step's stats), and the torch optimizers dense_optimizer, embedding_optimizer (dense
    embedding gradients), sparse_embedding_optimizer (sparse ones); each is None when it has no parameters.
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
        self.warmup_steps = int(warmup_steps)
        self.clip = _check_bool("clip", clip)
        _check_bool("fused", fused, allow_none=True)
        self.r, self.zeta = _check_positive_real("r", r), _check_nonnegative_real("zeta", zeta)
        self.threshold = _check_choice("threshold", threshold, THRESHOLDS)
        self.absent_rows = _check_choice("absent_rows", absent_rows, ABSENT_ROWS)
        if not (isinstance(betas, Sequence) and len(betas) == 2 and all(_is_real(b) and 0 <= b < 1 for b in betas)):
            raise _invalid("betas", betas, "two numbers in [0, 1)")
        eps = _check_nonnegative_real("eps", eps)
        self.return_rows = _check_bool("return_rows", return_rows)

        # the parameters: clipped tables, embedding parameters (embed_lr, L2), the rest (dense lr)
        all_params = {id(p): p for p in model.parameters() if p.requires_grad}
        tables = embeddings if isinstance(embeddings, (list, tuple)) else ([] if embeddings is None else [embeddings])
        self.tables = [_table(t, "embeddings") for t in tables]
        for table in self.tables:
            if id(table) not in all_params:
                raise _invalid("embeddings", tuple(table.shape), "tables that are trainable parameters of model")
        sparse_flags = {
            id(m.weight): bool(m.sparse) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
        }
        if embedding_params is None:
            chosen = [all_params[i] for i in sparse_flags if i in all_params]
        else:
            chosen = _parameters_of(embedding_params, "embedding_params")
            for p in chosen:
                if id(p) not in all_params:
                    raise _invalid("embedding_params", tuple(p.shape), "trainable parameters of model")
        chosen_ids = {id(p) for p in chosen}
        chosen += [t for t in self.tables if id(t) not in chosen_ids]
        chosen_ids = {id(p) for p in chosen}
        self.embedding_params = chosen
        self.sparse_params = [p for p in chosen if sparse_flags.get(id(p), False)]
        self.dense_embedding_params = [p for p in chosen if not sparse_flags.get(id(p), False)]
        self.dense_params = [p for i, p in all_params.items() if i not in chosen_ids]

        self.betas, self.eps = (float(betas[0]), float(betas[1])), eps
        betas = self.betas
        self.steps = 0
        self.dense_optimizer = _adam(self.dense_params, self.dense_lr, betas, eps, fused)
        self.embedding_optimizer = _adam(self.dense_embedding_params, self.embed_lr, betas, eps, fused)
        self.sparse_embedding_optimizer = (
            torch.optim.SparseAdam(self.sparse_params, lr=self.embed_lr, betas=betas, eps=eps)
            if self.sparse_params
            else None
        )
        self.last_stats: dict = {}

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The torch optimizers in use, by name: dense, embedding, sparse_embedding."""
        named = {
            "dense": self.dense_optimizer,
            "embedding": self.embedding_optimizer,
            "sparse_embedding": self.sparse_embedding_optimizer,
        }
        return {name: opt for name, opt in named.items() if opt is not None}

    def lr_at(self, step: int) -> float:
        """The dense learning rate of step `step` (0-based): linear from WARMUP_START_LR to lr over warmup_steps."""
        if self.warmup_steps == 0 or step >= self.warmup_steps:
            return self.lr
        return WARMUP_START_LR + (self.lr - WARMUP_START_LR) * step / self.warmup_steps

    @property
    def dense_lr(self) -> float:
        """The dense learning rate the next step() uses."""
        return self.lr_at(self.steps)

    def _ids_per_table(self, ids) -> list:
        if not self.clip or not self.tables:
            return []
        if ids is None:
            raise _invalid("ids", ids, f"the batch's row ids for the {len(self.tables)} clipped table(s)")
        if isinstance(ids, torch.Tensor):
            ids = [ids]
        if not isinstance(ids, (list, tuple)) or len(ids) != len(self.tables):
            raise _invalid("ids", type(ids).__name__, f"a tensor per clipped table ({len(self.tables)}), in order")
        return list(ids)

    @torch.no_grad()
    def _add_l2(self) -> None:
        if self.l2 == 0:
            return
        for p in self.embedding_params:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:  # only the touched rows: a sparse update cannot move the others
                grad = grad.coalesce()
                rows = grad.indices()[0]
                values = grad.values() + (2 * self.l2) * p.detach().index_select(0, rows).to(grad.dtype)
                p.grad = torch.sparse_coo_tensor(
                    grad.indices(), values, grad.shape, is_coalesced=True, check_invariants=False
                )
            else:
                grad.add_(p.detach().to(grad.dtype), alpha=2 * self.l2)

    def step(self, ids=None) -> dict:
        """One training step on the gradients in .grad: L2, clip, Adam (class docstring). Returns the stats.

        ids: the batch's row ids into the clipped table (a tensor), or a list of tensors aligned with `embeddings`;
        ignored when clip=False or no table is clipped. Stats: step (0-based index of this step), lr (the dense lr
        used), embed_lr; with the clip, rows_touched, rows_clipped, clip_fraction, absent_rows_clipped summed over
        the clipped tables (and "tables", a list of each table's ``clip_embedding_grad_`` dict, with return_rows).
        """
        # every check first (ids in range, gradients present): a rejected step leaves every .grad as it was
        counts = [_table_counts(table, table_ids) for table, table_ids in zip(self.tables, self._ids_per_table(ids))]
        self._add_l2()
        stats: dict = {"step": self.steps, "lr": self.dense_lr, "embed_lr": self.embed_lr}
        if counts:
            tables = [
                _clip_rows_(table, table_counts, self.r, self.zeta, self.threshold, self.absent_rows, self.return_rows)
                for table, table_counts in zip(self.tables, counts)
            ]
            for key in ("rows_touched", "rows_clipped", "absent_rows_clipped"):
                stats[key] = sum(t[key] for t in tables)
            stats["clip_fraction"] = stats["rows_clipped"] / stats["rows_touched"] if stats["rows_touched"] else 0.0
            if self.return_rows:
                stats["tables"] = tables
        # Keras's epsilon: torch.optim.Adam adds eps to sqrt(v / (1 - beta2^t)), Keras (and SparseAdam) to sqrt(v);
        # eps / sqrt(1 - beta2^t) in the former is the latter exactly (t: this step's Adam step count, 1-based)
        keras_eps = self.eps / math.sqrt(1 - self.betas[1] ** (self.steps + 1))
        for opt in (self.dense_optimizer, self.embedding_optimizer):
            for group in opt.param_groups if opt is not None else ():
                group["eps"] = keras_eps
        if self.dense_optimizer is not None:
            for group in self.dense_optimizer.param_groups:
                group["lr"] = stats["lr"]
            self.dense_optimizer.step()
        for opt in (self.embedding_optimizer, self.sparse_embedding_optimizer):
            if opt is not None:
                opt.step()
        self.steps += 1
        self.last_stats = stats
        return stats

    def zero_grad(self, set_to_none: bool = True) -> None:
        _check_bool("set_to_none", set_to_none)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """{"steps": int, "optimizers": {name: the torch optimizer's state_dict()}}."""
        return {"steps": self.steps, "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore state_dict() into a CowClip built the same way (same model structure and parameter split)."""
        names = set(state["optimizers"])
        if names != set(self.optimizers):
            raise ValueError(f"state has optimizers {sorted(names)}, this CowClip has {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.steps = int(state["steps"])
