"""Chapter 02's experiment code: the slow-decode dataset, batched augmentation, the in-process echo stream."""

import itertools
import json
from functools import partial
from pathlib import Path

import pytest
import torch

from accel.datasets.slow import SlowDecoded, augment_signal
from accel.experiments import echo as chapter
from accel.experiments import replay, slow_input


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


def use_cifar_fixture(tmp_path, monkeypatch):
    """load_cifar reads the real-format mini archive in data/fixtures (50 training and 10 test images) by file URL."""
    import hashlib
    from functools import partial

    import accel.datasets.cifar as cifar

    fixture = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "cifar-10-python-mini.tar.gz"
    sha = hashlib.sha256(fixture.read_bytes()).hexdigest()
    monkeypatch.setattr(cifar, "load_cifar", partial(cifar.load_cifar, url=fixture.as_uri(), sha256=sha,
                                                     root=tmp_path, progress=False))


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


# --- the gpu profile, the run-time estimate and the recordings --------------------------------------------------------

def round_trip(value):
    """What a results file hands back for ``value`` (RESULTS_FROM)."""
    return replay.decode(json.loads(json.dumps(replay.encode(value))))


def test_gpu_profile_path_runs_every_part_on_the_cifar_fixture(tmp_path, monkeypatch):
    """The gpu profile's code path on CPU (tests/test_echo_gpu.py runs it on CUDA where there is one)."""
    run_gpu_profile_path(torch.device("cpu"), tmp_path, monkeypatch)


def run_gpu_profile_path(device, tmp_path, monkeypatch):
    """The gpu profile's code path (CIFAR-10 read from the official archive format, ResNet-32, SGD, crop + flip, a test
    subset) on ``device``, shrunk to a step or two of each part: the probe and estimate, the law, the fresh-examples
    grid at every insertion point, the duplicates and the wall clock; each recording comes back equal through JSON.
    The measurements' own probes are cut to one step or batch (their code runs, fewer times)."""
    use_cifar_fixture(tmp_path, monkeypatch)
    down, up = slow_input.downstream_seconds, slow_input.upstream_seconds
    monkeypatch.setattr(slow_input, "downstream_seconds", lambda step, x, y, steps, device: down(step, x, y, 1, device))
    monkeypatch.setattr(chapter, "downstream_seconds", slow_input.downstream_seconds)
    monkeypatch.setattr(slow_input, "upstream_seconds", lambda dataset, b, batches, seed=0: up(dataset, b, 1, seed))
    cfg = chapter.config("gpu", batch_size=2, eval_every=1, max_fresh=4, test_samples=4, seeds=(0,),
                         law_ratios=(0.5,), law_factors=(1,), law_steps=1, law_repeats=1, wall_ratio=0.5,
                         shuffle_buffer=8, dup_batch_sizes=(8,), dup_buffers=(0, 16))
    paper = chapter.config("paper")  # the paper profile takes the same path, at its full size
    assert (cfg.dataset, cfg.model, cfg.optimizer) == (paper.dataset, paper.model, paper.optimizer)
    assert (cfg.dataset, cfg.model, cfg.optimizer, cfg.factors) == ("cifar10", "resnet32", "sgd", (1, 2))
    data = chapter.load_data(cfg)
    x, _ = data.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and data.x_test.shape == (4, 3, 32, 32)
    assert chapter.data_sizes(data) == {"train": 50, "test": 4}
    model, optimizer = chapter.make_model(cfg, 0, device)
    assert isinstance(optimizer, torch.optim.SGD) and sum(p.numel() for p in model.parameters()) == 466_906
    estimate = chapter.cost_model(cfg, data, device)(cfg)
    assert f"({device.type})" in estimate.basis
    assert set(estimate.parts) == {"law (section 3)", "fresh examples (section 4)", "duplicates (section 5)",
                                   "wall clock (section 6)"} and all(s > 0 for s in estimate.parts.values())
    grid = chapter.fresh_examples_grid(cfg, data, device, show_progress=False)
    assert list(grid) == [(1, "none"), (2, "before_augment"), (2, "after_augment"), (2, "batch")]
    assert all(run.curve and run.curve[-1][1] >= cfg.max_fresh for runs in grid.values() for run in runs)
    law_rows = chapter.law_check(cfg, data, device, show_progress=False)
    assert len(law_rows) == 1 and law_rows[0]["measured steps/s"] > 0
    wall = chapter.wall_clock(cfg, data, device, show_progress=False)
    assert set(wall["runs"]) == {1, 2} and wall["t_up"] > 0 and wall["work"] >= 1
    dup_rows = chapter.duplicates_table(cfg, len(data.train))
    for value in (grid, law_rows, wall, dup_rows):
        assert round_trip(value) == value
    # what the notebook reads from them, drawn from the recordings, is what it draws from the runs
    assert repr(chapter.grid_rows(round_trip(grid))) == repr(chapter.grid_rows(grid))
    assert repr(chapter.wall_entries(round_trip(wall), cfg.target)) == repr(chapter.wall_entries(wall, cfg.target))


def test_smoke_size_recordings_come_back_equal():
    """A smoke-size grid (two seeds, so the spread is read too) and duplicates table through a results file's JSON."""
    data, _, _ = small_data(n=64, length=16)
    cfg = chapter.config("smoke", batch_size=8, eval_every=2, max_fresh=64, seeds=(0, 1), shuffle_buffer=8,
                         target=0.0)
    grid = chapter.fresh_examples_grid(cfg, data, torch.device("cpu"), show_progress=False)
    back = round_trip(grid)
    assert back == grid and all(isinstance(k, tuple) for k in back)
    assert repr(chapter.grid_rows(back)) == repr(chapter.grid_rows(grid))
    assert repr(chapter.fresh_bars(back, cfg.factors, cfg.points)) == repr(chapter.fresh_bars(grid, cfg.factors,
                                                                                             cfg.points))
    rows = chapter.duplicates_table(cfg, 500)
    assert round_trip(rows) == rows
    assert round_trip(chapter.data_sizes(data)) == {"train": 64, "test": 8}


FAKE = chapter.Probe(step=0.02, eval_per_sample=5e-5, read=4e-5, work=2.5e-5, loader_start=0.5, echo_item=5e-6,
                     train_samples=50_000, test_samples=5_000, device="cuda")  # the gpu config's T4 assumptions


def test_estimate_scales_with_the_configs_counts():
    cfg = chapter.config("gpu")
    parts = chapter.estimate(cfg, FAKE).parts
    assert 10 * 60 < sum(parts.values()) < 15 * 60  # the arithmetic in the gpu config's comment: about 12 minutes
    one = chapter.estimate(chapter.config("gpu", seeds=(0,)), FAKE).parts
    law, grid, dup, wall = (parts[k] for k in parts)
    assert one["law (section 3)"] == law and one["duplicates (section 5)"] == dup  # one seed is enough for these
    decode_once = FAKE.train_samples * FAKE.read
    assert grid - decode_once == pytest.approx(2 * (one["fresh examples (section 4)"] - decode_once))
    per_seed = wall - one["wall clock (section 6)"]
    three = chapter.estimate(chapter.config("gpu", seeds=(0, 1, 2)), FAKE).parts
    assert three["wall clock (section 6)"] == pytest.approx(wall + per_seed)
    # steps: the fresh examples each arm is expected to need, at most the budget; more repeats, more law
    fewer = chapter.estimate(chapter.config("gpu", expected_fresh=87_500), FAKE).parts
    assert fewer["fresh examples (section 4)"] - decode_once == pytest.approx((grid - decode_once) / 2)
    capped = chapter.estimate(chapter.config("gpu", max_fresh=87_500), FAKE).parts
    assert capped["fresh examples (section 4)"] < grid and capped["wall clock (section 6)"] < wall
    assert chapter.estimate(chapter.config("gpu", max_fresh=10**7), FAKE).parts == parts
    assert chapter.estimate(chapter.config("gpu", law_repeats=4), FAKE).parts["law (section 3)"] > law
    assert chapter.estimate(chapter.config("gpu", factors=(1, 2, 4)), FAKE).parts["fresh examples (section 4)"] > grid
    # a device twice as slow per step: the step-bound parts double
    slow = chapter.estimate(cfg, chapter.Probe(**{**vars(FAKE), "step": 0.04})).parts
    assert 1.8 * grid < slow["fresh examples (section 4)"] < 2 * grid


def test_every_profile_has_an_estimate_and_trims_that_name_its_fields():
    from accel.book.budget import fit_budget

    for profile in chapter.CONFIGS:
        cfg = chapter.config(profile)
        assert chapter.estimate(cfg, FAKE).seconds > 0
        trimmed, _, _ = fit_budget(cfg, partial(chapter.estimate, probe=FAKE), 0.01, chapter.TRIMS)
        assert len(trimmed.seeds) == 1 and trimmed.factors == (1, 2) and trimmed.law_repeats == 1  # the floors
        assert trimmed.max_fresh == min(cfg.max_fresh, 10_000)


def test_book_fit_trims_the_gpu_profile_to_a_small_budget_and_says_what(tmp_path, capsys):
    from accel.book import start

    book = start("smoke", 0, notebook="02_data_echoing", results_path=tmp_path / "r.json", style=False, quiet=True)
    probes = []

    def cost_model(cfg, data, device):  # the chapter's, with the T4 assumptions instead of a probe of this machine
        probes.append(device)
        return partial(chapter.estimate, probe=FAKE)

    try:
        cfg = book.fit(chapter.config("gpu"), cost_model, None, "cuda", trims=chapter.TRIMS, budget_minutes=8)
        out = capsys.readouterr().out
        assert "Estimated run time on this device, profile smoke: 12.2 min" in out
        assert "Budget 8 min: trimmed seeds 2 (0, 1) → 1 (0)" in out and probes == ["cuda"]
        assert cfg == chapter.config("gpu", seeds=(0,))
        tight = book.fit(chapter.config("gpu"), cost_model, None, "cuda", trims=chapter.TRIMS, budget_minutes=3)
        out = capsys.readouterr().out
        assert "trimmed seeds 2 (0, 1) → 1 (0); law_repeats 2 → 1; max_fresh 400,000 → " in out
        assert "still above the budget" not in out and chapter.estimate(tight, FAKE).seconds <= 180
        assert tight.factors == (1, 2) and tight.law_repeats == 1 and 10_000 < tight.max_fresh < 175_000
        floors = book.fit(chapter.config("gpu"), cost_model, None, "cuda", trims=chapter.TRIMS, budget_minutes=1)
        assert "max_fresh 400,000 → 10,000" in capsys.readouterr().out.replace("(the smallest", "\n(the smallest")
        assert floors == chapter.config("gpu", seeds=(0,), law_repeats=1, max_fresh=10_000)
    finally:
        replay.begin()
