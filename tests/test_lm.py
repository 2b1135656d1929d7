"""Tests for accel.models.lm: shapes, causality, parameter counts, norms, FFN types and the MoE plumbing.

The MoE plumbing is tested with a small stand-in layer (``RecordingMoE``) that has the interface the model relies on,
so these tests do not depend on accel.moe; the tests at the end run the real accel.moe.MoE when it is importable.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from accel.models.lm import FeedForward, LMConfig, RMSNorm, TransformerLM, router_weight

TINY = dict(vocab_size=64, seq_len=16, d_model=32, n_layers=2, n_heads=4, d_ff=48, moe_every=0)


class RecordingMoE(nn.Module):
    """A stand-in MoE layer: a router and E GEGLU-sized experts' worth of weights, aux_loss and stats after forward.

    It records its input and constructor arguments. The output is per token (top-1 expert of a linear router), so
    it is causal like a real MoE layer without capacity drops.
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, **kwargs):
        super().__init__()
        self.kwargs = kwargs
        self.router = nn.Linear(d_model, num_experts, bias=False)
        self.w_in = nn.Parameter(torch.randn(num_experts, d_model, 2 * d_ff) * 0.02)
        self.w_out = nn.Parameter(torch.randn(num_experts, d_ff, d_model) * 0.02)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        logits = self.router(x)  # [B, T, E]
        expert = logits.argmax(-1)  # [B, T]
        gate, up = torch.einsum("btd,btdf->btf", x, self.w_in[expert]).chunk(2, dim=-1)
        y = torch.einsum("btf,btfd->btd", F.gelu(gate) * up, self.w_out[expert])
        self.aux_loss = torch.logsumexp(logits, -1).pow(2).mean()
        self.stats = {"tokens": x.shape[0] * x.shape[1]}
        return y


def _tokens(batch: int, length: int, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _dense_count(c: LMConfig) -> int:
    """Parameters of a dense model, from the architecture: embeddings, attention, FFNs, norms, head."""
    d = c.d_model
    ffn = (3 if c.ffn_type == "geglu" else 2) * d * c.d_ff
    norms = (2 * c.n_layers + 1) * d if c.norm_scale else 0
    count = c.vocab_size * d + c.n_layers * (4 * d * d + ffn) + norms
    count += c.seq_len * d if c.pos_embedding == "learned" else 0
    count += 0 if c.tie_embeddings else c.vocab_size * d
    return count


# ------------------------------------------------------------------------------------------------------- the model


def test_shapes_and_tied_head():
    model = TransformerLM(**TINY)
    logits = model(_tokens(3, 16))
    assert logits.shape == (3, 16, 64) and logits.dtype == torch.float32
    assert model(_tokens(2, 5)).shape == (2, 5, 64)  # shorter than seq_len
    assert model.head.weight is model.tok_emb.weight
    assert TransformerLM(**TINY, tie_embeddings=False).head.weight is not model.tok_emb.weight
    loss = F.cross_entropy(logits.flatten(0, 1), _tokens(3, 16, seed=1).flatten())
    assert abs(loss.item() - torch.log(torch.tensor(64.0)).item()) < 0.1  # small init: near-uniform predictions
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("overrides", [{}, {"pos_embedding": "none"}, {"moe_every": 1}])
def test_causal_future_tokens_do_not_change_past_logits(overrides):
    config = LMConfig(**{**TINY, **overrides})
    model = TransformerLM(config, moe_factory=RecordingMoE).eval()
    idx = _tokens(2, 16)
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 64
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_dense_parameter_counts_match_the_architecture():
    for overrides in [
        {},
        {"ffn_type": "gelu"},
        {"norm_scale": False},
        {"pos_embedding": "none"},
        {"tie_embeddings": False},
    ]:
        config = LMConfig(**{**TINY, **overrides})
        model = TransformerLM(config)
        assert model.num_parameters() == _dense_count(config), overrides
        assert model.num_parameters(active_only=True) == model.num_parameters()


def test_default_config_is_the_feasibility_study_model():
    config = LMConfig()
    assert (config.n_layers, config.d_model, config.seq_len, config.num_experts, config.top_k) == (4, 128, 128, 8, 2)
    assert config.moe_layer_indices == (1, 3) and config.ffn_type == "geglu" and config.norm_scale
    model = TransformerLM(config, moe_factory=RecordingMoE)
    experts = 8 * 3 * 128 * 256  # per MoE layer: 8 GEGLU experts of width 256
    dense_part = _dense_count(LMConfig(moe_every=0)) - 2 * 3 * 128 * 256  # layers 1 and 3 have no dense FFN
    assert model.num_parameters() == dense_part + 2 * (experts + 128 * 8) == 2_083_968  # ~2.1M
    # Per token: top-2 of 8 experts, i.e. a quarter of the expert weights.
    assert model.num_parameters(active_only=True) == 2_083_968 - 2 * experts * 6 // 8


@pytest.mark.parametrize(
    "moe_every, n_layers, expected", [(0, 4, ()), (1, 3, (0, 1, 2)), (2, 4, (1, 3)), (2, 5, (1, 3)), (3, 4, (2,))]
)
def test_moe_layer_placement(moe_every, n_layers, expected):
    model = TransformerLM(**{**TINY, "moe_every": moe_every, "n_layers": n_layers}, moe_factory=RecordingMoE)
    assert model.config.moe_layer_indices == expected
    assert [i for i, block in enumerate(model.blocks) if block.is_moe] == list(expected)
    assert len(model.moe_layers()) == len(expected)
    assert all(isinstance(m, RecordingMoE) for m in model.moe_layers())


def test_factory_receives_the_moe_arguments():
    model = TransformerLM(
        **{**TINY, "moe_every": 2},
        ffn_type="gelu",
        num_experts=4,
        top_k=1,
        capacity_factor=None,
        eval_capacity_factor=3.0,
        z_loss_coef=0.0,
        balance_loss_coef=0.5,
        router_jitter=0.01,
        moe_kwargs={"router_dtype": "bfloat16"},
        moe_factory=RecordingMoE,
    )
    (moe,) = model.moe_layers()
    assert moe.router.weight.shape == (4, 32)
    assert moe.kwargs == {
        "top_k": 1,
        "capacity_factor": None,
        "eval_capacity_factor": 3.0,
        "z_loss_coef": 0.0,
        "balance_loss_coef": 0.5,
        "router_jitter": 0.01,
        "expert_type": "ffn",  # the dense "gelu" FFN is accel.moe's "ffn" expert
        "router_dtype": "bfloat16",
    }
    (geglu,) = TransformerLM(**{**TINY, "moe_every": 2}, moe_factory=RecordingMoE).moe_layers()
    assert geglu.kwargs["expert_type"] == "geglu"


def test_aux_loss_sums_the_layers_and_stats_are_per_layer():
    model = TransformerLM(**{**TINY, "moe_every": 1}, moe_factory=RecordingMoE)
    assert model.aux_loss().item() == 0.0  # nothing has run yet
    assert model.moe_stats() == [{}, {}]
    model(_tokens(2, 8))
    first, second = model.moe_layers()
    assert torch.equal(model.aux_loss(), first.aux_loss + second.aux_loss)
    assert model.aux_loss().requires_grad
    assert model.moe_stats() == [{"tokens": 16}, {"tokens": 16}]
    model.aux_loss().backward()
    assert first.router.weight.grad is not None and first.router.weight.grad.abs().sum() > 0

    dense = TransformerLM(**TINY)
    dense(_tokens(1, 4))
    zero = dense.aux_loss()
    assert zero.shape == () and zero.item() == 0.0 and dense.moe_layers() == [] and dense.moe_stats() == []


def test_router_norm_switches_the_normalisation_before_the_moe_layer():
    idx = _tokens(2, 16)
    for router_norm in (True, False):
        model = TransformerLM(**{**TINY, "moe_every": 2}, router_norm=router_norm, moe_factory=RecordingMoE)
        with torch.no_grad():
            model.tok_emb.weight.mul_(1000)  # residual stream RMS ~20, far from 1
            model(idx)
        block = model.blocks[1]
        rms = block.ffn.inputs[-1].pow(2).mean(-1).sqrt()
        if router_norm:
            assert isinstance(block.norm_ffn, RMSNorm)
            assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3)  # RMSNorm with its scale at 1
        else:
            assert isinstance(block.norm_ffn, nn.Identity)
            assert rms.min() > 10
        assert isinstance(model.blocks[0].norm_ffn, RMSNorm)  # dense layers always normalise


def test_router_init_std():
    default = TransformerLM(**{**TINY, "moe_every": 1}, moe_factory=RecordingMoE)
    large = TransformerLM(**{**TINY, "moe_every": 1, "d_model": 128}, router_init_std=1.0, moe_factory=RecordingMoE)
    for moe in large.moe_layers():
        assert abs(router_weight(moe).std().item() - 1.0) < 0.1
    assert router_weight(default.moe_layers()[0]).std().item() < 0.2  # nn.Linear's own init

    class NoRouter(RecordingMoE):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            del self.router

    assert TransformerLM(**{**TINY, "moe_every": 1}, moe_factory=NoRouter).num_parameters() > 0
    with pytest.raises(AttributeError, match="router_init_std"):
        TransformerLM(**{**TINY, "moe_every": 1}, router_init_std=1.0, moe_factory=NoRouter)


def test_scaled_residual_init():
    model = TransformerLM(**{**TINY, "d_model": 256, "n_layers": 8, "d_ff": 256})
    std = 0.02 / (2 * 8) ** 0.5
    assert abs(model.blocks[0].attn.proj.weight.std().item() - std) < 0.1 * std
    assert abs(model.blocks[0].ffn.w_out.weight.std().item() - std) < 0.1 * std
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002
    plain = TransformerLM(**{**TINY, "d_model": 256, "n_layers": 8, "d_ff": 256}, scaled_residual_init=False)
    assert abs(plain.blocks[0].attn.proj.weight.std().item() - 0.02) < 0.002


def test_dropout_only_in_training():
    model = TransformerLM(**TINY, dropout=0.5)
    idx = _tokens(2, 16)
    torch.manual_seed(0)
    assert not torch.allclose(model(idx), model(idx))
    model.eval()
    assert torch.equal(model(idx), model(idx))


def test_invalid_arguments():
    with pytest.raises(ValueError, match=r"Invalid n_heads: 3; expected a divisor of d_model = 32"):
        LMConfig(**{**TINY, "n_heads": 3})
    with pytest.raises(ValueError, match="Invalid ffn_type: 'swiglu'"):
        LMConfig(ffn_type="swiglu")
    with pytest.raises(ValueError, match="Invalid dropout: 1.0"):
        LMConfig(dropout=1.0)
    with pytest.raises(ValueError, match="Invalid top_k: 9"):
        LMConfig(top_k=9)
    with pytest.raises(ValueError, match="Invalid moe_every: -1"):
        LMConfig(moe_every=-1)
    with pytest.raises(ValueError, match="Invalid d_model: 0"):
        LMConfig(d_model=0)
    with pytest.raises(ValueError, match="Invalid router_init_std: 0"):
        LMConfig(router_init_std=0)
    with pytest.raises(TypeError, match="n_layer"):
        TransformerLM(n_layer=2)
    model = TransformerLM(**TINY)
    with pytest.raises(ValueError, match="Invalid idx"):
        model(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="Invalid sequence length: 17; expected at most seq_len = 16"):
        model(_tokens(1, 17))
    assert TransformerLM(**TINY, pos_embedding="none")(_tokens(1, 40)).shape == (1, 40, 64)


# ---------------------------------------------------------------------------------------------------- the pieces


def test_rmsnorm_with_and_without_scale():
    x = torch.randn(4, 7, 16, generator=torch.Generator().manual_seed(0)) * 5 + 1
    plain = RMSNorm(16, scale=False)
    assert list(plain.parameters()) == []
    y = plain(x)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(4, 7), atol=1e-4)
    assert torch.allclose(y, x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())

    scaled = RMSNorm(16)
    assert scaled.weight.shape == (16,) and torch.equal(scaled(x), y)  # the scale starts at 1
    with torch.no_grad():
        scaled.weight.copy_(torch.arange(16.0))
    assert torch.allclose(scaled(x), y * torch.arange(16.0))
    assert scaled(x.bfloat16()).dtype == torch.bfloat16

    no_scale = TransformerLM(**TINY, norm_scale=False)
    assert not any(isinstance(m, RMSNorm) and m.weight is not None for m in no_scale.modules())


def test_geglu_and_gelu_ffn():
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0))
    geglu = FeedForward(8, 12, "geglu")
    assert geglu.w_in.weight.shape == (24, 8) and geglu.w_out.weight.shape == (8, 12)
    gate, up = x @ geglu.w_in.weight[:12].T, x @ geglu.w_in.weight[12:].T
    assert torch.allclose(geglu(x), (F.gelu(gate) * up) @ geglu.w_out.weight.T, atol=1e-6)

    gelu = FeedForward(8, 12, "gelu")
    assert gelu.w_in.weight.shape == (12, 8)
    assert torch.allclose(gelu(x), F.gelu(x @ gelu.w_in.weight.T) @ gelu.w_out.weight.T, atol=1e-6)
    with pytest.raises(ValueError, match="Invalid ffn_type"):
        FeedForward(8, 12, "relu")
    model = TransformerLM(**TINY, ffn_type="gelu")
    assert not model.blocks[0].ffn.gated and TransformerLM(**TINY).blocks[0].ffn.gated


# ----------------------------------------------------------------------------------------- with the real accel.moe


def test_with_accel_moe():
    pytest.importorskip("accel.moe")
    model = TransformerLM()  # the default: accel.moe.MoE in layers 1 and 3
    assert len(model.moe_layers()) == 2
    assert 1.9e6 < model.num_parameters() < 2.3e6  # the feasibility study's ~2.1M
    assert model.num_parameters(active_only=True) < model.num_parameters()
    idx = _tokens(1, 128, vocab=256)
    logits = model(idx)
    assert logits.shape == (1, 128, 256)
    aux = model.aux_loss()
    assert aux.shape == () and torch.isfinite(aux) and aux.item() > 0
    assert torch.allclose(aux, sum(m.aux_loss for m in model.moe_layers()))
    assert len(model.moe_stats()) == 2 and all(isinstance(s, dict) for s in model.moe_stats())
    (F.cross_entropy(logits.flatten(0, 1), idx.flatten()) + aux).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_with_accel_moe_options_and_causality():
    pytest.importorskip("accel.moe")
    model = TransformerLM(**{**TINY, "moe_every": 1}, num_experts=4, ffn_type="gelu", router_init_std=0.5).eval()
    assert all(abs(router_weight(m).std().item() - 0.5) < 0.2 for m in model.moe_layers())
    # One sequence: capacity drops go in token order, so a future token cannot change an earlier token's output.
    # (Across a batch they can: tokens of one sequence compete with earlier sequences' tokens for capacity.)
    idx = _tokens(1, 16)
    changed = idx.clone()
    changed[0, 11] = (changed[0, 11] + 1) % 64
    with torch.no_grad():
        # Equal up to float rounding: the experts' matmuls see other row counts (other kernel blocking); a drop
        # would change an output by a whole expert's contribution.
        assert torch.allclose(model(idx)[:, :11], model(changed)[:, :11], rtol=0, atol=1e-6)
