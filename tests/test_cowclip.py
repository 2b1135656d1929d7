"""Tests for accel.cowclip: the clip against a per-row transcription of Algorithm 1, counts, the dense and sparse
in-place paths, absent rows, statistics, the official threshold, the scaling rule, validation, and the CowClip
training integration (warmup, learning rates, L2, clip, training, state_dict, sparse embeddings)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from accel.cowclip import (
    WARMUP_START_LR,
    CowClip,
    clip_embedding_grad_,
    cowclip,
    row_counts,
    scaled_hparams,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference(grad, weight, counts, r, zeta):
    """Algorithm 1, one row at a time, in float64 Python: g · min(clip, ||g||) / ||g||, clip = cnt·max(r||w||, ζ)."""
    out = []
    for g, w, cnt in zip(grad.double().tolist(), weight.double().tolist(), counts.double().tolist()):
        n_g = math.sqrt(sum(v * v for v in g))
        clip = cnt * max(r * math.sqrt(sum(v * v for v in w)), zeta)
        out.append([v * min(clip, n_g) / n_g if n_g > 0 else 0.0 for v in g])
    return torch.tensor(out, dtype=torch.float64).reshape(grad.shape)


def _case(rows, dim, seed, dtype=torch.float64):
    """Gradients of mixed sizes against small weights so that some rows clip and some do not; some zero rows."""
    gen = _gen(seed)
    grad = torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    grad *= torch.exp(torch.randn(rows, 1, generator=gen, dtype=torch.float64) * 2) * 1e-2
    grad[torch.rand(rows, generator=gen) < 0.1] = 0
    weight = torch.randn(rows, dim, generator=gen, dtype=torch.float64) * 1e-2
    weight[torch.rand(rows, generator=gen) < 0.1] = 0
    counts = torch.randint(0, 5, (rows,), generator=gen)
    return grad.to(dtype), weight.to(dtype), counts


# --------------------------------------------------------------------------------------------------- the clip op


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("r, zeta", [(1.0, 1e-5), (0.5, 0.0), (2.0, 1e-2), (1.0, 0.3)])
def test_cowclip_matches_a_per_row_transcription_of_algorithm_1(dtype, r, zeta):
    for seed, (rows, dim) in enumerate([(1, 1), (7, 3), (64, 10), (33, 16)]):
        grad, weight, counts = _case(rows, dim, seed, dtype)
        expected = _reference(grad, weight, counts, r, zeta)
        for cnt in (counts, counts.to(dtype)):  # int or float counts
            out = cowclip(grad, weight, cnt, r=r, zeta=zeta)
            assert out.dtype == dtype and out.shape == grad.shape
            tol = 1e-12 if dtype == torch.float64 else 1e-6
            torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())
    assert not torch.equal(expected, grad.double())  # the cases do clip


def test_cowclip_bfloat16_within_rounding_and_returns_bfloat16():
    grad, weight, counts = _case(200, 10, 5, torch.bfloat16)
    out = cowclip(grad, weight, counts, r=1.0, zeta=1e-3)
    assert out.dtype == torch.bfloat16
    expected = _reference(grad.double(), weight.double(), counts, 1.0, 1e-3)
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=1e-6)


def test_zero_gradient_rows_stay_zero_without_nan():
    grad = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    weight = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    counts = torch.tensor([0, 1, 2, 0])
    out = cowclip(grad, weight, counts, r=1.0, zeta=0.0)  # clip = 0 for rows 0, 1 and 3
    assert torch.isfinite(out).all()
    assert torch.equal(out, torch.zeros_like(out))  # zero rows stay zero; clip 0 zeroes the others
    out = cowclip(grad.half(), weight.half(), counts, r=1.0, zeta=1e-5)
    assert torch.isfinite(out).all() and (out[[0, 2]] == 0).all()


def test_cowclip_does_not_modify_its_inputs():
    grad, weight, counts = _case(20, 4, 1)
    before = grad.clone(), weight.clone()
    cowclip(grad, weight, counts)
    assert torch.equal(grad, before[0]) and torch.equal(weight, before[1])


def test_official_threshold_equals_paper_with_zeta_sqrt_dim_when_r_is_1():
    for dim in (1, 10, 16):
        grad, weight, counts = _case(50, dim, dim, torch.float64)
        zeta = 3e-3
        official = cowclip(grad, weight, counts, r=1.0, zeta=zeta, threshold="official")
        paper = cowclip(grad, weight, counts, r=1.0, zeta=zeta * math.sqrt(dim))
        torch.testing.assert_close(official, paper, rtol=1e-12, atol=0)
        if dim > 1:  # the lower bound differs, and the case has rows where it decides
            assert not torch.equal(official, cowclip(grad, weight, counts, r=1.0, zeta=zeta))


def test_official_threshold_formula_for_other_r():
    """The code's clip_t = r · cnt · max(||w||, r · sqrt(dim) · zeta)."""
    grad, weight, counts = _case(40, 10, 3, torch.float64)
    r, zeta = 0.5, 3e-3
    clip = r * counts.double() * torch.clamp_min(weight.norm(dim=1), r * math.sqrt(10) * zeta)
    norm = grad.norm(dim=1)
    expected = grad * torch.where(norm > clip, clip / norm.clamp_min(1e-300), 1.0).unsqueeze(1)
    torch.testing.assert_close(cowclip(grad, weight, counts, r=r, zeta=zeta, threshold="official"), expected)


# ------------------------------------------------------------------------------------------------------- counts


def test_row_counts_occurrences_for_1d_ids_and_samples_for_2d():
    assert row_counts(torch.tensor([1, 1, 2, 4, 1]), 6).tolist() == [0, 3, 1, 0, 1, 0]
    ids = torch.tensor([[1, 1, 2], [1, 3, 3], [0, 4, 2]])  # sample 0 holds row 1 twice, sample 1 row 3 twice
    assert row_counts(ids, 6).tolist() == [1, 2, 2, 1, 1, 0]
    assert row_counts(ids.reshape(3, 3, 1), 6).tolist() == [1, 2, 2, 1, 1, 0]  # [B, F, L]: per sample too
    assert row_counts(ids[:, :1], 6).tolist() == [1, 2, 0, 0, 0, 0]
    assert row_counts(torch.tensor(3), 5).tolist() == [0, 0, 0, 1, 0]
    assert row_counts(torch.zeros(0, 4, dtype=torch.long), 3).tolist() == [0, 0, 0]
    assert row_counts(torch.tensor([[2, 0]], dtype=torch.int32), 3).tolist() == [1, 0, 1]


def test_row_counts_with_field_offsets_match_a_per_sample_set_count():
    gen = _gen(0)
    sizes = [5, 9, 3, 20]
    offsets = torch.tensor([0, 5, 14, 17])
    ids = torch.stack([torch.randint(0, s, (64,), generator=gen) for s in sizes], dim=1) + offsets
    expected = [sum(row in set(sample) for sample in ids.tolist()) for row in range(sum(sizes))]
    assert row_counts(ids, sum(sizes)).tolist() == expected


def test_row_counts_on_overlapping_columns_match_a_per_sample_set_count():
    ids = torch.randint(0, 12, (50, 4), generator=_gen(1))  # the columns share rows; samples hold rows twice
    expected = [sum(row in set(sample) for sample in ids.tolist()) for row in range(12)]
    assert row_counts(ids, 12).tolist() == expected
    assert row_counts(torch.tensor([[0, 1], [1, 1]]), 3).tolist() == [1, 2, 0]  # columns [0, 1] and [1, 1] touch


# ------------------------------------------------------------------------------------------- in place on .grad


def _embedding_with_grad(rows, dim, ids, sparse, seed=0, scale=1.0):
    torch.manual_seed(seed)
    emb = nn.Embedding(rows, dim, sparse=sparse)
    with torch.no_grad():
        emb.weight.mul_(0.01)
    upstream = torch.randn(*ids.shape, dim, generator=_gen(seed + 1)) * scale
    (emb(ids) * upstream).sum().backward()
    return emb


@pytest.mark.parametrize("absent_rows", ["clip", "skip"])
def test_dense_and_sparse_paths_clip_touched_rows_alike_and_match_cowclip(absent_rows):
    gen = _gen(3)
    ids = torch.randint(0, 30, (16, 4), generator=gen)
    ids[0, 1] = ids[0, 0]  # one sample holding a row twice: counted once
    dense = _embedding_with_grad(40, 5, ids, sparse=False, scale=0.01)
    sparse = _embedding_with_grad(40, 5, ids, sparse=True, scale=0.01)
    raw = dense.weight.grad.clone()
    assert not sparse.weight.grad.is_coalesced()
    a = clip_embedding_grad_(dense, ids, 1.0, 1e-3, absent_rows=absent_rows, return_rows=True)
    b = clip_embedding_grad_(sparse, ids, 1.0, 1e-3, absent_rows=absent_rows, return_rows=True)
    assert sparse.weight.grad.is_sparse and sparse.weight.grad.is_coalesced()
    torch.testing.assert_close(sparse.weight.grad.to_dense(), dense.weight.grad)
    expected = cowclip(raw, dense.weight, row_counts(ids, 40).clamp_min(1), 1.0, 1e-3)
    torch.testing.assert_close(dense.weight.grad, expected)
    assert 0 < a["rows_clipped"] < a["rows_touched"]  # the case clips some rows, not all
    for key in ("rows_touched", "rows_clipped", "clip_fraction", "absent_rows_clipped"):
        assert a[key] == b[key]
    for key in ("rows", "counts", "clipped", "clipped_rows"):
        assert torch.equal(a[key], b[key])


def test_sparse_gradient_with_duplicate_indices_is_coalesced_then_clipped():
    weight = nn.Parameter(torch.tensor([[0.1, 0.0], [0.0, 0.2], [1.0, 1.0]]))
    indices = torch.tensor([[1, 0, 1, 1]])  # row 1 three times (summed to [3, 3]), row 0 once
    values = torch.tensor([[1.0, 1.0], [0.05, 0.0], [1.0, 1.0], [1.0, 1.0]])
    weight.grad = torch.sparse_coo_tensor(indices, values, (3, 2), check_invariants=True)
    stats = clip_embedding_grad_(weight, torch.tensor([1, 0, 1, 1]), r=1.0, zeta=0.0, return_rows=True)
    grad = weight.grad.to_dense()
    # row 1: cnt 3 (1-D ids count occurrences), clip = 3 · 0.2 = 0.6 < ||[3, 3]||; row 0: 0.05 <= 0.1, unclipped
    torch.testing.assert_close(grad[1], torch.tensor([3.0, 3.0]) * 0.6 / math.sqrt(18))
    torch.testing.assert_close(grad[0], torch.tensor([0.05, 0.0]))
    assert grad[2].eq(0).all()
    assert stats["rows_touched"] == 2 and stats["rows_clipped"] == 1 and stats["clipped_rows"].tolist() == [1]


def test_absent_rows_clip_with_count_one_or_skip():
    weight = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.0, 0.0], [0.1, 0.0]])
    grad = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 0.0], [0.0, 0.05]])  # rows 1 and 3 absent from the batch
    ids = torch.tensor([[0], [0], [2]])  # row 0: cnt 2, clip 2 (g 2: unclipped); row 2: zero grad
    clipped = nn.Parameter(weight.clone())
    clipped.grad = grad.clone()
    stats = clip_embedding_grad_(clipped, ids, r=1.0, zeta=0.0, absent_rows="clip")
    assert clipped.grad[1].tolist() == [0.0, 0.5]  # cnt 1: clipped to ||w|| = 0.5
    assert clipped.grad[3].tolist() == pytest.approx([0.0, 0.05])  # 0.05 <= 0.1: unclipped
    assert clipped.grad[0].tolist() == [2.0, 0.0]
    assert stats == {"rows_touched": 2, "rows_clipped": 0, "clip_fraction": 0.0, "absent_rows_clipped": 1}
    skipped = nn.Parameter(weight.clone())
    skipped.grad = grad.clone()
    stats = clip_embedding_grad_(skipped, ids, r=1.0, zeta=0.0, absent_rows="skip")
    assert torch.equal(skipped.grad, grad)
    assert stats["absent_rows_clipped"] == 0


def test_absent_rows_with_only_an_l2_gradient_never_clip_when_2_lambda_below_r():
    weight = torch.randn(100, 10, generator=_gen(0)) * 1e-2
    l2 = 1e-2
    param = nn.Parameter(weight.clone())
    param.grad = 2 * l2 * weight
    stats = clip_embedding_grad_(param, torch.tensor([3, 4]), r=1.0, zeta=1e-5, absent_rows="clip")
    assert stats["absent_rows_clipped"] == 0 and torch.equal(param.grad, 2 * l2 * weight)


def test_statistics_on_a_hand_built_case():
    weight = torch.tensor([[0.3, 0.4], [0.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])  # norms .5, 0, 1, 1, 1
    grad = torch.tensor([[3.0, 4.0], [1e-4, 0.0], [0.5, 0.0], [0.0, 0.0], [9.0, 0.0]])
    ids = torch.tensor([[0, 1], [0, 2], [0, 3]])  # cnt: row0 3, row1 1, row2 1, row3 1; row4 absent
    param = nn.Parameter(weight)
    param.grad = grad.clone()
    stats = clip_embedding_grad_(param, ids, r=1.0, zeta=1e-3, return_rows=True)
    # row 0: clip 3·0.5 = 1.5 < 5 -> clipped; row 1: clip 1e-3 >= 1e-4 -> not; row 2: 1 >= 0.5 -> not;
    # row 3: zero grad -> not; row 4 (absent, cnt 1): 1 < 9 -> clipped as an absent row
    assert stats["rows_touched"] == 4 and stats["rows_clipped"] == 1 and stats["absent_rows_clipped"] == 1
    assert stats["clip_fraction"] == 0.25
    assert stats["rows"].tolist() == [0, 1, 2, 3] and stats["counts"].tolist() == [3, 1, 1, 1]
    assert stats["clipped"].tolist() == [True, False, False, False] and stats["clipped_rows"].tolist() == [0]
    torch.testing.assert_close(param.grad[0], torch.tensor([0.9, 1.2]))
    torch.testing.assert_close(param.grad[4], torch.tensor([1.0, 0.0]))
    assert all(isinstance(stats[k], int) for k in ("rows_touched", "rows_clipped", "absent_rows_clipped"))
    assert isinstance(stats["clip_fraction"], float)


def test_clip_embedding_grad_half_precision_dense():
    ids = torch.randint(0, 20, (8, 3), generator=_gen(2))
    emb = _embedding_with_grad(20, 6, ids, sparse=False, scale=0.05)
    half = nn.Parameter(emb.weight.detach().bfloat16())
    half.grad = emb.weight.grad.bfloat16()
    counts = row_counts(ids, 20).clamp_min(1)
    expected = _reference(half.grad.double(), half.double(), counts, 1.0, 1e-3)  # from the bf16 values
    stats = clip_embedding_grad_(half, ids, 1.0, 1e-3)
    assert half.grad.dtype == torch.bfloat16 and stats["rows_clipped"] > 0
    torch.testing.assert_close(half.grad.double(), expected, rtol=1e-2, atol=1e-6)


# -------------------------------------------------------------------------------------------- the scaling rule


CRITEO = [  # official README: batch (K), lr, l2
    (1, 8e-4, 1e-5),
    (2, 11.31e-4, 2e-5),
    (4, 16e-4, 4e-5),
    (8, 22.62e-4, 8e-5),
    (16, 32e-4, 16e-5),
    (32, 45.25e-4, 32e-5),
    (64, 64e-4, 64e-5),
    (128, 90.50e-4, 128e-5),
]


@pytest.mark.parametrize("k, lr, l2", CRITEO)
def test_scaled_hparams_reproduce_the_official_criteo_table(k, lr, l2):
    hp = scaled_hparams(1024 * k)
    assert abs(hp["lr"] - lr) < 0.01e-4  # the table gives two decimals of 1e-4 (truncated: 22.627 -> 22.62)
    assert hp["l2"] == pytest.approx(l2, rel=1e-12)
    assert hp["embed_lr"] == 1e-4
    assert set(hp) == {"lr", "embed_lr", "l2"}


def test_scaled_hparams_other_bases():
    hp = scaled_hparams(4096, base_batch_size=256, base_lr=1e-3, base_l2=0.0, embed_lr=1e-2)
    assert hp == pytest.approx({"lr": 4e-3, "embed_lr": 1e-2, "l2": 0.0})


# ---------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda g, w, c: cowclip(g, w, c, r=0), r"Invalid r: 0"),
        (lambda g, w, c: cowclip(g, w, c, r=-1.5), r"Invalid r: -1.5"),
        (lambda g, w, c: cowclip(g, w, c, zeta=-1), r"Invalid zeta: -1"),
        (lambda g, w, c: cowclip(g, w, c, zeta=float("nan")), r"Invalid zeta: nan"),
        (lambda g, w, c: cowclip(g, w, c, threshold="code"), r"Invalid threshold: 'code'"),
        (lambda g, w, c: cowclip(g, w[:3], c), r"Invalid weight: torch.Size\(\[3, 2\]\)"),
        (lambda g, w, c: cowclip(g, w, c[:2]), r"Invalid counts: torch.Size\(\[2\]\)"),
        (lambda g, w, c: cowclip(g[0], w[0], c), r"Invalid grad: torch.Size\(\[2\]\)"),
        (lambda g, w, c: scaled_hparams(0), r"Invalid batch_size: 0"),
        (lambda g, w, c: scaled_hparams(1024.0), r"Invalid batch_size: 1024.0"),
        (lambda g, w, c: scaled_hparams(1024, base_batch_size=-1), r"Invalid base_batch_size: -1"),
        (lambda g, w, c: scaled_hparams(1024, base_lr=0), r"Invalid base_lr: 0"),
        (lambda g, w, c: scaled_hparams(1024, embed_lr=-1e-4), r"Invalid embed_lr: -0.0001"),
        (lambda g, w, c: scaled_hparams(1024, base_l2=-1e-5), r"Invalid base_l2: -1e-05"),
        (lambda g, w, c: row_counts(torch.tensor([0, 5]), 5), r"Invalid ids: 'values in \[0, 5\]'.*\[0, 4\]"),
        (lambda g, w, c: row_counts(torch.tensor([-1, 2]), 5), r"Invalid ids: 'values in \[-1, 2\]'"),
        (lambda g, w, c: row_counts(torch.tensor([0.0, 1.0]), 5), r"Invalid ids"),
    ],
)
def test_validation_errors_name_argument_and_value(call, match):
    grad, weight, counts = torch.ones(4, 2), torch.ones(4, 2), torch.ones(4)
    with pytest.raises(ValueError, match=match):
        call(grad, weight, counts)


def test_clip_embedding_grad_validation():
    emb = nn.Embedding(5, 2)
    with pytest.raises(RuntimeError, match="no gradient"):
        clip_embedding_grad_(emb, torch.tensor([0]))
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.grad.clone()
    with pytest.raises(ValueError, match=r"Invalid ids: 'values in \[1, 7\]'"):
        clip_embedding_grad_(emb, torch.tensor([1, 7]))
    with pytest.raises(ValueError, match="Invalid r: 0"):
        clip_embedding_grad_(emb, torch.tensor([1]), r=0)
    with pytest.raises(ValueError, match="Invalid zeta: -1"):
        clip_embedding_grad_(emb, torch.tensor([1]), zeta=-1)
    with pytest.raises(ValueError, match="Invalid absent_rows: 'drop'"):
        clip_embedding_grad_(emb, torch.tensor([1]), absent_rows="drop")
    with pytest.raises(ValueError, match="Invalid embedding"):
        clip_embedding_grad_(torch.ones(3), torch.tensor([1]))
    assert torch.equal(emb.weight.grad, before)  # nothing changed by a rejected call


# --------------------------------------------------------------------------------------------------- integration


FIELDS = (7, 11, 5)  # per-field vocabulary sizes; global ids = field id + offset
OFFSETS = torch.tensor([0, 7, 18])
ROWS = sum(FIELDS)


class TinyCTR(nn.Module):
    """Field embeddings (dim 4) into a small MLP, plus 1-dim linear embeddings (wide part) and a bias."""

    def __init__(self, sparse: bool = False, dim: int = 4):
        super().__init__()
        self.embedding = nn.Embedding(ROWS, dim, sparse=sparse)
        self.linear = nn.Embedding(ROWS, 1, sparse=sparse)
        self.mlp = nn.Sequential(nn.Linear(len(FIELDS) * dim, 16), nn.ReLU(), nn.Linear(16, 1))
        with torch.no_grad():
            self.embedding.weight.normal_(0, 1e-2)
            self.linear.weight.zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embedding(ids).flatten(1)).squeeze(1) + self.linear(ids).sum(dim=(1, 2))


def _data(n: int, seed: int = 0):
    gen = _gen(seed)
    ids = torch.stack([torch.randint(0, s, (n,), generator=gen) for s in FIELDS], dim=1) + OFFSETS
    effect = torch.randn(ROWS, generator=gen)
    labels = (torch.rand(n, generator=gen) < torch.sigmoid(effect[ids].sum(1))).float()
    return ids, labels


def _model(sparse=False, seed=0):
    torch.manual_seed(seed)
    return TinyCTR(sparse=sparse)


def _group(opt, name):
    """The param group of that name."""
    return next(g for g in opt.param_groups if g["name"] == name)


def _train(model, opt, ids, labels, steps, batch):
    losses = []
    for step in range(steps):
        lo = (step * batch) % len(ids)
        x, y = ids[lo : lo + batch], labels[lo : lo + batch]
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step(ids=x)
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_warmup_schedule_is_linear_from_about_zero_then_constant():
    opt = CowClip(_model(), batch_size=4096, warmup_steps=4, lr=1e-2)
    ramp = [WARMUP_START_LR + (1e-2 - WARMUP_START_LR) * s / 4 for s in range(4)]
    assert [opt.lr_at(s) for s in range(6)] == pytest.approx([*ramp, 1e-2, 1e-2], rel=1e-12)
    assert ramp == pytest.approx([0, 2.5e-3, 5e-3, 7.5e-3], abs=1e-8)
    assert opt.lr_at(0) == WARMUP_START_LR == 1e-8
    assert CowClip(_model(), batch_size=4096).lr_at(0) == pytest.approx(16e-4)  # no warmup: sqrt(4) · 8e-4
    model = _model()
    opt = CowClip(model, model.embedding, batch_size=1024, warmup_steps=3, lr=3e-3)
    ids, labels = _data(64)
    used = []
    for _ in range(5):
        assert opt.dense_lr == opt.lr_at(opt.steps)
        F.binary_cross_entropy_with_logits(model(ids), labels).backward()
        opt.step(ids=ids)
        stats = opt.last_stats
        used.append(stats["lr"])
        assert _group(opt, "dense")["lr"] == 3e-3  # the warm-up does not write the group's lr
        opt.zero_grad()
    assert used == pytest.approx([1e-8, 1e-3, 2e-3, 3e-3, 3e-3], rel=1e-4)


def test_learning_rates_land_on_the_right_parameters():
    model = _model()
    opt = CowClip(model, model.embedding, batch_size=8192, warmup_steps=0)
    hp = scaled_hparams(8192)
    assert opt.lr == hp["lr"] and opt.l2 == hp["l2"] and opt.embed_lr == 1e-4
    embed = {id(p) for name in ("clipped_embedding", "embedding") for p in _group(opt, name)["params"]}
    dense = {id(p) for p in _group(opt, "dense")["params"]}
    assert embed == {id(model.embedding.weight), id(model.linear.weight)}  # the linear embeddings too (not clipped)
    assert dense == {id(p) for p in model.mlp.parameters()}
    assert _group(opt, "clipped_embedding")["lr"] == _group(opt, "embedding")["lr"] == 1e-4
    assert _group(opt, "dense")["lr"] == pytest.approx(hp["lr"])
    assert all(g["eps"] == 1e-7 for g in opt.param_groups)
    assert [g["clip"] for g in opt.param_groups] == [True, False, False]
    assert [t is model.embedding.weight for t in opt.tables] == [True]
    # overrides: "sqrt scaling of all lrs" and "no scaling"
    opt = CowClip(model, model.embedding, batch_size=8192, embed_lr=1e-4 * math.sqrt(8), lr=8e-4, l2=1e-5)
    assert (opt.lr, opt.l2, opt.embed_lr) == (8e-4, 1e-5, pytest.approx(2.828427e-4))
    # explicit embedding_params: only the field table gets embed_lr; the linear embeddings are dense params
    opt = CowClip(model, model.embedding, batch_size=1024, embedding_params=[model.embedding])
    assert [g["name"] for g in opt.param_groups] == ["clipped_embedding", "dense"]
    assert _group(opt, "clipped_embedding")["params"] == [model.embedding.weight]
    assert any(p is model.linear.weight for p in _group(opt, "dense")["params"])


def _grads_after_step(opt, model, ids, labels):
    # a summed loss: with the batch mean and 1e-2 weights the clip would seldom bind on 32 samples
    F.binary_cross_entropy_with_logits(model(ids), labels, reduction="sum").backward()
    raw = {name: p.grad.clone() for name, p in model.named_parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    opt.step(ids=ids)
    return raw, before, {name: p.grad for name, p in model.named_parameters()}, opt.last_stats


def test_clip_false_leaves_gradients_untouched_apart_from_l2():
    model = _model()
    ids, labels = _data(32)
    opt = CowClip(model, model.embedding, batch_size=1024, clip=False, l2=0.05)
    raw, before, after, stats = _grads_after_step(opt, model, ids, labels)
    for name in ("embedding.weight", "linear.weight"):  # L2 on every row of the dense tables: + 2·λ·W
        torch.testing.assert_close(after[name], raw[name] + 2 * 0.05 * before[name])
    for name in ("mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"):
        assert torch.equal(after[name], raw[name])
    assert "rows_clipped" not in stats and stats["step"] == 0


def test_clip_true_applies_cowclip_to_the_l2_included_gradient_of_the_chosen_table_only():
    model = _model()
    ids, labels = _data(32)
    opt = CowClip(model, model.embedding, batch_size=1024, l2=0.05, zeta=1e-4, threshold="official")
    raw, before, after, stats = _grads_after_step(opt, model, ids, labels)
    with_l2 = raw["embedding.weight"] + 0.1 * before["embedding.weight"]
    counts = row_counts(ids, ROWS).clamp_min(1)
    expected = cowclip(with_l2, before["embedding.weight"], counts, 1.0, 1e-4, threshold="official")
    torch.testing.assert_close(after["embedding.weight"], expected)
    assert not torch.allclose(expected, with_l2)  # the clip bound on some rows
    torch.testing.assert_close(after["linear.weight"], raw["linear.weight"] + 0.1 * before["linear.weight"])
    assert stats["rows_touched"] == int((row_counts(ids, ROWS) > 0).sum()) and stats["rows_clipped"] > 0
    assert opt.last_stats is stats


def test_a_few_steps_decrease_the_loss_dense_and_sparse():
    ids, labels = _data(2048)
    for sparse in (False, True):
        model = _model(sparse)
        opt = CowClip(model, model.embedding, batch_size=256, base_batch_size=256, base_lr=1e-2, embed_lr=5e-2)
        losses = _train(model, opt, ids, labels, steps=40, batch=256)
        assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 0.02, (sparse, losses)
        if sparse:
            assert model.embedding.weight.grad is None


def test_sparse_and_dense_embeddings_agree_on_touched_rows_after_one_step():
    ids, labels = _data(5)  # 15 lookups into 23 rows: some rows untouched
    results = []
    for sparse in (False, True):
        model = _model(sparse)
        opt = CowClip(model, model.embedding, batch_size=1024, l2=0.05, zeta=1e-4, embed_lr=1e-2, return_rows=True)
        F.binary_cross_entropy_with_logits(model(ids), labels, reduction="sum").backward()
        opt.step(ids=ids)
        results.append((model, opt.last_stats))
    (dense, a), (sparse, b) = results
    touched = a["tables"][0]["rows"]
    assert a["rows_clipped"] == b["rows_clipped"] > 0
    assert torch.equal(a["tables"][0]["clipped_rows"], b["tables"][0]["clipped_rows"])
    for name in ("embedding", "linear"):
        w_dense, w_sparse = getattr(dense, name).weight, getattr(sparse, name).weight
        torch.testing.assert_close(w_dense[touched], w_sparse[touched], rtol=1e-5, atol=1e-7)
    untouched = torch.ones(ROWS, dtype=torch.bool)
    untouched[touched] = False
    initial = _model(True).embedding.weight
    assert torch.equal(sparse.embedding.weight[untouched], initial[untouched])  # lazy: untouched rows stay
    assert not torch.equal(dense.embedding.weight[untouched], initial[untouched])  # dense L2 moves every row


def test_state_dict_round_trip_reproduces_subsequent_steps_exactly():
    ids, labels = _data(512)
    for sparse in (False, True):
        model = _model(sparse)
        opt = CowClip(model, model.embedding, batch_size=64, base_batch_size=64, warmup_steps=5, base_lr=1e-2)
        _train(model, opt, ids, labels, steps=3, batch=64)
        model_state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
        continued = _train(model, opt, ids[192:], labels[192:], steps=4, batch=64)

        resumed_model = _model(sparse, seed=1)  # different init, overwritten by the state
        resumed_model.load_state_dict(model_state)
        resumed = CowClip(
            resumed_model, resumed_model.embedding, batch_size=64, base_batch_size=64, warmup_steps=5, base_lr=1e-2
        )
        resumed.load_state_dict(opt_state)
        assert resumed.steps == 3 and resumed.dense_lr == opt.lr_at(3)
        again = _train(resumed_model, resumed, ids[192:], labels[192:], steps=4, batch=64)
        assert again == continued
        for p, q in zip(model.parameters(), resumed_model.parameters()):
            assert torch.equal(p, q)


def test_several_clipped_tables_take_a_list_of_ids():
    model = _model()
    ids, labels = _data(32)
    opt = CowClip(model, [model.embedding, model.linear.weight], batch_size=1024, zeta=1e-4)
    F.binary_cross_entropy_with_logits(model(ids), labels).backward()
    opt.step(ids=[ids, ids])
    stats = opt.last_stats
    per_table = 2 * int((row_counts(ids, ROWS) > 0).sum())
    assert stats["rows_touched"] == per_table
    opt.zero_grad()
    F.binary_cross_entropy_with_logits(model(ids), labels).backward()
    with pytest.raises(ValueError, match="Invalid ids"):
        opt.step(ids=ids)  # one tensor for two tables
    with pytest.raises(ValueError, match="Invalid ids: None"):
        opt.step()


def test_cowclip_class_validation():
    model = _model()
    cases = [
        (dict(batch_size=0), "Invalid batch_size: 0"),
        (dict(batch_size=1024, warmup_steps=-1), "Invalid warmup_steps: -1"),
        (dict(batch_size=1024, r=0), "Invalid r: 0"),
        (dict(batch_size=1024, zeta=-1), "Invalid zeta: -1"),
        (dict(batch_size=1024, lr=0), "Invalid lr: 0"),
        (dict(batch_size=1024, l2=-1), "Invalid l2: -1"),
        (dict(batch_size=1024, embed_lr=0), "Invalid embed_lr: 0"),
        (dict(batch_size=1024, eps=-1), "Invalid eps: -1"),
        (dict(batch_size=1024, betas=(0.9, 1.0)), r"Invalid betas: \(0.9, 1.0\)"),
        (dict(batch_size=1024, clip=1), "Invalid clip: 1"),
        (dict(batch_size=1024, threshold="tf"), "Invalid threshold: 'tf'"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            CowClip(model, model.embedding, **kwargs)
    with pytest.raises(ValueError, match="Invalid embeddings"):
        CowClip(model, nn.Embedding(3, 2), batch_size=1024)  # not the model's table
    with pytest.raises(ValueError, match="Invalid embedding_params"):
        CowClip(model, model.embedding, batch_size=1024, embedding_params=[nn.Embedding(3, 2)])


# ---------------------------------------------------------------------------------------- reliability regressions


@pytest.mark.parametrize(
    "bad, match",
    [
        (-1, r"Invalid counts: -1 at row 2; expected"),
        (float("nan"), r"Invalid counts: nan at row 2; expected"),
        (float("inf"), r"Invalid counts: inf at row 2; expected"),
    ],
)
def test_cowclip_rejects_negative_and_non_finite_counts(bad, match):
    grad, weight = torch.ones(4, 2), torch.ones(4, 2)
    counts = torch.tensor([1, 0, bad, 3], dtype=torch.float32 if isinstance(bad, float) else torch.long)
    with pytest.raises(ValueError, match=match):
        cowclip(grad, weight, counts)
    for wrong in (torch.ones(4, dtype=torch.bool), torch.ones(4, dtype=torch.complex64)):
        with pytest.raises(ValueError, match="Invalid counts"):
            cowclip(grad, weight, wrong)


def test_a_step_rejected_for_bad_ids_changes_nothing_and_a_retry_matches_a_clean_step():
    ids, labels = _data(32)

    def backward(model):
        F.binary_cross_entropy_with_logits(model(ids), labels, reduction="sum").backward()

    clean_model = _model()
    clean = CowClip(clean_model, clean_model.embedding, batch_size=1024, l2=0.05, zeta=1e-4)
    backward(clean_model)
    clean.step(ids=ids)
    clean_stats = clean.last_stats

    model = _model()
    opt = CowClip(model, model.embedding, batch_size=1024, l2=0.05, zeta=1e-4)
    backward(model)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    for bad_ids in (ids + ROWS, ids - ROWS, ids.float()):  # out of range above, below; not integers
        with pytest.raises(ValueError, match="Invalid ids"):
            opt.step(ids=bad_ids)
        for name, p in model.named_parameters():
            assert torch.equal(p.grad, grads[name]), name  # no L2 term added, nothing clipped
    assert opt.steps == 0
    opt.step(ids=ids)
    assert opt.last_stats == clean_stats
    for p, q in zip(model.parameters(), clean_model.parameters()):
        assert torch.equal(p, q)


def test_a_step_without_the_clipped_tables_gradient_changes_nothing():
    model = _model()
    ids, labels = _data(32)
    with torch.no_grad():
        model.linear.weight.normal_()  # nonzero, so that an L2 term would show
    opt = CowClip(model, model.embedding, batch_size=1024, l2=0.05)
    F.binary_cross_entropy_with_logits(model(ids), labels).backward()
    model.embedding.weight.grad = None
    linear_grad = model.linear.weight.grad.clone()
    with pytest.raises(RuntimeError, match="no gradient"):
        opt.step(ids=ids)
    assert torch.equal(model.linear.weight.grad, linear_grad)


@pytest.mark.parametrize("name, value", [("fused", "no"), ("fused", 0), ("return_rows", "yes"), ("clip", "no")])
def test_cowclip_flags_must_be_bools(name, value):
    model = _model()
    with pytest.raises(ValueError, match=f"Invalid {name}: {value!r}; expected True or False"):
        CowClip(model, model.embedding, batch_size=1024, **{name: value})


def test_zero_grad_set_to_none_must_be_a_bool():
    model = _model()
    opt = CowClip(model, model.embedding, batch_size=1024)
    with pytest.raises(ValueError, match="Invalid set_to_none: 'no'; expected True or False"):
        opt.zero_grad(set_to_none="no")


def test_clip_embedding_grad_return_rows_must_be_a_bool():
    emb = nn.Embedding(5, 2)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="Invalid return_rows: 'no'; expected True or False"):
        clip_embedding_grad_(emb, torch.tensor([1]), return_rows="no")


# ------------------------------------------------------------------------------ the torch.optim.Optimizer contract


PLAIN_ROWS, PLAIN_IDS = 30, 3  # a plain table without field offsets: a sample may hold a row twice


def _plain_model(seed=0, sparse=False):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Embedding(PLAIN_ROWS, 4, sparse=sparse),
        nn.Flatten(),
        nn.Linear(PLAIN_IDS * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 1),
    )
    with torch.no_grad():
        model[0].weight.mul_(0.01)
    return model


def _plain_data(n, seed=0):
    gen = _gen(seed)
    ids = torch.randint(0, PLAIN_ROWS, (n, PLAIN_IDS), generator=gen)
    labels = (torch.rand(n, generator=gen) < torch.sigmoid(torch.randn(PLAIN_ROWS, generator=gen)[ids].sum(1))).float()
    return ids, labels


def test_cowclip_is_a_torch_optimizer_with_a_group_per_role():
    model = _plain_model()
    opt = CowClip(model, model[0], batch_size=2048, l2=1e-3)
    assert isinstance(opt, torch.optim.Optimizer)
    assert [(g["name"], g["lr"], g["l2"], g["clip"], g["warmup_steps"]) for g in opt.param_groups] == [
        ("clipped_embedding", 1e-4, 1e-3, True, 0),
        ("dense", pytest.approx(8e-4 * math.sqrt(2)), 0.0, False, 0),
    ]
    assert opt.param_groups[0]["params"] == [model[0].weight]
    ids, labels = _plain_data(64)
    F.binary_cross_entropy_with_logits(model(ids).squeeze(1), labels).backward()
    assert opt.step(ids=ids) is None
    assert set(opt.state_dict()) == {"state", "param_groups"}
    assert set(opt.state[model[0].weight]) == {"step", "exp_avg", "exp_avg_sq"}  # torch.optim.Adam's state
    opt.zero_grad()  # set_to_none=True
    assert all(p.grad is None for p in model.parameters())


def test_ids_by_keyword_by_set_ids_or_from_a_closure_give_the_same_step_and_are_used_once():
    ids, labels = _plain_data(64)
    results = []
    for way in ("keyword", "set_ids", "closure"):
        model = _plain_model()
        opt = CowClip(model, model[0], batch_size=64, base_batch_size=64, l2=0.05, zeta=1e-4)

        def closure(model=model, opt=opt):
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(model(ids).squeeze(1), labels, reduction="sum")
            loss.backward()
            opt.set_ids(ids)  # e.g. inside a Lightning training_step
            return loss

        if way == "closure":
            loss = opt.step(closure)
            assert isinstance(loss, torch.Tensor) and loss.requires_grad
        else:
            closure()
            if way == "keyword":
                opt.set_ids(None)
                opt.step(ids=ids)
            else:
                opt.step()
        assert opt.last_stats["rows_clipped"] > 0
        results.append(([p.detach().clone() for p in model.parameters()], opt.last_stats))
        F.binary_cross_entropy_with_logits(model(ids).squeeze(1), labels).backward()
        with pytest.raises(ValueError, match=r"Invalid ids: None; expected the batch's ids"):
            opt.step()  # the ids of the last step are not used again
    for params, stats in results[1:]:
        assert stats == results[0][1]
        assert all(torch.equal(p, q) for p, q in zip(params, results[0][0]))


def test_step_refuses_ids_in_place_of_a_closure():
    model = _plain_model()
    opt = CowClip(model, model[0], batch_size=64)
    ids, labels = _plain_data(8)
    F.binary_cross_entropy_with_logits(model(ids).squeeze(1), labels).backward()
    with pytest.raises(ValueError, match=r"Invalid closure: 'Tensor'; expected a callable .*step\(ids="):
        opt.step(ids)


def test_clip_false_needs_no_ids():
    model = _plain_model()
    opt = CowClip(model, model[0], batch_size=64, clip=False)
    ids, labels = _plain_data(8)
    F.binary_cross_entropy_with_logits(model(ids).squeeze(1), labels).backward()
    opt.step()
    assert opt.steps == 1 and "rows_clipped" not in opt.last_stats


def test_warmup_ramps_to_the_lr_a_scheduler_sets_and_never_writes_it():
    model = _plain_model()
    opt = CowClip(model, model[0], batch_size=64, base_batch_size=64, base_lr=1e-2, warmup_steps=4)
    # embedding lr constant, dense lr halved every step: the warm-up ramps towards the halved value
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, [lambda step: 1.0, lambda step: 0.5**step])
    ids, labels = _plain_data(32)
    used, group_lr = [], []
    for _ in range(6):
        F.binary_cross_entropy_with_logits(model(ids).squeeze(1), labels).backward()
        opt.step(ids=ids)
        used.append(opt.last_stats["lr"])
        scheduler.step()
        opt.zero_grad()
        group_lr.append(opt.param_groups[1]["lr"])
    scheduled = [1e-2 * 0.5**s for s in range(6)]
    ramp = [WARMUP_START_LR + (scheduled[s] - WARMUP_START_LR) * s / 4 for s in range(4)]
    assert used == pytest.approx([*ramp, scheduled[4], scheduled[5]], rel=1e-12)
    assert group_lr == pytest.approx(scheduled[1:] + [1e-2 * 0.5**6], rel=1e-12)  # only the scheduler writes lr
    assert opt.param_groups[0]["lr"] == 1e-4


def test_the_dense_lr_a_step_uses_is_the_one_adam_applies():
    """The first step from zero Adam state moves each dense weight by lr · g / (|g| + eps / sqrt(1 - beta2))."""
    model = _plain_model()
    opt = CowClip(model, model[0], batch_size=64, base_batch_size=64, base_lr=1e-2, clip=False, l2=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.25)  # both groups at a quarter from the start
    ids, labels = _plain_data(32)
    F.binary_cross_entropy_with_logits(model(ids).squeeze(1), labels).backward()
    grad = model[4].weight.grad.clone()
    before = model[4].weight.detach().clone()
    opt.step(ids=ids)
    scheduler.step()
    assert (opt.last_stats["lr"], opt.last_stats["embed_lr"]) == pytest.approx((0.25e-2, 0.25e-4), rel=1e-12)
    # Keras's first step: lr · sqrt(1 - b2) / (1 - b1) · m / (sqrt(v) + eps), m = (1 - b1) g, v = (1 - b2) g^2
    expected = before - 0.25e-2 * grad / (grad.abs() + 1e-7 / math.sqrt(1 - 0.999))
    torch.testing.assert_close(model[4].weight.detach(), expected, rtol=1e-5, atol=1e-9)


def _amp_step(model, opt, scaler, ids, labels, dtype, reduction="mean"):
    with torch.autocast("cpu", dtype=dtype):
        loss = F.binary_cross_entropy_with_logits(model(ids).squeeze(1).float(), labels, reduction=reduction)
    if scaler is None:
        loss.backward()
        opt.step(ids=ids)
    else:
        scaler.scale(loss).backward()
        scaler.step(opt, ids=ids)
        scaler.update()
    opt.zero_grad()
    return loss.item()


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_plain_embedding_mlp_trains_under_lambda_lr_and_grad_scaler(dtype, sparse):
    ids, labels = _plain_data(2048)
    model = _plain_model(sparse=sparse)
    opt = CowClip(model, model[0], batch_size=256, base_batch_size=256, base_lr=1e-2, embed_lr=5e-2, warmup_steps=4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.98**step)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=5)
    losses, skipped = [], 0
    for step in range(48):
        lo = (step * 256) % len(ids)
        scale = scaler.get_scale()
        losses.append(_amp_step(model, opt, scaler, ids[lo : lo + 256], labels[lo : lo + 256], dtype))
        skipped += scaler.get_scale() < scale  # an inf or NaN gradient: the scaler skipped the step
        scheduler.step()
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 0.02, losses
    assert opt.steps == 48 - skipped and skipped <= 3 and scaler.get_scale() > 2.0**12
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-2 * 0.98**48)


def test_grad_scaler_unscales_before_the_clip():
    """Under a GradScaler the step is the unscaled one (a clip on scaled gradients would bind elsewhere)."""
    ids, labels = _plain_data(64)
    params = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**16)):
        model = _plain_model()
        opt = CowClip(model, model[0], batch_size=64, base_batch_size=64, l2=0.05, zeta=1e-4, embed_lr=1e-2)
        # bf16 autocast: a power-of-two loss scale is exact, so both runs see the same unscaled gradients
        _amp_step(model, opt, scaler, ids, labels, torch.bfloat16, reduction="sum")
        assert opt.last_stats["rows_clipped"] > 0
        params.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(p, q) for p, q in zip(*params))


def test_grad_scaler_skips_a_step_with_inf_gradients():
    ids, labels = _plain_data(64)
    model = _plain_model()
    opt = CowClip(model, model[0], batch_size=64)
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.binary_cross_entropy_with_logits(model(ids).squeeze(1).float(), labels)
    scaler.scale(loss).backward()
    model[4].weight.grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt, ids=ids)
    scaler.update()
    assert opt.steps == 0 and scaler.get_scale() == 2.0**15
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_state_dict_mid_run_with_scheduler_and_grad_scaler_continues_the_same_trajectory():
    import io

    ids, labels = _plain_data(512)

    def build(seed):
        model = _plain_model(seed)
        opt = CowClip(model, model[0], batch_size=64, base_batch_size=64, base_lr=1e-2, warmup_steps=3, l2=1e-2)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.9**step)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
        return model, opt, scheduler, scaler

    def train(model, opt, scheduler, scaler, steps):
        losses = []
        for step in steps:
            x, y = ids[step * 64 : (step + 1) * 64], labels[step * 64 : (step + 1) * 64]
            losses.append(_amp_step(model, opt, scaler, x, y, torch.bfloat16))
            scheduler.step()
        return losses

    run = build(0)
    train(*run, range(3))
    buffer = io.BytesIO()
    torch.save([part.state_dict() for part in run], buffer)  # model, optimizer, scheduler, scaler
    continued = train(*run, range(3, 8))

    resumed = build(1)  # other initial weights: everything comes from the state
    buffer.seek(0)
    for part, state in zip(resumed, torch.load(buffer, weights_only=True)):
        part.load_state_dict(state)
    assert resumed[1].steps == 3
    again = train(*resumed, range(3, 8))
    assert again == continued
    for p, q in zip(run[0].parameters(), resumed[0].parameters()):
        assert torch.equal(p, q)
    assert resumed[1].param_groups[1]["lr"] == run[1].param_groups[1]["lr"] == pytest.approx(1e-2 * 0.9**8)


def test_accel_field_embedding_takes_local_ids_and_equals_its_table_with_global_ids():
    from accel.models.ctr import DeepFM

    dims = [40, 15, 6]
    gen = _gen(0)
    ids = torch.stack([torch.randint(0, d, (128,), generator=gen) for d in dims], dim=1)
    labels = (ids[:, 0] < 10).float()
    params = []
    for by_module in (True, False):
        model = DeepFM(dims, mlp_dims=(8,), generator=torch.Generator().manual_seed(0))
        table = model.embedding if by_module else model.embedding.table
        opt = CowClip(model, table, batch_size=128, base_batch_size=128, zeta=1e-4, l2=0.05, embed_lr=1e-2)
        assert opt.tables == [model.embedding.table.weight]
        assert [g["name"] for g in opt.param_groups] == ["clipped_embedding", "embedding", "dense"]
        assert opt.param_groups[1]["params"] == [model.linear.table.weight]
        for _ in range(3):
            F.binary_cross_entropy_with_logits(model(ids), labels, reduction="sum").backward()
            opt.step(ids=ids if by_module else model.embedding.global_ids(ids))
            opt.zero_grad()
        assert opt.last_stats["rows_clipped"] > 0
        params.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(p, q) for p, q in zip(*params))
    # the clip alone takes a FieldEmbedding and its local ids too
    model = DeepFM(dims, mlp_dims=(8,), generator=torch.Generator().manual_seed(0))
    F.binary_cross_entropy_with_logits(model(ids), labels).backward()
    touched = row_counts(model.embedding.global_ids(ids), sum(dims)).count_nonzero().item()
    assert clip_embedding_grad_(model.embedding, ids)["rows_touched"] == touched


def test_embedding_bag_counts_each_row_once_per_bag():
    torch.manual_seed(0)
    bag = nn.EmbeddingBag(10, 3, mode="sum")
    model = nn.Sequential(bag, nn.Linear(3, 1))
    ids = torch.tensor([[1, 1, 2], [1, 3, 3]])  # bags (samples) of 3 ids
    opt = CowClip(model, bag, batch_size=2, base_batch_size=2, return_rows=True)
    model(ids).sum().backward()
    opt.step(ids=ids)
    table = opt.last_stats["tables"][0]
    assert table["rows"].tolist() == [1, 2, 3] and table["counts"].tolist() == [2, 1, 1]


def test_add_param_group_validates_its_settings():
    model = _plain_model()
    opt = CowClip(model, model[0], batch_size=64, embedding_params=[model[0]])
    extra = nn.Parameter(torch.zeros(3))
    for group, match in [
        ({"lr": -1.0}, r"Invalid lr: -1.0; expected a finite number lr >= 0"),
        ({"l2": -1.0}, r"Invalid l2: -1.0"),
        ({"betas": (0.9, 1.5)}, r"Invalid betas"),
        ({"clip": True}, r"Invalid clip: True; expected False for parameters not given as `embeddings`"),
        ({"warmup_steps": 1.5}, r"Invalid warmup_steps: 1.5"),
    ]:
        with pytest.raises(ValueError, match=match):
            opt.add_param_group({"params": [extra], **group})
        assert len(opt.param_groups) == 2  # a rejected group is not kept
    opt.add_param_group({"params": [extra], "lr": 1e-3})
    assert opt.param_groups[-1]["l2"] == 0.0 and opt.param_groups[-1]["clip"] is False


def test_fused_and_unfused_adam_agree():
    ids, labels = _data(256)
    params = []
    for fused in (True, False):
        model = _model()
        opt = CowClip(model, model.embedding, batch_size=64, base_batch_size=64, warmup_steps=2, fused=fused)
        assert all(g["fused"] is fused for g in opt.param_groups)
        _train(model, opt, ids, labels, steps=4, batch=64)
        params.append([p.detach().clone() for p in model.parameters()])
    for p, q in zip(*params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-8)


def test_a_full_step_matches_a_float64_transcription_of_the_official_step():
    """L2 as a gradient, the official threshold (absent rows clipped with cnt 1), two Adams with Keras's epsilon and
    the dense warm-up, written out element by element in float64 against CowClip on a float64 model."""
    ids, labels = _data(64)
    lr, embed_lr, l2, r, zeta, warmup, (b1, b2), eps = 3e-2, 2e-2, 0.05, 1.0, 1e-4, 2, (0.9, 0.999), 1e-7
    model = _model().double()
    reference = {name: p.detach().clone() for name, p in model.named_parameters()}
    m = {name: torch.zeros_like(p) for name, p in reference.items()}
    v = {name: torch.zeros_like(p) for name, p in reference.items()}
    opt = CowClip(model, model.embedding, batch_size=32, lr=lr, embed_lr=embed_lr, l2=l2, r=r, zeta=zeta,
                  threshold="official", warmup_steps=warmup)  # fmt: skip
    clipped = 0
    for t in range(1, 5):
        x, y = ids[(t - 1) * 16 : t * 16], labels[(t - 1) * 16 : t * 16]
        F.binary_cross_entropy_with_logits(model(x), y.double(), reduction="sum").backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        opt.step(ids=x)
        opt.zero_grad()
        clipped += opt.last_stats["rows_clipped"]
        samples = [set(sample) for sample in x.tolist()]
        for name, w in reference.items():
            g = grads[name]
            if name in ("embedding.weight", "linear.weight"):
                g = g + 2 * l2 * w
            if name == "embedding.weight":
                for k in range(ROWS):
                    cnt = max(1, sum(k in s for s in samples))
                    bound = r * cnt * max(w[k].norm().item(), r * math.sqrt(w.shape[1]) * zeta)
                    norm = g[k].norm().item()
                    if norm > bound:
                        g[k] = g[k] * (bound / norm)
            step_lr = embed_lr if name in ("embedding.weight", "linear.weight") else lr
            if step_lr == lr and t - 1 < warmup:
                step_lr = WARMUP_START_LR + (lr - WARMUP_START_LR) * (t - 1) / warmup
            m[name] = b1 * m[name] + (1 - b1) * g
            v[name] = b2 * v[name] + (1 - b2) * g * g
            alpha = step_lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            reference[name] = w - alpha * m[name] / (v[name].sqrt() + eps)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), reference[name], rtol=0, atol=1e-15)
    assert clipped > 0
