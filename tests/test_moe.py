"""Tests for accel.moe: the two losses, routing and gates, capacity and drop order, precision, gradients,
determinism, validation, stats, and expert parallelism over 2 gloo processes against one process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _gloo import run_two_ranks  # tests/_gloo.py: the two-rank launcher

from accel.moe import MoE, expert_capacity, load_balancing_loss, router_probabilities, router_z_loss

HERE = Path(__file__).resolve().parent


def _randn(*shape, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _expected_output(moe: MoE, x2d: torch.Tensor, keep=None) -> torch.Tensor:
    """sum over the routed experts of gate · expert(i, x), from .route and .expert (keep [T, k] bool: which count)."""
    indices, gates = moe.route(x2d)
    y = torch.zeros_like(x2d)
    for t in range(x2d.shape[0]):
        for j in range(moe.top_k):
            if keep is None or keep[t, j]:
                y[t] += gates[t, j] * moe.expert(int(indices[t, j]), x2d[t : t + 1])[0]
    return y


def _steered(num_experts: int, scale: float = 10.0) -> MoE:
    """A layer with d_model = E whose router is scale · identity: a token's logits are scale · x."""
    torch.manual_seed(0)
    moe = MoE(num_experts, 6, num_experts, top_k=1, z_loss_coef=0.0, balance_loss_coef=0.0)
    with torch.no_grad():
        moe.router.weight.copy_(scale * torch.eye(num_experts))
    return moe


# ------------------------------------------------------------------------------------------------------ losses


def test_router_z_loss_is_the_mean_squared_logsumexp():
    logits = _randn(7, 5) * 3
    expected = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.double().tolist()) / 7
    assert router_z_loss(logits).item() == pytest.approx(expected, rel=1e-6)
    half = router_z_loss(logits.bfloat16())
    assert half.dtype == torch.float32  # computed in float32 from bf16 logits
    assert half.item() == pytest.approx(router_z_loss(logits.bfloat16().float()).item(), rel=1e-6)


def test_load_balancing_loss_formula_uniform_and_collapse():
    probs = torch.softmax(_randn(12, 4), dim=-1)
    top1 = probs.argmax(dim=-1)
    f = [sum(int(i) == e for i in top1) / 12 for e in range(4)]
    p = [probs[:, e].mean().item() for e in range(4)]
    expected = 4 * sum(fi * pi for fi, pi in zip(f, p))
    loss = load_balancing_loss(probs, top1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx((torch.tensor(f) * torch.tensor(p)).mean().item() * 16, rel=1e-6)  # flax
    uniform = torch.full((8, 4), 0.25)
    assert load_balancing_loss(uniform, torch.arange(8) % 4).item() == pytest.approx(1.0)
    collapsed = F.one_hot(torch.zeros(8, dtype=torch.long), 4).float()
    assert load_balancing_loss(collapsed, torch.zeros(8, dtype=torch.long)).item() == pytest.approx(4.0)


def test_load_balancing_gradient_flows_through_mean_probs_only():
    probs = torch.softmax(_randn(10, 4), dim=-1).requires_grad_()
    top1 = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    load_balancing_loss(probs, top1).backward()
    f = torch.bincount(top1, minlength=4).float() / 10
    assert torch.allclose(probs.grad, (4 * f / 10).expand(10, 4))  # d/dP_i of E · sum f_i P_i, f held fixed


def test_bf16_router_round_off_example():
    logits = torch.tensor([[128.0] * 10 + [128.5]])
    assert router_probabilities(logits)[0, -1].item() == pytest.approx(0.142, abs=1e-3)
    assert router_probabilities(logits, torch.bfloat16)[0, -1].item() == pytest.approx(0.091, abs=1e-3)


# ----------------------------------------------------------------------------------------------------- routing


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_route_picks_top_k_and_renormalises(top_k):
    moe = MoE(8, 16, 5, top_k=top_k).eval()
    x = _randn(9, 8)
    indices, gates = moe.route(x)
    probs = torch.softmax(x @ moe.router.weight.t(), dim=-1)
    top, expected = probs.topk(top_k, dim=-1)
    assert indices.dtype == torch.long and indices.shape == (9, top_k) and torch.equal(indices, expected)
    if top_k == 1:
        assert torch.allclose(gates, top)  # Switch: the raw top-1 probability, so the router gets a gradient
    else:
        assert torch.allclose(gates.sum(dim=-1), torch.ones(9)) and torch.allclose(gates, top / top.sum(-1, True))


@pytest.mark.parametrize(
    "top_k, expert_type, bias",
    [(1, "ffn", False), (2, "ffn", True), (3, "geglu", False), (2, "geglu", True), (2, "swiglu", True)],
)
def test_dropless_output_is_the_gated_sum_of_routed_experts(top_k, expert_type, bias):
    torch.manual_seed(0)
    moe = MoE(8, 16, 5, top_k=top_k, capacity_factor=None, eval_capacity_factor=None, expert_type=expert_type,
              bias=bias)
    x = _randn(3, 7, 8)
    for mode in (moe.train, moe.eval):
        mode()
        y = moe(x)
        assert y.shape == x.shape
        assert torch.allclose(y, _expected_output(moe, x.reshape(-1, 8)).view(3, 7, 8), atol=1e-5)
        assert moe.float_stats()["dropped_fraction"] == 0.0


def test_expert_formulas():
    torch.manual_seed(0)
    x = _randn(4, 6)
    ffn = MoE(6, 10, 3, bias=True)
    h = F.gelu(x @ ffn.w_in[1] + ffn.b_in[1])
    assert torch.allclose(ffn.expert(1, x), h @ ffn.w_out[1] + ffn.b_out[1], atol=1e-6)
    geglu = MoE(6, 10, 3, expert_type="geglu")
    h = F.gelu(x @ geglu.w_gate[2]) * (x @ geglu.w_in[2])
    assert torch.allclose(geglu.expert(2, x), h @ geglu.w_out[2], atol=1e-6)
    swiglu = MoE(6, 10, 3, expert_type="swiglu")
    h = F.silu(x @ swiglu.w_gate[0]) * (x @ swiglu.w_in[0])
    assert torch.allclose(swiglu.expert(0, x), h @ swiglu.w_out[0], atol=1e-6)
    assert ffn.w_in.shape == (3, 6, 10) and ffn.w_out.shape == (3, 10, 6) and ffn.router.weight.shape == (3, 6)
    assert ffn.router.bias is None


def test_init_is_seeded_by_the_default_generator():
    torch.manual_seed(3)
    a = MoE(6, 10, 4, expert_type="geglu", bias=True)
    torch.manual_seed(3)
    b = MoE(6, 10, 4, expert_type="geglu", bias=True)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    assert a.w_in.abs().max() <= 1 / math.sqrt(6) and a.w_out.abs().max() <= 1 / math.sqrt(10)
    assert not torch.equal(a.w_in[0], a.w_in[1])


# ---------------------------------------------------------------------------------------------------- capacity


def test_capacity_formula():
    moe = MoE(8, 16, 32, top_k=2, capacity_factor=1.25, eval_capacity_factor=2.0)
    assert moe.capacity(4096) == 320  # floor(1.25 · 2 · 4096 / 32)
    assert moe.capacity(1) == 1  # at least one
    moe.eval()
    assert moe.capacity(4096) == 512
    assert MoE(8, 16, 1, top_k=1, capacity_factor=0.29).capacity(100) == 29  # not 28 from 28.999999999999996
    assert MoE(8, 16, 4, capacity_factor=None).capacity(100) is None


def test_expert_capacity_is_the_floor_of_the_exact_product_over_a_grid():
    from fractions import Fraction

    import accel.experiments.moe as chapter

    assert chapter.expert_capacity is expert_capacity  # the chapter's analysis uses the layer's rule
    for factor in (0.1, 0.29, 0.3, 0.7, 1.0, 1.1, 1.25, 1.3, 2.0, 3.7):
        for experts in (1, 3, 8, 16, 64):
            for top_k in sorted({1, 2, min(3, experts)}):
                if top_k > experts:
                    continue
                moe = MoE(4, 4, experts, top_k=top_k, capacity_factor=factor, eval_capacity_factor=None)
                for tokens in (0, 1, 7, 100, 333, 1000, 4096):
                    exact = Fraction(str(factor)) * top_k * tokens / experts  # the decimal factor, exactly
                    expected = max(1, math.floor(exact))
                    assert expert_capacity(tokens, top_k, experts, factor) == expected, (tokens, top_k, experts, factor)
                    assert moe.train().capacity(tokens) == expected
                    assert moe.eval().capacity(tokens) is None
    assert expert_capacity(100, 1, 1, 0.29) == 29  # 0.29 · 100 is 28.999999999999996 in floating point
    assert expert_capacity(100, 2, 4, None) is None


@pytest.mark.parametrize(
    "args, name",
    [((-1, 1, 4, 1.0), "tokens"), ((8, 0, 4, 1.0), "top_k"), ((8, 5, 4, 1.0), "top_k"), ((8, 1, 0, 1.0), "num_experts"),
     ((8, 1, 4, 0.0), "factor"), ((8, 1, 4, math.nan), "factor"), ((8.0, 1, 4, 1.0), "tokens")],
)
def test_expert_capacity_rejects_bad_arguments(args, name):
    with pytest.raises(ValueError, match=f"Invalid {name}: "):
        expert_capacity(*args)


def test_over_capacity_drops_later_tokens():
    moe = _steered(4).train()
    moe.capacity_factor = 1.5  # C = floor(1.5 · 1 · 8 / 4) = 3
    x = torch.tensor([[1.0, 0.1 * t, 0.0, 0.05] for t in range(8)])  # every token's top expert is 0
    assert moe.capacity(8) == 3 and (moe.route(x)[0][:, 0] == 0).all()
    y = moe(x)
    expected = _expected_output(moe, x)
    assert torch.allclose(y[:3], expected[:3], atol=1e-6) and (y[:3].abs().sum(dim=1) > 0).all()
    assert torch.equal(y[3:], torch.zeros(5, 4))  # dropped: the residual outside the layer carries them
    stats = moe.float_stats()
    assert stats["dropped_fraction"] == pytest.approx(5 / 8)
    assert stats["tokens_dropped_fraction"] == pytest.approx(5 / 8)
    assert stats["expert_load"] == pytest.approx([1.0, 0.0, 0.0, 0.0])


def test_first_choices_take_precedence_over_second_choices():
    moe = _steered(4)
    moe.top_k, moe.capacity_factor = 2, 1.0  # C = floor(1.0 · 2 · 4 / 4) = 2 per expert
    moe.train()
    # Tokens 0, 1: expert 0 then 1. Tokens 2, 3: expert 1 then 2. Expert 1 gets two early second choices and two
    # late first choices: the first choices win although their tokens come later.
    x = torch.tensor([[0.3, 0.2, 0.0, 0.0], [0.3, 0.2, 0.0, 0.0], [0.0, 0.3, 0.2, 0.0], [0.0, 0.3, 0.2, 0.0]])
    x = x + torch.tensor([0.0, 0.001, 0.002, 0.003]).unsqueeze(1)  # distinct tokens
    indices, _ = moe.route(x)
    assert indices.tolist() == [[0, 1], [0, 1], [1, 2], [1, 2]]
    keep = torch.tensor([[True, False], [True, False], [True, True], [True, True]])
    assert torch.allclose(moe(x), _expected_output(moe, x, keep), atol=1e-6)
    stats = moe.float_stats()
    assert stats["dropped_fraction"] == pytest.approx(2 / 8) and stats["tokens_dropped_fraction"] == 0.0


def test_drops_follow_token_order_within_a_choice_rank():
    torch.manual_seed(1)
    moe = MoE(8, 16, 4, top_k=2, capacity_factor=0.5).train()
    x = _randn(40, 8, seed=1)
    indices, _ = moe.route(x)
    capacity = moe.capacity(40)
    # Reference drop order: all first choices in token order, then all second choices, C per expert.
    taken, keep = [0] * 4, torch.zeros(40, 2, dtype=torch.bool)
    for j in range(2):
        for t in range(40):
            e = int(indices[t, j])
            if taken[e] < capacity:
                taken[e] += 1
                keep[t, j] = True
    assert 0 < keep.sum() < 80
    assert torch.allclose(moe(x), _expected_output(moe, x, keep), atol=1e-5)
    assert moe.float_stats()["dropped_fraction"] == pytest.approx(1 - keep.sum().item() / 80)


# --------------------------------------------------------------------------------------------------- precision


def test_router_runs_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    moe = MoE(16, 32, 4, top_k=2)
    x = _randn(10, 16)
    plain_logits = moe.router_logits(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = moe.router_logits(x)
        y = moe(x)
        dense = torch.nn.Linear(16, 16)(x)
    assert logits.dtype == torch.float32 and torch.equal(logits, plain_logits)
    assert y.dtype == dense.dtype == torch.bfloat16 and y.shape == x.shape
    assert torch.allclose(y.float(), moe(x), atol=0.05)
    assert moe.stats["z_loss"].dtype == torch.float32


def test_bf16_weights_keep_a_float32_router_unless_asked():
    torch.manual_seed(0)
    moe = MoE(16, 32, 4).to(torch.bfloat16)
    x = _randn(10, 16).bfloat16()
    assert moe.router_logits(x).dtype == torch.float32 and moe(x).dtype == torch.bfloat16
    torch.manual_seed(0)
    unstable = MoE(16, 32, 4, router_dtype=torch.bfloat16)
    assert unstable.router_logits(x).dtype == torch.bfloat16


# --------------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("top_k", [1, 2])
def test_gradients_reach_router_and_every_expert(top_k):
    torch.manual_seed(0)
    moe = MoE(8, 16, 4, top_k=top_k, capacity_factor=2.0, z_loss_coef=0.0, balance_loss_coef=0.0).train()
    x = _randn(64, 8).requires_grad_()
    moe(x).pow(2).sum().backward()  # task loss only: the router learns through the gates
    assert moe.router.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    for name in ("w_in", "w_out"):
        grad = getattr(moe, name).grad
        assert all(grad[e].abs().sum() > 0 for e in range(4)), name


def test_aux_loss_is_the_weighted_sum_and_trains_the_router():
    torch.manual_seed(0)
    moe = MoE(8, 16, 4, top_k=2, z_loss_coef=1e-3, balance_loss_coef=1e-2).train()
    x = _randn(32, 8)
    moe(x)
    stats = moe.stats
    assert moe.aux_loss.requires_grad and moe.aux_loss.ndim == 0
    assert moe.aux_loss.item() == pytest.approx(1e-2 * stats["balance_loss"].item() + 1e-3 * stats["z_loss"].item())
    logits = x @ moe.router.weight.t()
    assert stats["z_loss"].item() == pytest.approx(router_z_loss(logits).item(), rel=1e-5)
    probs = torch.softmax(logits, dim=-1)
    assert stats["balance_loss"].item() == pytest.approx(load_balancing_loss(probs, probs.argmax(-1)).item(), rel=1e-5)
    moe.aux_loss.backward()
    assert moe.router.weight.grad.abs().sum() > 0
    assert moe.w_in.grad is None and moe.w_out.grad is None


def test_an_expert_without_tokens_gets_a_zero_gradient():
    moe = _steered(4).train()
    moe.capacity_factor = None
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.9, 0.0, 0.1, 0.0]])  # experts 0 and 2 only
    moe(x).pow(2).sum().backward()
    for name in ("w_in", "w_out"):
        grad = getattr(moe, name).grad
        assert torch.equal(grad[1], torch.zeros_like(grad[1])) and torch.equal(grad[3], torch.zeros_like(grad[3]))
        assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0


@pytest.mark.parametrize("chunk_bytes", [2**20, 1])  # every expert in one chunk; one expert per chunk
@pytest.mark.parametrize("activation, gated", [("gelu", False), ("gelu", True), ("silu", True)])
def test_fused_experts_backward_passes_gradcheck(activation, gated, chunk_bytes, monkeypatch):
    import accel.moe
    from accel.moe import _ExpertsAndCombine

    monkeypatch.setattr(accel.moe, "CHUNK_BYTES", chunk_bytes)

    generator = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()

    x, experts, d, f = leaf(7, 4), 3, 4, 5
    token = torch.tensor([0, 3, 6, 1, 2, 3, 5, 0])  # expert 0: 3 rows, expert 1: none, expert 2: 5 (token 3 twice)
    counts = [3, 0, 5]
    gate = torch.rand(8, generator=generator, dtype=torch.float64).requires_grad_()
    w_in, w_out = leaf(experts, d, f), leaf(experts, f, d)
    w_gate = leaf(experts, d, f) if gated else None

    def layer(x, gate, w_in, w_gate, w_out):
        return _ExpertsAndCombine.apply(x, token, gate, w_in, w_gate, w_out, counts, activation)

    inputs = (x, gate, w_in, w_gate, w_out)
    assert torch.autograd.gradcheck(layer, inputs)


def test_chunks_group_consecutive_experts_within_the_byte_budget(monkeypatch):
    import accel.moe

    monkeypatch.setattr(accel.moe, "CHUNK_BYTES", 100)
    # 10 bytes a row: at most 10 rows a chunk, an expert over that alone; empty experts join their neighbours
    assert accel.moe._chunks([3, 4, 0, 5, 12, 2], 10) == [(0, 3, 0, 7), (3, 4, 7, 12), (4, 5, 12, 24), (5, 6, 24, 26)]
    assert accel.moe._chunks([0, 0], 10) == [(0, 2, 0, 0)]


def test_fused_and_composable_paths_agree():
    torch.manual_seed(0)
    fused = MoE(8, 12, 4, top_k=2, capacity_factor=1.0, expert_type="swiglu").train()
    composable = MoE(8, 12, 4, top_k=2, capacity_factor=1.0, expert_type="swiglu", expert_dropout=0.5).train()
    composable.load_state_dict(fused.state_dict())
    composable.expert_dropout = 1e-30  # keeps the composable path; dropout this small drops nothing at float32
    x, upstream = _randn(30, 8, seed=1), _randn(30, 8, seed=2)
    grads = []
    for layer in (fused, composable):
        x_leaf = x.clone().requires_grad_()
        y = layer(x_leaf)
        (y * upstream).sum().backward()
        grads.append([y.detach(), x_leaf.grad, *(p.grad for p in layer.parameters())])
    assert fused.float_stats()["dropped_fraction"] > 0  # capacity 1.0 drops: both paths drop the same
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def _router_grad_of(moe: MoE, loss: torch.Tensor) -> torch.Tensor:
    moe.zero_grad()
    loss.backward()
    return moe.router.weight.grad.clone()


def test_aux_loss_sums_two_forwards_before_one_backward():
    torch.manual_seed(0)
    moe = MoE(8, 16, 4, top_k=2).train()
    first, second = _randn(16, 8, seed=1), _randn(12, 8, seed=2)
    # Reference: each forward's aux loss read on its own (a read starts a new sum at the next forward).
    moe(first)
    aux_first = moe.aux_loss
    moe(second)
    aux_second = moe.aux_loss
    expected = _router_grad_of(moe, aux_first + aux_second)
    # Two forwards, then one read: the sum of both.
    moe(first)
    moe(second)
    summed = moe.aux_loss
    assert summed.item() == pytest.approx(aux_first.item() + aux_second.item(), rel=1e-6)
    assert moe.aux_loss is summed  # reading again before the next forward gives the same value
    assert torch.allclose(_router_grad_of(moe, summed), expected, rtol=1e-5, atol=1e-8)


def test_aux_loss_starts_a_new_sum_after_a_backward_or_in_the_other_grad_mode():
    torch.manual_seed(0)
    moe = MoE(8, 16, 4, top_k=1).train()
    x = _randn(16, 8)
    moe(x).sum().backward()  # aux_loss never read: this backward spends that forward's graph
    y = moe(x)
    alone = moe.aux_loss
    (y.sum() + alone).backward()  # works: the spent forward is not in the sum
    moe(x)
    single = moe.aux_loss.item()
    moe(x)
    with torch.no_grad():
        moe(x)  # evaluation between training forwards: its own sum
        assert not moe.aux_loss.requires_grad and moe.aux_loss.item() == pytest.approx(single)
    moe(x)
    assert moe.aux_loss.requires_grad and moe.aux_loss.item() == pytest.approx(single)


def _mixtral_block_transcription(x, router_weight, gate_up_proj, down_proj, top_k):
    """HF transformers' MixtralSparseMoeBlock (5.x weight layout: gate_up_proj [E, 2·I, H], down_proj [E, H, I]),
    written out token by token: softmax of the router logits in float32, top-k, renormalised, then
    sum_j w_j · down(silu(gate(x)) · up(x)) over the chosen experts."""
    probs = torch.softmax((x @ router_weight.t()).float(), dim=-1)
    top, chosen = probs.topk(top_k, dim=-1)
    top = top / top.sum(dim=-1, keepdim=True)
    intermediate = down_proj.shape[2]
    y = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(top_k):
            e = int(chosen[t, j])
            gate, up = gate_up_proj[e, :intermediate], gate_up_proj[e, intermediate:]
            y[t] += top[t, j] * (down_proj[e] @ (F.silu(gate @ x[t]) * (up @ x[t])))
    return y


@pytest.mark.parametrize("top_k", [2, 3])
def test_swiglu_reproduces_mixtrals_block_on_copied_weights(top_k):
    hidden, intermediate, experts = 12, 20, 6
    generator = torch.Generator().manual_seed(0)
    router_weight = torch.randn(experts, hidden, generator=generator) * 0.5
    gate_up_proj = torch.randn(experts, 2 * intermediate, hidden, generator=generator) / math.sqrt(hidden)
    down_proj = torch.randn(experts, hidden, intermediate, generator=generator) / math.sqrt(intermediate)
    x = torch.randn(40, hidden, generator=generator)
    expected = _mixtral_block_transcription(x, router_weight, gate_up_proj, down_proj, top_k)

    moe = MoE(hidden, intermediate, experts, top_k=top_k, capacity_factor=None, eval_capacity_factor=None,
              expert_type="swiglu")
    with torch.no_grad():
        moe.router.weight.copy_(router_weight)
        moe.w_gate.copy_(gate_up_proj[:, :intermediate].transpose(1, 2))  # [E, H, I]: x @ w_gate = gate(x)
        moe.w_in.copy_(gate_up_proj[:, intermediate:].transpose(1, 2))
        moe.w_out.copy_(down_proj.transpose(1, 2))  # [E, I, H]
    for mode in (moe.train, moe.eval):
        mode()
        assert torch.allclose(moe(x), expected, rtol=1e-5, atol=1e-6)
        assert moe.float_stats()["dropped_fraction"] == 0.0


def test_swiglu_matches_transformers_mixtral_block_when_installed():
    modeling = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    from transformers import MixtralConfig

    config = MixtralConfig(hidden_size=16, intermediate_size=24, num_local_experts=8, num_experts_per_tok=2,
                           hidden_act="silu", router_jitter_noise=0.0)
    torch.manual_seed(0)
    block = modeling.MixtralSparseMoeBlock(config)
    for parameter in block.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    moe = MoE(16, 24, 8, top_k=2, capacity_factor=None, eval_capacity_factor=None, expert_type="swiglu")
    with torch.no_grad():
        moe.router.weight.copy_(block.gate.weight)
        moe.w_gate.copy_(block.experts.gate_up_proj[:, :24].transpose(1, 2))
        moe.w_in.copy_(block.experts.gate_up_proj[:, 24:].transpose(1, 2))
        moe.w_out.copy_(block.experts.down_proj.transpose(1, 2))
    x = _randn(2, 10, 16)
    with torch.no_grad():
        assert torch.allclose(moe(x), block(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ randomness, eval mode


def test_eval_is_deterministic_despite_jitter_sampling_and_dropout():
    torch.manual_seed(0)
    moe = MoE(8, 16, 4, top_k=2, router_jitter=0.1, second_policy="sampled", expert_dropout=0.3,
              generator=torch.Generator().manual_seed(5))
    x = _randn(50, 8)
    moe.eval()
    y1, route1 = moe(x), moe.route(x)
    y2, route2 = moe(x), moe.route(x)
    assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(route1, route2))
    assert torch.allclose(y1, _expected_output(moe, x), atol=1e-5)  # eval: every choice, no jitter, no dropout
    moe.train()
    assert not torch.equal(moe(x), moe(x))  # training draws


def test_jitter_multiplies_the_router_input_in_training():
    generator = torch.Generator().manual_seed(11)
    moe = MoE(8, 16, 4, router_jitter=0.05, generator=generator).train()
    x = _randn(20, 8)
    copy = torch.Generator().manual_seed(0)
    copy.set_state(generator.get_state())
    noise = torch.rand(20, 8, generator=copy) * 0.1 + 0.95
    assert torch.allclose(moe.router_logits(x), (x * noise) @ moe.router.weight.t(), atol=1e-6)
    moe.eval()
    assert torch.equal(moe.router_logits(x), x @ moe.router.weight.t())


def test_sampled_second_policy_uses_second_choice_with_probability_gate_over_threshold():
    generator = torch.Generator().manual_seed(2)
    torch.manual_seed(0)
    moe = MoE(8, 16, 4, top_k=3, capacity_factor=None, second_policy="sampled", generator=generator).train()
    x = _randn(30, 8) * 6  # peaked routing: many later gates below 0.2
    copy = torch.Generator().manual_seed(0)
    copy.set_state(generator.get_state())
    _, gates = moe.route(x)
    used = torch.rand(2, 30, generator=copy).t() < gates[:, 1:] / 0.2
    keep = torch.cat([torch.ones(30, 1, dtype=torch.bool), used], dim=1)
    assert 0 < used.sum() < 60
    assert torch.allclose(moe(x), _expected_output(moe, x, keep), atol=1e-5)  # gates kept as renormalised over k
    moe.eval()
    assert torch.allclose(moe(x), _expected_output(moe, x), atol=1e-5)  # eval: every choice


def test_expert_dropout_only_in_training():
    torch.manual_seed(0)
    moe = MoE(8, 16, 4, expert_dropout=0.5, capacity_factor=None)
    torch.manual_seed(0)
    plain = MoE(8, 16, 4, capacity_factor=None)
    x = _randn(12, 8)
    moe.eval(), plain.eval()
    assert torch.equal(moe(x), plain(x))
    moe.train(), plain.train()
    assert not torch.allclose(moe(x), plain(x))


# -------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, name, expected",
    [
        ({"d_model": 0}, "d_model", "an int >= 1"),
        ({"d_ff": 2.5}, "d_ff", "an int >= 1"),
        ({"num_experts": 0}, "num_experts", "an int >= 1"),
        ({"top_k": 5}, "top_k", "1 <= top_k <= num_experts = 4"),
        ({"top_k": 0}, "top_k", "1 <= top_k <= num_experts = 4"),
        ({"capacity_factor": 0.0}, "capacity_factor", "capacity_factor > 0, or None for dropless"),
        ({"eval_capacity_factor": -1}, "eval_capacity_factor", "eval_capacity_factor > 0, or None"),
        ({"z_loss_coef": -1e-3}, "z_loss_coef", "z_loss_coef >= 0"),
        ({"balance_loss_coef": float("nan")}, "balance_loss_coef", "balance_loss_coef >= 0"),
        ({"router_jitter": 1.0}, "router_jitter", "0 <= router_jitter < 1"),
        ({"expert_type": "reglu"}, "expert_type", "one of ('ffn', 'geglu', 'swiglu')"),
        ({"second_policy": "random"}, "second_policy", "one of ('all', 'sampled')"),
        ({"second_threshold": 0}, "second_threshold", "second_threshold > 0"),
        ({"expert_dropout": 1.0}, "expert_dropout", "0 <= expert_dropout < 1"),
        ({"router_dtype": torch.int32}, "router_dtype", "one of"),
        ({"generator": 3}, "generator", "a torch.Generator or None"),
        ({"bias": "no"}, "bias", "True or False"),
        ({"bias": 1}, "bias", "True or False"),
    ],
)
def test_invalid_arguments_name_argument_value_and_range(kwargs, name, expected):
    args = {"d_model": 8, "d_ff": 16, "num_experts": 4, **kwargs}
    with pytest.raises(ValueError) as info:
        MoE(**args)
    message = str(info.value)
    assert message.startswith(f"Invalid {name}: {args[name]!r}; expected") and expected in message, message


def test_invalid_inputs():
    moe = MoE(8, 16, 4)
    with pytest.raises(ValueError, match=r"Invalid x: shape \(3, 7\); expected a float tensor \[\.\.\., 8\]"):
        moe(torch.zeros(3, 7))
    with pytest.raises(ValueError, match=r"Invalid x: shape \(2, 3, 8\); expected a float tensor \[T, 8\]"):
        moe.route(torch.zeros(2, 3, 8))
    with pytest.raises(ValueError, match=r"Invalid expert index: 4; expected an int in \[0, 3\]"):
        moe.expert(4, torch.zeros(2, 8))
    with pytest.raises(ValueError, match=r"Invalid top1_index: \(3,\); expected an integer tensor of shape \(2,\)"):
        load_balancing_loss(torch.full((2, 4), 0.25), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize(
    "top1_index, match",
    [
        (torch.tensor([0, 4]), r"Invalid top1_index: values in \[0, 4\]; expected expert indices in \[0, 3\]"),
        (torch.tensor([-1, 2]), r"Invalid top1_index: values in \[-1, 2\]; expected expert indices in \[0, 3\]"),
        (torch.tensor([True, False]), r"Invalid top1_index: \(2,\); expected an integer tensor"),
    ],
)
def test_load_balancing_loss_rejects_expert_indices_out_of_range(top1_index, match):
    with pytest.raises(ValueError, match=match):
        load_balancing_loss(torch.full((2, 4), 0.25), top1_index)


def test_load_balancing_loss_rejects_zero_tokens_and_bad_probs():
    with pytest.raises(ValueError, match=r"Invalid probs: shape \(0, 4\); expected at least one token"):
        load_balancing_loss(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"Invalid probs: shape \(2, 0\); expected at least one expert"):
        load_balancing_loss(torch.zeros(2, 0), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"Invalid probs: dtype torch.int64; expected a float tensor"):
        load_balancing_loss(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_moe_rejects_integer_input_naming_x():
    moe = MoE(8, 16, 4)
    for call in (moe, moe.route, lambda x: moe.expert(0, x)):
        with pytest.raises(ValueError, match=r"Invalid x: dtype torch.int64; expected a floating-point tensor"):
            call(torch.zeros(3, 8, dtype=torch.long))


def test_moe_rejects_a_float_dtype_other_than_its_parameters_outside_autocast():
    moe = MoE(8, 16, 4)
    x = _randn(3, 8)
    for wrong in (x.double(), x.bfloat16()):
        for call in (moe, lambda x: moe.expert(0, x)):
            with pytest.raises(ValueError, match=rf"Invalid x: dtype {wrong.dtype}; expected torch.float32"):
                call(wrong)
    assert moe.route(x.double())[0].shape == (3, 2)  # routing casts to router_dtype: any float dtype is fine
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: a bf16 input meets float32 weights
        assert moe(x.bfloat16()).dtype == torch.bfloat16
        assert moe.expert(0, x.bfloat16()).dtype == torch.bfloat16
        with pytest.raises(ValueError, match=r"Invalid x: dtype torch.float64; expected torch.float32"):
            moe(x.double())  # autocast never casts float64


# ------------------------------------------------------------------------------------------------------- stats


def test_stats_at_uniform_routing():
    moe = MoE(8, 16, 6, top_k=2)
    with torch.no_grad():
        moe.router.weight.zero_()  # every logit 0: a uniform router
    moe(_randn(30, 8))
    stats = moe.float_stats()
    assert stats["router_entropy"] == pytest.approx(math.log(6), rel=1e-6)
    assert stats["mean_logsumexp"] == pytest.approx(math.log(6), rel=1e-6)
    assert stats["z_loss"] == pytest.approx(math.log(6) ** 2, rel=1e-6)
    assert stats["balance_loss"] == pytest.approx(1.0, rel=1e-6)  # P uniform: 1 whatever f is
    assert stats["max_abs_logit"] == 0.0
    assert len(stats["expert_load"]) == 6 and sum(stats["expert_load"]) == pytest.approx(1.0)
    assert all(isinstance(v, float) for k, v in stats.items() if k != "expert_load")
    assert all(not t.requires_grad for t in moe.stats.values())


def test_stats_of_a_random_router():
    torch.manual_seed(0)
    moe = MoE(8, 16, 4, top_k=2, capacity_factor=None).train()
    x = _randn(100, 8) * 3
    moe(x)
    stats = moe.float_stats()
    logits = x @ moe.router.weight.t()
    probs = torch.softmax(logits, dim=-1)
    assert stats["router_entropy"] == pytest.approx(-(probs * probs.log()).sum(-1).mean().item(), rel=1e-5)
    assert stats["max_abs_logit"] == pytest.approx(logits.abs().max().item(), rel=1e-6)
    load = torch.bincount(probs.topk(2).indices.reshape(-1), minlength=4).float() / 200
    assert stats["expert_load"] == pytest.approx(load.tolist(), abs=1e-6)
    assert stats["dropped_fraction"] == 0.0 and stats["tokens_dropped_fraction"] == 0.0


def test_empty_input():
    moe = MoE(8, 16, 4).train()
    x = torch.zeros(0, 8, requires_grad=True)
    y = moe(x)
    assert y.shape == (0, 8) and moe.aux_loss.item() == 0.0
    (y.sum() + moe.aux_loss).backward()


# ------------------------------------------------------------------------------------------ expert parallelism


def test_two_processes_with_gloo_match_a_single_process(tmp_path):
    worker, records = run_two_ranks(HERE / "_moe_dist_worker.py", tmp_path)
    assert [(r["first_expert"], r["num_local_experts"]) for r in records] == [(0, 2), (2, 2)]

    # One process holding all four experts, built under the same seed: the same weights, slice by slice.
    torch.manual_seed(worker.SEED)
    reference = MoE(worker.D_MODEL, worker.D_FF, worker.NUM_EXPERTS, **worker.CONFIG)
    params = dict(reference.named_parameters())
    for record in records:
        lo, hi = record["first_expert"], record["first_expert"] + record["num_local_experts"]
        for name, value in record["params"].items():
            assert torch.equal(value, params[name] if name == "router.weight" else params[name][lo:hi]), name

    # Capacity is per rank over its own tokens: the reference runs each rank's batch on its own.
    reference.train()
    dropped = 0.0
    for rank, record in enumerate(records):
        reference.zero_grad()
        x, upstream = worker.tokens_of(rank)
        x.requires_grad_()
        y = reference(x)
        ((y * upstream).sum() + reference.aux_loss).backward()
        assert torch.allclose(record["y"], y, atol=1e-6), rank
        assert torch.allclose(record["aux_loss"], reference.aux_loss)
        assert torch.allclose(record["x_grad"], x.grad, atol=1e-6)
        assert torch.allclose(record["grads"]["router.weight"], reference.router.weight.grad, atol=1e-6)
        stats, expected = dict(record["stats"]), reference.float_stats()
        assert stats.pop("expert_load") == pytest.approx(expected.pop("expert_load"))
        assert stats == pytest.approx(expected)
        dropped += record["stats"]["dropped_fraction"]
        with torch.no_grad():
            reference.eval()
            assert torch.allclose(record["y_eval"], reference(x), atol=1e-6)
            reference.train()
    assert dropped > 0  # the capacity really dropped something
    # Expert gradients gather both ranks' tokens: the sum of the two reference backward passes.
    reference.zero_grad()
    for rank in range(2):
        x, upstream = worker.tokens_of(rank)
        y = reference(x)
        ((y * upstream).sum() + reference.aux_loss).backward()
    for record in records:
        lo, hi = record["first_expert"], record["first_expert"] + record["num_local_experts"]
        for name in ("w_in", "w_out", "b_in", "b_out"):
            assert torch.allclose(record["grads"][name], params[name].grad[lo:hi], atol=1e-5), name
    reference.zero_grad()
    for rank in range(2):
        x, upstream = worker.tokens_of(rank)
        (reference(x) * upstream).sum().backward()
    for record in records:
        lo, hi = record["first_expert"], record["first_expert"] + record["num_local_experts"]
        assert torch.allclose(record["w_out_grad_detached_input"], reference.w_out.grad[lo:hi], atol=1e-5)
    # Rank 1 sends no tokens at all: rank 0's output and both ranks' expert gradients are rank 0's alone.
    reference.zero_grad()
    x, upstream = worker.tokens_of(0)
    y = reference(x)
    ((y * upstream).sum() + reference.aux_loss).backward()
    assert torch.allclose(records[0]["y_one_rank_empty"], y, atol=1e-6)
    assert records[1]["y_one_rank_empty"].shape == (0, worker.D_MODEL)
    for record in records:
        lo, hi = record["first_expert"], record["first_expert"] + record["num_local_experts"]
        assert torch.allclose(record["w_in_grad_one_rank_empty"], reference.w_in.grad[lo:hi], atol=1e-5)
