"""Benchmark (run on demand): accel.moe.MoE's forward+backward against the implementations a user would otherwise pick.

    python tests/benchmarks/bench_moe.py [--tokens 1024 4096 16384] [--experts 8 16 32 64] [--top-k 1 2]
                                         [--d-model 256] [--d-ff 512] [--repeats 7] [--device cpu]
                                         [--dtype float32] [--malloc keep] [--no-peers] [--in-process]
                                         [--out x.json]

Every arm is a SwiGLU mixture (Mixtral's expert: down(silu(gate(x)) · up(x))) with the same router and expert weights,
timed for one forward and backward (the output times a fixed random upstream gradient):
  * dense: one SwiGLU FFN d_model -> k · d_ff -> d_model, the same active FLOPs per token as the MoE's k experts in
    three large GEMMs: the ceiling (what the MoE would cost if routing and dispatch were free);
  * accel, accel_cf: accel.moe.MoE(expert_type="swiglu"), dropless and with capacity factor 1.25 (its aux losses and
    stats are computed as always);
  * hf: transformers' MixtralSparseMoeBlock (dropless) with copied weights, when transformers is installed (a peer,
    never a dependency); --no-peers leaves it out;
  * loop, loop_cf: the per-expert loop a user writes by hand (HF's classic style): for each expert, its tokens from
    a boolean mask (torch.where), its own weight tensors, results added with index_add_; dropless and with capacity
    factor 1.25 (first choices before second choices, token order within);
  * padded: accel's previous layout, for the record: assignments sorted by expert into a zero-padded [E, C, d]
    buffer as deep as the fullest expert, all experts as one torch.bmm.
All arms share the routing (float32 softmax, top-k, gates renormalised for k >= 2, raw top-1 probability for k = 1;
HF's block renormalises at k = 1 too, so at k = 1 its output differs by the gate and only its time is compared), and
the script checks that the outputs agree before timing.

Isolation: every grid point runs in a fresh Python process (allocator state and caches left by an earlier point
changed timings by up to 8x late in one long process); --in-process runs them all in this one instead. Within a point,
two warm-up rounds, then rounds in which every arm runs once, in an order rotated each round, so that load changes hit
all arms alike: at least --repeats rounds, more until the point has run --min-seconds. Each round gives every arm's
ratio to the dense arm of the same round, and accel's ratio to each peer (paired ratios); the table prints their
medians, the JSON also their ranges (quartiles for accel/peer) and the median milliseconds.
On CPU, --malloc keep stops glibc from returning big freed blocks to the OS (see keep_freed_memory); say which you ran.
Prints one row per point; --out writes JSON with the machine and versions.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from accel.moe import MoE, expert_capacity

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CAPACITY_FACTOR = 1.25
ARMS = ("dense", "accel", "accel_cf", "hf", "loop", "loop_cf", "padded")
PEERS = [("accel", "hf"), ("accel", "loop"), ("accel_cf", "loop_cf")]  # accel must not be slower than these


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks in the process (no mmap for big blocks, no trimming of the heap).

    By default glibc hands freed blocks above 32 MiB back to the OS and the next step faults them in again, zeroed
    page by page. An MoE's weight gradients are E / k times the dense FFN's (64 experts, d 256, d_ff 512: 32 MiB per
    matrix), so it pays that on every backward and the dense arm does not. jemalloc or tcmalloc (PyTorch's CPU tuning
    guide recommends them) avoid it too. True if glibc accepted.
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


def swiglu(x, w_gate, w_up, w_down):
    return (F.silu(x @ w_gate) * (x @ w_up)) @ w_down


def kept_mask(indices: torch.Tensor, experts: int, capacity: int | None) -> torch.Tensor:
    """[E, k, T] bool: assignment (token t, choice j) to expert e is kept. Over capacity, first choices rank before
    second choices, and tokens in order within a choice (accel.moe's drop order)."""
    tokens, k = indices.shape
    mask = F.one_hot(indices, experts).permute(2, 1, 0).bool()  # [E, k, T]
    if capacity is None:
        return mask
    position = mask.reshape(experts, k * tokens).cumsum(dim=1).view(experts, k, tokens)  # 1-based, choice-major
    return mask & (position <= capacity)


def loop_layer(x, router_weight, experts, k, capacity_factor):
    """The hand-written per-expert loop: for each expert its (token, choice) pairs from a mask, run, index_add_."""
    indices, gates = route(x, router_weight, k)
    capacity = expert_capacity(x.shape[0], k, len(experts), capacity_factor)
    mask = kept_mask(indices, len(experts), capacity)
    y = torch.zeros_like(x)
    for e, (w_gate, w_up, w_down) in enumerate(experts):
        choice, token = torch.where(mask[e])
        if token.numel():
            out = swiglu(x[token], w_gate, w_up, w_down)
            y.index_add_(0, token, out * gates[token, choice, None].to(out.dtype))
    return y


def padded_layer(x, router_weight, w_gate, w_up, w_down, k):
    """Sort the assignments by expert, place them in a zero-padded [E, C, d] buffer (C = the fullest expert's
    count), run the experts as one bmm each way, add the gated rows back (dropless)."""
    tokens, d = x.shape
    experts = w_gate.shape[0]
    indices, gates = route(x, router_weight, k)
    expert = indices.t().reshape(-1)
    sorted_expert, order = torch.sort(expert, stable=True)
    counts = torch.bincount(expert, minlength=experts)
    position = torch.arange(expert.numel(), device=x.device) - (counts.cumsum(0) - counts)[sorted_expert]
    width = int(counts.max())
    slot = sorted_expert * width + position
    token = order % tokens
    buffer = x.new_zeros(experts * width, d).index_copy(0, slot, x.index_select(0, token)).view(experts, width, d)
    out = torch.bmm(F.silu(torch.bmm(buffer, w_gate)) * torch.bmm(buffer, w_up), w_down).view(-1, d)
    gate = gates.t().reshape(-1).index_select(0, order).to(out.dtype).unsqueeze(1)
    return x.new_zeros(tokens, d).index_add(0, token, out.index_select(0, slot) * gate)


def hf_block(moe: MoE, device, dtype):
    """transformers' MixtralSparseMoeBlock holding moe's weights, or None when transformers is not installed."""
    try:
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    except ImportError:
        return None
    config = MixtralConfig(hidden_size=moe.d_model, intermediate_size=moe.d_ff, num_local_experts=moe.num_experts,
                           num_experts_per_tok=moe.top_k, hidden_act="silu", router_jitter_noise=0.0)
    block = MixtralSparseMoeBlock(config).to(device, dtype)
    with torch.no_grad():
        block.gate.weight.copy_(moe.router.weight)
        block.experts.gate_up_proj.copy_(torch.cat([moe.w_gate, moe.w_in], dim=2).transpose(1, 2))
        block.experts.down_proj.copy_(moe.w_out.transpose(1, 2))
    return block.train()


def run_point(tokens: int, experts: int, k: int, args) -> dict:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    d, f = args.d_model, args.d_ff
    torch.manual_seed(0)
    accel = MoE(d, f, experts, top_k=k, capacity_factor=None, expert_type="swiglu").to(device, dtype).train()
    accel_cf = MoE(d, f, experts, top_k=k, capacity_factor=CAPACITY_FACTOR, expert_type="swiglu").to(device, dtype)
    accel_cf.load_state_dict(accel.state_dict())
    accel_cf.train()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(tokens, d, generator=generator).to(device, dtype).requires_grad_()
    upstream = torch.randn(tokens, d, generator=generator).to(device, dtype)

    def leaf(t):
        return t.detach().clone().requires_grad_()

    bound_in, bound_out = 1 / math.sqrt(d), 1 / math.sqrt(k * f)
    dense = [leaf((torch.rand(d, k * f, generator=generator) * 2 - 1).mul(bound_in).to(device, dtype)),
             leaf((torch.rand(d, k * f, generator=generator) * 2 - 1).mul(bound_in).to(device, dtype)),
             leaf((torch.rand(k * f, d, generator=generator) * 2 - 1).mul(bound_out).to(device, dtype))]
    router = accel.router.weight
    loop_experts = [(leaf(accel.w_gate[e]), leaf(accel.w_in[e]), leaf(accel.w_out[e])) for e in range(experts)]
    padded = [leaf(accel.w_gate), leaf(accel.w_in), leaf(accel.w_out)]
    hf = None if args.no_peers else hf_block(accel, device, dtype)

    arms = {
        "dense": lambda: swiglu(x, *dense),
        "accel": lambda: accel(x),
        "accel_cf": lambda: accel_cf(x),
        "hf": lambda: hf(x.unsqueeze(0))[0],
        "loop": lambda: loop_layer(x, router, loop_experts, k, None),
        "loop_cf": lambda: loop_layer(x, router, loop_experts, k, CAPACITY_FACTOR),
        "padded": lambda: padded_layer(x, router, *padded, k),
    }
    if hf is None:
        del arms["hf"]
    leaves = [x, *dense, *accel.parameters(), *accel_cf.parameters(), *padded]
    leaves += [w for triple in loop_experts for w in triple] + ([] if hf is None else list(hf.parameters()))

    def step(name):
        for p in leaves:
            p.grad = None
        y = arms[name]()
        y.backward(upstream)
        return y

    outputs = {name: step(name).detach().float() for name in arms}  # first warm-up round, kept for the check
    scale = outputs["accel"].abs().max().item()
    pairs = [("loop", "accel"), ("padded", "accel"), ("loop_cf", "accel_cf")] + ([("hf", "accel")] if k > 1 else [])
    agree = {a: (outputs[a] - outputs[b]).abs().max().item() / scale for a, b in pairs if a in outputs}
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    for name, diff in agree.items():
        assert diff < tolerance, f"{name} disagrees with accel: {diff:.2e}"
    for name in arms:  # second warm-up round
        step(name)
    dropped = accel_cf.float_stats()["dropped_fraction"]

    names = list(arms)
    times = {name: [] for name in names}
    began, round_ = time.perf_counter(), 0
    while round_ < args.repeats or (time.perf_counter() - began < args.min_seconds and round_ < 10 * args.repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            start = time.perf_counter()
            step(name)
            sync(device)
            times[name].append(time.perf_counter() - start)
        round_ += 1

    def paired(numerator, denominator):  # per-round ratios, sorted
        return sorted(a / b for a, b in zip(times[numerator], times[denominator]))

    ratios = {name: paired(name, "dense") for name in names}
    duels = [(a, b) for a, b in PEERS if a in times and b in times]
    versus = {f"{a}/{b}": paired(a, b) for a, b in duels}
    return {
        "tokens": tokens, "experts": experts, "top_k": k, "rounds": round_,
        "capacity": expert_capacity(tokens, k, experts, CAPACITY_FACTOR), "dropped_fraction_cf": dropped,
        "ms": {name: 1e3 * sorted(t)[len(t) // 2] for name, t in times.items()},
        "x_dense": {name: r[len(r) // 2] for name, r in ratios.items()},
        "x_dense_range": {name: [r[0], r[-1]] for name, r in ratios.items()},
        "accel_vs_peer": {pair: r[len(r) // 2] for pair, r in versus.items()},
        "accel_vs_peer_quartiles": {pair: [r[len(r) // 4], r[(3 * len(r)) // 4]] for pair, r in versus.items()},
        "max_rel_diff_vs_accel": agree,
    }


def point_in_subprocess(tokens: int, experts: int, k: int, argv: list[str]) -> dict:
    command = [sys.executable, os.path.abspath(__file__), *argv, "--point", str(tokens), str(experts), str(k)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"grid point T={tokens} E={experts} k={k} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def verdict(row: dict) -> str:
    """accel against each peer: the median over rounds of accel's time / the peer's in the same round."""
    slower = [pair.split("/")[1] for pair, ratio in row["accel_vs_peer"].items() if ratio > 1]
    return "accel fastest" if not slower else "accel slower than " + ", ".join(slower)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--top-k", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-ff", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7, help="rounds at least")
    parser.add_argument("--min-seconds", type=float, default=8.0,
                        help="keep adding rounds until a point has run this long (up to 10x --repeats rounds)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                        help="float32 on CPU, bfloat16 on CUDA by default (routers stay float32)")
    parser.add_argument("--malloc", default="default", choices=["default", "keep"],
                        help="keep: glibc keeps freed memory (mallopt), as jemalloc/tcmalloc would (CPU runs)")
    parser.add_argument("--no-peers", action="store_true", help="leave out transformers' Mixtral block")
    parser.add_argument("--in-process", action="store_true", help="run every grid point in this process")
    parser.add_argument("--point", type=int, nargs=3, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.malloc == "keep" and not keep_freed_memory():
        parser.error("--malloc keep needs glibc (mallopt failed)")
    if args.point is not None:  # a child process: one grid point, one JSON line
        print(json.dumps(run_point(*args.point, args)))
        return {}

    child_argv = [a for a in argv if a != "--in-process"]
    child_argv = [a for i, a in enumerate(child_argv) if not (a == "--out" or (i and child_argv[i - 1] == "--out"))]
    try:
        import transformers

        peer = None if args.no_peers else f"transformers {transformers.__version__}"
    except ImportError:
        peer = None
    print(f"device {args.device}, dtype {args.dtype}, d_model {args.d_model}, d_ff {args.d_ff} per expert (SwiGLU), "
          f"capacity factor {CAPACITY_FACTOR} for *_cf, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"peer: {peer or 'none (transformers not installed or --no-peers)'}, "
          f"{'one process' if args.in_process else 'a fresh process per point'}, malloc {args.malloc}")
    print("arms: median over rounds of (arm's time / dense FFN's time in the same round); dense in ms; "
          "accel/peer: median over rounds of accel's time / the peer's (below 1: accel faster)")
    columns = [a for a in ARMS if a != "hf" or peer]
    duels = [f"{a}/{b}" for a, b in PEERS if b in columns]
    print(f"{'T':>6} {'E':>3} {'k':>2} {'drop cf':>7} {'dense ms':>9} " + " ".join(f"{a:>8}" for a in columns[1:])
          + "  " + " ".join(f"{d:>16}" for d in duels))
    rows = []
    for tokens in args.tokens:
        for experts in args.experts:
            for k in args.top_k:
                if args.in_process:
                    row = run_point(tokens, experts, k, args)
                else:
                    row = point_in_subprocess(tokens, experts, k, child_argv)
                rows.append(row)
                cells = " ".join(f"{row['x_dense'][a]:7.2f}x" for a in columns[1:])
                versus = " ".join(f"{row['accel_vs_peer'][d]:16.2f}" for d in duels)
                print(f"{tokens:>6} {experts:>3} {k:>2} {row['dropped_fraction_cf']:7.1%} {row['ms']['dense']:9.1f} "
                      f"{cells}  {versus}  {verdict(row)}", flush=True)
    report = {"device": args.device, "dtype": args.dtype, "machine": platform.processor() or platform.machine(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "peer": peer,
              "isolation": "one process" if args.in_process else "fresh process per point", "malloc": args.malloc,
              "d_model": args.d_model, "d_ff": args.d_ff, "capacity_factor": CAPACITY_FACTOR,
              "repeats": args.repeats, "min_seconds": args.min_seconds,
              "command": "python tests/benchmarks/bench_moe.py " + " ".join(argv),
              "rows": rows}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
    return report


if __name__ == "__main__":
    main()
