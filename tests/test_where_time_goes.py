"""Chapter 00's laws, data and measurements (small sizes)."""

import functools
import math
from dataclasses import replace

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


# --- the gpu profile's code path, replay and the run-time estimate -----------------------------------------------

CPU = torch.device("cpu")


def _shrunk_gpu_config():
    """The gpu profile (length, classes, noise, lr, R targets, ledger ratio and target as it sets them) shrunk to run
    one or two steps of each part on a CPU: a narrow model, small batches, one setting of the law."""
    return chapter.config("gpu", num_samples=512, width=16, batch_size=32, breakdown_steps=2, warmup_steps=1,
                          ratios=(2.0,), echo_factors=(1,), law_steps=12, repeats=1, ledger_max_steps=4,
                          ledger_seeds=(0,), eval_every=2, num_val=64)


@pytest.fixture(scope="module")
def gpu_path_results():
    """Every replayable computation of the chapter, run once on the shrunk gpu config (about 10 s on a 2-core CPU)."""
    cfg = _shrunk_gpu_config()
    model, optimizer = chapter.make_model(cfg, CPU, 0)
    loader = torch.utils.data.DataLoader(chapter.make_data(cfg, 1, 0), batch_size=cfg.batch_size)
    return {"breakdown": chapter.step_breakdown(cfg, CPU, seed=1),
            "law": chapter.overlap_law_check(cfg, CPU, seed=2, progress=False),
            "ledger": chapter.ledger_runs(cfg, CPU, seed=3),
            "drop-in": chapter.wait_and_step(loader, chapter.trainer_step(model, optimizer))}


def test_gpu_profile_code_path_runs_each_part(gpu_path_results):
    cfg = _shrunk_gpu_config()
    breakdown = gpu_path_results["breakdown"]
    assert list(breakdown) == list(chapter.STAGES) and all(len(t) == 2 for t in breakdown.values())
    (row,) = gpu_path_results["law"]
    assert row["echo factor"] == 1 and row["R"] > 0 and row["measured / modelled"] > 0
    ledger = gpu_path_results["ledger"]
    assert list(ledger["curves"]) == [1, 2] and ledger["work"] >= 1
    for curves in ledger["curves"].values():
        assert len(curves) == 1 and [point[1] for point in curves[0]] == [2, 4]  # (fresh, steps, seconds, accuracy)
    entries = chapter.ledger_entries(ledger, cfg.ledger_target)
    assert [e.arm for e in entries] == ["echo e=1", "echo e=2"]
    wait, seconds, steps = gpu_path_results["drop-in"]
    assert steps == 512 // 32 and wait >= 0 and seconds >= 0


def _same(a, b) -> bool:
    """Equal in value and in type (tuples stay tuples, arrays keep their dtype), as the notebook would read them."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def test_recorded_results_come_back_exactly_and_stay_small(gpu_path_results):
    """What a replay (RESULTS_FROM) hands the notebook is what the run returned: each replayable result survives the
    results file's JSON encoding, and the whole is a few kB at this size."""
    import json

    from accel.experiments import replay

    text = json.dumps({name: replay.encode(value) for name, value in gpu_path_results.items()})
    back = {name: replay.decode(value) for name, value in json.loads(text).items()}
    for name, value in gpu_path_results.items():
        assert _same(back[name], value), name
    assert len(text) < 20_000


def test_measured_runs_fit_in_one_epoch_in_every_profile():
    """measured_run and the calibration loaders read one epoch: each profile's data must hold the batches they need."""
    for profile in chapter.CONFIGS:
        cfg = chapter.config(profile)
        batches = math.ceil(cfg.num_samples / cfg.batch_size)
        assert batches >= 10, profile  # upstream_seconds: 2 untimed + 8 timed batches
        for e in cfg.echo_factors:
            steps = 2 * math.ceil(e) + max(cfg.law_steps, math.ceil(12 * e))
            assert e * batches >= steps, (profile, e)


def _probe(**changes):
    values = {"step": 0.02, "read": 1e-4, "work": 1e-6, "build": 1e-4, "loader_start": 0.1, "batch_size": 128}
    return chapter.Probe(**{**values, **changes})


def test_estimate_scales_with_what_the_config_counts():
    cfg, probe = chapter.config("cpu"), _probe()

    def parts(**overrides):
        return chapter.estimate(replace(cfg, **overrides), probe).parts

    base = parts()
    assert set(base) == {"step breakdown (section 2)", "overlap law (section 4)", "ledger (section 5)"}
    assert all(v > 0 for v in base.values())
    ledger = [parts(ledger_seeds=tuple(range(n)))["ledger (section 5)"] for n in (1, 2, 4)]
    assert ledger[2] - ledger[1] == pytest.approx(2 * (ledger[1] - ledger[0]))  # linear in seeds
    ledger = [parts(ledger_max_steps=n)["ledger (section 5)"] for n in (240, 480, 720)]
    assert ledger[2] - ledger[1] == pytest.approx(ledger[1] - ledger[0]) and ledger[1] > ledger[0]  # linear in steps
    law = [parts(repeats=n)["overlap law (section 4)"] for n in (1, 2, 3)]
    assert law[2] - law[1] == pytest.approx(law[1] - law[0]) and law[1] > law[0]
    assert parts(law_steps=48)["overlap law (section 4)"] > base["overlap law (section 4)"]
    assert parts(breakdown_steps=80)["step breakdown (section 2)"] > base["step breakdown (section 2)"]
    slow = chapter.estimate(cfg, _probe(step=0.04)).parts
    assert all(slow[k] > base[k] for k in base)  # a slower step makes every part slower
    with pytest.raises(ValueError, match="batch size"):
        chapter.estimate(replace(cfg, batch_size=64), probe)


def test_probe_measures_this_device_without_touching_the_global_rng():
    cfg = chapter.config("smoke", num_samples=256)
    before = torch.get_rng_state()
    probe = chapter.probe(cfg, CPU)
    assert torch.equal(before, torch.get_rng_state())
    assert probe.batch_size == cfg.batch_size and probe.device == "cpu"
    assert min(probe.step, probe.read, probe.work, probe.build, probe.loader_start) >= 0
    estimate = chapter.cost_model(cfg, CPU)(cfg)
    assert estimate.seconds > 0 and "per training step at batch 64" in estimate.basis


def test_book_fit_trims_to_the_budget_and_says_what(tmp_path, capsys):
    from accel.book import start
    from accel.experiments import replay

    book = start("smoke", 0, notebook="00_where_time_goes", results_path=tmp_path / "r.json", style=False, quiet=True)
    full = chapter.config("cpu")

    def cost_model(cfg, device):  # the real estimate, fed with made-up costs: no timing in a test
        return functools.partial(chapter.estimate, probe=_probe())

    untrimmed = chapter.estimate(full, _probe()).seconds
    try:
        cfg = book.fit(full, cost_model, CPU, trims=chapter.TRIMS, budget_minutes=0.8 * untrimmed / 60)
        out = capsys.readouterr().out
        assert cfg.ledger_seeds == (0,) and cfg.repeats == full.repeats  # one seed off was enough
        assert "trimmed ledger_seeds 2 (0, 1) → 1 (0)" in out
        cfg = book.fit(full, cost_model, CPU, trims=chapter.TRIMS, budget_minutes=0.01)
        out = capsys.readouterr().out
        assert (cfg.ledger_seeds, cfg.repeats, cfg.ledger_max_steps, cfg.law_steps) == ((0,), 1, 40, 12)
        assert "still above the budget" in out
        assert book.fit(full, cost_model, CPU, trims=chapter.TRIMS, budget_minutes=None) == full
    finally:
        replay.begin()
