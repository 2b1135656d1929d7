"""The shared slow input side and overlap law (chapters 00 and 02): the law, its measurement, the verdicts."""

import functools
import time

import pytest
import torch

from accel.datasets.slow import SlowDecoded
from accel.experiments import slow_input as law

CPU = torch.device("cpu")


def test_overlap_law_and_its_kink():
    assert law.overlap_steps_per_second(0.03, 0.01, 1) == pytest.approx(1 / 0.03)
    assert law.overlap_steps_per_second(0.03, 0.01, 3) == pytest.approx(100)  # e = R: the step bound
    assert law.overlap_steps_per_second(0.03, 0.01, 6) == pytest.approx(100)  # beyond R: no gain
    assert law.overlap_steps_per_second(0.005, 0.01, 1) == pytest.approx(100)  # R < 1: step-bound already
    assert law.accelerator_idle_share(0.03, 0.01, 1) == pytest.approx(2 / 3)
    assert law.accelerator_idle_share(0.03, 0.01, 3) == pytest.approx(0)
    assert law.speedup_cap(2, 4.0) == 2 and law.speedup_cap(8, 4.0) == 4 and law.speedup_cap(2, 0.5) == 1
    for kwargs, name in (({"echo_factor": 0.5}, "echo_factor"), ({"t_down": 0.0}, "t_down")):
        with pytest.raises(ValueError, match=name):
            law.overlap_steps_per_second(**{"t_up": 0.03, "t_down": 0.01, **kwargs})


def small_dataset(n=512, work=1):
    """n MNIST-1D-shaped samples stored compressed, decoded with `work` passes."""
    g = torch.Generator().manual_seed(0)
    return SlowDecoded(torch.randn(n, 1, 16, generator=g), torch.randint(0, 10, (n,), generator=g), work=work)


def toy_step():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(x, y):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


@pytest.mark.parametrize("factor", [1, 3])
def test_measured_run_reports_the_costs_of_its_own_window(factor):
    """The law's inputs come from the timed window itself: t_up from the worker's CPU stamps (one per fresh batch),
    t_down from timing the step, and the realised echo factor from counting fresh batches in the window."""
    run = law.measured_run(small_dataset(work=5), 8, toy_step(), factor, 12, 0, CPU)
    assert set(run) == {"steps/s", "t_up", "t_down", "echo factor", "worker CPU / wall"}
    assert run["echo factor"] == factor  # an integer factor: every fresh batch in the window is used exactly e times
    assert run["steps/s"] > 0 and run["t_up"] > 0 and run["t_down"] > 0
    assert run["steps/s"] <= 1 / run["t_down"] and 0 < run["worker CPU / wall"] <= 1.1


def test_measured_run_refuses_a_window_longer_than_an_epoch():
    with pytest.raises(ValueError, match="Invalid steps: 12"):  # 8 fresh batches: 2 of warm-up + 12 do not fit
        law.measured_run(small_dataset(n=64), 8, toy_step(), 1, 12, 0, CPU)


def test_stamped_collate_adds_the_process_clocks():
    before = time.perf_counter()
    x, y, clocks = law.StampedCollate()([(torch.zeros(2), torch.tensor(1)), (torch.ones(2), torch.tensor(0))])
    assert x.shape == (2, 2) and y.tolist() == [1, 0]
    cpu, wall = clocks.tolist()
    assert clocks.dtype == torch.float64 and 0 < cpu <= time.process_time() and before <= wall <= time.perf_counter()


def test_law_check_rows_cover_each_setting():
    dataset = small_dataset(n=512)
    x, y = dataset[0][0][None].repeat(8, 1, 1), torch.zeros(8, dtype=torch.long)
    rows = law.law_check(dataset.with_work, toy_step(), (x, y), batch_size=8, ratios=(2.0,), factors=(1, 2),
                         steps=12, repeats=1, device=CPU, probe=True, progress=False)
    assert [r["echo factor"] for r in rows] == [1, 2]
    for r in rows:
        assert r["R"] > 0 and r["e / R"] == pytest.approx(r["echo factor"] / r["R"]) and len(r["runs"]) == 1
        assert r["measured / modelled"] > 0 and r["measured / probed law"] > 0 and r["spread"] == 0


def test_downstream_seconds_times_the_step():
    calls = []
    seconds = law.downstream_seconds(lambda x, y: calls.append(1), torch.zeros(1), torch.zeros(1), 5, CPU)
    assert len(calls) == 8 and seconds >= 0


def _row(R, e, ratio, target=2.0):
    return {"R": R, "echo factor": e, "measured / modelled": ratio, "target R": target}


def test_law_verdict_applies_the_floor_of_each_input_side():
    assert law.law_verdict([_row(8.1, 2, 0.91), _row(2.1, 2, 0.86), _row(2.1, 3, 0.5)])[0] is True
    passed, detail = law.law_verdict([_row(8.1, 2, 0.89), _row(2.1, 2, 0.95)])
    assert passed is False and "R >= 4: worst 0.890 < floor 0.90 (1 setting, 1 below)" in detail
    # a miss never rounds to its floor: 0.896 reads as below 0.90
    assert "worst 0.896 < floor 0.90" in law.law_verdict([_row(8.1, 2, 0.896)])[1]
    assert "R < 4: worst 0.950 >= floor 0.85 (1 setting)" in detail
    assert law.law_verdict([_row(2.0, 1, 0.84)])[0] is False
    assert law.law_floor(4.0) == 0.90 and law.law_floor(3.9) == 0.85


def test_law_verdict_is_not_evaluated_without_a_setting_below_R():
    passed, why = law.law_verdict([_row(0.8, 1, 0.7), _row(0.9, 2, 0.6)])
    assert passed is None and "no setting had e <= R" in why and "0.8" in why


def test_ceiling_verdict_and_kink_sides():
    rows = [_row(2.0, 1, 0.95), _row(2.0, 4, 1.04), _row(5.0, 8, 0.9, target=5.0)]
    assert law.ceiling_verdict(rows) == (True, "highest measured / modelled 1.040 over 3 settings (limit 1.05)")
    assert law.ceiling_verdict(rows + [_row(2.0, 2, 1.2)])[0] is False
    assert law.kink_sides(rows) == {"R ≈ 2: e <= R": 1, "R ≈ 2: e > R": 1, "R ≈ 5: e > R": 1}


def test_calibration_stays_finite_when_a_busy_machine_flattens_the_probes(monkeypatch):
    """Load can make the heavy probe read as fast as the light one; the fitted effort must stay modest, not explode."""
    monkeypatch.setattr(law, "upstream_seconds", lambda dataset, batch_size, batches, seed: 0.01)
    work = law.calibrate_work(functools.partial(small_dataset, 64), 8, t_target=0.03)
    assert 1 <= work <= 100 * 200  # three corrections at a tenth of the heavy probe's slope; a flat fit asked for 6e7
    with pytest.raises(ValueError, match="t_target"):
        law.calibrate_work(small_dataset, 8, t_target=0)


def test_words_for_measured_numbers():
    from accel.experiments.slow_input import plural, ratio_summary, speed_phrase, value_range

    assert plural(1, "seed") == "1 seed" and plural(3, "seed") == "3 seeds"
    assert value_range([0.581, 0.584]) == "0.58" and value_range([0.58, 0.69]) == "0.58–0.69"
    assert speed_phrase(0.4) == "2.50× slower" and speed_phrase(1.6) == "1.60× faster"
    assert speed_phrase(float("nan")) == "not measured"
    assert ratio_summary([]).startswith("not measured") and ratio_summary([0.5]) == "0.50 (1 setting)"
    assert ratio_summary([0.6, 0.76]) == "0.68 (range 0.60–0.76, 2 settings)"
