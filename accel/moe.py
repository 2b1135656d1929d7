"""Sparse mixture-of-experts with ST-MoE's stabilisers (Zoph et al. 2022, arXiv 2202.08906; Switch, Fedus et al. 2021).

The layer. A router (a linear map d_model -> E, no bias) scores every token against E experts; each token goes to
its k best experts, and the layer's output for the token is the gate-weighted sum of those experts' outputs:

    logits = x W_r                       [T, E]   computed in float32, even under bf16/fp16 autocast
    p      = softmax(logits)             [T, E]
    top-k of p: experts e_1..e_k, gates g_j = p_{e_j} / sum_i p_{e_i}     (k = 1: g_1 = p_{e_1}, not renormalised)
    y      = sum_j g_j · FFN_{e_j}(x)    (assignments dropped by capacity contribute 0)

Top-1 uses the raw probability as its gate, as Switch does: renormalising one gate would make it 1 and cut the
router off from the task loss's gradient. With k >= 2 the k gates are renormalised to sum to 1 (Mesh-TF, ST-MoE).

Two auxiliary losses are kept on the module (``aux_loss = c_b · L_b + c_z · L_z``, summed over the forwards since
it was last read, so two forwards before one backward count both); add it to the task loss:

  * router z-loss (ST-MoE Eq. 5), ``router_z_loss``: L_z = mean over tokens of logsumexp(logits)^2. It keeps the
    logits small, where float round-off in the softmax is small. c_z = 1e-3 by default (the paper's value). Its
    minimum, logsumexp = 0, makes the logits log-probabilities; since max <= logsumexp <= max + ln E, it pins each
    token's top logit into [-ln E, 0] while leaving the logits' differences (the routing) free.
  * load balancing (Switch App. A), ``load_balancing_loss``: L_b = E · sum_i f_i · P_i, f_i the fraction of tokens
    whose top-1 expert is i (no gradient), P_i the mean probability of expert i. Uniform routing gives 1, total
    collapse onto one expert gives E. c_b = 1e-2 by default (the paper's value).

Capacity. In training each expert takes at most C = floor(capacity_factor · k · T / E) token-expert assignments
(at least 1) of the T tokens in the forward; eval mode uses eval_capacity_factor (ST-MoE: train 1.25, eval 2.0).
None means dropless. Over capacity, assignments are dropped in a fixed order: every first choice ranks before any
second choice (and so on for the k-th), and within a choice rank, tokens go in order. With top-1 no token is ever
dropped because of a later one; with k >= 2 a later token's first choice does outrank an earlier token's second
(as in Mesh-TF). A dropped assignment contributes nothing; a token that loses all k gets a zero output (the residual
connection around the layer carries it on).

Dispatch by index, no [T, E, C] one-hot tensors and no padding (routing metadata is O(T · k)):

  1. flatten the k·T assignments choice-major (all first choices in token order, then all second choices, ...);
  2. stable-sort them by expert: within an expert the order is now exactly the drop order above;
  3. position within the expert = rank in the sorted list minus the expert's start; keep those below C;
  4. run each expert on its own contiguous segment of the sorted list: gather its tokens' rows, apply its FFN,
     scale each output row by its gate and add it to its token with index_add. One autograd node does all of it
     (_ExpertsAndCombine, with a hand-written backward pass), in chunks of consecutive experts whose rows stay under
     4 MiB (CHUNK_BYTES): small experts share one gather and one combine, large ones get a chunk each, so no
     temporary grows with the batch, and each weight gradient is written straight into one [E, ...] tensor.
     With biases, expert dropout or expert parallelism the layer takes the composable path instead: the kept rows
     gathered into one [N, d_model] tensor in that order, each linear map of the experts one grouped matmul over the
     segments (_GroupedMatmul), then the same gated index_add.

Reading the segment sizes (E integers) is the forward's one host sync. Why segments and not one batched matmul over
a zero-padded [E, C, d_model] buffer, the Switch/GShard layout: the buffer must be as deep as the fullest expert, so
every imbalance is paid for in padding (on random tokens a freshly initialised router's fullest expert holds 1.3-1.6
times the mean at 64 experts, 1.1-1.25 at 8), and eval's capacity factor of 2.0 would double the work. MegaBlocks
avoids the padding the same way on GPUs. Why chunks in one node rather than [k·T, d_ff] tensors for all experts at
once: on CPU, glibc's malloc maps every buffer over 32 MiB afresh from the OS and faults its pages in on each step,
which cost the all-at-once layout 10-20% at 16K tokens; a chunk stays far below that.
tests/benchmarks/bench_moe.py times this layer against the padded layout, HF Mixtral's block, a hand-written
per-expert loop and a dense FFN of the same active FLOPs.

Randomness, all during training only (eval mode is deterministic): router jitter (multiplies the router's input by
uniform noise in [1 - eps, 1 + eps], Switch), the "sampled" second-expert policy (Mesh-TF / ST-MoE, defined there
for the second of two; here every choice j >= 2 is used with probability min(1, g_j / 0.2), else it is dropped
before capacity is counted; the gates are not renormalised again), and expert dropout on the experts' hidden
activations. Jitter and sampling draw from ``generator`` when one is given (else from torch's default generator);
dropout uses torch's default generator.

Expert parallelism. With ``process_group`` of world size W (E divisible by W), rank r holds experts
[r·E/W, (r+1)·E/W); the router is replicated (keep it in step across ranks, e.g. with DDP). Every rank routes and
applies capacity to its own tokens, so C is computed over the rank's local T: the same capacity a one-process layer
would use on that rank's batch, and no rank ever needs another's token count to agree on buffer sizes. Each rank then
sends its kept rows to the experts' owners with torch.distributed.all_to_all_single: first the per-expert counts
(E integers per rank), then the rows themselves with those split sizes; the owners run their experts, and a reverse
all_to_all_single brings the outputs home, where gates and the combine are applied locally. Both exchanges are
differentiable (the backward pass is the same exchange reversed). Every rank runs both backward exchanges whether or
not its input needs a gradient, so they pair up across ranks (each rank must still call backward, as under DDP).
The all_to_all_single calls work with gloo on CPU and NCCL on GPU. Gradients of expert weights
need no all-reduce across this group (each expert lives on one rank); router gradients do (DDP does it).

Peers' conventions differ; what this file matches, and where others stand:
  * balance loss: flaxformer and HF Switch compute mean(f · P) · E^2, the same value as E · sum(f · P) for one group
    of tokens. HF Switch forms f and P per sequence and averages over sequences, so on a batch of several sequences
    the values differ (by a few percent on random logits, 2-3x when sequences favour different experts); here f and
    P are over all T tokens of the forward. HF Switch's default coefficient is 1e-3, 10x below the paper's 1e-2
    (ours). HF Mixtral counts f over all k top-k slots, so its minimum is k rather than 1.
  * experts: expert_type="swiglu" is Mixtral's expert, down(silu(gate(x)) · up(x)); with top_k >= 2 and no capacity
    the layer reproduces HF's MixtralSparseMoeBlock on copied weights (at top-1 Mixtral renormalises the one gate to
    1, Switch and this layer do not).
  * capacity counts token-expert assignments (CF · k · T / E, as DeepSpeed and Tutel do); CF · T / E with top-2
    would force half of all assignments to drop at CF 1.0.

Usage (a toy residual block; in a model the MoE replaces the FFN of every other block or so):

>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> moe = MoE(d_model=64, d_ff=128, num_experts=8, top_k=2)   # capacity 1.25 train / 2.0 eval, c_z 1e-3, c_b 1e-2
>>> norm = nn.LayerNorm(64)
>>> h = torch.randn(4, 16, 64)
>>> h = h + moe(norm(h))                  # [..., d_model] -> [..., d_model]
>>> task_loss = h.pow(2).mean()           # stands in for the model's loss
>>> loss = task_loss + moe.aux_loss       # c_b · L_b + c_z · L_z of the forwards since the last read
>>> loss.backward()
>>> sorted(moe.float_stats())[:4]         # dropped fractions, expert load, router entropy, logit sizes, the losses
['balance_loss', 'dropped_fraction', 'expert_load', 'max_abs_logit']
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

EXPERT_TYPES = ("ffn", "geglu", "swiglu")  # swiglu: SiLU-gated, as Mixtral's experts
GATED = {"geglu": F.gelu, "swiglu": F.silu}
SECOND_POLICIES = ("all", "sampled")
ROUTER_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _invalid(name: str, value, expected: str) -> ValueError:
    return ValueError(f"Invalid {name}: {value!r}; expected {expected}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _autocast_dtype(device_type: str) -> torch.dtype:
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


# ----------------------------------------------------------------------------------------------------- losses


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's router z-loss: mean over tokens of logsumexp(logits)^2, in float32 (a scalar tensor).

    logits: [T, E] (or [..., E]: every leading position is a token).
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim < 1:
        raise _invalid("logits", logits, "a tensor [T, E] of router logits")
    z = torch.logsumexp(logits.float(), dim=-1)
    return z.pow(2).mean()


def load_balancing_loss(probs: torch.Tensor, top1_index: torch.Tensor) -> torch.Tensor:
    """Switch's load-balancing loss E · sum_i f_i · P_i, in float32 (a scalar tensor).

    probs: [T, E] router probabilities (softmax over experts), T >= 1 (no tokens: ValueError, the mean is undefined).
    top1_index: [T] integer, each token's top-1 expert in [0, E) (checked with one host sync).
    f_i = fraction of tokens whose top-1 expert is i (a count: no gradient), P_i = mean over tokens of probs[:, i]
    (the gradient flows through it). Uniform routing gives 1.0; every token on one expert with probability 1 gives E.

    Other conventions: flaxformer and HF Switch compute mean(f · P) · E^2, the same value. HF Switch's default
    coefficient is 1e-3 where the paper (and MoE here) uses 1e-2. HF Mixtral counts f over the k top-k slots
    (sum_i f_i = k), so its minimum is k, not 1.
    """
    if not isinstance(probs, torch.Tensor) or probs.ndim != 2:
        raise _invalid("probs", probs, "a tensor [T, E] of router probabilities")
    num_tokens, num_experts = probs.shape
    if not probs.is_floating_point():
        raise ValueError(f"Invalid probs: dtype {probs.dtype}; expected a float tensor [T, E] of router probabilities")
    if num_tokens == 0 or num_experts == 0:
        missing = "at least one token" if num_tokens == 0 else "at least one expert"
        raise ValueError(f"Invalid probs: shape {tuple(probs.shape)}; expected {missing} (the loss is a mean over T)")
    integer = isinstance(top1_index, torch.Tensor) and not (top1_index.is_floating_point() or top1_index.is_complex())
    if not integer or top1_index.dtype == torch.bool or top1_index.shape != (num_tokens,):
        got = tuple(top1_index.shape) if isinstance(top1_index, torch.Tensor) else top1_index
        raise _invalid("top1_index", got, f"an integer tensor of shape ({num_tokens},) (one expert per token)")
    low, high = torch.stack(torch.aminmax(top1_index)).tolist()  # the range check's host sync
    if low < 0 or high >= num_experts:
        raise ValueError(
            f"Invalid top1_index: values in [{low}, {high}]; expected expert indices in [0, {num_experts - 1}]"
        )
    return _balance_loss(probs, top1_index)


def _balance_loss(probs: torch.Tensor, top1_index: torch.Tensor) -> torch.Tensor:
    """load_balancing_loss without its checks (and their host sync): for MoE, whose indices come from its top-k."""
    num_tokens, num_experts = probs.shape
    counts = torch.bincount(top1_index.long(), minlength=num_experts)[:num_experts]
    fraction = counts.float() / num_tokens  # f_i: integer counts, no gradient
    mean_prob = probs.float().mean(dim=0)  # P_i
    return num_experts * torch.dot(fraction, mean_prob)


def router_probabilities(logits: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """softmax(logits) computed in `dtype` (the logits rounded to it first), returned as float32 [T, E].

    Shows ST-MoE's point about selective precision: ten logits of 128 and one of 128.5 give the top expert 0.142 in
    float32, but bfloat16 rounds 128.5 to 128 (its spacing is 0.5 only below 128, 1.0 from 128 to 256), so every
    expert ties and the top probability drops to 1/11 = 0.091.
    """
    return torch.softmax(logits.to(dtype), dim=-1).float()


# ----------------------------------------------------------------------------------------------- capacity


def _check_experts(num_experts, top_k) -> None:
    """ValueError unless num_experts is an int >= 1 and top_k an int in [1, num_experts]."""
    if not _is_int(num_experts) or num_experts < 1:
        raise _invalid("num_experts", num_experts, "an int >= 1")
    if not _is_int(top_k) or not 1 <= top_k <= num_experts:
        raise _invalid("top_k", top_k, f"an int with 1 <= top_k <= num_experts = {num_experts}")


def expert_capacity(tokens: int, top_k: int, num_experts: int, factor: float | None) -> int | None:
    """Token-expert assignments one expert may take in a forward: floor(factor · top_k · tokens / num_experts), at
    least 1; None when factor is None (dropless).

    tokens >= 0, 1 <= top_k <= num_experts, factor > 0 or None. The product is rounded to 9 decimals before the floor,
    so that 0.29 · 100 counts as 29, not 28 (0.29 · 100 is 28.999999999999996 in floating point). This is the one
    capacity rule: MoE uses it, and so does the chapter's analysis.
    """
    if not _is_int(tokens) or tokens < 0:
        raise _invalid("tokens", tokens, "an int >= 0")
    _check_experts(num_experts, top_k)
    if factor is None:
        return None
    if not (_is_real(factor) and factor > 0):
        raise _invalid("factor", factor, "factor > 0, or None for dropless")
    return max(1, math.floor(round(factor * top_k * tokens / num_experts, 9)))


# ------------------------------------------------------------------------------------------- grouped matmul


class _GroupedMatmul(torch.autograd.Function):
    """rows [N, a] @ weight[e] for contiguous row segments, one per expert: out[s_e : s_e + n_e] = rows[s_e : s_e +
    n_e] @ weight[e], with n_e = counts[e] (Python ints, summing to N) and weight [E, a, b]; out [N, b].

    No padding (each expert multiplies exactly its rows) and no per-expert autograd nodes: the backward pass writes
    every expert's weight gradient straight into one [E, a, b] tensor (slicing weight[e] under autograd would instead
    give each expert a full-size zero gradient to sum, E times the weights' memory traffic).
    """

    @staticmethod
    def forward(ctx, rows, weight, counts):
        ctx.save_for_backward(rows, weight)
        ctx.counts = counts
        out = rows.new_empty((rows.shape[0], weight.shape[2]))
        for segment, expert, result in zip(rows.split(counts), weight.unbind(0), out.split(counts)):
            torch.mm(segment, expert, out=result)  # an empty segment is a no-op
        return out

    @staticmethod
    def backward(ctx, grad):
        rows, weight = ctx.saved_tensors
        counts = ctx.counts
        grad = grad.contiguous().split(counts)
        grad_rows = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_rows = torch.empty_like(rows)
            for g, expert, result in zip(grad, weight.unbind(0), grad_rows.split(counts)):
                torch.mm(g, expert.t(), out=result)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.empty_like(weight)
            for segment, g, result in zip(rows.split(counts), grad, grad_weight.unbind(0)):
                torch.mm(segment.t(), g, out=result)  # an empty segment writes zeros
        return grad_rows, grad_weight, None


_ACTIVATION_BACKWARD = {  # d act(h) / dh applied to a gradient, as autograd computes it for F.gelu / F.silu
    "gelu": lambda grad, h: torch.ops.aten.gelu_backward(grad, h),
    "silu": lambda grad, h: torch.ops.aten.silu_backward(grad, h),
}


CHUNK_BYTES = 4 * 2**20  # the experts run in chunks whose [rows, d_model] buffers stay below this (see below)


def _chunks(counts: list[int], row_bytes: int) -> list[tuple[int, int, int, int]]:
    """Consecutive experts grouped so that each group's rows take at most CHUNK_BYTES (an expert with more rows is a
    group of its own): (first expert, end expert, first row, end row) per group."""
    chunks, first, start, rows = [], 0, 0, 0
    for e, n in enumerate(counts):
        if rows and (rows + n) * row_bytes > CHUNK_BYTES:
            chunks.append((first, e, start, start + rows))
            first, start, rows = e, start + rows, 0
        rows += n
    chunks.append((first, len(counts), start, start + rows))
    return chunks


class _ExpertsAndCombine(torch.autograd.Function):
    """y [T, d] = sum over kept assignments a of gate[a] · FFN_{e(a)}(x[token[a]]), all experts in one autograd node.

    token [N], gate [N]: the kept assignments grouped by expert in segments of counts[e] (Python ints). w_in, w_out
    [E, d, f] / [E, f, d], w_gate [E, d, f] or None (gated experts). activation: "gelu" or "silu".
    Experts run in chunks of consecutive experts (_chunks): a chunk gathers its rows, each expert runs its FFN on its
    segment, and the chunk's gated outputs are added into y; the backward pass mirrors it. Chunks keep every
    temporary small, so a large batch never allocates [k·T, ...] buffers (on CPU, glibc maps buffers over 32 MiB
    afresh from the OS on every use, and their page faults cost up to 20% of a step), and share the gather, combine
    and gate arithmetic among the experts of a chunk (few tensor ops per expert when experts get few rows). The weight
    gradients are written straight into one [E, ...] tensor each, with no per-expert autograd nodes.
    """

    @staticmethod
    def forward(ctx, x, token, gate, w_in, w_gate, w_out, counts, activation):
        act = F.gelu if activation == "gelu" else F.silu
        y = torch.zeros_like(x)
        chunks = _chunks(counts, x.shape[1] * x.element_size())
        rows_and_outs, saved = [], []  # per chunk: (rows, outputs before the gate); per expert: activations or None
        for first, end, start, stop in chunks:
            tokens = token[start:stop]
            rows = x.index_select(0, tokens)  # [n, d], this chunk's experts' rows
            out = rows.new_empty(rows.shape)
            sizes = counts[first:end]
            for e, segment, result in zip(range(first, end), rows.split(sizes), out.split(sizes)):
                if not len(segment):
                    saved.append(None)
                    continue
                h_in = segment @ w_in[e]
                h_gate = None if w_gate is None else segment @ w_gate[e]
                gate_act = None if h_gate is None else act(h_gate)
                hidden = act(h_in) if h_gate is None else gate_act * h_in
                torch.mm(hidden, w_out[e], out=result)
                saved.append((h_in, h_gate, gate_act, hidden))
            y.index_add_(0, tokens, out * gate[start:stop].unsqueeze(1))
            rows_and_outs.append((rows, out))
        ctx.save_for_backward(x, token, gate, w_in, w_gate, w_out)
        ctx.rows_and_outs, ctx.saved, ctx.counts, ctx.chunks, ctx.activation = (
            rows_and_outs, saved, counts, chunks, activation)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, token, gate, w_in, w_gate, w_out = ctx.saved_tensors
        act_backward, counts = _ACTIVATION_BACKWARD[ctx.activation], ctx.counts
        grad_y = grad_y.contiguous()
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        grad_gate = torch.empty_like(gate) if ctx.needs_input_grad[2] else None
        # Every expert's slice of the weight gradients is written below (an expert without rows gets zeros).
        grad_w_in, grad_w_out = torch.empty_like(w_in), torch.empty_like(w_out)
        grad_w_gate = None if w_gate is None else torch.empty_like(w_gate)
        for (first, end, start, stop), (rows, out) in zip(ctx.chunks, ctx.rows_and_outs):
            tokens = token[start:stop]
            upstream = grad_y.index_select(0, tokens)  # d loss / d (gate · out), per row
            if grad_gate is not None:
                torch.sum(upstream * out, dim=1, out=grad_gate[start:stop])
            grad_out = upstream * gate[start:stop].unsqueeze(1)
            grad_rows = torch.empty_like(rows) if grad_x is not None else None
            sizes = counts[first:end]
            pieces = zip(range(first, end), rows.split(sizes), grad_out.split(sizes),
                         grad_rows.split(sizes) if grad_rows is not None else [None] * len(sizes))
            for e, segment, grad_segment, grad_rows_segment in pieces:
                saved = ctx.saved[e]
                if saved is None:
                    for grad in (grad_w_in, grad_w_gate, grad_w_out):
                        if grad is not None:
                            grad[e].zero_()
                    continue
                h_in, h_gate, gate_act, hidden = saved
                torch.mm(hidden.t(), grad_segment, out=grad_w_out[e])
                grad_hidden = grad_segment @ w_out[e].t()
                if h_gate is None:
                    grad_in, grad_gate_pre = act_backward(grad_hidden, h_in), None
                else:
                    grad_in, grad_gate_pre = grad_hidden * gate_act, act_backward(grad_hidden * h_in, h_gate)
                    torch.mm(segment.t(), grad_gate_pre, out=grad_w_gate[e])
                torch.mm(segment.t(), grad_in, out=grad_w_in[e])
                if grad_rows_segment is not None:
                    torch.mm(grad_in, w_in[e].t(), out=grad_rows_segment)
                    if grad_gate_pre is not None:
                        grad_rows_segment.addmm_(grad_gate_pre, w_gate[e].t())
            if grad_x is not None:
                grad_x.index_add_(0, tokens, grad_rows)
        return grad_x, None, grad_gate, grad_w_in, grad_w_gate, grad_w_out, None, None


def _grouped_linear(rows, weight, bias, counts, expert_of_row):
    """rows [N, a] -> [N, b] through expert e's weight [a, b] (and bias [b]) for its segment (see _GroupedMatmul)."""
    device_type = rows.device.type
    if _autocast_enabled(device_type):  # a matmul under autocast runs in its dtype; a custom Function must cast
        dtype = _autocast_dtype(device_type)
        rows, weight = rows.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device_type=device_type, enabled=False):
            out = _GroupedMatmul.apply(rows, weight, counts)
    else:
        out = _GroupedMatmul.apply(rows, weight, counts)
    return out if bias is None else out + bias.index_select(0, expert_of_row)


# ------------------------------------------------------------------------------------------------- exchange


class _AllToAll(torch.autograd.Function):
    """Differentiable all_to_all_single over rows: rank r sends send_splits[q] rows to rank q, receives recv_splits[q]
    from rank q. The backward pass is the same exchange with the splits swapped."""

    @staticmethod
    def forward(ctx, rows, send_splits, recv_splits, group):
        ctx.send_splits, ctx.recv_splits, ctx.group = send_splits, recv_splits, group
        out = rows.new_empty((sum(recv_splits), *rows.shape[1:]))
        dist.all_to_all_single(out, rows.contiguous(), recv_splits, send_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        back = grad.new_empty((sum(ctx.send_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), ctx.send_splits, ctx.recv_splits, group=ctx.group)
        return back, None, None, None


def _forward_stats(logits, lse, probs, counts, kept_counts, served, num_tokens, z_loss, balance) -> dict:
    """MoE.stats from one forward's detached logits [T, E] (float32), logsumexp [T], probs [T, E], assignments per
    expert before / after capacity [E], the token of every kept assignment (entries equal to T are ignored)."""
    assigned = counts.sum().clamp(min=1).float()
    per_token = torch.bincount(served, minlength=num_tokens + 1)[:num_tokens]
    denominator = max(num_tokens, 1)
    # Per-token entropy -sum p log p = logsumexp - sum p · logit (log p = logit - logsumexp), clamped at 0 against
    # round-off when the logits are large.
    entropy = (lse - (probs * logits).sum(dim=-1)).clamp(min=0).sum()
    return {
        "dropped_fraction": 1 - kept_counts.sum() / assigned,
        "tokens_dropped_fraction": (per_token == 0).sum().float() / denominator,
        "expert_load": counts.float() / assigned,
        "router_entropy": entropy / denominator,
        "mean_logsumexp": lse.sum() / denominator,
        "max_abs_logit": logits.abs().amax() if logits.numel() else logits.new_zeros(()),
        "z_loss": z_loss,
        "balance_loss": balance,
    }


# ---------------------------------------------------------------------------------------------------- layer


class MoE(nn.Module):
    """Top-k mixture-of-experts feed-forward layer with capacity, z-loss and balance loss (see the module docstring).

    d_model, d_ff: the experts' widths (each expert: d_model -> d_ff -> d_model). num_experts: E, over all ranks.
    top_k: experts per token, 1 <= k <= E. capacity_factor / eval_capacity_factor: in training / eval mode, each
    expert takes floor(factor · k · T / E) assignments (at least 1), > 0, or None for dropless.
    z_loss_coef, balance_loss_coef: c_z, c_b >= 0 in aux_loss. router_jitter: eps in [0, 1), multiplicative noise on
    the router's input in training. expert_type: "ffn" (GELU), "geglu" (gelu(x W_g) * (x W_in), then W_out) or
    "swiglu" (silu in place of gelu: Mixtral's experts).
    second_policy: "all" uses every top-k choice; "sampled" uses a choice j >= 2 with probability
    min(1, g_j / second_threshold) in training (Mesh-TF; threshold 0.2), every choice in eval.
    expert_dropout: dropout on the experts' hidden activations in training, in [0, 1).
    router_dtype: the dtype the router's matmul and softmax run in (float32; bfloat16 reproduces the unstable kind).
    bias: give the experts' linear maps biases (the router never has one). process_group: a torch.distributed group
    for expert parallelism (this rank holds E / W experts), or None for all experts here. generator: a
    torch.Generator for jitter and sampling (on any device; draws are moved to the input's), or None.

    Parameters: router.weight [E, d_model]; w_in [E_local, d_model, d_ff], w_gate (geglu, swiglu) [E_local, d_model,
    d_ff], w_out [E_local, d_ff, d_model]; with bias, b_in / b_gate [E_local, d_ff], b_out [E_local, d_model].
    Initialised as nn.Linear does (uniform in +-1/sqrt(fan_in)) from torch's default generator, expert by expert; every
    rank draws all E experts and keeps its own, so an expert-parallel layer built under a seed holds the same weights
    as a one-process layer built under that seed.

    After each forward: aux_loss (scalar tensor, differentiable, summed over forwards until read: see aux_loss) and
    stats (the last forward's; a dict of detached tensors, no host sync:
    dropped_fraction, tokens_dropped_fraction, expert_load [E], router_entropy, mean_logsumexp, max_abs_logit,
    z_loss, balance_loss); float_stats() reads them as Python floats. Under expert parallelism both describe this
    rank's tokens.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        num_experts: int,
        top_k: int = 2,
        capacity_factor: float | None = 1.25,
        eval_capacity_factor: float | None = 2.0,
        z_loss_coef: float = 1e-3,
        balance_loss_coef: float = 1e-2,
        router_jitter: float = 0.0,
        *,
        expert_type: str = "ffn",
        second_policy: str = "all",
        second_threshold: float = 0.2,
        expert_dropout: float = 0.0,
        router_dtype: torch.dtype = torch.float32,
        bias: bool = False,
        process_group=None,
        generator: torch.Generator | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not _is_int(d_model) or d_model < 1:
            raise _invalid("d_model", d_model, "an int >= 1")
        if not _is_int(d_ff) or d_ff < 1:
            raise _invalid("d_ff", d_ff, "an int >= 1")
        _check_experts(num_experts, top_k)
        for name, factor in (("capacity_factor", capacity_factor), ("eval_capacity_factor", eval_capacity_factor)):
            if factor is not None and not (_is_real(factor) and factor > 0):
                raise _invalid(name, factor, f"{name} > 0, or None for dropless")
        for name, coef in (("z_loss_coef", z_loss_coef), ("balance_loss_coef", balance_loss_coef)):
            if not (_is_real(coef) and coef >= 0):
                raise _invalid(name, coef, f"{name} >= 0")
        if not (_is_real(router_jitter) and 0 <= router_jitter < 1):
            raise _invalid("router_jitter", router_jitter, "0 <= router_jitter < 1")
        if expert_type not in EXPERT_TYPES:
            raise _invalid("expert_type", expert_type, f"one of {EXPERT_TYPES}")
        if second_policy not in SECOND_POLICIES:
            raise _invalid("second_policy", second_policy, f"one of {SECOND_POLICIES}")
        if not (_is_real(second_threshold) and second_threshold > 0):
            raise _invalid("second_threshold", second_threshold, "second_threshold > 0")
        if not (_is_real(expert_dropout) and 0 <= expert_dropout < 1):
            raise _invalid("expert_dropout", expert_dropout, "0 <= expert_dropout < 1")
        if not isinstance(bias, bool):
            raise _invalid("bias", bias, "True or False")
        if router_dtype not in ROUTER_DTYPES:
            raise _invalid("router_dtype", router_dtype, f"one of {ROUTER_DTYPES}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise _invalid("generator", generator, "a torch.Generator or None")
        world_size, rank = 1, 0
        if process_group is not None:
            if not (dist.is_available() and dist.is_initialized()):
                raise _invalid("process_group", process_group, "None, or a group of an initialised torch.distributed")
            world_size, rank = dist.get_world_size(process_group), dist.get_rank(process_group)
            if num_experts % world_size:
                raise _invalid(
                    "num_experts", num_experts, f"a multiple of the process group's size {world_size} (one slice each)"
                )
        self.d_model, self.d_ff, self.num_experts, self.top_k = int(d_model), int(d_ff), int(num_experts), int(top_k)
        self.capacity_factor = None if capacity_factor is None else float(capacity_factor)
        self.eval_capacity_factor = None if eval_capacity_factor is None else float(eval_capacity_factor)
        self.z_loss_coef, self.balance_loss_coef = float(z_loss_coef), float(balance_loss_coef)
        self.router_jitter, self.expert_type = float(router_jitter), expert_type
        self.second_policy, self.second_threshold = second_policy, float(second_threshold)
        self.expert_dropout, self.router_dtype, self.generator = float(expert_dropout), router_dtype, generator
        self.process_group, self.world_size, self.rank = process_group, world_size, rank
        self.num_local_experts = self.num_experts // world_size
        self.first_expert = rank * self.num_local_experts  # this rank holds [first_expert, first_expert + E_local)

        factory = {"device": device, "dtype": dtype}
        local, d, f = self.num_local_experts, self.d_model, self.d_ff
        self.router = nn.Linear(d, self.num_experts, bias=False, **factory)  # initialised by nn.Linear
        self.w_in = nn.Parameter(torch.empty(local, d, f, **factory))
        self.w_gate = nn.Parameter(torch.empty(local, d, f, **factory)) if expert_type in GATED else None
        self.w_out = nn.Parameter(torch.empty(local, f, d, **factory))
        self.b_in = nn.Parameter(torch.empty(local, f, **factory)) if bias else None
        self.b_gate = nn.Parameter(torch.empty(local, f, **factory)) if bias and expert_type in GATED else None
        self.b_out = nn.Parameter(torch.empty(local, d, **factory)) if bias else None
        self._init_experts()

        self._aux_sum: torch.Tensor | None = None  # c_b · L_b + c_z · L_z summed over the forwards since the last read
        self._aux_read = False  # set when aux_loss is read
        self._aux_spent = [False]  # set by a backward through the forwards summed so far (their graph is freed)
        self._stats: dict[str, torch.Tensor] | None = None  # see stats
        self._stats_inputs: tuple | None = None

    @torch.no_grad()
    def _init_experts(self) -> None:
        """nn.Linear's init (uniform in +-1/sqrt(fan_in)) per expert, all E drawn in order, this rank's kept."""
        d, f = self.d_model, self.d_ff
        shapes = [("w_in", (d, f), d), ("w_gate", (d, f), d), ("w_out", (f, d), f)]
        shapes += [("b_in", (f,), d), ("b_gate", (f,), d), ("b_out", (d,), f)]
        for expert in range(self.num_experts):
            for name, shape, fan_in in shapes:
                param = getattr(self, name)
                if param is None:
                    continue
                bound = 1 / math.sqrt(fan_in)
                values = torch.empty(shape, device=param.device, dtype=param.dtype).uniform_(-bound, bound)
                local = expert - self.first_expert
                if 0 <= local < self.num_local_experts:
                    param[local].copy_(values)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_ff={self.d_ff}, num_experts={self.num_experts}, top_k={self.top_k}, "
            f"capacity_factor={self.capacity_factor}, eval_capacity_factor={self.eval_capacity_factor}, "
            f"expert_type={self.expert_type!r}, experts here={self.first_expert}..."
            f"{self.first_expert + self.num_local_experts - 1}"
        )

    # ---------------------------------------------------------------------------------------------- routing

    def _rand(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Uniform [0, 1) float32 noise of `shape` on `device`, from self.generator if set."""
        if self.generator is None:
            return torch.rand(shape, device=device)
        return torch.rand(shape, generator=self.generator, device=self.generator.device).to(device)

    def router_logits(self, x2d: torch.Tensor) -> torch.Tensor:
        """Router logits [T, E] in router_dtype for tokens x2d [T, d_model], with jitter in training.

        Autocast is switched off here, and the input and weight are cast to router_dtype, so a bf16/fp16 model
        still routes in float32.
        """
        with torch.autocast(device_type=x2d.device.type, enabled=False):
            h = x2d.to(self.router_dtype)
            if self.training and self.router_jitter > 0:
                eps = self.router_jitter
                noise = self._rand(tuple(h.shape), h.device).mul_(2 * eps).add_(1 - eps)  # uniform in [1-eps, 1+eps)
                h = h * noise.to(h.dtype)
            return F.linear(h, self.router.weight.to(self.router_dtype))

    def _route(self, x2d: torch.Tensor):
        """(logits [T, E], probs [T, E] float32, indices [T, k] long, gates [T, k] float32), before capacity."""
        logits = self.router_logits(x2d)
        probs = router_probabilities(logits, self.router_dtype)
        if self.top_k == 1:
            top_probs, indices = probs.max(dim=-1, keepdim=True)  # cheaper than topk
        else:
            top_probs, indices = probs.topk(self.top_k, dim=-1)  # descending: column 0 is the top-1 choice
        gates = top_probs if self.top_k == 1 else top_probs / top_probs.sum(dim=-1, keepdim=True)
        return logits, probs, indices, gates

    def route(self, x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices [T, k] long, gates [T, k] float32) for tokens x2d [T, d_model] (any float dtype: the router
        casts it to router_dtype), before capacity and sampling.

        Column 0 is each token's top-1 expert. Deterministic in eval mode; in training, jitter (if set) applies.
        """
        _, _, indices, gates = self._route(self._check(x2d, two_d=True, experts=False))
        return indices, gates

    def capacity(self, num_tokens: int) -> int | None:
        """Assignments each expert may take in a forward over num_tokens tokens in the current mode (None: dropless):
        expert_capacity(num_tokens, top_k, num_experts, factor) with the train or eval capacity factor."""
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        return expert_capacity(num_tokens, self.top_k, self.num_experts, factor)

    # ---------------------------------------------------------------------------------------------- experts

    def expert(self, i: int, x2d: torch.Tensor) -> torch.Tensor:
        """Expert i (a global index, held by this rank) applied to the rows of x2d [N, d_model] -> [N, d_model].

        x2d: floating point, of the parameters' dtype (under torch.autocast any float dtype but float64)."""
        local = i - self.first_expert if _is_int(i) else -1
        if not 0 <= local < self.num_local_experts:
            last = self.first_expert + self.num_local_experts - 1
            raise _invalid("expert index", i, f"an int in [{self.first_expert}, {last}] (the experts on this rank)")
        x2d = self._check(x2d, two_d=True)
        return self._experts(x2d, [x2d.shape[0]], first=local)

    def _experts(self, rows: torch.Tensor, counts: list[int], first: int = 0) -> torch.Tensor:
        """Local experts first, first + 1, ... on rows [N, d_model] grouped by expert in contiguous segments of
        counts[0], counts[1], ... rows (Python ints summing to N) -> [N, d_model]; ``expert(i, x)`` is one segment.

        Each linear map is one grouped matmul (_GroupedMatmul): no padding, no per-expert autograd nodes."""
        experts = slice(first, first + len(counts))
        whole = len(counts) == self.num_local_experts  # the parameters themselves: slicing them costs a gradient copy
        expert_of_row = None
        if self.b_in is not None:
            sizes = torch.tensor(counts, device=rows.device)
            expert_of_row = torch.repeat_interleave(torch.arange(len(counts), device=rows.device), sizes,
                                                    output_size=rows.shape[0])

        def linear(h, weight, bias):
            if not whole:
                weight, bias = weight[experts], None if bias is None else bias[experts]
            return _grouped_linear(h, weight, bias, counts, expert_of_row)

        hidden = linear(rows, self.w_in, self.b_in)
        if self.expert_type in GATED:
            hidden = GATED[self.expert_type](linear(rows, self.w_gate, self.b_gate)) * hidden
        else:
            hidden = F.gelu(hidden)
        hidden = F.dropout(hidden, self.expert_dropout, self.training)
        return linear(hidden, self.w_out, self.b_out)

    def _experts_and_combine(self, x2d: torch.Tensor, token: torch.Tensor, gate: torch.Tensor, counts: list[int]):
        """y [T, d_model]: each kept assignment's expert output times its gate, added to its token, expert by expert
        in one autograd node (_ExpertsAndCombine). token, gate [N]: grouped by expert in segments of counts[e].
        Equal to the composable path (_experts, then index_add) up to float rounding; used without biases and
        expert dropout, on one process."""
        weights = (self.w_in, self.w_gate, self.w_out)
        activation = "silu" if self.expert_type == "swiglu" else "gelu"
        device_type = x2d.device.type
        if not _autocast_enabled(device_type):
            return _ExpertsAndCombine.apply(x2d, token, gate.to(x2d.dtype), *weights, counts, activation)
        dtype = _autocast_dtype(device_type)  # a custom Function is not autocast: cast as a matmul would
        x2d, weights = x2d.to(dtype), tuple(None if w is None else w.to(dtype) for w in weights)
        with torch.autocast(device_type=device_type, enabled=False):
            return _ExpertsAndCombine.apply(x2d, token, gate.to(dtype), *weights, counts, activation)

    def _exchange_and_run(self, rows: torch.Tensor, kept_counts: torch.Tensor) -> torch.Tensor:
        """Expert parallelism: send rows [N, d_model] (grouped by global expert, kept_counts [E] of each) to the
        experts' ranks, run the local experts on what arrives, and bring the outputs back in the same order."""
        world, local, group = self.world_size, self.num_local_experts, self.process_group
        recv_counts = torch.empty_like(kept_counts)
        dist.all_to_all_single(recv_counts, kept_counts, group=group)  # E counts each way: local experts per rank
        sent, received = torch.stack([kept_counts, recv_counts]).view(2, world, local).tolist()  # the host sync
        send_splits, recv_splits = [sum(row) for row in sent], [sum(row) for row in received]
        if torch.is_grad_enabled() and not rows.requires_grad:
            rows = rows.detach().requires_grad_()  # so that every rank joins the backward exchange of the rows
        arrived = _AllToAll.apply(rows, send_splits, recv_splits, group)

        # arrived comes in blocks, source rank by source rank, and within one by local expert. A stable sort by
        # local expert groups it expert by expert (sources in rank order) for the grouped matmuls, and back.
        num_rows = arrived.shape[0]
        block = torch.repeat_interleave(torch.arange(world * local, device=rows.device), recv_counts,
                                        output_size=num_rows)
        by_expert = torch.sort(block % local, stable=True)[1]
        back = torch.empty_like(by_expert).scatter_(0, by_expert, torch.arange(num_rows, device=rows.device))
        out = self._experts(arrived.index_select(0, by_expert), [sum(column) for column in zip(*received)])
        return _AllToAll.apply(out.index_select(0, back), recv_splits, send_splits, group)

    # ---------------------------------------------------------------------------------------------- forward

    def _check(self, x: torch.Tensor, two_d: bool = False, experts: bool = True) -> torch.Tensor:
        """x, checked: a float tensor [..., d_model] ([T, d_model] if two_d). With experts (it will meet the experts'
        weights), its dtype must be theirs, or under autocast for its device any but float64 (autocast casts both to
        its dtype, float64 never)."""
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != self.d_model or (two_d and x.ndim != 2):
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            want = f"[T, {self.d_model}]" if two_d else f"[..., {self.d_model}]"
            raise ValueError(f"Invalid x: {got}; expected a float tensor {want} (d_model = {self.d_model})")
        if not x.is_floating_point():
            raise ValueError(f"Invalid x: dtype {x.dtype}; expected a floating-point tensor")
        dtype = self.w_in.dtype
        autocast = _autocast_enabled(x.device.type) and torch.float64 not in (x.dtype, dtype)
        if experts and x.dtype != dtype and not autocast:
            raise ValueError(
                f"Invalid x: dtype {x.dtype}; expected {dtype}, the dtype of the layer's parameters (cast x or the "
                f"layer, or run under torch.autocast, where any dtype but float64 works)"
            )
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_model] -> y [..., d_model]; sets aux_loss and stats (see the class docstring).

        x: floating point, of the parameters' dtype; under torch.autocast any float dtype but float64 (ValueError
        otherwise, naming x: a mismatch would fail deep inside the experts' matmul).
        """
        shape = self._check(x).shape
        x2d = x.reshape(-1, self.d_model)
        num_tokens, k, num_experts, d = x2d.shape[0], self.top_k, self.num_experts, self.d_model
        logits, probs, indices, gates = self._route(x2d)

        # The k·T assignments, choice-major: a = j·T + t is token t's j-th choice. Unused (sampled-out) choices get
        # the expert number E, which sorts after every real expert and is never kept.
        expert = indices.t().reshape(-1)
        gate = gates.t().reshape(-1)
        if self.training and self.second_policy == "sampled" and k > 1:
            draw = self._rand((k - 1, num_tokens), x2d.device)
            used = draw < gates[:, 1:].t().detach() / self.second_threshold  # probability min(1, g_j / threshold)
            expert = torch.cat([expert[:num_tokens], expert[num_tokens:].masked_fill(~used.reshape(-1), num_experts)])
        sorted_expert, order = torch.sort(expert, stable=True)  # stable: choice-major, then token order, per expert
        counts = torch.bincount(expert, minlength=num_experts + 1)  # [E + 1]; the last counts unused choices
        capacity = self.capacity(num_tokens)
        kept_counts = counts[:num_experts] if capacity is None else counts[:num_experts].clamp(max=capacity)
        sizes = kept_counts.tolist()  # the segment sizes of the grouped matmuls: the forward's one host sync
        if capacity is None:
            kept = order[: sum(sizes)]  # unused choices sort last
        else:
            start = counts.cumsum(0) - counts
            position = torch.arange(expert.numel(), device=expert.device) - start[sorted_expert]  # place in its expert
            kept = order.masked_select((sorted_expert < num_experts) & (position < capacity))
        # kept: the kept assignments grouped by expert, each expert's in drop order. Their rows go to the experts as
        # contiguous segments, one per expert, and their gated outputs are added back to their tokens.
        token = kept % max(num_tokens, 1)
        kept_gate = gate.index_select(0, kept)
        if self.world_size == 1 and self.b_in is None and not (self.training and self.expert_dropout > 0):
            y = self._experts_and_combine(x2d, token, kept_gate, sizes)
        else:  # biases, expert dropout or expert parallelism: the composable path
            rows = x2d.index_select(0, token)
            out = self._experts(rows, sizes) if self.world_size == 1 else self._exchange_and_run(rows, kept_counts)
            y = out.new_zeros(num_tokens, d).index_add_(0, token, out * kept_gate.to(out.dtype).unsqueeze(1))
        served = token

        self._record(logits, probs, indices, counts[:num_experts], kept_counts, served, num_tokens)
        return y.view(*shape[:-1], d)

    def _record(self, logits, probs, indices, counts, kept_counts, served, num_tokens) -> None:
        """Add this forward's aux loss to aux_loss (differentiable) and keep what stats needs (nothing here waits on the
        device).

        counts / kept_counts [E]: assignments per expert before / after capacity. served: the token of every kept
        assignment (entries equal to num_tokens are ignored).
        """
        logits32 = logits.float()
        if num_tokens == 0:
            zero = logits32.sum()  # 0, attached to the graph
            aux, z_loss, balance, lse = zero, zero, zero, logits32.new_zeros(0)
        else:
            lse = torch.logsumexp(logits32, dim=-1)  # router_z_loss's, shared with the stats below
            z_loss = lse.pow(2).mean()
            balance = _balance_loss(probs, indices[:, 0])
            aux = self.balance_loss_coef * balance + self.z_loss_coef * z_loss
        pending = self._aux_sum
        if pending is None or self._aux_read or self._aux_spent[0] or pending.requires_grad != aux.requires_grad:
            self._aux_sum, self._aux_spent = aux, [False]  # a new sum (see aux_loss)
        else:
            self._aux_sum = pending + aux
        self._aux_read = False
        if logits.requires_grad:  # a backward through this forward (through y or aux_loss) spends the sum
            spent = self._aux_spent
            logits.register_hook(lambda grad: spent.__setitem__(0, True))
        # The statistics are computed when first read (most training steps never read them).
        self._stats = None
        self._stats_inputs = (logits32.detach(), lse.detach(), probs.detach(), counts, kept_counts, served, num_tokens,
                              z_loss.detach(), balance.detach())

    @property
    def stats(self) -> dict[str, torch.Tensor]:
        """The last forward's statistics, a dict of detached tensors ({} before the first forward; see the class
        docstring), computed on first read, with no host sync."""
        if self._stats is None and self._stats_inputs is not None:
            with torch.no_grad():
                self._stats = _forward_stats(*self._stats_inputs)
            self._stats_inputs = None
        return self._stats or {}

    @property
    def aux_loss(self) -> torch.Tensor | None:
        """c_b · L_b + c_z · L_z (a scalar tensor, differentiable), summed over every forward since it was last read;
        None before the first forward.

        Read it once per backward: ``loss = task_loss + moe.aux_loss``. Two forwards before one backward (gradient
        accumulation, or the same layer applied twice) give the sum of both; reading it again before the next
        forward returns the same value (for logging). The next forward starts a new sum when the last one was read,
        when a backward has run through the summed forwards (through their outputs or their aux loss: their graph
        is spent), or when it runs in the other grad mode (e.g. under torch.no_grad, as in evaluation). Over a model's
        layers, sum the layers' values (accel.models.lm.TransformerLM.aux_loss does), as MegaBlocks and HF's
        Mixtral do with their per-layer losses.
        """
        self._aux_read = True
        return self._aux_sum

    def float_stats(self) -> dict:
        """The last forward's stats as Python floats (expert_load as a list), with one transfer from the device."""
        if not self.stats:
            return {}
        names = list(self.stats)
        flat = torch.cat([self.stats[n].reshape(-1).float() for n in names]).tolist()
        out, at = {}, 0
        for name in names:
            size = self.stats[name].numel()
            out[name] = flat[at] if name != "expert_load" else flat[at : at + size]
            at += size
        return out
