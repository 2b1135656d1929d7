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
