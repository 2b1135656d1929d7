"""Chapter 00's laws, data and measurements (small sizes)."""

import math

import numpy as np
import pytest
import torch

from accel.datasets.signals import CompressedSignals
from accel.experiments import where_time_goes as chapter
from accel.experiments.ledger import LedgerEntry, ledger_rows


def test_overlap_law():
    assert chapter.overlap_steps_per_second(0.03, 0.01, 1) == pytest.approx(1 / 0.03)
    assert chapter.overlap_steps_per_second(0.03, 0.01, 3) == pytest.approx(100)  # e = R: the step bound
    assert chapter.overlap_steps_per_second(0.03, 0.01, 6) == pytest.approx(100)  # beyond R: no gain
    assert chapter.overlap_steps_per_second(0.005, 0.01, 1) == pytest.approx(100)  # R < 1: step-bound already
    assert chapter.accelerator_idle_share(0.03, 0.01, 1) == pytest.approx(2 / 3)
    assert chapter.accelerator_idle_share(0.03, 0.01, 3) == pytest.approx(0)
    with pytest.raises(ValueError, match="echo_factor"):
        chapter.overlap_steps_per_second(0.03, 0.01, 0.5)


def test_amdahl():
    assert chapter.amdahl_speedup(0.5, 2) == pytest.approx(4 / 3)
    assert chapter.amdahl_speedup(1.0, 3) == pytest.approx(3)
    assert chapter.amdahl_speedup(0.0, 100) == pytest.approx(1)
    with pytest.raises(ValueError, match="fraction"):
        chapter.amdahl_speedup(1.5, 2)


def test_signals_are_deterministic_and_work_keeps_the_distribution():
    a, b = CompressedSignals(64, seed=1), CompressedSignals(64, seed=1)
    x, y = a[5]
    assert x.shape == (1, 128) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, b[5][0])
    a.set_epoch(1)
    assert not torch.equal(x, a[5][0])  # new epoch, new noise
    test = CompressedSignals(64, seed=1, split="test")
    assert np.allclose(test.templates, a.templates) and not torch.equal(test[5][0], x)
    heavy = CompressedSignals(256, seed=1, work=50)
    light = CompressedSignals(256, seed=1, work=1)
    assert all(torch.equal(heavy[i][0], light[i][0]) for i in range(len(light)))  # work changes cost, not data
    noise = torch.stack([light[i][0] - torch.tensor(light.decode(i)) for i in range(len(light))])
    assert noise.std().item() == pytest.approx(light.noise, rel=0.05)


@pytest.mark.parametrize("kwargs, name", [({"work": 0}, "work"), ({"split": "val"}, "split"),
                                          ({"noise": -1.0}, "noise"), ({"num_samples": 0}, "num_samples")])
def test_signals_validation(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        CompressedSignals(**kwargs)


def test_breakdown_has_every_stage():
    cfg = chapter.config("smoke", breakdown_steps=3, warmup_steps=1, num_samples=256)
    times = chapter.step_breakdown(cfg, torch.device("cpu"))
    assert list(times) == list(chapter.STAGES)
    assert all(len(t) == 3 and (t >= 0).all() for t in times.values())
    assert times["data loading"].sum() > 0 and times["backward"].sum() > 0


def test_pipeline_counts_steps_and_fresh_examples():
    cfg = chapter.config("smoke", num_samples=256, batch_size=16)
    model, optimizer = chapter.make_model(cfg, torch.device("cpu"), 0)
    data = chapter.make_data(cfg, 1, 0)
    run = chapter.train_pipelined(model, optimizer, data, cfg, echo_factor=2, steps=10, seed=0,
                                  device=torch.device("cpu"))
    assert run.steps == 10 and run.fresh_examples == 5 * 16
    run = chapter.train_pipelined(model, optimizer, data, cfg, echo_factor=1.5, steps=30, seed=0,
                                  device=torch.device("cpu"))
    assert 16 * 30 / 2 <= run.fresh_examples <= 16 * 30  # between e = 2 and e = 1
    assert 0 <= run.idle_share < 1


def test_training_from_a_seed_is_reproducible():
    cfg = chapter.config("smoke", num_samples=256, batch_size=16)
    weights = []
    for _ in range(2):
        model, optimizer = chapter.make_model(cfg, torch.device("cpu"), 3)
        chapter.train_pipelined(model, optimizer, chapter.make_data(cfg, 1, 0), cfg, echo_factor=1.5, steps=8,
                                seed=3, device=torch.device("cpu"))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_config_rejects_unknown_profile():
    with pytest.raises(ValueError, match="Invalid profile"):
        chapter.config("huge")


def test_ledger_rows():
    entries = [LedgerEntry("base", 1000, 100, 10.0, 0.9), LedgerEntry("method", 500, 200, 5.0, 0.88),
               LedgerEntry("missed", None, None, None, 0.5)]
    rows = ledger_rows(entries, "base")
    assert rows[1][2] == 0.5 and rows[1][4] == 2.0 and rows[1][6] == 0.5
    assert math.isclose(rows[1][8], -0.02) and rows[2][2] is None
    with pytest.raises(ValueError, match="Invalid baseline"):
        ledger_rows(entries, "nope")


def test_lever_table_uses_the_measured_shares():
    shares = {"data loading": 0.5, "host→device copy": 0.0, "forward": 0.2, "backward": 0.2, "optimizer": 0.1}
    rows = {r["lever"].split()[0]: r for r in chapter.lever_table(shares)}
    assert rows["Data"]["share p"] == 0.5 and rows["Data"]["bound at s"] == pytest.approx(4 / 3)
    assert rows["ST-MoE"]["share p"] == pytest.approx(0.4)


def test_calibration_stays_finite_when_a_busy_machine_flattens_the_probes(monkeypatch):
    """Load can make the heavy probe read as fast as the light one; the fitted effort must stay modest, not explode."""
    cfg = chapter.config("smoke")
    clock = iter(float(i) for i in range(10**6))  # every pass takes exactly 1 s, whatever the work
    monkeypatch.setattr(chapter.time, "perf_counter", lambda: next(clock))
    work = chapter._estimate_work(cfg, t_target=2.0 * cfg.batch_size / max(8, min(cfg.batch_size, 64)), seed=0)
    assert 1 <= work <= 10 * chapter.PROBE_WORK
