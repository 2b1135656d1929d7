"""One rank of the 2-process echoing_loader test (tests/test_echo.py): gloo on CPU, file:// rendezvous.

Usage: python _echo_dist_worker.py RANK WORLD_SIZE INIT_FILE OUT_FILE
Builds echoing loaders with num_replicas and rank left to their torch.distributed defaults, runs two epochs of each
configuration, and saves every batch it received (x values and labels) and the counters to OUT_FILE.
"""

import sys

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

NUM_SAMPLES, BATCH_SIZE, SHUFFLE_BUFFER, SEED, EPOCHS = 23, 3, 4, 5, (0, 1)  # 23: the ranks' shards are 12 and 11
CONFIGS = [  # (point, factor, num_workers)
    ("before_augment", 2, 0),
    ("after_augment", 1.5, 2),
    ("batch", 1.5, 0),
    ("batch", 3, 2),
]


class Indexed(Dataset):
    """Sample i is (tensor([i.]), i): the label identifies the item, the tensor shows augmentation."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return torch.tensor([float(index)]), index


def add_noise(sample, generator):
    """Augmentation drawing from the generator it is given: adds a number in [0, 1) to x."""
    x, label = sample
    return x + torch.rand(1, generator=generator), label


def make_loader(point: str, factor: float, num_workers: int, **kwargs):
    from accel.echo import echoing_loader

    return echoing_loader(Indexed(NUM_SAMPLES), batch_size=BATCH_SIZE, factor=factor, point=point, augment=add_noise,
                          shuffle_buffer=SHUFFLE_BUFFER, num_workers=num_workers, seed=SEED, **kwargs)


def main() -> None:
    rank, world, init_file, out_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    record = []
    for config in CONFIGS:
        loader = make_loader(*config)  # num_replicas, rank from torch.distributed
        runs = []
        for epoch in EPOCHS:
            loader.set_epoch(epoch)
            fresh_before = loader.fresh_examples
            batches = [(x[:, 0].tolist(), y.tolist()) for x, y in loader]
            runs.append({"batches": batches, "fresh": loader.fresh_examples - fresh_before})
        record.append({"num_replicas": loader.stream.num_replicas, "rank": loader.stream.rank, "epochs": runs})
    torch.save(record, out_file)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
