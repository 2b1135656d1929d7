"""Chapter 01's experiment code: schedules, random-pruning arms, summaries, datasets (small sizes)."""

import json
import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from accel.datasets.digits import load_digits_1d
from accel.datasets.mnist1d import load_mnist1d
from accel.experiments import infobatch as chapter


def test_learning_rate_schedules():
    cfg = chapter.config("cpu")
    assert chapter.learning_rate(cfg, 0.0) == pytest.approx(cfg.lr)
    assert chapter.learning_rate(cfg, 1.0) == pytest.approx(0.0, abs=1e-12)
    one = chapter.config("cpu", schedule="onecycle")
    assert chapter.learning_rate(one, 0.3) == pytest.approx(one.lr)
    assert chapter.learning_rate(one, 0.0) == pytest.approx(one.lr / 25)
    assert chapter.learning_rate(one, 1.0) == pytest.approx(one.lr / 25 / 1e4)
    with pytest.raises(ValueError, match="Invalid schedule"):
        chapter.learning_rate(chapter.config("cpu", schedule="step"), 0.5)


def test_static_and_dynamic_subsets():
    static = chapter._FixedOrDynamicSubset(100, chapter.Arm("s", "static", keep=0.7), epochs=8, seed=0)
    a, b = static.epoch_indices(0), static.epoch_indices(1)
    assert len(a) == 70 and set(a.tolist()) == set(b.tolist()) and not torch.equal(a, b)  # same subset, reshuffled
    dynamic = chapter._FixedOrDynamicSubset(100, chapter.Arm("d", "dynamic", keep=0.6, delta=0.875), epochs=8, seed=0)
    assert len(dynamic.epoch_indices(0)) == 60 and set(dynamic.epoch_indices(0).tolist()) != set(
        dynamic.epoch_indices(1).tolist())
    assert sorted(dynamic.epoch_indices(7).tolist()) == list(range(100))  # 7 >= 0.875 * 8: full data


def test_train_smoke_and_ledger_counts():
    cfg = chapter.config("smoke", epochs=3)
    data = chapter.load_data(cfg, torch.device("cpu"))
    full = chapter.train(cfg, data, chapter.Arm("full data", "full"), 0, torch.device("cpu"))
    ib = chapter.train(cfg, data, chapter.infobatch_arm(0.5, 0.5), 0, torch.device("cpu"))
    n = len(data.y)
    assert full.used == 3 * n and full.saved == 0 and 0 <= full.accuracy <= 100
    assert ib.history[0]["used"] == n  # epoch 0 prunes nothing
    assert ib.history[1]["used"] < n and ib.history[2]["used"] == n  # 2 >= 0.5 * 3: annealed
    assert ib.used == sum(h["used"] for h in ib.history) and 0 < ib.saved < 0.5
    assert all("scores" not in h and "below_mean" not in h for h in full.history)
    assert all("scores" not in h for h in ib.history) and ib.history[0]["below_mean"] == 0.0  # all scores equal
    kept = chapter.train(cfg, data, chapter.infobatch_arm(0.5, 0.5), 0, torch.device("cpu"), score_epochs=(1,))
    assert [("scores" in h) for h in kept.history] == [False, True, False]
    scores = kept.history[1]["scores"]
    assert scores.dtype == np.float32 and scores.shape == (n,)
    assert kept.history[1]["below_mean"] == float((scores < scores.mean()).mean()) == ib.history[1]["below_mean"]
    again = chapter.train(cfg, data, chapter.infobatch_arm(0.5, 0.5), 0, torch.device("cpu"))
    assert again.accuracy == ib.accuracy and again.used == ib.used  # same seed, same run
    s = chapter.summarize([ib, again], [full])
    assert s["accuracy_std"] == 0 and s["saved"] == ib.saved and "wall_saved" in s


def test_unbiasedness_separates_rescaled_from_hard_pruning():
    cfg = chapter.config("smoke", mc_samples=100, mc_draws=300)
    data = chapter.load_data(cfg, torch.device("cpu"))
    mc = chapter.unbiasedness(cfg, data, torch.device("cpu"), warmup_epochs=1)
    rescaled, hard = mc["prune below mean, rescaled"], mc["prune below mean, not rescaled"]
    assert rescaled["bias"] < 3 * rescaled["bias_stderr"] + 0.01
    assert hard["bias"] > rescaled["bias"] + 3 * hard["bias_stderr"]


def test_config_validation():
    with pytest.raises(ValueError, match="Invalid profile"):
        chapter.config("tiny")
    with pytest.raises(ValueError, match="Invalid dataset"):
        chapter.load_data(chapter.config("smoke", dataset="imagenet"), torch.device("cpu"))


def test_digits_split():
    train, test = load_digits_1d(seed=0)
    assert train.x.shape[1:] == (1, 64) and len(train.y) + len(test.y) == 1797
    assert float(train.x.max()) <= 1.0 and torch.equal(load_digits_1d(seed=0)[1].y, test.y)
    with pytest.raises(ValueError, match="Invalid test_fraction"):
        load_digits_1d(test_fraction=1.5)


def test_mnist1d_caches_and_leaves_global_rng_alone(tmp_path):
    np.random.seed(123)
    random.seed(7)
    state, py_state = np.random.get_state(), random.getstate()
    train, test = load_mnist1d(200, root=tmp_path)
    assert train.x.shape == (160, 1, 40) and test.x.shape == (40, 1, 40) and train.y.dtype == torch.int64
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
               for a, b in zip(state, np.random.get_state()))
    assert random.getstate() == py_state
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    again, _ = load_mnist1d(200, root=tmp_path)
    assert torch.equal(again.x, train.x)
    with pytest.raises(ValueError, match="Invalid num_samples"):
        load_mnist1d(205, root=tmp_path)
    assert math.isclose(float(train.x.std()), 1.0, rel_tol=0.2)


@pytest.fixture
def cifar_fixture(tmp_path, monkeypatch):
    """load_cifar reads the real-format CIFAR-10 fixture (50 training, 10 test images) through a file:// URL."""
    import hashlib
    from functools import partial
    from pathlib import Path

    import accel.datasets.cifar as cifar

    fixture = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "cifar-10-python-mini.tar.gz"
    sha = hashlib.sha256(fixture.read_bytes()).hexdigest()
    monkeypatch.setattr(cifar, "load_cifar", partial(cifar.load_cifar, url=fixture.as_uri(), sha256=sha,
                                                     root=tmp_path, progress=False))


@pytest.fixture
def one_thread():
    """ResNet-18 on a shared 2-core machine: two threads contend (several times slower), one does not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_paper_profile_path_runs_on_the_cifar_fixture(cifar_fixture, one_thread):
    """The paper profile (CIFAR-10, ResNet-18, OneCycle, crop + flip) end to end on the real-format fixture, CPU."""
    cfg = chapter.config("paper", epochs=2, batch_size=16, seeds=(0,))
    device = torch.device("cpu")
    data = chapter.load_data(cfg, device)
    assert data.x.shape[1:] == (3, 32, 32) and data.num_classes == 10
    run = chapter.train(cfg, data, chapter.infobatch_arm(0.5, cfg.delta), 0, device)
    assert run.used <= 2 * len(data.y) and 0 <= run.accuracy <= 100


@pytest.fixture(scope="module")
def smoke_table1():
    cfg = chapter.config("smoke", epochs=4, seeds=(0, 1))
    data = chapter.load_data(cfg, torch.device("cpu"))
    return cfg, chapter.table1(cfg, data, torch.device("cpu"), show_progress=False)


def test_table1_runs_record_curves_and_feed_the_ledger(smoke_table1):
    from accel.experiments.ledger import entry_from_runs

    cfg, runs = smoke_table1
    run = runs["InfoBatch r=0.5"][0]
    curve = run.curve
    assert len(curve) == cfg.epochs and curve[-1][0] == run.used and curve[-1][3] == run.accuracy
    assert all(a[0] < b[0] and a[1] < b[1] and a[2] <= b[2] for a, b in zip(curve, curve[1:]))  # cumulative
    assert curve[-1][1] == sum(h["steps"] for h in run.history)
    assert math.isclose(curve[-1][2], run.seconds, rel_tol=1e-9)
    # "to target" is the first crossing: a target below the first evaluation is reached at epoch 0's cost
    low = entry_from_runs("ib", chapter.ledger_curves(runs["InfoBatch r=0.5"]), target=0.0)
    assert low.samples_to_target == len(chapter.load_data(cfg, torch.device("cpu")).y)
    assert entry_from_runs("ib", chapter.ledger_curves(runs["InfoBatch r=0.5"]), target=101.0).samples_to_target is None
    with pytest.raises(ValueError, match="record_curve"):
        _ = chapter.Run("a", 0, 50.0, 1, 1, 0.1, [{"used": 1}]).curve


def test_tables_and_commentary_from_runs(smoke_table1):
    from accel.book import MeanStd

    cfg, runs = smoke_table1
    rows = dict(chapter.table1_rows(cfg, runs, MeanStd.of))
    assert rows["full data"]["Δ vs full"][1].mean == 0 and rows["full data"]["saved %"] == (0.0, MeanStd(0.0, 0.0, 2))
    ib = rows["InfoBatch r=0.5"]
    assert ib["saved %"][0] == 50.0 and ib["Δ vs full"][0] == -0.5 and 0 < ib["saved %"][1].mean < 50
    assert rows[chapter.STATIC]["saved %"][0] == 30.0
    gaps = chapter.paired_gaps(runs["InfoBatch r=0.5"], runs["full data"])
    assert ib["Δ vs full"][1].mean == pytest.approx(np.mean(gaps))
    for name in runs:
        assert chapter.short_name(name) and chapter.family(name)
    with pytest.raises(ValueError, match="Invalid arm name"):
        chapter.family("mystery")
    text = chapter.table1_commentary(cfg, runs)
    assert "paired by seed" in text and "Random*" in text and "(n = 1)" not in text
    cost = chapter.overhead(runs["InfoBatch r=0.5"], runs["full data"])
    assert cost["draw_ms_per_epoch"] > 0 and cost["update_ms_per_epoch"] > 0
    assert cost["gap"] == pytest.approx(cost["saved"] - cost["wall_saved"])
    # one definition of wall clock saved everywhere: Table 1's column (paired by seed) is what the text says
    assert 100 * cost["wall_saved"] == pytest.approx(ib["wall clock saved %"][1].mean)
    assert cost["wall_saved"] == chapter.paired_wall_saved(runs["InfoBatch r=0.5"], runs["full data"])
    assert set(chapter.arm_points(runs)) == set(runs)


def test_accuracy_range_and_random_model_share():
    assert chapter.accuracy_range([96.3, 96.4]) == pytest.approx((94.85, 97.85))
    lo, hi = chapter.accuracy_range([80.0, 95.0])
    assert lo == pytest.approx(79.7) and hi == pytest.approx(95.3)
    assert chapter.accuracy_range([99.9])[1] == 100.0
    assert chapter.random_model_share(np.array([math.log(10), 0.5, 2.31, 1.0]), 10) == 0.5


def test_concept_diagram_draws():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from accel.book.diagrams.infobatch import draw_infobatch_cycle

    fig = draw_infobatch_cycle(prune_ratio=0.5, delta=0.875)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "1/(1−r) = 2" in texts and "annealing" in texts
    plt.close(fig)


def _run(arm: str, accuracy: float, seed: int = 0, used: int = 75) -> "chapter.Run":
    return chapter.Run(arm, seed, accuracy, used, 100, 1.0)


def test_wording_helpers_pluralise_and_handle_one_value_sweeps():
    assert chapter.plural(1, "seed") == "1 seed" and chapter.plural(3, "seed") == "3 seeds"
    assert chapter.plural(1_000, "epoch") == "1,000 epochs"
    cfg = chapter.config("smoke")
    assert "digits" in chapter.describe_setup(cfg, 1438) and "1 seed." in chapter.describe_setup(cfg, 1438)
    assert "MNIST-1D" in chapter.describe_setup(chapter.config("cpu"), 9000)
    one = {"ratio": {0.5: [_run("InfoBatch r=0.5", 94.0)]}, "delta": {cfg.delta: [_run("InfoBatch r=0.5", 94.0)]}}
    rows = chapter.sweep_rows(cfg, one, lambda xs: float(np.mean(xs)))
    assert [row[0] for row in rows] == [f"r = 0.5, δ = {cfg.delta:g}"]  # the shared setting appears once
    text = chapter.sweep_commentary(cfg, one, [_run("full data", 94.2, used=100)])
    assert "r = 0.5 only" in text and "δ = 0.875 only" in text and "varies by" not in text and "1 seeds" not in text
    two = {"ratio": {0.3: [_run("a", 94.0)], 0.5: [_run("b", 93.0)]},
           "delta": {0.75: [_run("c", 94.0)], 0.875: [_run("d", 93.5)]}}
    text = chapter.sweep_commentary(cfg, two, [_run("full data", 94.2, used=100)])
    assert "swept: 0.3 and 0.5" in text and "δ = 0.75 and 0.875" in text and "varies by 0.50" in text


def test_table4_commentary_compares_the_ingredients_consistently():
    table1 = {"InfoBatch r=0.5": [_run("ib", 94.0)], chapter.DYNAMIC: [_run("dyn", 92.0)]}
    for rescale, anneal, here in ((94.0, 93.0, "as in the paper"), (93.0, 94.0, "in the paper rescaling does")):
        ablation = {"soft pruning only": [_run("soft", 92.5)], "+ rescaling": [_run("r", rescale)],
                    "+ annealing": [_run("a", anneal)]}
        text = chapter.table4_commentary(table1, ablation)
        assert here in text and "contributes more" in text


def _round_trip(value):
    from accel.experiments import replay

    return replay.decode(json.loads(json.dumps(replay.encode(value))))


def _same_runs(a: dict, b: dict) -> bool:
    """Equal in everything the notebook reads from a run: its fields and every per-epoch entry (arrays exactly)."""
    assert list(a) == list(b)
    for name in a:
        for x, y in zip(a[name], b[name], strict=True):
            assert (x.arm, x.seed, x.accuracy, x.used, x.total, x.seconds) == (y.arm, y.seed, y.accuracy, y.used,
                                                                                y.total, y.seconds)
            assert x.curve == y.curve and x.saved == y.saved
            for hx, hy in zip(x.history, y.history, strict=True):
                assert hx.keys() == hy.keys()
                for key in hx:
                    if isinstance(hx[key], np.ndarray):
                        assert hx[key].dtype == hy[key].dtype and np.array_equal(hx[key], hy[key])
                    else:
                        assert hx[key] == hy[key]
    return True


def test_gpu_profile_path_runs_every_part_on_the_cifar_fixture(cifar_fixture, one_thread):
    """The gpu profile (ResNet-18 on class-balanced CIFAR-10 subsets, OneCycle, crop + flip, one Monte-Carlo warm-up
    epoch) through every part the chapter runs, on the real-format fixture, CPU, shrunk to a step or two each."""
    cfg = chapter.config("gpu", epochs=2, batch_size=10, train_samples=10, test_samples=10, seeds=(0,), ratios=(0.5,),
                         sweep_ratios=(0.5,), sweep_deltas=(0.875, 1.0), mc_samples=4, mc_draws=20)
    device = torch.device("cpu")
    data = chapter.open_data(cfg, device)
    estimate = chapter.estimate(cfg, chapter.probe(cfg, data, device, steps=1, warmup=1))  # cost_model's probe, short
    assert set(estimate.parts) == {"Table 1", "Table 4", "sweeps", "Monte Carlo"}
    assert all(s > 0 for s in estimate.parts.values()) and "resnet18" in estimate.basis
    sizes = chapter.data_sizes(data)
    assert sizes == chapter.DataSizes(10, 10, 10) and torch.bincount(data.y).tolist() == [1] * 10
    assert data.x.shape == (10, 3, 32, 32)
    runs = chapter.table1(cfg, data, device, show_progress=False)
    assert set(runs) == {"full data", "InfoBatch r=0.5", chapter.STATIC, chapter.DYNAMIC}
    reference = runs[chapter.reference_arm(cfg)][0]
    assert [("scores" in h) for h in reference.history] == [e in chapter.histogram_epochs(cfg) for e in range(2)]
    assert reference.history[1]["used"] < 10  # epoch 1 prunes
    ablation = chapter.table4(cfg, data, device, show_progress=False)
    assert set(ablation) == set(chapter.ABLATION)
    sweep = chapter.sweeps(cfg, data, device, known={**runs, **ablation}, show_progress=False)
    reused = runs["InfoBatch r=0.5"]
    assert [(r.accuracy, r.used) for r in sweep["ratio"][0.5]] == [(r.accuracy, r.used) for r in reused]
    assert len(sweep["delta"][1.0]) == 1 and sweep["delta"][1.0][0].history == []  # re-used, and compact
    mc = chapter.unbiasedness(cfg, data, device, seed=0)
    assert mc["n"] == 4 and all(0 <= mc[k]["bias"] < 10 for k in mc if k.startswith("prune "))
    assert _same_runs(_round_trip(runs), runs) and _round_trip(sizes) == sizes


def test_recorded_results_round_trip_and_stay_compact(smoke_table1):
    """What the notebook reads from Table 1 comes back exactly from the results file; only the reference run keeps
    score arrays, and only in the epochs the histograms show."""
    cfg, runs = smoke_table1
    assert _same_runs(_round_trip(runs), runs)
    reference = chapter.reference_arm(cfg)
    for name, rs in runs.items():
        for i, run in enumerate(rs):
            kept = [h["epoch"] for h in run.history if "scores" in h]
            assert kept == (chapter.histogram_epochs(cfg) if (name, i) == (reference, 0) else [])
            assert all("below_mean" in h for h in run.history) == name.startswith("InfoBatch")


def test_lazy_data_loads_only_when_used():
    lazy = chapter.open_data(chapter.config("smoke", dataset="imagenet"), torch.device("cpu"))  # nothing loaded yet
    with pytest.raises(ValueError, match="Invalid dataset"):
        _ = lazy.y
    data = chapter.open_data(chapter.config("smoke"), torch.device("cpu"))
    assert chapter.data_sizes(data) == chapter.DataSizes(1438, 359, 10) and len(data.y_test) == 359


def test_balanced_subset_keeps_order_and_classes():
    y = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1, 2])
    x = torch.arange(9.0)
    sx, sy = chapter.balanced_subset(x, y, 6)
    assert sy.tolist() == [0, 1, 0, 1, 2, 2] and sx.tolist() == [0, 1, 2, 3, 4, 5]
    assert chapter.balanced_subset(x, y, 0)[1] is y and chapter.balanced_subset(x, y, 100)[1] is y
    with pytest.raises(ValueError, match="Invalid sample count"):
        chapter.balanced_subset(x, y, -1)


def _fake_probe(cfg, data, device, steps=3):
    return chapter.Probe(step_s=0.01, batch=cfg.batch_size, eval_s=1e-5, draw_s=1e-3, mc_draw_s=1e-4, train=9600,
                         test=2400)


def test_estimate_scales_with_seeds_epochs_and_sweeps(monkeypatch):
    monkeypatch.setattr(chapter, "probe", _fake_probe)
    cfg = chapter.config("cpu")
    estimate = chapter.cost_model(cfg, None, torch.device("cpu"))
    base = estimate(cfg)
    one_seed = estimate(replace(cfg, seeds=(0,)))
    assert one_seed.parts["Table 1"] == pytest.approx(base.parts["Table 1"] / 3)
    assert one_seed.parts["Table 4"] == pytest.approx(base.parts["Table 4"] / 3)
    assert one_seed.parts["Monte Carlo"] == base.parts["Monte Carlo"]
    longer = estimate(replace(cfg, epochs=80))
    for part in ("Table 1", "Table 4", "sweeps"):
        assert 1.9 < longer.parts[part] / base.parts[part] < 2.1
    # sweep settings that Table 1 already ran at its seeds cost nothing more; a sweep seed outside them does
    known = replace(cfg, sweep_ratios=cfg.ratios, sweep_deltas=(cfg.delta,), sweep_seeds=cfg.seeds[:1])
    assert estimate(known).parts["sweeps"] == 0
    assert estimate(replace(known, sweep_seeds=(7,))).parts["sweeps"] > 0
    fewer_sweep_seeds = estimate(replace(cfg, sweep_seeds=(0,)))
    assert fewer_sweep_seeds.parts["sweeps"] == pytest.approx(base.parts["sweeps"] / 2)
    # a full-data run: epochs x ceil(N / B) steps plus a test pass per epoch and at the end (Table 1 records curves)
    full = estimate(replace(cfg, ratios=(0.5,), seeds=(0,)))
    assert full.parts["Table 1"] > 40 * math.ceil(9600 / 128) * 0.01 + 41 * 2400 * 1e-5
    saved = 1 - sum(chapter.expected_used(cfg, chapter.infobatch_arm(0.5), 9600)) / (9600 * 40)
    assert 0.2 < saved < 0.5 * chapter.ASSUMED_BELOW_MEAN  # epoch 0 and the annealing epochs prune nothing


def test_book_fit_trims_the_chapter_to_a_budget_and_says_so(monkeypatch, tmp_path, capsys):
    from accel.book import start
    from accel.experiments import replay

    monkeypatch.setattr(chapter, "probe", _fake_probe)
    book = start("smoke", 0, notebook="01_infobatch", results_path=tmp_path / "r.json", style=False, quiet=True)
    cfg = chapter.config("cpu")
    whole = chapter.estimate(cfg, _fake_probe(cfg, None, None)).seconds
    try:
        fitted = book.fit(cfg, chapter.cost_model, None, torch.device("cpu"), trims=chapter.TRIMS,
                          budget_minutes=whole / 60 / 3)
        out = capsys.readouterr().out
        assert "Estimated run time on this device" in out and "trimmed sweep_seeds 2 (0, 1) → 1 (0)" in out
        assert "seeds 3 (0, 1, 2) → " in out
        assert fitted.sweep_seeds == (0,) and len(fitted.seeds) < 3 and fitted.epochs <= cfg.epochs
        assert chapter.estimate(fitted, _fake_probe(cfg, None, None)).seconds <= whole / 3
        assert book.fit(cfg, chapter.cost_model, None, torch.device("cpu"), trims=chapter.TRIMS) == cfg  # no budget
    finally:
        replay.begin()
