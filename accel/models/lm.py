"""A small decoder-only transformer language model, with mixture-of-experts FFNs every n-th layer.

This is what the ST-MoE chapter trains: a byte-level LM (vocabulary 256 by default) small enough for a CPU, built so
each of the paper's stability knobs is one field of :class:`LMConfig`:

* ``ffn_type`` ``"geglu"`` or ``"gelu"``                 -- the "remove GEGLU" ablation (dense FFNs and experts alike);
* ``norm_scale`` True or False                           -- the "remove RMSNorm scale" ablation;
* ``dropout``                                            -- the "dropout 0.1" ablation;
* ``router_jitter``, ``z_loss_coef``, ``balance_loss_coef``, ``capacity_factor``, ``top_k``, ... -- passed to the MoE;
* ``router_init_std``                                    -- a large router init provokes router-logit growth;
* ``router_norm`` False                                  -- feed the raw residual stream to the router and experts.

Architecture (pre-norm, like T5 / ST-MoE, no biases anywhere)::

    idx [B, T] -> token embedding (+ learned position embedding) -> dropout -> x [B, T, d]
    n_layers x:   x = x + dropout(attention(rmsnorm(x)))          causal, F.scaled_dot_product_attention
                  x = x + dropout(ffn(rmsnorm(x)))                 dense FFN, or an MoE layer every moe_every-th
    rmsnorm -> linear head (tied to the token embedding by default) -> logits [B, T, vocab]

With ``moe_every=2`` layers 1, 3, 5, ... (0-based) are sparse and the others dense, the ST-MoE layout (a dense FFN
beside each sparse one). The defaults reproduce the feasibility study's model: 4 layers, d 128, 4 heads, sequences of
128 bytes, GEGLU FFNs of width 256, 8 experts with top-2 routing in layers 1 and 3, about 2.1M parameters.

The MoE layers come from a factory (default :class:`accel.moe.MoE`, imported only when a model with MoE layers is
built), so a reader can drop in another implementation. The model relies on this much of the layer's interface:
``factory(d_model, d_ff, num_experts, **kwargs)`` builds it, ``forward(x [B, T, d]) -> [B, T, d]``, and after each
forward ``.aux_loss`` (a scalar tensor, the weighted auxiliary losses; accel's sums the forwards since it was last
read) and ``.stats`` (a dict). ``router_init_std``
further needs the router weight at ``.router.weight``; :meth:`TransformerLM.num_parameters` with ``active_only``
treats every parameter of the layer outside ``.router`` as expert weights split evenly over the experts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LMConfig", "RMSNorm", "CausalSelfAttention", "FeedForward", "Block", "TransformerLM", "router_weight"]

_FFN_TYPES = ("gelu", "geglu")
_EXPERT_TYPES = {"gelu": "ffn", "geglu": "geglu"}  # our dense FFN name -> accel.moe's expert_type name
_POS_EMBEDDINGS = ("learned", "none")


@dataclass(frozen=True)
class LMConfig:
    """Plain data describing a :class:`TransformerLM`; every field is validated when the config is created."""

    vocab_size: int = 256  # bytes
    seq_len: int = 128  # the longest input; the size of the learned position table
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 256  # hidden width of every dense FFN and of every expert
    ffn_type: str = "geglu"  # "geglu": w_out(gelu(x w_gate) * (x w_up)); "gelu": w_out(gelu(x w_in))
    pos_embedding: str = "learned"  # "learned" | "none" (causal attention still infers position)
    norm_scale: bool = True  # RMSNorm with a learnable per-channel scale; False: the "remove RMSNorm scale" ablation
    norm_eps: float = 1e-6
    dropout: float = 0.0  # embedding, attention-probability and residual dropout
    tie_embeddings: bool = True  # the output head reuses the token embedding matrix
    init_std: float = 0.02  # normal init of embeddings and linear layers
    scaled_residual_init: bool = True  # layers writing to the residual stream get init_std / sqrt(2 n_layers)
    # Mixture of experts: layer i (0-based) is sparse when moe_every > 0 and (i + 1) % moe_every == 0.
    moe_every: int = 2  # 0: a dense model
    num_experts: int = 8
    top_k: int = 2
    capacity_factor: float | None = 1.25  # None: dropless
    eval_capacity_factor: float | None = 2.0
    z_loss_coef: float = 1e-3
    balance_loss_coef: float = 1e-2
    router_jitter: float = 0.0
    expert_type: str | None = None  # None: follow ffn_type ("gelu" -> "ffn", "geglu" -> "geglu")
    router_norm: bool = True  # False: no RMSNorm before the MoE layer, the router sees the raw residual stream
    router_init_std: float | None = None  # None: the MoE layer's own router init
    moe_kwargs: Mapping[str, Any] = field(default_factory=dict)  # any further keyword arguments for the factory

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads", "d_ff", "num_experts", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}: {value!r}; expected a positive int")
        if self.d_model % self.n_heads:
            raise ValueError(f"Invalid n_heads: {self.n_heads!r}; expected a divisor of d_model = {self.d_model}")
        if self.ffn_type not in _FFN_TYPES:
            raise ValueError(f"Invalid ffn_type: {self.ffn_type!r}; expected one of {_FFN_TYPES}")
        if self.pos_embedding not in _POS_EMBEDDINGS:
            raise ValueError(f"Invalid pos_embedding: {self.pos_embedding!r}; expected one of {_POS_EMBEDDINGS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Invalid dropout: {self.dropout!r}; expected 0 <= dropout < 1")
        if not self.norm_eps > 0:
            raise ValueError(f"Invalid norm_eps: {self.norm_eps!r}; expected > 0")
        if not self.init_std > 0:
            raise ValueError(f"Invalid init_std: {self.init_std!r}; expected > 0")
        if self.router_init_std is not None and not self.router_init_std > 0:
            raise ValueError(f"Invalid router_init_std: {self.router_init_std!r}; expected None or > 0")
        if isinstance(self.moe_every, bool) or not isinstance(self.moe_every, int) or self.moe_every < 0:
            raise ValueError(f"Invalid moe_every: {self.moe_every!r}; expected an int >= 0 (0: no MoE layers)")
        if self.top_k > self.num_experts:
            raise ValueError(f"Invalid top_k: {self.top_k!r}; expected 1 <= top_k <= num_experts = {self.num_experts}")
        # The remaining MoE arguments are validated by the MoE layer itself, which knows their ranges.

    @property
    def moe_layer_indices(self) -> tuple[int, ...]:
        """0-based indices of the sparse layers, e.g. (1, 3) for 4 layers and ``moe_every=2``."""
        if self.moe_every == 0:
            return ()
        return tuple(i for i in range(self.n_layers) if (i + 1) % self.moe_every == 0)

    def moe_arguments(self) -> dict[str, Any]:
        """Keyword arguments for the MoE factory, besides the positional (d_model, d_ff, num_experts)."""
        return {
            "top_k": self.top_k,
            "capacity_factor": self.capacity_factor,
            "eval_capacity_factor": self.eval_capacity_factor,
            "z_loss_coef": self.z_loss_coef,
            "balance_loss_coef": self.balance_loss_coef,
            "router_jitter": self.router_jitter,
            "expert_type": self.expert_type if self.expert_type is not None else _EXPERT_TYPES[self.ffn_type],
            **dict(self.moe_kwargs),
        }


class RMSNorm(nn.Module):
    """Root-mean-square layer norm: x [..., d] -> x / sqrt(mean(x^2) + eps) (* scale [d] when ``scale=True``).

    Computed in float32 and cast back, so it is safe under bfloat16 autocast. Without the scale the layer has no
    parameters: ST-MoE's "remove RMSNorm scale" ablation (multiplicative components add quality but destabilise).
    """

    def __init__(self, dim: int, eps: float = 1e-6, *, scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.float()
        return y.to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: x [B, T, d] -> [B, T, d]; position t attends to positions <= t only."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)  # writes to the residual stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        # [B, T, 3d] -> three [B, heads, T, d / heads]
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    """Dense position-wise FFN: x [..., d] -> [..., d] through a hidden layer of width ``d_ff``.

    ``"gelu"``: w_out(gelu(w_in x)), 2 d d_ff weights. ``"geglu"`` (Shazeer 2020): w_out(gelu(w_gate x) * w_up x),
    3 d d_ff weights; w_gate and w_up are the two halves of one [2 d_ff, d] matrix, so one matmul computes both.
    """

    def __init__(self, d_model: int, d_ff: int, ffn_type: str = "geglu"):
        super().__init__()
        if ffn_type not in _FFN_TYPES:
            raise ValueError(f"Invalid ffn_type: {ffn_type!r}; expected one of {_FFN_TYPES}")
        self.gated = ffn_type == "geglu"
        self.w_in = nn.Linear(d_model, 2 * d_ff if self.gated else d_ff, bias=False)
        self.w_out = nn.Linear(d_ff, d_model, bias=False)  # writes to the residual stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.w_in(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = F.gelu(gate) * up
        else:
            h = F.gelu(h)
        return self.w_out(h)


class Block(nn.Module):
    """One pre-norm transformer layer: x [B, T, d] -> [B, T, d]. ``moe`` replaces the dense FFN when given."""

    def __init__(self, config: LMConfig, moe: nn.Module | None = None):
        super().__init__()
        c = config
        self.is_moe = moe is not None
        self.norm_attn = RMSNorm(c.d_model, c.norm_eps, scale=c.norm_scale)
        self.attn = CausalSelfAttention(c.d_model, c.n_heads, c.dropout)
        if self.is_moe and not c.router_norm:
            self.norm_ffn: nn.Module = nn.Identity()
        else:
            self.norm_ffn = RMSNorm(c.d_model, c.norm_eps, scale=c.norm_scale)
        self.ffn = moe if moe is not None else FeedForward(c.d_model, c.d_ff, c.ffn_type)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm_attn(x)))
        return x + self.drop(self.ffn(self.norm_ffn(x)))


def _default_moe_factory(d_model: int, d_ff: int, num_experts: int, **kwargs: Any) -> nn.Module:
    from accel.moe import MoE  # imported here: a dense model needs no accel.moe

    return MoE(d_model, d_ff, num_experts, **kwargs)


def router_weight(moe: nn.Module) -> nn.Parameter | None:
    """The router's weight [num_experts, d_model] of an MoE layer (``moe.router.weight``, or ``moe.router`` when it
    is a bare parameter), or None when the layer has no router there."""
    router = getattr(moe, "router", None)
    if isinstance(router, nn.Parameter):
        return router
    weight = getattr(router, "weight", None)
    return weight if isinstance(weight, nn.Parameter) else None


class TransformerLM(nn.Module):
    """Decoder-only transformer LM: idx [B, T] (int64 token ids, T <= seq_len) -> logits [B, T, vocab_size].

    ``TransformerLM(config, moe_factory=None, **overrides)``: ``overrides`` replace fields of ``config`` (default
    :class:`LMConfig`), e.g. ``TransformerLM(n_layers=2, moe_every=0)``. ``moe_factory(d_model, d_ff, num_experts,
    **config.moe_arguments())`` builds each MoE layer (default :class:`accel.moe.MoE`).

    Training loss: ``F.cross_entropy(logits.flatten(0, 1), targets.flatten()) + model.aux_loss()``, where
    :meth:`aux_loss` sums the MoE layers' weighted auxiliary losses (z-loss and load balancing) of the forwards since
    it was last called (one forward per backward: that forward's).
    """

    def __init__(
        self,
        config: LMConfig | None = None,
        *,
        moe_factory: Callable[..., nn.Module] | None = None,
        **overrides: Any,
    ):
        super().__init__()
        if config is None:
            config = LMConfig()
        if overrides:
            known = {f.name for f in fields(LMConfig)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise TypeError(f"Unknown LMConfig field(s): {unknown}")
            config = replace(config, **overrides)
        self.config = c = config
        factory = _default_moe_factory if moe_factory is None else moe_factory

        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.seq_len, c.d_model) if c.pos_embedding == "learned" else None
        self.drop = nn.Dropout(c.dropout)
        sparse = set(c.moe_layer_indices)
        self.blocks = nn.ModuleList(
            Block(c, factory(c.d_model, c.d_ff, c.num_experts, **c.moe_arguments()) if i in sparse else None)
            for i in range(c.n_layers)
        )
        self.norm_out = RMSNorm(c.d_model, c.norm_eps, scale=c.norm_scale)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self._init_weights()
        if c.tie_embeddings:
            self.head.weight = self.tok_emb.weight

    def _init_weights(self) -> None:
        """Normal(0, init_std) for embeddings and our linear layers; residual-stream writers (attention ``proj``,
        FFN ``w_out``) get init_std / sqrt(2 n_layers) when ``scaled_residual_init`` (GPT-2), so the residual
        stream's variance does not grow with depth. MoE layers keep their own init, except the router weight when
        ``router_init_std`` is set."""
        c = self.config
        residual_std = c.init_std / math.sqrt(2 * c.n_layers) if c.scaled_residual_init else c.init_std
        nn.init.normal_(self.tok_emb.weight, std=c.init_std)
        if self.pos_emb is not None:
            nn.init.normal_(self.pos_emb.weight, std=c.init_std)
        nn.init.normal_(self.head.weight, std=c.init_std)
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=c.init_std)
            nn.init.normal_(block.attn.proj.weight, std=residual_std)
            if block.is_moe:
                if c.router_init_std is not None:
                    weight = router_weight(block.ffn)
                    if weight is None:
                        raise AttributeError(
                            f"router_init_std={c.router_init_std!r} needs the MoE layer's router weight at "
                            f".router.weight, and {type(block.ffn).__name__} has none"
                        )
                    with torch.no_grad():
                        weight.normal_(0.0, c.router_init_std)
            else:
                nn.init.normal_(block.ffn.w_in.weight, std=c.init_std)
                nn.init.normal_(block.ffn.w_out.weight, std=residual_std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [B, T] int64 token ids in [0, vocab_size) -> logits [B, T, vocab_size] (float32 unless autocast)."""
        if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"Invalid idx: {idx.dtype} of shape {tuple(idx.shape)}; expected int64 [B, T]")
        t = idx.shape[1]
        if self.pos_emb is not None and t > self.config.seq_len:
            raise ValueError(f"Invalid sequence length: {t}; expected at most seq_len = {self.config.seq_len}")
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(t, device=idx.device))
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm_out(x))

    # ------------------------------------------------------------------------------------------------ MoE access

    def moe_layers(self) -> list[nn.Module]:
        """The MoE layers, in depth order (the modules the factory built)."""
        return [block.ffn for block in self.blocks if block.is_moe]

    def aux_loss(self) -> torch.Tensor:
        """Sum of the MoE layers' ``.aux_loss`` (already weighted by the layers' coefficients; each layer's covers the
        forwards since it was last read, so call this once per backward);
        a zero scalar when the model has no MoE layers or none has run yet. Add it to the cross-entropy."""
        losses = [loss for m in self.moe_layers() if (loss := getattr(m, "aux_loss", None)) is not None]
        if not losses:
            return torch.zeros((), device=self.tok_emb.weight.device)
        total = losses[0]
        for loss in losses[1:]:
            total = total + loss
        return total

    def moe_stats(self) -> list[dict]:
        """Per MoE layer (depth order), a shallow copy of its ``.stats`` dict from the last forward ({} if none).

        accel.moe.MoE keeps detached tensors there (no host sync); its ``float_stats()`` reads them as floats."""
        return [dict(getattr(m, "stats", None) or {}) for m in self.moe_layers()]

    def num_parameters(self, active_only: bool = False) -> int:
        """Number of parameters (tied weights counted once).

        ``active_only``: those one token can use, i.e. each MoE layer's expert weights count top_k / num_experts
        (at most top_k experts per token; top-2's second expert and capacity drops can make it fewer). Everything
        in an MoE layer outside ``.router`` counts as expert weights, split evenly over the experts.
        """
        total = sum(p.numel() for p in self.parameters())
        if not active_only:
            return total
        top_k = self.config.top_k
        for moe in self.moe_layers():
            experts = sum(p.numel() for name, p in moe.named_parameters() if name.split(".")[0] != "router")
            # Under expert parallelism a layer holds only its num_local_experts experts.
            held = getattr(moe, "num_local_experts", self.config.num_experts)
            total -= experts - experts * min(top_k, held) // held
        return total
