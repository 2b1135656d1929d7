"""What a reader sees from the book's shared code: claims printed where checked, the ledger's one meaning of "to
target", "When it pays", "Results at a glance", recorded run times, static explorer readouts, widget fallbacks."""

from __future__ import annotations

import json

import nbformat
import pytest

from accel.book import MeanStd, at_a_glance, show_ledger, start, static_readout, when_it_pays
from accel.book import glance as glance_module
from accel.book.build import WIDGET_MIME, WIDGET_TEXT, static_widget_text
from accel.book.tables import format_cell
from accel.experiments.ledger import LedgerEntry, entry_from_runs, first_reach


@pytest.fixture
def results(monkeypatch, tmp_path):
    monkeypatch.delenv("ACCEL_PROFILE", raising=False)
    return start("smoke", 0, results_path=tmp_path / "r.json", quiet=True, style=False).results


def test_a_claim_prints_its_mark_and_detail_where_it_is_checked(results, capsys):
    results.claim("held", True, "0.91 vs floor 0.90")
    results.claim("failed", False, "order b < a")
    results.claim("skipped", None, "no setting qualified")
    results.claim("quiet", True, "x", show=False)
    assert capsys.readouterr().out.splitlines() == [
        "✓ held: 0.91 vs floor 0.90", "✗ failed: order b < a", "– skipped: not evaluated: no setting qualified"]


def test_first_reach_is_the_first_crossing():
    curve = [(100, 1, 0.5, 0.80), (200, 2, 1.0, 0.91), (300, 3, 1.5, 0.89), (400, 4, 2.0, 0.95)]
    assert first_reach(curve, 0.9) == (200, 2, 1.0, 0.91)
    assert first_reach(curve, 0.99) is None
    losses = [(1, 1, 1.0, 3.0), (2, 2, 2.0, 2.4), (3, 3, 3.0, 2.6)]
    assert first_reach(losses, 2.5, lower_is_better=True) == (2, 2, 2.0, 2.4)


def test_entry_from_runs_averages_seeds_and_needs_every_seed_to_reach():
    a = [(100, 1, 1.0, 0.5), (200, 2, 2.0, 0.9)]
    b = [(100, 1, 1.5, 0.95), (200, 2, 3.0, 0.97)]
    entry = entry_from_runs("arm", [a, b], 0.9)
    assert entry == LedgerEntry("arm", 150, 2, 1.75, pytest.approx(0.935))
    never = [(100, 1, 1.0, 0.5), (200, 2, 2.0, 0.6)]
    missed = entry_from_runs("arm", [a, never], 0.9)
    assert missed.samples_to_target is None and missed.seconds_to_target is None
    assert missed.quality == pytest.approx(0.75)
    with pytest.raises(ValueError, match="Invalid curves for arm 'x'"):
        entry_from_runs("x", [[]], 0.9)


def test_show_ledger_records_the_table_and_its_headline_row(results):
    entries = [LedgerEntry("base", 1000, 10, 2.0, 0.90), LedgerEntry("method", 600, 6, 1.5, 0.91)]
    table = show_ledger(results, entries, baseline="base", arm="method", target="90% accuracy", quality="accuracy")
    recorded = json.loads(results.path.read_text())
    assert recorded["tables"]["ledger"]["rows"][1][0] == "method"
    assert recorded["ledger"]["arm"] == "method"
    row = recorded["ledger"]["row"]
    assert row["samples to target"] == 600 and row["samples × baseline"] == pytest.approx(0.6)
    assert row["steps × baseline"] == pytest.approx(0.6) and row["wall clock × baseline"] == pytest.approx(0.75)
    assert table.rows[1][2] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="Invalid arm: 'nope'"):
        show_ledger(results, entries, baseline="base", arm="nope", target="t", quality="q")


def test_at_a_glance_shows_every_claim_key_result_ledger_row_and_provenance(results, capsys):
    results.key_result("speed", "1.9× faster", "3.25× faster")
    results.claim("a", True, "x", show=False)
    results.claim("b", False, "y", show=False)
    results.claim("c", None, "z", show=False)
    show_ledger(results, [LedgerEntry("base", 10, 1, 1.0, 0.5), LedgerEntry("m", 5, 1, 0.6, 0.5)], baseline="base",
                arm="m", target="t", quality="q")
    text = at_a_glance(results, show=False)
    assert "| speed | 1.9× faster | 3.25× faster |" in text
    assert "- ✓ a: x" in text and "- ✗ b: y" in text and "- – c: not evaluated: z" in text
    assert "1 held ✓, 1 did not ✗, 1 not evaluated –" in text
    assert "headline row" in text and "| m |" in text
    assert "profile `smoke`" in text and "commit" in text and "seed 0" in text


def test_when_it_pays_needs_all_three_parts():
    assert when_it_pays(["a"], ["b"], "c") is None  # displayed (printed outside Jupyter), not returned to show twice
    text = when_it_pays(["1.9× faster"], ["twice the steps"], "echo when R > 1.5", show=False)
    assert "When it pays" in text and "- 1.9× faster" in text and "twice the steps" in text and "R > 1.5" in text
    with pytest.raises(ValueError, match="Invalid when_it_pays"):
        when_it_pays([], ["c"], "r", show=False)


def test_run_time_line_reads_the_recorded_runs(monkeypatch, tmp_path):
    (tmp_path / "tests" / "reference").mkdir(parents=True)
    (tmp_path / "data" / "results").mkdir(parents=True)
    (tmp_path / "tests" / "reference" / "ch.smoke.json").write_text(
        json.dumps({"profile": "smoke", "wall_time_s": 21.4, "device": "cpu (x86_64, 2 cores)"}))
    (tmp_path / "data" / "results" / "ch.cpu.json").write_text(
        json.dumps({"profile": "cpu", "wall_time_s": 300.0, "device": "cpu (x86_64, 2 cores)"}))
    monkeypatch.setattr(glance_module, "ROOT", tmp_path)
    line = glance_module.run_time_line("ch")
    assert line == ("Recorded run time of this chapter: smoke 21 s on cpu (x86_64, 2 cores); cpu 5.0 min on cpu "
                    "(x86_64, 2 cores).")
    assert "No recorded run" in glance_module.run_time_line("other")


def test_static_readout_and_widget_fallback():
    text = static_readout({"e": 2, "R": 3.0}, {"steps/s": 41.23456, "fresh": 12000})
    assert text.splitlines()[0].startswith("Readout at e = 2, R = 3.000")
    assert "41.235" in text and "12,000" in text
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("explorer(...)")
    cell.outputs = [nbformat.v4.new_output("display_data", data={WIDGET_MIME: {"model_id": "x"},
                                                                 "text/plain": "VBox(children=(HTML(value='<b>"})]
    nb.cells = [cell]
    static_widget_text(nb)
    assert nb.cells[0].outputs[0]["data"]["text/plain"] == WIDGET_TEXT


def test_counts_and_single_seeds_read_as_such():
    assert format_cell(127146.0) == "127,146"
    assert format_cell(993.33) == "993.33"
    assert format_cell(12345.678) == "12,345.68"
    assert MeanStd.of([0.5]).format(3) == "0.500 (n = 1)"
    assert MeanStd.of([1.0, 2.0]).format(1) == "1.5 ± 0.7"
