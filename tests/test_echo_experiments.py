"""Chapter 02's experiment code: the slow-decode dataset, batched augmentation, the in-process echo stream."""

import itertools

import pytest
import torch

from accel.datasets.slow import SlowDecoded, augment_signal
from accel.experiments import echo as chapter


def small_data(n=64, length=16):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, length, generator=g), torch.randint(0, 10, (n,), generator=g)
    return chapter.Data(SlowDecoded(x, y), x[:8], y[:8]), x, y


def test_slow_decoded_returns_the_stored_sample_whatever_the_work():
    data, x, y = small_data()
    slow = data.train.with_work(40)
    for i in (0, 5, 63):
        assert torch.equal(data.train[i][0], x[i]) and torch.equal(slow[i][0], x[i]) and int(slow[i][1]) == int(y[i])
    with pytest.raises(ValueError, match="Invalid work"):
        SlowDecoded(x, y, work=0)
    with pytest.raises(ValueError, match="Invalid x, y"):
        SlowDecoded(x[0, 0], y)
    with pytest.raises(ValueError, match="Invalid x, y"):
        SlowDecoded(x, y[:5])
    images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(SlowDecoded(images, torch.arange(4))[2][0], images[2])  # any sample shape


def test_augmentations_are_seeded_and_shape_preserving():
    data, x, _ = small_data()
    a = chapter.augment_batch(x, torch.Generator().manual_seed(1))
    b = chapter.augment_batch(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    one = augment_signal(data.train[0], torch.Generator().manual_seed(1))
    assert one[0].shape == x[0].shape


@pytest.mark.parametrize("point", ["before_augment", "after_augment", "batch"])
def test_echo_stream_counts_fresh_examples(point):
    data, _, _ = small_data()
    cfg = chapter.config("smoke", batch_size=8, shuffle_buffer=16)
    batches = list(itertools.islice(chapter.echo_stream(cfg, data, 2, point, seed=0), 32))  # 2 epochs at e = 2
    assert all(x.shape == (8, 1, 16) for x, _, _ in batches)
    assert sum(fresh for _, _, fresh in batches) == 2 * 64  # every sample read once per epoch
    first = list(itertools.islice(chapter.echo_stream(cfg, data, 2, point, seed=0), 4))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, batches))  # seeded


def test_after_augment_copies_are_identical_before_augment_copies_differ():
    data, _, _ = small_data(n=32)
    cfg = chapter.config("smoke", batch_size=32, shuffle_buffer=0)
    for point, identical in (("after_augment", True), ("before_augment", False)):
        x, _, _ = next(chapter.echo_stream(cfg, data, 2, point, seed=0))  # 16 samples, each twice, adjacent
        assert torch.equal(x[0], x[1]) is identical, point


def test_duplicates_per_batch():
    assert chapter.duplicates_per_batch(1000, 2, 10, 0) == 5  # adjacent pairs: half of each batch repeats
    assert chapter.duplicates_per_batch(1000, 1, 10, 0) == 0
    assert chapter.duplicates_per_batch(5000, 2, 10, 1000) < 0.5


def test_run_bookkeeping():
    run = chapter.Run(2, "batch", 0, [(10, 100, 1.0, 50.0), (20, 200, 2.0, 91.0), (30, 300, 3.0, 95.0)], 90.0)
    assert (run.steps_to_target, run.fresh_to_target, run.seconds_to_target) == (20, 200, 2.0)
    assert run.accuracy_at_step(25) == 91.0 and run.accuracy_at_step(5) is None
    assert chapter.summarize_runs([run, run], lambda r: r.fresh_to_target) == (200.0, 0.0, 2)
    with pytest.raises(ValueError, match="Invalid profile"):
        chapter.config("huge")


def test_paper_profile_path_runs_on_the_cifar_fixture(tmp_path, monkeypatch):
    """The paper profile (CIFAR-10, ResNet-32, SGD, crop + flip) end to end on the real-format fixture, CPU: the
    in-process stream and the real multi-process loader, before and after augmentation."""
    import hashlib
    from functools import partial
    from pathlib import Path

    import accel.datasets.cifar as cifar

    fixture = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "cifar-10-python-mini.tar.gz"
    sha = hashlib.sha256(fixture.read_bytes()).hexdigest()
    monkeypatch.setattr(cifar, "load_cifar", partial(cifar.load_cifar, url=fixture.as_uri(), sha256=sha,
                                                     root=tmp_path, progress=False))
    cfg = chapter.config("paper", batch_size=8, eval_every=2, max_fresh=48, shuffle_buffer=16, seeds=(0,))
    device = torch.device("cpu")
    data = chapter.load_data(cfg)
    x, y = data.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and data.x_test.shape[1:] == (3, 32, 32)
    model, optimizer = chapter.make_model(cfg, 0, device)
    assert isinstance(optimizer, torch.optim.SGD) and sum(p.numel() for p in model.parameters()) == 466_906
    stream = chapter.train_on_stream(cfg, data, factor=2, point="after_augment", seed=0, device=device)
    loader = chapter.train_to_target(cfg, data, factor=2, point="before_augment", seed=0, device=device)
    for run in (stream, loader):
        assert run.curve and run.curve[-1][1] >= cfg.max_fresh and all(0 <= a <= 100 for *_, a in run.curve)
    assert chapter.t_down_probe(cfg, data, device, repeats=1) > 0


def test_headline_says_slower_and_names_its_measurements():
    from accel.experiments.echo import headline
    from accel.experiments.ledger import LedgerEntry

    entries = [LedgerEntry("e = 1", 1918, 60, 0.6, 25.6), LedgerEntry("e = 2 (before augment)", 3992, 250, 1.5, 28.1)]
    text = headline(entries, 3.9, 2.0, 0.63, 1, 25.0)
    assert "2.50× slower" in text and "2.08× the fresh examples" in text and "0.63×" in text and "1 seed;" in text


def test_toy_augmented_dataset_is_seeded_and_augments():
    from accel.experiments.echo import ToyAugmentedDataset

    a, b = ToyAugmentedDataset(seed=3), ToyAugmentedDataset(seed=3)
    assert torch.equal(a[0][0], b[0][0]) and not torch.equal(a[0][0], a[0][0])


def test_point_names_round_trip_and_readings_follow_the_numbers():
    for key in ("before_augment", "after_augment", "batch"):
        assert chapter.point_key(chapter.point_name(key)) == key == chapter.point_key(key)
    assert chapter.arm_label(2, "before_augment") == "e = 2, before augmentation"
    ratio = {(2, "before_augment"): 0.54, (2, "after_augment"): 0.58, (2, "batch"): 0.52}
    order = sorted(("before_augment", "after_augment", "batch"), key=lambda p: ratio[(2, p)])
    close = chapter.order_reading(order, ratio, {k: 0.06 for k in ratio}, 3)
    assert "batch echoing 0.52 (std 0.06)" in close and "within the seeds' spread" in close
    apart = chapter.order_reading(order, ratio, {k: 0.01 for k in ratio}, 3)
    assert "more than noise" in apart
    rows = [{"target R": 8.0, "echo factor": e, "R": 7.7, "measured / modelled": m, "t_down (ms)": 3.0}
            for e, m in ((2, 0.95), (4, 0.896), (8, 0.97))]
    text = chapter.law_reading(rows, {8.0: 7.7})
    assert "0.896 against the floor 0.90, short by 0.004" in text and "0.896–0.950 of it" in text
    rows[1]["measured / modelled"] = 0.93
    assert "every setting at or above its floor" in chapter.law_reading(rows, {8.0: 7.7})
