"""Tests for accel.infobatch: each rule of the paper's algorithm, the official code's defects, resume, DDP."""

from __future__ import annotations

import io
import itertools
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from _gloo import run_two_ranks  # tests/_gloo.py: the two-rank launcher
from torch.utils.data import BatchSampler, DataLoader, TensorDataset

from accel.infobatch import InfoBatch, WithIndex, _epoch_seed

HERE = Path(__file__).resolve().parent


def _trained(losses, num_epochs=10, prune_ratio=0.5, delta=0.875, seed=0, **kwargs) -> InfoBatch:
    """A sampler whose scores are `losses` after a full-data epoch 0 (this rank's part of them, with replicas)."""
    losses = torch.as_tensor(losses, dtype=torch.float32)
    sampler = InfoBatch(len(losses), num_epochs, prune_ratio, delta, seed=seed, **kwargs)
    sampler.update(list(sampler), losses[list(sampler)])
    return sampler


def _skewed(n=200, seed=0) -> torch.Tensor:
    return torch.empty(n).exponential_(generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ the rules


def test_epoch_zero_and_before_set_epoch_is_the_full_data():
    sampler = InfoBatch(100, 10)
    assert len(sampler) == 100 and sorted(sampler) == list(range(100))  # as if set_epoch(0) had been called
    before = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == before and all(isinstance(i, int) for i in sampler)
    assert torch.equal(sampler.weights(torch.arange(100)), torch.ones(100))
    assert torch.equal(sampler.scores, torch.ones(100))


@pytest.mark.parametrize("prune_ratio", [0.3, 0.5, 0.7])
def test_keeps_exactly_int_of_below_mean_and_every_sample_at_or_above(prune_ratio):
    losses = torch.arange(101.0)  # mean 50 is itself a score: ">= mean" must keep sample 50
    sampler = _trained(losses, prune_ratio=prune_ratio)
    below = set(range(50))
    for epoch in range(1, 5):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(set(order)) == len(sampler)
        assert set(range(50, 101)) <= set(order)
        assert len(below & set(order)) == int((1 - prune_ratio) * len(below))


@pytest.mark.parametrize("prune_ratio", [0.3, 0.5, 0.7])
def test_weights_are_one_over_one_minus_r_exactly_on_kept_below_mean(prune_ratio):
    losses = _skewed()
    sampler = _trained(losses, prune_ratio=prune_ratio)
    sampler.set_epoch(1)
    order = torch.tensor(list(sampler))
    weights = sampler.weights(order)
    assert weights.dtype == torch.float32 and weights.shape == order.shape
    is_below = losses[order] < losses.double().mean()
    assert torch.equal(weights[is_below], torch.full((int(is_below.sum()),), 1 / (1 - prune_ratio)))
    assert torch.equal(weights[~is_below], torch.ones(int((~is_below).sum())))
    assert sampler.weights([int(order[0])]).shape == (1,)  # a plain list of ints works too


def test_list_is_shuffled():
    sampler = _trained(torch.arange(101.0))
    sampler.set_epoch(1)
    assert list(sampler) != sorted(sampler)


@pytest.mark.parametrize("num_epochs, delta", [(10, 0.875), (20, 0.875), (3, 0.5), (8, 0.875), (10, 1.0)])
def test_annealing_from_delta_times_num_epochs_even_when_not_whole(num_epochs, delta):
    # Defect 1 of the official code: at C = 10 or 20 (delta * C not whole) the annealing epochs kept 1/(1-r).
    sampler = _trained(_skewed(), num_epochs=num_epochs, delta=delta)
    for epoch in range(1, num_epochs + 2):
        sampler.set_epoch(epoch)
        weights = sampler.weights(list(sampler))
        if epoch >= delta * num_epochs:
            assert len(sampler) == 200 and sorted(sampler) == list(range(200))
            assert torch.equal(weights, torch.ones(200)), f"epoch {epoch} must be full data with weight 1"
        else:
            assert len(sampler) < 200 and (weights == 2.0).any()
        sampler.update(list(sampler), _skewed(seed=epoch)[list(sampler)])


@pytest.mark.parametrize("num_epochs, delta", [(10, 0.875), (20, 0.875), (3, 0.5), (7, 0.6), (8, 0.875)])
def test_first_full_data_epoch_is_ceil_of_delta_times_num_epochs(num_epochs, delta):
    # delta * C = 8.75 at C = 10: epoch 8 prunes, epoch 9 does not. The official code is back to full data one epoch
    # earlier, at floor(delta * C), when delta * C is fractional (module docstring); both agree when it is whole (8).
    sampler = _trained(_skewed(), num_epochs=num_epochs, delta=delta)
    pruned = []
    for epoch in range(1, num_epochs):
        sampler.set_epoch(epoch)
        pruned.append(len(sampler) < 200)
        sampler.update(list(sampler), _skewed(seed=epoch)[list(sampler)])
    first_full = math.ceil(delta * num_epochs)
    assert pruned == [epoch < first_full for epoch in range(1, num_epochs)]
    sampler.set_epoch(first_full)
    assert len(sampler) == 200 and torch.equal(sampler.weights(list(sampler)), torch.ones(200))


def test_prune_ratio_zero_is_the_full_data():
    sampler = _trained(_skewed(), prune_ratio=0.0)
    sampler.set_epoch(3)
    assert sorted(sampler) == list(range(200)) and torch.equal(sampler.weights(list(sampler)), torch.ones(200))


def test_global_random_state_is_untouched():
    # Defect 2 of the official code: np.random.seed(epoch) on the global generator every epoch.
    np.random.seed(123)
    torch.manual_seed(123)
    random.seed(123)
    before = (np.random.get_state(), torch.get_rng_state(), random.getstate())
    sampler = _trained(_skewed(), seed=5)
    for epoch in range(1, 10):
        sampler.set_epoch(epoch)
        order = list(sampler)
        sampler.weights(order)
        sampler.update(order, torch.rand(len(order), generator=torch.Generator().manual_seed(epoch)))
    sampler.load_state_dict(sampler.state_dict())
    after = (np.random.get_state(), torch.get_rng_state(), random.getstate())
    assert all(np.array_equal(a, b) for a, b in zip(before[0], after[0]))
    assert torch.equal(before[1], after[1]) and before[2] == after[2]


@pytest.mark.parametrize("num_replicas", [1, 3])
def test_len_is_right_immediately_after_set_epoch(num_replicas):
    # Defect 3 of the official code: len(loader) was read before the list was rebuilt.
    losses = _skewed(101)
    sampler = _trained(losses, num_replicas=num_replicas, rank=num_replicas - 1)
    loader = DataLoader(WithIndex(TensorDataset(torch.zeros(101))), batch_size=8, sampler=sampler)
    for epoch in range(1, 10):
        sampler.set_epoch(epoch)
        assert len(sampler) == len(list(sampler)) and len(loader) == math.ceil(len(sampler) / 8)
        assert len(sampler) == math.ceil(sampler.history[-1]["used"] / num_replicas)
        sampler.update(list(sampler), losses[list(sampler)] * (epoch % 3 + 1))


def test_deterministic_per_seed_and_epoch():
    a, b, c = (_trained(_skewed(), seed=s) for s in (1, 1, 2))
    lists = {}
    for name, sampler in (("a", a), ("b", b), ("c", c)):
        sampler.set_epoch(1)
        lists[name] = list(sampler)
        sampler.update(lists[name][:50], torch.linspace(5, 9, 50))
        sampler.set_epoch(1)  # a second call is a no-op, even after the scores changed
        assert list(sampler) == lists[name]
    assert lists["a"] == lists["b"] and lists["a"] != lists["c"]
    a.set_epoch(2)
    assert list(a) != lists["a"]


def test_update_stores_detached_scores_and_returns_the_weighted_mean():
    sampler = _trained(torch.arange(10.0), num_epochs=4)
    sampler.set_epoch(1)
    order = torch.tensor(list(sampler))
    theta = torch.linspace(0.5, 2.0, 10, requires_grad=True)
    losses = theta[order] ** 2  # [B], depends on theta
    weights = sampler.weights(order)
    loss = sampler.update(order, losses)
    expected = (losses.detach() * weights).mean()
    assert loss.ndim == 0 and torch.allclose(loss, expected)
    assert not sampler.scores.requires_grad
    assert torch.equal(sampler.scores[order], losses.detach())
    pruned = sorted(set(range(10)) - set(order.tolist()))
    assert pruned and torch.equal(sampler.scores[pruned], torch.tensor(pruned, dtype=torch.float32))  # old scores
    loss.backward()
    grad = torch.zeros(10).index_add_(0, order, weights * 2 * theta.detach()[order] / len(order))
    assert torch.allclose(theta.grad, grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_weighted_mean_is_bitwise_the_dot_divided_by_the_batch_size(dtype):
    # update() folds the division into the weights for the epoch's first power-of-two batch size (_scaled_lookup) and
    # otherwise divides by a cached tensor of the batch size (_divisor). Both must give the same bits, value and
    # gradient, as dividing the dot by the int, for every batch size a loader yields and every float dtype.
    sampler = _trained(_skewed(6000), num_epochs=4)
    sampler.set_epoch(1)
    order = torch.tensor(list(sampler))
    generator = torch.Generator().manual_seed(0)
    start = 0
    for size in (128, 96, 2049, 64, 128, 1):
        index = order[start:start + size]
        start += size
        losses = (torch.rand(len(index), generator=generator) * 5).to(dtype).requires_grad_()
        reference = losses.detach().clone().requires_grad_()
        expected = torch.dot(reference, sampler.weights(index).to(dtype)) / len(index)
        loss = sampler.update(index, losses)
        assert torch.equal(loss, expected)
        loss.backward()
        expected.backward()
        assert torch.equal(losses.grad, reference.grad)


def test_draw_is_the_int64_randperm_draw():
    # set_epoch draws int32 permutations for speed; the list must be exactly the one int64 permutations give.
    scores = _skewed(5000)
    sampler = _trained(scores, num_epochs=4, prune_ratio=0.3, seed=7)
    sampler.set_epoch(2)
    generator = torch.Generator().manual_seed(_epoch_seed(7, 2))
    below = scores.double() < scores.double().mean()
    well_learned = below.nonzero().squeeze(1)
    kept_below = well_learned[torch.randperm(len(well_learned), generator=generator)[: int(0.7 * len(well_learned))]]
    kept = torch.cat([(~below).nonzero().squeeze(1), kept_below])
    assert list(sampler) == kept[torch.randperm(len(kept), generator=generator)].tolist()


def test_iterating_again_does_not_redraw_and_an_epoch_ends():
    # Defect 4 of the official code: its sampler redrew the list on every iter() and was its own iterator; torch's
    # BatchSampler cuts batches with itertools.islice, which calls iter() again for every batch: epochs never ended.
    sampler = _trained(_skewed(), num_epochs=4)
    sampler.set_epoch(1)
    history = [dict(h) for h in sampler.history]
    iterator = iter(sampler)
    assert iter(iterator) is iterator
    head = list(itertools.islice(iterator, 10))
    sampler.update(head, torch.full((10,), 9.0))  # the scores move mid-epoch: still no new draw
    rest = list(iterator)
    assert head + rest == list(sampler) == list(iter(sampler)) and len(head + rest) == len(sampler) < 200
    batches = list(BatchSampler(sampler, 16, drop_last=False))
    assert len(batches) == math.ceil(len(sampler) / 16) and sum(batches, []) == head + rest
    assert sampler.history == history and sampler.epoch == 1


def test_state_dict_holds_the_int64_list_and_weights_one_off_the_list():
    single = _trained(_skewed())
    sampler = InfoBatch(200, 10, num_replicas=3, rank=1)
    sampler.load_state_dict(single.state_dict())  # the same scores as the single process
    for each in (single, sampler):
        each.set_epoch(1)
    state, order = sampler.state_dict(), torch.tensor(list(single))
    assert state["order"].dtype == torch.int64 and torch.equal(state["order"], order)
    expected = torch.ones(200)
    expected[order] = single.weights(order)  # every rank saves the global weights, not only its own samples'
    assert torch.equal(state["weights"], expected) and (expected == 2.0).any()


def test_scores_keep_float32_for_half_precision_losses():
    sampler = InfoBatch(4, 2)
    loss = sampler.update([0, 1], torch.tensor([0.5, 2.0], dtype=torch.bfloat16))
    assert loss.dtype == torch.bfloat16 and sampler.scores.dtype == torch.float32
    assert torch.equal(sampler.scores, torch.tensor([0.5, 2.0, 1.0, 1.0]))


# -------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "args, kwargs, name",
    [
        ((0, 10), {}, "num_samples"),
        ((2.5, 10), {}, "num_samples"),
        ((10, 0), {}, "num_epochs"),
        ((10, 3.0), {}, "num_epochs"),
        ((10, 10, 1.0), {}, "prune_ratio"),
        ((10, 10, 1.2), {}, "prune_ratio"),
        ((10, 10, -0.1), {}, "prune_ratio"),
        ((10, 10, float("nan")), {}, "prune_ratio"),
        ((10, 10, 0.5, 0.0), {}, "delta"),
        ((10, 10, 0.5, 1.5), {}, "delta"),
        ((10, 10), {"seed": -1}, "seed"),
        ((10, 10), {"num_replicas": 0}, "num_replicas"),
        ((10, 10), {"num_replicas": 2, "rank": 2}, "rank"),
        ((10, 10), {"num_replicas": 2, "rank": -1}, "rank"),
    ],
)
def test_invalid_arguments_name_argument_and_value(args, kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}: "):
        InfoBatch(*args, **kwargs)


def test_invalid_prune_ratio_message():
    with pytest.raises(ValueError, match=r"^Invalid prune_ratio: 1.2; expected 0 <= prune_ratio < 1$"):
        InfoBatch(10, 10, prune_ratio=1.2)


@pytest.mark.parametrize("epoch", [-1, 1.5, "2"])
def test_invalid_epoch(epoch):
    with pytest.raises(ValueError, match="Invalid epoch: "):
        InfoBatch(10, 10).set_epoch(epoch)


def test_update_and_weights_errors():
    sampler = _trained(torch.arange(101.0))
    sampler.set_epoch(1)
    pruned = sorted(set(range(101)) - set(sampler))[0]
    good = torch.tensor(list(sampler)[:4])
    cases = [
        ((good, torch.ones(4, 1)), "Invalid losses: .*shape \\(4, 1\\)"),
        ((good, torch.ones(4, dtype=torch.long)), "Invalid losses: .*dtype torch.int64"),
        ((good, [1.0, 1.0, 1.0, 1.0]), "Invalid losses: .*list"),
        ((good.view(2, 2), torch.ones(4)), "Invalid indices: shape \\(2, 2\\)"),
        ((good.float(), torch.ones(4)), "Invalid indices: .*float32"),
        ((good, torch.ones(3)), "4 indices but 3 losses"),
        ((good[:0], torch.ones(0)), "empty batch"),
        ((torch.tensor([int(good[0]), pruned]), torch.ones(2)), f"Index {pruned} is not in epoch 1's list"),
        ((torch.tensor([101]), torch.ones(1)), "Index 101 is not in"),
        ((torch.tensor([-1]), torch.ones(1)), "Index -1 is not in"),
        ((good, torch.tensor([1.0, float("nan"), 1.0, 1.0])), f"Non-finite loss nan for index {int(good[1])}"),
        ((good, torch.tensor([1.0, 1.0, 1.0, float("inf")])), "Non-finite loss inf"),
    ]
    scores = sampler.scores.clone()
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            sampler.update(*args)
    assert torch.equal(sampler.scores, scores)  # a rejected update changes nothing
    with pytest.raises(ValueError, match=f"Index {pruned} is not in"):
        sampler.weights([pruned])


# ------------------------------------------------------------------------------------------------ resuming


def _run(sampler: InfoBatch, epochs, mid_epoch_state_at=None):
    """Train `epochs` with a fixed loss per (sample, epoch); return each epoch's (list, weights) and optional state."""
    seen, state = [], None
    for epoch in epochs:
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        seen.append((order, sampler.weights(order)))
        for i, batch in enumerate(torch.split(order, 16)):
            if epoch == mid_epoch_state_at and i == 2:
                state = sampler.state_dict()
            sampler.update(batch, _skewed(200, seed=epoch)[batch])
    return seen, state


def test_state_dict_round_trip_reproduces_the_following_epochs():
    reference = InfoBatch(200, 12, seed=3)
    seen, _ = _run(reference, range(12))
    first = InfoBatch(200, 12, seed=3)
    _run(first, range(5))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    first.update([int(next(iter(first)))], torch.tensor([99.0]))  # must not leak into the saved state
    resumed = InfoBatch(200, 12, seed=3)
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    assert resumed.epoch == 4 and resumed.history == reference.history[:5]
    resumed_seen, _ = _run(resumed, range(5, 12))
    for (a, wa), (b, wb) in zip(seen[5:], resumed_seen):
        assert torch.equal(a, b) and torch.equal(wa, wb)
    assert torch.equal(resumed.scores, reference.scores) and resumed.history == reference.history


def test_mid_epoch_resume_keeps_the_current_list():
    reference = InfoBatch(200, 8, seed=1)
    seen, state = _run(reference, range(8), mid_epoch_state_at=3)
    resumed = InfoBatch(200, 8, seed=1)
    resumed.load_state_dict(state)  # scores moved on since epoch 3 was drawn; the list must not change
    resumed.set_epoch(3)
    assert list(resumed) == seen[3][0].tolist()
    order = torch.tensor(list(resumed))
    for batch in torch.split(order, 16)[2:]:
        resumed.update(batch, _skewed(200, seed=3)[batch])
    resumed_seen, _ = _run(resumed, range(4, 8))
    assert all(torch.equal(a, b) and torch.equal(wa, wb) for (a, wa), (b, wb) in zip(seen[4:], resumed_seen))


def test_load_state_dict_rejects_other_settings():
    state = InfoBatch(100, 10, 0.5).state_dict()
    with pytest.raises(ValueError, match="prune_ratio = 0.5 into a sampler with prune_ratio = 0.3"):
        InfoBatch(100, 10, 0.3).load_state_dict(state)
    with pytest.raises(ValueError, match="num_samples"):
        InfoBatch(99, 10, 0.5).load_state_dict(state)


def _snapshot(sampler: InfoBatch) -> tuple:
    state = sampler.state_dict()
    return state, list(sampler), sampler.weights(torch.tensor(list(sampler)))


def _assert_unchanged(sampler: InfoBatch, snapshot: tuple) -> None:
    state, order, weights = snapshot
    after = sampler.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(after[key], value) if isinstance(value, torch.Tensor) else after[key] == value, key
    assert list(sampler) == order and torch.equal(sampler.weights(torch.tensor(order)), weights)


def test_load_state_dict_rejects_missing_keys_and_leaves_the_sampler_unchanged():
    sampler = _trained(torch.arange(10.0))
    before = _snapshot(sampler)
    with pytest.raises(ValueError, match=r"Invalid state: missing keys \['delta', 'epoch', .*'weights'\]"):
        sampler.load_state_dict({})
    state = sampler.state_dict()
    del state["scores"]
    with pytest.raises(ValueError, match=r"Invalid state: missing keys \['scores'\]"):
        sampler.load_state_dict(state)
    with pytest.raises(TypeError, match=r"Invalid state: list; expected a dict"):
        sampler.load_state_dict([])
    _assert_unchanged(sampler, before)


NAN_LAST, INF_LAST, ZERO_LAST = (torch.tensor([1.0] * 9 + [bad]) for bad in (math.nan, math.inf, 0.0))


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("scores", torch.ones(5), r"\['scores'\]: shape \(5,\), dtype torch.float32; expected .* shape \(10,\)"),
        ("scores", NAN_LAST, r"\['scores'\]: nan at index 9; expected finite entries"),
        ("scores", INF_LAST, r"\['scores'\]: inf at index 9; expected finite entries"),
        ("scores", torch.ones(10, dtype=torch.long), r"\['scores'\]: shape \(10,\), dtype torch.int64; expected"),
        ("scores", [1.0] * 10, r"\['scores'\]: \[1.0, .*\]; expected a float tensor"),
        ("weights", torch.ones(5), r"\['weights'\]: shape \(5,\), dtype torch.float32; expected a float tensor"),
        ("weights", ZERO_LAST, r"\['weights'\]: 0.0 at index 9; expected finite and > 0 entries"),
        ("order", torch.tensor([0, 1, 10]), r"\['order'\]: values in \[0, 10\]; expected distinct .* in \[0, 9\]"),
        ("order", torch.tensor([0, 1, 1]), r"\['order'\]: 2 distinct of 3 entries; expected distinct"),
        ("order", torch.tensor([], dtype=torch.long), r"\['order'\]: shape \(0,\), dtype torch.int64; expected"),
        ("order", torch.tensor([0.0, 1.0]), r"\['order'\]: shape \(2,\), dtype torch.float32; expected"),
        ("epoch", -1, r"\['epoch'\]: -1; expected an int >= 0"),
        ("epoch", 1.5, r"\['epoch'\]: 1.5; expected an int >= 0"),
        ("history", [{"epoch": 0}], r"\['history'\]: \[\{'epoch': 0\}\]; expected a list of"),
        ("history", None, r"\['history'\]: None; expected a list of"),
    ],
)
def test_load_state_dict_rejects_inconsistent_fields_and_leaves_the_sampler_unchanged(key, value, match):
    saved_from = _trained(torch.arange(10.0))
    saved_from.set_epoch(1)
    saved = saved_from.state_dict()
    sampler = _trained(torch.arange(10.0, 0.0, -1.0))  # same settings, other scores and epoch
    before = _snapshot(sampler)
    with pytest.raises(ValueError, match=r"Invalid state" + match):
        sampler.load_state_dict({**saved, key: value})
    _assert_unchanged(sampler, before)
    sampler.load_state_dict(saved)  # the valid state still loads
    assert torch.equal(sampler.scores, saved["scores"])


# --------------------------------------------------------------------------------- ledger, dataset, loader


def test_history_counts_each_epoch_once():
    sampler = _trained(torch.arange(101.0), num_epochs=4)
    for epoch in (1, 1, 2, 1):  # going back to epoch 1 redraws it and replaces its record
        sampler.set_epoch(epoch)
    assert [h["epoch"] for h in sampler.history] == [0, 1, 2]
    assert sampler.history[0] == {"epoch": 0, "used": 101, "pruned": 0}
    assert sampler.history[1] == {"epoch": 1, "used": 101 - 25, "pruned": 25}
    assert sampler.total_used + sampler.total_pruned == 3 * 101
    assert sampler.saved_fraction == pytest.approx(sampler.total_pruned / (3 * 101))


def test_with_index():
    pairs = WithIndex(TensorDataset(torch.arange(5.0) * 10, torch.arange(5)))
    assert len(pairs) == 5
    index, x, y = pairs[3]
    assert index == 3 and x == 30.0 and y == 3
    plain = WithIndex([torch.tensor(7.0), torch.tensor(8.0)])
    assert len(plain) == 2 and plain[1] == (1, torch.tensor(8.0))


def test_rescaled_pruning_is_unbiased_and_hard_pruning_is_not():
    # 40 easy samples (below the mean) and 20 hard ones; r = 0.5 keeps 20 easy ones at weight 2 each epoch.
    losses = torch.cat([torch.linspace(0.01, 0.2, 40), torch.linspace(2.0, 4.0, 20)])
    grads = torch.randn(60, 8, generator=torch.Generator().manual_seed(0)) + 0.5  # per-sample gradients g_i
    draws = 1000
    sampler = _trained(losses, num_epochs=draws + 1, delta=1.0)
    rescaled, hard = torch.zeros(8), torch.zeros(8)
    for epoch in range(1, draws + 1):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        rescaled += (sampler.weights(order)[:, None] * grads[order]).sum(0) / draws
        hard += grads[order].sum(0) / draws
    full = grads.sum(0)
    assert torch.linalg.norm(rescaled - full) < 0.03 * torch.linalg.norm(full)
    assert torch.linalg.norm(hard - full) > 0.2 * torch.linalg.norm(full)


def test_dataloader_end_to_end():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 4, generator=generator), torch.randint(0, 3, (96,), generator=generator)
    model = torch.nn.Linear(4, 3)
    sampler = InfoBatch(96, 8, prune_ratio=0.5, delta=0.875)
    loader = DataLoader(WithIndex(TensorDataset(x, y)), batch_size=16, sampler=sampler)
    for epoch in range(8):
        sampler.set_epoch(epoch)
        assert len(loader) == math.ceil(len(sampler) / 16)
        seen = []
        for index, xb, yb in loader:
            loss = sampler.update(index, torch.nn.functional.cross_entropy(model(xb), yb, reduction="none"))
            model.zero_grad()
            loss.backward()
            with torch.no_grad():  # plain SGD (torch.optim's first step costs ~1 s of lazy imports)
                for p in model.parameters():
                    p -= 0.1 * p.grad
            seen += index.tolist()
        assert seen == list(sampler)
        if epoch in (1, 7):  # pruning after the first epoch; annealing at 8 * 0.875 = 7
            assert (len(seen) < 96) == (epoch == 1)
    assert torch.isfinite(sampler.scores).all() and not torch.equal(sampler.scores, torch.ones(96))
    assert 0 < sampler.saved_fraction < 0.5 and len(sampler.history) == 8


# ------------------------------------------------------------------------------------------------ replicas


def _padded(order: list[int], num_replicas: int) -> list[int]:
    total = math.ceil(len(order) / num_replicas) * num_replicas
    return (order * num_replicas)[:total]


def test_replicas_partition_the_padded_global_list_without_torch_distributed():
    losses = _skewed(101)
    single = _trained(losses)
    ranks = [InfoBatch(101, 10, num_replicas=3, rank=r) for r in range(3)]
    for sampler in ranks:  # the same scores on every rank (a state may be loaded into another world size)
        sampler.load_state_dict(single.state_dict())
    for epoch in range(1, 4):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        lists = [list(s) for s in ranks]
        assert Counter(sum(lists, [])) == Counter(_padded(list(single), 3))
        assert len({len(a) for a in lists}) == 1 and all(len(s) == len(a) for s, a in zip(ranks, lists))
        assert [list(s) for s in ranks] == [_padded(list(single), 3)[r::3] for r in range(3)]
    # Without torch.distributed a rank stores only its own losses and may not update another rank's samples.
    mine, other = lists[0][0], next(i for i in lists[1] if i not in lists[0])
    ranks[0].update([mine], torch.tensor([42.0]))
    assert ranks[0].scores[mine] == 42.0 and ranks[1].scores[mine] == losses[mine]
    with pytest.raises(ValueError, match=f"Index {other} is not in epoch 3's list for rank 0 of 3"):
        ranks[0].update([other], torch.tensor([1.0]))


def test_two_processes_with_gloo_match_a_single_process(tmp_path):
    worker, records = run_two_ranks(HERE / "_infobatch_dist_worker.py", tmp_path)
    assert [(r["num_replicas"], r["rank"]) for r in records] == [(2, 0), (2, 1)]

    # The same run in one process: every sample of the global list updated by this one sampler.
    reference = InfoBatch(worker.NUM_SAMPLES, worker.NUM_EPOCHS, worker.PRUNE_RATIO, worker.DELTA, seed=worker.SEED)
    for epoch in range(worker.NUM_EPOCHS):
        reference.set_epoch(epoch)
        order = list(reference)
        rank0, rank1 = (r["epochs"][epoch] for r in records)
        assert Counter(rank0["local"].tolist() + rank1["local"].tolist()) == Counter(_padded(order, 2))
        assert rank0["len"] == rank1["len"] == math.ceil(len(order) / 2)
        if 0 < epoch < worker.DELTA * worker.NUM_EPOCHS:
            assert len(order) < worker.NUM_SAMPLES  # pruning really happened on this epoch
        for rank in (rank0, rank1):  # each rank's returned loss is the weighted mean over its own samples only
            sizes = [len(b) for b in rank["batches"]]
            assert len(set(sizes)) > 1
            expected = [(worker.loss_of(b, epoch) * reference.weights(b)).mean() for b in rank["batches"]]
            assert torch.allclose(rank["returned"], torch.stack(expected))
        reference.update(order, worker.loss_of(torch.tensor(order), epoch))
        assert torch.equal(rank0["scores"], rank1["scores"])
        assert torch.equal(rank0["scores"], reference.scores)
