"""Tests for accel.echo: the echo stage, the echoing loader at its three insertion points, device-side echoing."""

import io
import itertools
import math
import os
import pickle
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from _echo_dist_worker import Indexed, add_noise  # the dataset and augment the 2-rank worker uses too
from _gloo import run_two_ranks  # tests/_gloo.py: the two-rank launcher

from accel.echo import POINTS, echo, echo_batches, echoing_loader

HERE = Path(__file__).resolve().parent


def labels_and_values(loader):
    """All (label, x) pairs an epoch yields, in order."""
    return [(int(label), float(value)) for x, y in loader for value, label in zip(x[:, 0], y)]


def batches_as_lists(loader):
    return [(x.tolist(), y.tolist()) for x, y in loader]


# ---------------------------------------------------------------------------------------------------- echo()


def test_integer_factor_repeats_exactly_and_adjacent():
    assert list(echo([0, 1, 2], 3)) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert list(echo("ab", 1)) == ["a", "b"]
    item = object()
    assert all(copy is item for copy in echo([item], 2))  # the same object, no copies


def test_fractional_factor_averages_to_factor():
    counts = Counter(echo(range(10_000), 2.3, seed=0))
    assert set(counts.values()) <= {2, 3}
    assert len(counts) == 10_000
    assert sum(counts.values()) / 10_000 == pytest.approx(2.3, rel=0.02)


def test_seed_determinism():
    assert list(echo(range(500), 1.5, shuffle_buffer=16, seed=3)) == list(
        echo(range(500), 1.5, shuffle_buffer=16, seed=3)
    )
    assert list(echo(range(500), 1.5, seed=3)) != list(echo(range(500), 1.5, seed=4))
    assert list(echo(range(500), 2, shuffle_buffer=16, seed=3)) != list(echo(range(500), 2, shuffle_buffer=16, seed=4))


def test_lazy_on_infinite_and_counting_generators():
    assert len(list(itertools.islice(echo(itertools.count(), 2.5, shuffle_buffer=8, seed=0), 100))) == 100

    def counting(consumed):
        for i in itertools.count():
            consumed.append(i)
            yield i

    for buffer in (0, 1, 8, 64):
        for factor in (1, 2, 1.5):
            consumed = []
            next(echo(counting(consumed), factor, shuffle_buffer=buffer, seed=0))
            assert 1 <= len(consumed) <= buffer + 1
    consumed = []
    next(echo(counting(consumed), 1, shuffle_buffer=8))
    assert len(consumed) == 9  # fill 8, read the 9th, emit


def mean_copy_distance(sequence):
    positions = {}
    for position, item in enumerate(sequence):
        positions.setdefault(item, []).append(position)
    return np.mean([p[1] - p[0] for p in positions.values()])


def test_buffer_spreads_copies_and_keeps_multiset():
    items = list(range(2000))
    distances = []
    for buffer in (0, 16, 256):
        out = list(echo(items, 2, shuffle_buffer=buffer, seed=0))
        assert sorted(out) == sorted(items * 2)
        distances.append(mean_copy_distance(out))
    assert distances[0] == 1
    assert distances[0] < distances[1] < distances[2]


def global_states():
    return random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone()


def test_global_rng_untouched():
    before = global_states()
    list(echo(range(100), 1.7, shuffle_buffer=10))
    list(echo(range(100), 1.7, shuffle_buffer=10, seed=1))
    for point in ("before_augment", "after_augment", "batch"):
        list(echoing_loader(Indexed(10), batch_size=3, factor=1.5, point=point, augment=add_noise, shuffle_buffer=4))
    list(echo_batches([torch.zeros(2)] * 5, 2.5, augment=lambda b, g: b + torch.rand(b.shape, generator=g)))
    after = global_states()
    assert before[0] == after[0]
    assert np.array_equal(before[1], after[1])
    assert torch.equal(before[2], after[2])


@pytest.mark.parametrize("factor", [0.5, 0, -1, True, math.nan, math.inf, "2", None])
def test_echo_rejects_bad_factor(factor):
    with pytest.raises(ValueError, match=r"Invalid factor: .*expected a number >= 1"):
        echo(iter([]), factor)  # raised at call time, before any next()


@pytest.mark.parametrize("buffer", [-1, 1.5, True, None])
def test_echo_rejects_bad_shuffle_buffer(buffer):
    with pytest.raises(ValueError, match="Invalid shuffle_buffer"):
        echo([1], 2, shuffle_buffer=buffer)


@pytest.mark.parametrize("seed", [-1, 1.5, "x"])
def test_echo_rejects_bad_seed(seed):
    with pytest.raises(ValueError, match="Invalid seed"):
        echo([1], 2, seed=seed)


def test_error_message_names_value_and_range():
    with pytest.raises(ValueError) as error:
        echo([1], 0.5)
    assert str(error.value) == "Invalid factor: 0.5; expected a number >= 1"


# ----------------------------------------------------------------------------------------------- echoing_loader


@pytest.mark.parametrize("point", ["before_augment", "after_augment", "batch"])
@pytest.mark.parametrize("factor", [2, 1.5])
def test_loader_multiset_and_counters(point, factor):
    loader = echoing_loader(Indexed(40), batch_size=4, factor=factor, point=point, augment=add_noise, seed=1)
    pairs = labels_and_values(loader)
    counts = Counter(label for label, _ in pairs)
    assert set(counts) == set(range(40))
    assert set(counts.values()) <= {math.floor(factor), math.floor(factor) + 1}
    if factor == 2:
        assert set(counts.values()) == {2}
    assert all(math.floor(value) == label for label, value in pairs)  # x is i + noise in [0, 1)
    assert loader.fresh_examples == 40
    assert loader.examples == len(pairs)
    assert loader.echoed_examples == len(pairs) - 40
    list(loader)  # counters accumulate across iterations
    assert loader.fresh_examples == 80 and loader.examples == 2 * len(pairs)


def copies_by_label(loader):
    copies = {}
    for label, value in labels_and_values(loader):
        copies.setdefault(label, []).append(value)
    return copies


def test_before_augment_copies_differ_after_augment_copies_identical():
    before = copies_by_label(
        echoing_loader(Indexed(20), batch_size=5, factor=3, point="before_augment", augment=add_noise)
    )
    assert all(len(set(values)) == 3 for values in before.values())
    after = copies_by_label(
        echoing_loader(Indexed(20), batch_size=5, factor=3, point="after_augment", augment=add_noise)
    )
    assert all(len(set(values)) == 1 and len(values) == 3 for values in after.values())


def test_one_argument_augment_is_called_without_generator():
    def shift(sample):
        x, label = sample
        return x + 0.5, label

    pairs = labels_and_values(echoing_loader(Indexed(6), batch_size=2, factor=2, point="before_augment", augment=shift))
    assert sorted(pairs) == sorted((i, i + 0.5) for i in range(6) for _ in range(2))


def test_batch_point_repeats_whole_batches():
    loader = echoing_loader(Indexed(10), batch_size=4, factor=2, point="batch", augment=add_noise, seed=2)
    batches = batches_as_lists(loader)
    assert len(batches) == 6 == len(loader)  # batches of 4, 4, 2, each twice
    assert batches[0::2] == batches[1::2]
    assert len({str(batch) for batch in batches}) == 3
    assert [len(y) for _, y in batches] == [4, 4, 4, 4, 2, 2]
    assert loader.fresh_examples == 10 and loader.examples == 20

    shuffled = echoing_loader(Indexed(40), batch_size=2, factor=2, point="batch", shuffle_buffer=8, seed=2)
    batches = batches_as_lists(shuffled)
    assert sorted(map(str, batches)) == sorted(
        map(str, batches_as_lists(echoing_loader(Indexed(40), batch_size=2, factor=2, point="batch", seed=2)))
    )
    assert batches[0::2] != batches[1::2]  # the buffer separates the copies


def test_len_exact_for_integer_factor_and_missing_for_fractional():
    for point in ("before_augment", "after_augment", "batch"):
        for drop_last in (False, True):
            loader = echoing_loader(Indexed(11), batch_size=4, factor=3, point=point, drop_last=drop_last)
            assert len(loader) == len(list(loader))
    fractional = echoing_loader(Indexed(11), batch_size=4, factor=1.5, point="after_augment")
    with pytest.raises(TypeError):
        len(fractional)
    assert len(list(fractional)) >= 3  # list() copes with the missing len


def test_determinism_and_set_epoch():
    def make():
        return echoing_loader(
            Indexed(30), batch_size=4, factor=1.5, point="before_augment", augment=add_noise, shuffle_buffer=5, seed=7
        )

    first, second = make(), make()
    epoch0 = batches_as_lists(first)
    assert epoch0 == batches_as_lists(second) == batches_as_lists(first)  # same seed + epoch, repeated iteration
    first.set_epoch(1)
    assert first.epoch == 1
    epoch1 = batches_as_lists(first)
    assert epoch1 != epoch0
    first.set_epoch(0)
    assert batches_as_lists(first) == epoch0
    other_seed = echoing_loader(
        Indexed(30), batch_size=4, factor=1.5, point="before_augment", augment=add_noise, seed=8
    )
    assert batches_as_lists(other_seed) != epoch0
    with pytest.raises(ValueError, match="Invalid epoch"):
        first.set_epoch(-1)


@pytest.mark.parametrize("point", ["before_augment", "batch"])
def test_two_workers(point):
    loader = echoing_loader(
        Indexed(12), batch_size=3, factor=2, point=point, augment=add_noise, shuffle_buffer=2, num_workers=2, seed=0
    )
    epoch0 = batches_as_lists(loader)
    counts = Counter(label for _, labels in epoch0 for label in labels)
    assert counts == Counter({i: 2 for i in range(12)})
    assert loader.fresh_examples == 12 and loader.examples == 24
    assert len(epoch0) == len(loader)
    assert batches_as_lists(loader) == epoch0  # same seed, epoch and num_workers


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2.0), "batch_size"),
        (dict(factor=0.9), "factor"),
        (dict(factor=False), "factor"),
        (dict(point="sideways"), "point"),
        (dict(shuffle_buffer=-2), "shuffle_buffer"),
        (dict(num_workers=-1), "num_workers"),
        (dict(num_workers=1.0), "num_workers"),
        (dict(seed=None), "seed"),
        (dict(seed=-3), "seed"),
        (dict(augment=3), "augment"),
        (dict(collate_fn="stack"), "collate_fn"),
        (dict(prefetch_factor=0), "prefetch_factor"),
        (dict(worker_init_fn="seed"), "worker_init_fn"),
        (dict(num_replicas=0), "num_replicas"),
        (dict(num_replicas=2.0), "num_replicas"),
        (dict(rank=-1), "rank"),
        (dict(rank=1), "rank"),  # num_replicas defaults to 1 without torch.distributed
        (dict(num_replicas=2, rank=2), "rank"),
        (dict(num_replicas=2, rank=True), "rank"),
    ],
)
def test_loader_validation(kwargs, name):
    arguments = dict(batch_size=2, factor=2, point="after_augment") | kwargs
    with pytest.raises(ValueError, match=f"Invalid {name}: "):
        echoing_loader(Indexed(4), **arguments)


def test_rank_error_names_the_range():
    with pytest.raises(ValueError) as error:
        echoing_loader(Indexed(4), batch_size=2, factor=2, point="batch", num_replicas=3, rank=3)
    assert str(error.value) == "Invalid rank: 3; expected an int with 0 <= rank < num_replicas = 3"


@pytest.mark.parametrize("name", ["drop_last", "pin_memory", "persistent_workers"])
@pytest.mark.parametrize("value", ["no", "yes", 1, None])
def test_loader_flags_must_be_bools(name, value):
    arguments = dict(batch_size=2, factor=2, point="after_augment", **{name: value})
    with pytest.raises(ValueError, match=rf"Invalid {name}: {value!r}; expected True or False"):
        echoing_loader(Indexed(4), **arguments)


def test_loader_accepts_numpy_bools():
    loader = echoing_loader(Indexed(5), batch_size=2, factor=1, point="batch", drop_last=np.bool_(True))
    assert len(loader) == len(list(loader)) == 2 and loader.stream.drop_last is True


def test_loader_rejects_iterable_dataset():
    with pytest.raises(TypeError, match="map-style"):
        echoing_loader(iter(range(4)), batch_size=2, factor=2, point="batch")


# -------------------------------------------------------------------------------------------------- echo_batches


def test_echo_batches_yields_the_same_tensors():
    batches = [(torch.randn(4, 3), torch.arange(4)) for _ in range(5)]
    out = list(echo_batches(batches, 3))
    assert len(out) == 15
    assert all(out[3 * i + copy] is batches[i] for i in range(5) for copy in range(3))
    assert len(list(echo_batches(iter(batches), 1.5, seed=0))) in range(5, 11)


def test_echo_batches_reaugments_copies_after_the_first():
    def jitter(batch, generator):
        return batch + torch.rand(batch.shape, generator=generator, device=batch.device)

    batches = [torch.zeros(4, 3) for _ in range(3)]
    out = list(echo_batches(batches, 3, seed=0, augment=jitter))
    for i in range(3):
        first, second, third = out[3 * i : 3 * i + 3]
        assert first is batches[i]
        assert not torch.equal(second, first) and not torch.equal(third, first) and not torch.equal(second, third)
    again = list(echo_batches(batches, 3, seed=0, augment=jitter))
    assert all(torch.equal(a, b) for a, b in zip(out, again))


def test_echo_batches_validation():
    with pytest.raises(ValueError, match="Invalid factor"):
        echo_batches([], 0)
    with pytest.raises(ValueError, match="Invalid augment"):
        echo_batches([], 2, augment="flip")
    with pytest.raises(ValueError, match="Invalid seed"):
        echo_batches([], 2, seed=-1)


def test_one_worker_matches_in_process():
    def make(workers):
        return echoing_loader(
            Indexed(9), batch_size=2, factor=1.5, point="before_augment", augment=add_noise, num_workers=workers
        )

    assert batches_as_lists(make(1)) == batches_as_lists(make(0))


def test_small_batches_travel_by_value_and_come_back_as_the_same_tensors():
    from accel.echo import BY_VALUE_BYTES, _by_value, _ByValue, _from_value

    small = (torch.arange(6.0).reshape(2, 3), torch.tensor([1, 2]), torch.tensor([0.5], dtype=torch.bfloat16))
    packed = _by_value(small)
    assert isinstance(packed[0], _ByValue) and isinstance(packed[1], _ByValue)
    assert isinstance(packed[2], torch.Tensor)  # numpy has no bfloat16: left as a tensor
    back = _from_value(pickle.loads(pickle.dumps(packed)))
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(back, small))
    large = {"x": torch.zeros(BY_VALUE_BYTES // 4 + 1)}  # one element over the limit: shared memory as before
    assert isinstance(_by_value(large)["x"], torch.Tensor)


@pytest.mark.parametrize("point", ["before_augment", "batch"])
@pytest.mark.parametrize("pin_memory", [False, True])
def test_workers_hand_back_tensors_equal_to_the_in_process_ones(point, pin_memory):
    def make(workers):
        return echoing_loader(Indexed(9), batch_size=2, factor=2, point=point, num_workers=workers,
                              pin_memory=pin_memory and workers > 0)

    for batch in make(1):
        assert all(isinstance(part, torch.Tensor) for part in batch)
    assert batches_as_lists(make(1)) == batches_as_lists(make(0))


# ------------------------------------------------------------------------------------- ranks (DistributedDataParallel)


def fresh_order(loader):
    """The labels of an epoch in the order of their first copy."""
    return list(dict.fromkeys(label for _, labels in batches_as_lists(loader) for label in labels))


@pytest.mark.parametrize("point", POINTS)
def test_ranks_take_every_num_replicas_th_example_of_one_permutation(point):
    def make(**kwargs):
        return echoing_loader(Indexed(10), batch_size=2, factor=1, point=point, seed=4, **kwargs)

    whole = make()
    whole.set_epoch(2)
    order = fresh_order(whole)  # factor 1, no buffer, one worker: the epoch's permutation itself
    assert sorted(order) == list(range(10))
    ranks = [make(num_replicas=3, rank=rank) for rank in range(3)]
    for loader in ranks:
        loader.set_epoch(2)
    assert [fresh_order(loader) for loader in ranks] == [order[0::3], order[1::3], order[2::3]]  # 4, 3, 3 examples
    assert [loader.fresh_examples for loader in ranks] == [4, 3, 3]
    assert [len(loader) for loader in ranks] == [2, 2, 2]
    single = make(num_replicas=1, rank=0)
    single.set_epoch(2)
    assert fresh_order(single) == order


def test_ranks_draw_their_own_augmentations_and_echo_counts():
    def labels_and_noise(rank):
        loader = echoing_loader(Indexed(40), batch_size=4, factor=1.5, point="before_augment", augment=add_noise,
                                seed=0, num_replicas=2, rank=rank)
        return labels_and_values(loader)

    noise = [[value - label for label, value in labels_and_noise(rank)] for rank in range(2)]
    length = min(map(len, noise))
    assert noise[0][:length] != noise[1][:length]


def test_two_ranks_with_gloo_read_disjoint_fresh_examples_covering_the_epoch(tmp_path):
    worker, records = run_two_ranks(HERE / "_echo_dist_worker.py", tmp_path)
    everything = set(range(worker.NUM_SAMPLES))
    for index, config in enumerate(worker.CONFIGS):
        ranks = [record[index] for record in records]
        assert [(rank["num_replicas"], rank["rank"]) for rank in ranks] == [(2, 0), (2, 1)]  # from torch.distributed
        for position, epoch in enumerate(worker.EPOCHS):
            runs = [rank["epochs"][position] for rank in ranks]
            seen = [{label for _, labels in run["batches"] for label in labels} for run in runs]
            assert not seen[0] & seen[1], config  # disjoint fresh examples...
            assert seen[0] | seen[1] == everything, config  # ...whose union is the epoch
            assert [len(labels) for labels in seen] == [run["fresh"] for run in runs] == [12, 11]  # 23 = 12 + 11
            for rank, run in enumerate(runs):  # the same batches as explicit arguments, without torch.distributed
                reference = worker.make_loader(*config, num_replicas=2, rank=rank)
                reference.set_epoch(epoch)
                assert [(x[:, 0].tolist(), y.tolist()) for x, y in reference] == run["batches"], (config, rank)
        for rank in ranks:
            assert rank["epochs"][0]["batches"] != rank["epochs"][1]["batches"]


# ------------------------------------------------------------------------------------------------------ workers


WORKER_TAG = -1  # set by tag_worker in each DataLoader worker


def tag_worker(worker_id):
    global WORKER_TAG
    WORKER_TAG = 100 + worker_id


class Stamped(Indexed):
    """Sample i is (tensor([i.]), i, the reading process's pid, its WORKER_TAG)."""

    def __getitem__(self, index):
        return torch.tensor([float(index)]), index, os.getpid(), WORKER_TAG


def test_arguments_reach_the_dataloader():
    loader = echoing_loader(Indexed(8), batch_size=2, factor=2, point="batch", num_workers=2, prefetch_factor=3,
                            persistent_workers=True, worker_init_fn=tag_worker)
    assert loader.loader.prefetch_factor == 3
    assert loader.loader.persistent_workers is True
    assert loader.loader.worker_init_fn is tag_worker
    in_process = echoing_loader(Indexed(8), batch_size=2, factor=2, point="batch", persistent_workers=True)
    assert in_process.loader.persistent_workers is False  # ignored without workers, like prefetch_factor
    assert len(list(in_process)) == 8


@pytest.mark.parametrize("point", ["after_augment", "batch"])
def test_persistent_workers_live_across_epochs_and_follow_set_epoch(point):
    def make(persistent):
        return echoing_loader(Stamped(16), batch_size=2, factor=1.5, point=point, shuffle_buffer=3, num_workers=2,
                              seed=1, persistent_workers=persistent, worker_init_fn=tag_worker)

    def run(loader, epoch):
        loader.set_epoch(epoch)
        batches = [(x.tolist(), y.tolist(), pids.tolist(), tags.tolist()) for x, y, pids, tags in loader]
        pids = {pid for batch in batches for pid in batch[2]}
        assert {tag for batch in batches for tag in batch[3]} == {100, 101}  # worker_init_fn ran in each worker
        return [batch[:2] for batch in batches], pids

    persistent, plain = make(True), make(False)
    (epoch0, pids0), (epoch1, pids1), (again0, pids2) = (run(persistent, epoch) for epoch in (0, 1, 0))
    assert pids0 == pids1 == pids2 and len(pids0) == 2 and os.getpid() not in pids0  # the same two workers
    assert epoch1 != epoch0 and again0 == epoch0  # set_epoch reached them
    (plain0, plain_pids0), (plain1, plain_pids1) = run(plain, 0), run(plain, 1)
    assert plain0 == epoch0 and plain1 == epoch1  # the same batches as workers started per pass
    assert not plain_pids0 & plain_pids1  # which are new processes every pass


# ------------------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("point", POINTS)
def test_resume_mid_epoch_yields_exactly_the_rest_of_the_epoch(point, num_workers):
    for factor in (2, 1.5):

        def make(factor=factor):  # with workers, a fractional factor also tries persistent ones
            return echoing_loader(Indexed(23), batch_size=3, factor=factor, point=point, augment=add_noise,
                                  shuffle_buffer=4, num_workers=num_workers, seed=3,
                                  persistent_workers=num_workers > 0 and factor == 1.5)

        uninterrupted = make()
        uninterrupted.set_epoch(0)
        list(uninterrupted)  # a first epoch, so that the counters carry something over
        uninterrupted.set_epoch(1)
        expected = batches_as_lists(uninterrupted)
        stop = len(expected) // 2 + 1

        interrupted = make()
        list(interrupted)
        interrupted.set_epoch(1)
        batches = iter(interrupted)
        head = [(x.tolist(), y.tolist()) for x, y in itertools.islice(batches, stop)]
        state = interrupted.state_dict()
        del batches  # stops its workers
        assert state["epoch"] == 1 and state["batches"] == stop
        saved = io.BytesIO()
        torch.save(state, saved)
        saved.seek(0)

        resumed = make()
        resumed.load_state_dict(torch.load(saved))  # plain numbers and strings: weights_only loading is enough
        assert resumed.state_dict() == state
        resumed.set_epoch(1)  # a training loop sets the epoch again: the resume stays
        rest = batches_as_lists(resumed)
        assert head + rest == expected, factor
        assert (resumed.fresh_examples, resumed.examples) == (uninterrupted.fresh_examples, uninterrupted.examples)
        assert resumed.state_dict()["batches"] == len(expected)
        assert batches_as_lists(resumed) == expected  # the next pass is a whole epoch again


def test_resume_is_dropped_by_another_epoch_and_checks_the_settings():
    def make(**kwargs):
        arguments = dict(batch_size=2, factor=2, point="after_augment", seed=0) | kwargs
        return echoing_loader(Indexed(10), **arguments)

    loader = make()
    loader.set_epoch(3)
    next(iter(loader))
    state = loader.state_dict()
    assert state["batches"] == 1
    resumed = make()
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # not the saved epoch: it starts at its start
    assert resumed.state_dict()["batches"] == 0
    fresh = make()
    fresh.set_epoch(4)
    assert batches_as_lists(resumed) == batches_as_lists(fresh)
    with pytest.raises(ValueError, match=r"Cannot resume: the state was saved with num_workers=0, this loader has "
                                         r"num_workers=2"):
        make(num_workers=2).load_state_dict(state)
    with pytest.raises(ValueError, match="num_replicas=1, this loader has num_replicas=2"):
        make(num_replicas=2).load_state_dict(state)
    other_rank = make(num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="rank=0, this loader has rank=1"):
        make(num_replicas=2, rank=1).load_state_dict(other_rank.state_dict())
