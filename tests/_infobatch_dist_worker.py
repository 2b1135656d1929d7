"""One rank of the 2-process InfoBatch test (tests/test_infobatch.py): gloo on CPU, file:// rendezvous.

Usage: python _infobatch_dist_worker.py RANK WORLD_SIZE INIT_FILE OUT_FILE
Trains nothing: each epoch it feeds the sampler a known loss per sample, in batches whose sizes differ between ranks,
and saves what it saw (its lists, the returned losses, the scores) to OUT_FILE for the test to compare.
"""

import sys

import torch
import torch.distributed as dist

NUM_SAMPLES, NUM_EPOCHS, PRUNE_RATIO, DELTA, SEED = 101, 5, 0.5, 0.875, 7


def loss_of(index: torch.Tensor, epoch: int) -> torch.Tensor:
    """A fixed, skewed per-sample 'loss' for (index [B], epoch): the same on every rank and in the reference."""
    return ((index * 37 + epoch * 11) % 23).double().pow(2).div(50).add(0.01).float()


def batch_sizes(length: int, rank: int) -> list[int]:
    """Three batches whose sizes depend on the rank (the last batch of an epoch can differ between ranks)."""
    first, second = (length // 2, length // 4) if rank == 0 else (length // 5, length // 3)
    return [first, second, length - first - second]


def main() -> None:
    rank, world, init_file, out_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from accel.infobatch import InfoBatch

    sampler = InfoBatch(NUM_SAMPLES, NUM_EPOCHS, PRUNE_RATIO, DELTA, seed=SEED)  # num_replicas, rank from dist
    record = {"num_replicas": sampler.num_replicas, "rank": sampler.rank, "epochs": []}
    for epoch in range(NUM_EPOCHS):
        sampler.set_epoch(epoch)
        local = torch.tensor(list(sampler))
        batches = torch.split(local, batch_sizes(len(local), rank))
        returned = [sampler.update(b, loss_of(b, epoch)) for b in batches]
        record["epochs"].append(
            {
                "len": len(sampler),
                "local": local,
                "batches": list(batches),
                "returned": torch.stack(returned),
                "scores": sampler.scores.clone(),
            }
        )
    torch.save(record, out_file)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
