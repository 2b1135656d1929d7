"""Chapter 00's laws, data and measurements (small sizes)."""

import math

import numpy as np
import pytest
import torch

from accel.datasets.signals import CompressedSignals
from accel.experiments import where_time_goes as chapter
from accel.experiments.ledger import LedgerEntry, ledger_rows


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


def test_lever_table_bounds_only_the_share_a_lever_speeds_up():
    shares = {"data loading": 0.5, "host→device copy": 0.0, "forward": 0.2, "backward": 0.2, "optimizer": 0.1}
    rows = {r["lever"].split()[0]: r for r in chapter.lever_table(shares)}
    assert rows["Data"]["share p"] == 0.5 and "≤ 2.00×" in rows["Data"]["bound"]  # 1 / (1 - 0.5)
    assert rows["CowClip"]["share p"] is None and rows["ST-MoE"]["share p"] is None


def test_ledger_entries_and_flags_above_the_law_cap():
    # curves: (fresh examples, steps, seconds, accuracy); e = 2 reaches 0.9 at step 20 and 2.0 s, e = 1 at step 40, 10 s
    ledger = {"curves": {1: [[(1280, 20, 5.0, 0.5), (2560, 40, 10.0, 0.95)]],
                         2: [[(1280, 20, 2.0, 0.92), (2560, 40, 4.0, 0.96)]]}}
    entries = chapter.ledger_entries(ledger, 0.9)
    assert [e.arm for e in entries] == ["echo e=1", "echo e=2"]
    assert entries[1].samples_to_target == 1280 and entries[1].steps_to_target == 20
    flags = chapter.ledger_flags(entries, ratio=4.0)
    assert len(flags) == 1 and "5.00× faster" in flags[0] and "fewer steps" in flags[0] and "drifted" in flags[0]
    assert chapter.ledger_flags(entries, ratio=0.5)[0].count("min(e, R) = 1.00") == 1
    within = {"curves": {1: [[(2560, 40, 10.0, 0.95)]], 2: [[(2560, 40, 5.5, 0.95)]]}}
    assert chapter.ledger_flags(chapter.ledger_entries(within, 0.9), ratio=4.0) == []


def test_ledger_reading_follows_the_numbers():
    from accel.experiments.ledger import LedgerEntry
    from accel.experiments.where_time_goes import ledger_reading

    missed = [LedgerEntry("echo e=1", None, None, None, 0.18), LedgerEntry("echo e=2", None, None, None, 0.08)]
    text = ledger_reading(missed, 40)
    assert "e = 1 and e = 2 did not reach" in text and "0.08 against e = 1's 0.18" in text
    both = [LedgerEntry("echo e=1", 1000, 100, 10.0, 0.9), LedgerEntry("echo e=2", 500, 100, 5.0, 0.9)]
    assert "2.00× faster" in ledger_reading(both, 40) and "about as much as a fresh one" in ledger_reading(both, 40)


def test_kink_sentence_says_where_the_kink_sits():
    assert "below $e = 1$" in chapter.kink_sentence(0.5) and "cannot speed it up" in chapter.kink_sentence(0.5)
    assert "between 1 and 2" in chapter.kink_sentence(1.5)
    assert "at or beyond $e = 2$" in chapter.kink_sentence(3.0)
