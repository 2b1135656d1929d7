"""Recording and replaying a chapter's long computations (accel.experiments.replay), and the time budget
(accel.book.budget)."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from accel.book import budget, start
from accel.experiments import infobatch, replay


def test_encode_decode_round_trip_is_exact_and_json():
    run = infobatch.Run("InfoBatch r=0.5", 1, 91.25, 10, 20, 1.5,
                        [{"epoch": 0, "scores": np.linspace(0, 1, 7, dtype=np.float32), "accuracy": float("nan")}])
    value = {"runs": [run], 0.5: (1, 2.5, float("inf")), "tensor": torch.arange(4.0), "np": np.int64(3)}
    back = replay.decode(json.loads(json.dumps(replay.encode(value))))
    got = back["runs"][0]
    assert isinstance(got, infobatch.Run) and got.arm == run.arm and got.saved == run.saved
    np.testing.assert_array_equal(got.history[0]["scores"], run.history[0]["scores"])
    assert got.history[0]["scores"].dtype == np.float32 and np.isnan(got.history[0]["accuracy"])
    assert back[0.5] == (1, 2.5, float("inf")) and back["np"] == 3
    assert torch.equal(back["tensor"], torch.arange(4.0))


def test_encode_refuses_what_it_cannot_bring_back():
    with pytest.raises(TypeError, match="object"):
        replay.encode(object())
    with pytest.raises(TypeError, match="not accel's"):
        replay.encode(_NotAccel(1))
    with pytest.raises(ValueError, match="not accel's"):
        replay.decode({"__dataclass__": "os:PathLike", "fields": {}})


@dataclasses.dataclass
class _NotAccel:
    x: int


_NotAccel.__module__ = "somewhere.else"


def test_replayable_records_then_replays_without_calling(tmp_path):
    calls = []

    @replay.replayable
    def long_computation(x):
        calls.append(x)
        return {"doubled": np.array([2 * x]), "inner": inner(x)}

    @replay.replayable
    def inner(x):  # called inside another replayable call: covered by the outer recording
        calls.append(("inner", x))
        return x

    recorded = {}
    replay.begin(record=lambda key, value: recorded.__setitem__(key, value))
    assert long_computation(1)["doubled"][0] == 2 and long_computation(2)["doubled"][0] == 4
    assert sorted(recorded) == ["test_replay.test_replayable_records_then_replays_without_calling.<locals>."
                                f"long_computation#{i}" for i in (0, 1)]
    calls.clear()
    replay.begin(source=json.loads(json.dumps(recorded)))
    assert long_computation(99)["doubled"][0] == 2 and long_computation(99)["doubled"][0] == 4
    assert calls == []
    with pytest.raises(KeyError, match="re-run the chapter without RESULTS_FROM"):
        long_computation(3)
    replay.begin()


def test_start_renders_a_recorded_run_and_refuses_bad_sources(tmp_path, capsys):
    path = tmp_path / "ch.json"
    book = start("smoke", 3, notebook="ch", results_path=path, style=False)

    @replay.replayable
    def train():
        return [1.0, 2.0]

    assert train() == [1.0, 2.0]
    book.results.metric("m", 1.0)
    recorded = json.loads(path.read_text())
    assert recorded["replay"] and recorded["seed"] == 3

    book = start("cpu", 0, notebook="ch", results_from=path, style=False)
    assert book.profile == "smoke" and book.seed == 3 and book.replaying
    assert "nothing is trained now" in capsys.readouterr().out
    assert train() == [1.0, 2.0]
    with pytest.raises(ValueError, match="RESULTS_PATH.*overwrite"):
        start("cpu", 0, notebook="ch", results_path=path, results_from=path, style=False)
    with pytest.raises(ValueError, match="recorded by chapter 'ch', not 'other'"):
        start("cpu", 0, notebook="other", results_from=path, style=False)
    with pytest.raises(ValueError, match="is not a file"):
        start("cpu", 0, notebook="ch", results_from=tmp_path / "missing.json", style=False)
    replay.begin()


@dataclasses.dataclass(frozen=True)
class _Cfg:
    seeds: tuple = (0, 1, 2)
    epochs: int = 40


def _estimate(cfg):
    return budget.Estimate({"train": 6.0 * len(cfg.seeds) * cfg.epochs}, "6 s per epoch")


def test_fit_budget_trims_seeds_then_epochs_and_says_so():
    cfg, estimate, trimmed = budget.fit_budget(_Cfg(), _estimate, None, [("seeds", 1), ("epochs", 10)])
    assert cfg == _Cfg() and trimmed == [] and estimate.seconds == 720
    cfg, estimate, trimmed = budget.fit_budget(_Cfg(), _estimate, 9, [("seeds", 1), ("epochs", 10)])
    assert cfg.seeds == (0, 1) and cfg.epochs == 40 and estimate.seconds <= 540
    assert trimmed == ["seeds 3 (0, 1, 2) → 2 (0, 1)"]
    cfg, estimate, trimmed = budget.fit_budget(_Cfg(), _estimate, 2, [("seeds", 1), ("epochs", 10)])
    assert cfg.seeds == (0,) and 10 <= cfg.epochs < 40 and estimate.seconds <= 120
    cfg, estimate, trimmed = budget.fit_budget(_Cfg(), _estimate, 0.1, [("seeds", 1), ("epochs", 10)])
    assert cfg == _Cfg(seeds=(0,), epochs=10) and estimate.seconds > 6  # the floors, above the budget


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "15", True])
def test_fit_budget_rejects_bad_budgets(bad):
    with pytest.raises(ValueError, match="BUDGET_MINUTES"):
        budget.fit_budget(_Cfg(), _estimate, bad, [("seeds", 1)])


def test_fit_budget_rejects_unknown_knobs():
    with pytest.raises(ValueError, match="no field 'steps'"):
        budget.fit_budget(_Cfg(), _estimate, 1, [("steps", 1)])


def test_book_fit_prints_the_estimate_and_records_the_plan(tmp_path, capsys):
    book = start("smoke", 0, notebook="ch", results_path=tmp_path / "r.json", style=False)
    probes = []

    def cost_model(cfg, scale):
        probes.append(scale)
        return _estimate

    start_cfg = infobatch.config("cpu")  # a chapter's config: seeds (0, 1, 2), 40 epochs
    cfg = book.fit(start_cfg, cost_model, 1.0, trims=[("seeds", 1), ("epochs", 10)], budget_minutes=9)
    out = capsys.readouterr().out
    assert "Estimated run time on this device, profile smoke: 12.0 min" in out and "trimmed seeds" in out
    assert cfg.seeds == (0, 1) and probes == [1.0]
    plan = json.loads((tmp_path / "r.json").read_text())["plan"]
    assert plan["trimmed"] == ["seeds 3 (0, 1, 2) → 2 (0, 1)"] and plan["estimate_s"] == 480
    replayed = start("cpu", 0, notebook="ch", results_from=tmp_path / "r.json", style=False)
    assert replayed.fit(start_cfg, cost_model, 1.0, trims=[("seeds", 1)]) == cfg and probes == [1.0]
    replay.begin()


def test_auto_is_gpu_on_cuda_and_cpu_otherwise(monkeypatch):
    from accel.book.session import resolve_profile

    monkeypatch.delenv("ACCEL_PROFILE", raising=False)
    assert resolve_profile("auto", torch.device("cuda")) == "gpu"
    assert resolve_profile("auto", torch.device("cpu")) == "cpu"
    assert resolve_profile("gpu", torch.device("cpu")) == "gpu"
