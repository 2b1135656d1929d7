"""One rank of the 2-process expert-parallel MoE test (tests/test_moe.py): gloo on CPU, file:// rendezvous.

Usage: python _moe_dist_worker.py RANK WORLD_SIZE INIT_FILE OUT_FILE
Builds the layer under a fixed seed with the experts split over the ranks, runs one training step on this rank's own
tokens (a different number of tokens per rank, capacity small enough to drop) and one dropless eval forward, and
saves the outputs, the gradients and its slice of the weights to OUT_FILE for the test to compare with one process.
"""

import sys

import torch
import torch.distributed as dist

D_MODEL, D_FF, NUM_EXPERTS, TOP_K, SEED = 8, 12, 4, 2, 0
TOKENS = (23, 16)  # per rank: unequal, so the exchanges' split sizes differ
CONFIG = dict(top_k=TOP_K, capacity_factor=0.75, eval_capacity_factor=None, bias=True)


def tokens_of(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [T_r, D_MODEL], upstream gradient [T_r, D_MODEL]) of a rank: the same here and in the reference."""
    generator = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(TOKENS[rank], D_MODEL, generator=generator)
    return x, torch.randn(TOKENS[rank], D_MODEL, generator=generator)


def main() -> None:
    rank, world, init_file, out_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from accel.moe import MoE

    torch.manual_seed(SEED)
    moe = MoE(D_MODEL, D_FF, NUM_EXPERTS, process_group=dist.group.WORLD, **CONFIG)
    x, upstream = tokens_of(rank)
    x.requires_grad_()
    moe.train()
    y = moe(x)
    ((y * upstream).sum() + moe.aux_loss).backward()
    record = {
        "first_expert": moe.first_expert,
        "num_local_experts": moe.num_local_experts,
        "y": y.detach(),
        "aux_loss": moe.aux_loss.detach(),
        "stats": moe.float_stats(),
        "x_grad": x.grad,
        "params": {n: p.detach().clone() for n, p in moe.named_parameters()},
        "grads": {n: p.grad.clone() for n, p in moe.named_parameters()},
    }
    moe.eval()
    with torch.no_grad():
        record["y_eval"] = moe(x)
    # No gradient needed on the input: every rank still joins both backward exchanges.
    moe.train()
    moe.zero_grad()
    (moe(x.detach()) * upstream).sum().backward()
    record["w_out_grad_detached_input"] = moe.w_out.grad.clone()
    # A rank with no tokens still takes part in every exchange; rank 0's result must not change.
    moe.zero_grad()
    mine = x.detach() if rank == 0 else x.detach()[:0]
    y = moe(mine)
    ((y * upstream[: len(mine)]).sum() + moe.aux_loss).backward()
    record["y_one_rank_empty"] = y.detach()
    record["w_in_grad_one_rank_empty"] = moe.w_in.grad.clone()
    torch.save(record, out_file)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
