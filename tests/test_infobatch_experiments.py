"""Chapter 01's experiment code: schedules, random-pruning arms, summaries, datasets (small sizes)."""

import math
import random

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
    assert "scores" in ib.history[1]
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


def test_paper_profile_path_runs_on_the_cifar_fixture(tmp_path, monkeypatch):
    """The paper profile (CIFAR-10, ResNet-18, OneCycle, crop + flip) end to end on the real-format fixture, CPU."""
    import hashlib
    from functools import partial
    from pathlib import Path

    import accel.datasets.cifar as cifar

    fixture = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "cifar-10-python-mini.tar.gz"
    sha = hashlib.sha256(fixture.read_bytes()).hexdigest()
    monkeypatch.setattr(cifar, "load_cifar", partial(cifar.load_cifar, url=fixture.as_uri(), sha256=sha,
                                                     root=tmp_path, progress=False))
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
