"""Benchmark (run on demand): accel.moe.MoE's forward+backward against three ways to do the same layer.

    python tests/benchmarks/bench_moe.py [--tokens 1024 4096 16384] [--experts 8 16 32 64] [--top-k 1 2]
                                         [--d-model 256] [--d-ff 512] [--device cpu] [--dtype float32] [--out x.json]

For each (tokens T, experts E, top-k) it times one forward and backward (the layer's output times a fixed random
upstream gradient) of:
  * dense: a plain FFN d_model -> k · d_ff -> d_model with GELU: the same active FLOPs per token as the MoE's k
    experts in one GEMM pair, the speed ceiling (what the MoE would cost if routing and dispatch were free);
  * moe: accel.moe.MoE (sort-based dispatch by index, padded batched matmul, index_add combine), with its aux losses
    and stats as it always computes them;
  * onehot: GShard / Switch / Mesh-TF style: dispatch and combine tensors [T, E, C] built from cumsums of one-hot
    masks, tokens moved with einsum (C = capacity);
  * loop: HF style: a Python loop over experts, each taking its tokens with a boolean mask (torch.where), its own
    weight tensors, results added with index_add_ (as HF Mixtral does; capacity from a cumsum of one-hot masks).
The three sparse arms share the router and expert weights, use the same top-k routing
(float32 router, gates renormalised for k >= 2, raw top-1 probability for k = 1) and the same capacity rule
(train capacity factor 1.25, first choices before second choices, token order within), and the script checks that
their outputs agree before timing. Defaults: d_model 256, d_ff 512 (per expert; the dense FFN has k · 512), no biases.

Memory: on CUDA, the peak memory allocated during the step above what the parameters and inputs hold
(torch.cuda.max_memory_allocated). On CPU no allocator statistic exists, so it reports the bytes of the routing and
dispatch tensors each method materialises, computed from their shapes: onehot, the dispatch and combine tensors
(2 · T · E · C floats); moe, its O(T · k) index vectors, the slot maps and the padded input buffer [E, C_buf, d];
loop, the [E, k, T] expert mask. The onehot arm is skipped where its two tensors would exceed --max-onehot-gb.

Times are medians over --repeats runs after two warm-ups, the arms interleaved so that load changes hit all alike.
Prints a table with ratios against the dense ceiling measured in the same run; writes JSON with --out.
On CPU, glibc's malloc returns big freed buffers to the OS and faults them in again on the next step, which costs
the sparse arms (more and larger temporaries, E times the weight gradients) more than the dense one; --malloc keep
turns that off for all arms alike (as jemalloc or tcmalloc would). Report which one you ran.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import platform
import time

import torch
import torch.nn.functional as F

from accel.moe import MoE

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks in the process: no mmap for big blocks, no trimming of the heap.

    By default glibc hands big freed buffers back to the OS and the next step faults them in again (zeroed page by
    page); a layer that allocates more or larger temporaries per step pays more for that than one GEMM pair does.
    jemalloc or tcmalloc (which PyTorch's CPU tuning guide recommends) avoid it as well. True if glibc accepted.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 2**30)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def route(x: torch.Tensor, router_weight: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [T, k], gates [T, k] float32): float32 router, top-k, renormalised for k >= 2 (as accel.moe)."""
    probs = torch.softmax(x.float() @ router_weight.float().t(), dim=-1)
    top, indices = probs.topk(k, dim=-1)
    return indices, (top if k == 1 else top / top.sum(dim=-1, keepdim=True))


def capacity_of(tokens: int, experts: int, k: int, factor: float) -> int:
    return max(1, math.floor(round(factor * k * tokens / experts, 9)))


def onehot_masks(indices: torch.Tensor, experts: int, capacity: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each choice j: (kept [T, E] one-hot mask after capacity, position [T] in the expert), Mesh-TF style:
    positions from a cumsum over tokens, choice j counting after all kept choices < j."""
    prior = torch.zeros(experts, device=indices.device, dtype=torch.long)
    out = []
    for j in range(indices.shape[1]):
        mask = F.one_hot(indices[:, j], experts)  # [T, E]
        position = (mask.cumsum(dim=0) - 1 + prior) * mask
        mask = mask * (position < capacity)
        prior = prior + mask.sum(dim=0)
        out.append((mask, position.sum(dim=1)))
    return out


def onehot_layer(x, router_weight, w_in, w_out, k, factor):
    """GShard/Switch dispatch: dispatch and combine [T, E, C], einsum in and out, experts as bmm."""
    tokens, experts = x.shape[0], w_in.shape[0]
    capacity = capacity_of(tokens, experts, k, factor)
    indices, gates = route(x, router_weight, k)
    dispatch = x.new_zeros(tokens, experts, capacity)
    combine = x.new_zeros(tokens, experts, capacity)
    for j, (mask, position) in enumerate(onehot_masks(indices, experts, capacity)):
        placed = mask.unsqueeze(2) * F.one_hot(position.clamp(max=capacity - 1), capacity).unsqueeze(1)  # [T, E, C]
        dispatch = dispatch + placed.to(x.dtype)
        combine = combine + placed.to(x.dtype) * gates[:, j, None, None].to(x.dtype)
    expert_in = torch.einsum("tec,td->ecd", dispatch, x)
    out = torch.bmm(F.gelu(torch.bmm(expert_in, w_in)), w_out)
    return torch.einsum("tec,ecd->td", combine, out)


def loop_layer(x, router_weight, experts, k, factor):
    """HF style: for each expert, take its tokens with a boolean mask, run it, index_add_ the gated result."""
    tokens, num_experts = x.shape[0], len(experts)
    capacity = capacity_of(tokens, num_experts, k, factor)
    indices, gates = route(x, router_weight, k)
    masks = onehot_masks(indices, num_experts, capacity)
    expert_mask = torch.stack([mask for mask, _ in masks]).permute(2, 0, 1).bool()  # [E, k, T]
    y = torch.zeros_like(x)
    for e, (w_in, w_out) in enumerate(experts):
        choice, token = torch.where(expert_mask[e])
        if token.numel() == 0:
            continue
        out = F.gelu(x[token] @ w_in) @ w_out
        y.index_add_(0, token, out * gates[token, choice, None].to(out.dtype))
    return y


def dense_layer(x, w_in, w_out):
    return F.gelu(x @ w_in) @ w_out


def run_point(tokens, experts, k, args, device, dtype) -> dict:
    d, f = args.d_model, args.d_ff
    torch.manual_seed(0)
    moe = MoE(d, f, experts, top_k=k, capacity_factor=args.capacity_factor, z_loss_coef=1e-3,
              balance_loss_coef=1e-2).to(device, dtype)
    moe.train()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(tokens, d, generator=generator).to(device, dtype).requires_grad_()
    upstream = torch.randn(tokens, d, generator=generator).to(device, dtype)
    bound_in, bound_out = 1 / math.sqrt(d), 1 / math.sqrt(k * f)
    dense_in = (torch.rand(d, k * f, generator=generator) * 2 - 1).mul(bound_in).to(device, dtype).requires_grad_()
    dense_out = (torch.rand(k * f, d, generator=generator) * 2 - 1).mul(bound_out).to(device, dtype).requires_grad_()
    router = moe.router.weight
    w_in, w_out = moe.w_in, moe.w_out
    loop_experts = [(w_in[e].detach().clone().requires_grad_(), w_out[e].detach().clone().requires_grad_())
                    for e in range(experts)]
    capacity = capacity_of(tokens, experts, k, args.capacity_factor)
    onehot_bytes = 2 * tokens * experts * capacity * torch.finfo(dtype).bits // 8

    arms = {
        "dense": lambda: dense_layer(x, dense_in, dense_out),
        "moe": lambda: moe(x),
        "onehot": lambda: onehot_layer(x, router, w_in, w_out, k, args.capacity_factor),
        "loop": lambda: loop_layer(x, router, loop_experts, k, args.capacity_factor),
    }
    if onehot_bytes > args.max_onehot_gb * 2**30:
        del arms["onehot"]

    outputs = {}

    def step(name):
        y = arms[name]()
        y.backward(upstream)
        return y

    for name in arms:  # warm-up (twice), keeping the first outputs for the agreement check
        outputs[name] = step(name).detach().float()
        step(name)
    stats = moe.float_stats()
    reference = outputs["moe"]
    scale = reference.abs().max().item()
    agree = {n: (outputs[n] - reference).abs().max().item() / scale for n in ("onehot", "loop") if n in outputs}
    for name, diff in agree.items():
        assert diff < (1e-4 if dtype == torch.float32 else 5e-2), f"{name} disagrees with moe: {diff:.2e}"

    times = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name in arms:
            for p in (x, dense_in, dense_out, *moe.parameters(), *[w for pair in loop_experts for w in pair]):
                p.grad = None
            sync(device)
            start = time.perf_counter()
            step(name)
            sync(device)
            times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * sorted(t)[len(t) // 2] for name, t in times.items()}

    memory = {}
    if device.type == "cuda":
        for name in arms:
            for p in (x, dense_in, dense_out, *moe.parameters(), *[w for pair in loop_experts for w in pair]):
                p.grad = None
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            step(name)
            sync(device)
            memory[name] = torch.cuda.max_memory_allocated(device) - base
        memory_kind = "cuda peak allocated above baseline, bytes"
    else:
        element = torch.finfo(dtype).bits // 8
        buffer_rows = min(capacity, max(1, round(max(stats["expert_load"]) * k * tokens)))  # C_buf
        slots = experts * buffer_rows
        memory = {"dense": 0, "onehot": onehot_bytes,
                  # seven int64 vectors of k·T (expert, sorted, order, position, token, slot, gate) and two of E·C_buf
                  # (slot_token, slot_gate), plus the padded input buffer [E, C_buf, d]
                  "moe": 8 * (7 * k * tokens + 2 * slots) + slots * d * element,
                  "loop": experts * k * tokens}  # the [E, k, T] bool mask
        memory_kind = "analytic bytes of routing/dispatch tensors"
    row = {"tokens": tokens, "experts": experts, "top_k": k, "capacity": capacity,
           "dropped_fraction": stats["dropped_fraction"], "ms": ms,
           "x_dense": {n: ms[n] / ms["dense"] for n in ms},
           "moe_speedup_vs_onehot": ms["onehot"] / ms["moe"] if "onehot" in ms else None,
           "moe_speedup_vs_loop": ms["loop"] / ms["moe"],
           "max_rel_diff_vs_moe": agree, "memory": memory, "memory_kind": memory_kind}
    return row


def fmt(row: dict, name: str) -> str:
    if name not in row["ms"]:
        return f"{'skipped':>16}"
    return f"{row['ms'][name]:8.1f} ({row['x_dense'][name]:5.2f}x)"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--top-k", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-ff", type=int, default=512)
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max-onehot-gb", type=float, default=2.0, help="skip onehot above this many GiB")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                        help="float32 on CPU, bfloat16 on CUDA by default (the router stays float32)")
    parser.add_argument("--malloc", default="default", choices=["default", "keep"],
                        help="keep: glibc keeps freed memory (mallopt), as jemalloc/tcmalloc would (CPU runs)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.malloc == "keep" and not keep_freed_memory():
        parser.error("--malloc keep needs glibc (mallopt failed)")
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    print(f"device {device}, dtype {dtype}, d_model {args.d_model}, d_ff {args.d_ff} per expert, "
          f"capacity factor {args.capacity_factor}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"malloc {args.malloc}")
    print("ms per forward+backward (x the dense FFN with k·d_ff); drop: moe's dropped assignments; MB: see --help")
    print(f"{'T':>6} {'E':>3} {'k':>2} {'C':>5} {'drop':>6} {'dense':>9} {'moe':>16} {'onehot':>16} {'loop':>16}"
          f" {'onehot/moe':>10} {'loop/moe':>8} {'MB moe':>8} {'MB onehot':>9}")
    rows = []
    for tokens in args.tokens:
        for experts in args.experts:
            for k in args.top_k:
                row = run_point(tokens, experts, k, args, device, dtype)
                rows.append(row)
                speedup = row["moe_speedup_vs_onehot"]
                print(f"{tokens:>6} {experts:>3} {k:>2} {row['capacity']:>5} {row['dropped_fraction']:6.1%} "
                      f"{row['ms']['dense']:9.1f} {fmt(row, 'moe')} {fmt(row, 'onehot')} {fmt(row, 'loop')} "
                      f"{'' if speedup is None else f'{speedup:9.1f}x':>10} {row['moe_speedup_vs_loop']:7.1f}x "
                      f"{row['memory']['moe'] / 2**20:8.1f} {row['memory'].get('onehot', math.nan) / 2**20:9.1f}",
                      flush=True)
    report = {"device": str(device), "dtype": str(dtype), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "d_model": args.d_model,
              "d_ff": args.d_ff, "capacity_factor": args.capacity_factor, "repeats": args.repeats,
              "malloc": args.malloc, "rows": rows}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
    return report


if __name__ == "__main__":
    main()
