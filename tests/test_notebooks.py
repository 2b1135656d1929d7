"""Every chapter executes in the smoke profile and reproduces its reference results (tests/reference/)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from accel.book.regression import compare, load, reference_path, render_recorded, run_smoke
from accel.book.verify import checked_cell_problems, prose_problems

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, smoke_timings):
    """Each chapter's smoke results, run once per module; its wall time is reported in the summary, not asserted (a
    busy machine is slower, not wrong)."""
    cache = {}

    def run(notebook: Path) -> dict:
        if notebook not in cache:
            out_dir = tmp_path_factory.mktemp(notebook.stem)
            cache[notebook] = run_smoke(notebook, out_dir)
            cache[notebook]["_path"] = str(out_dir / f"{notebook.stem}.smoke.json")
            smoke_timings.append((notebook.stem, cache[notebook]["wall_time_s"]))
        return cache[notebook]

    return run


RENDERED = ("tables", "claims", "key_results", "ledger", "profile", "seed", "git_commit", "device")


def _rendered_problems(rendered: dict, recorded: dict) -> list[str]:
    """Where a chapter rendered from a recorded run (RESULTS_FROM) shows other results than the run recorded."""
    problems = [f"{key} differs from the recorded run's" for key in RENDERED if rendered.get(key) != recorded.get(key)]
    values = {name: m["value"] for name, m in rendered["metrics"].items()}
    recorded_values = {name: m["value"] for name, m in recorded["metrics"].items()}
    problems += [f"metric {name}: {values.get(name)} rendered, {value} recorded"
                 for name, value in recorded_values.items() if values.get(name) != value]
    if not rendered.get("replayed_from"):
        problems.append("the rendered results do not say which recorded run they show (replayed_from)")
    return problems


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb found"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_smoke_matches_reference(notebook, smoke_results):
    results = smoke_results(notebook)
    assert results["profile"] == "smoke"
    assert results["notebook"] == notebook.stem, "start(..., notebook=...) should name the chapter's file"
    path = reference_path(notebook.stem)
    assert path.exists(), (
        f"{notebook.name} has no smoke reference at {path.relative_to(ROOT)}; create it with `make references` "
        "(it runs the chapter in smoke and writes the values with the tolerances the chapter declares)"
    )
    problems = compare(results, load(path))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_perturbed_reference_is_caught(notebook, smoke_results):
    """The comparison can fail: nudge each compared metric past its tolerance, drop a table, flip a claim."""
    results = smoke_results(notebook)
    reference = load(reference_path(notebook.stem))
    compared = {n: m for n, m in reference["metrics"].items() if m["abs"] is not None or m["rel"] is not None}
    assert compared, "a chapter should compare at least one seeded metric"
    for name, metric in compared.items():
        bad = copy.deepcopy(reference)
        bad["metrics"][name]["value"] = metric["value"] + 2 * max(metric["abs"] or 0, (metric["rel"] or 0) * abs(
            metric["value"])) + 1e-6
        assert any(name in p for p in compare(results, bad)), f"perturbing {name} went unnoticed"
    if reference["tables"]:
        bad = copy.deepcopy(reference)
        bad["tables"]["no such table"] = {"columns": [], "row_labels": []}
        assert compare(results, bad)
    checked = {n: v for n, v in reference["claims"].items() if v is not None}
    for name, passed in checked.items():
        bad = copy.deepcopy(reference)
        bad["claims"][name] = not passed
        assert compare(results, bad)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_smoke_run_renders_again_from_its_results_file(notebook, smoke_results, tmp_path):
    """RESULTS_FROM: the chapter re-drawn from its recorded smoke run shows the same tables, claims and numbers."""
    recorded = smoke_results(notebook)
    rendered = render_recorded(notebook, Path(recorded["_path"]), tmp_path)
    problems = _rendered_problems(rendered, recorded)
    assert not problems, "\n".join(problems)
    assert _rendered_problems({**rendered, "claims": {}}, recorded), "a changed claim should be caught"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_cpu_run_renders_from_its_results_file(notebook, tmp_path, smoke_timings):
    """A reader without time to train renders the committed cpu run (data/results/<chapter>.cpu.json) without
    training: the same tables, claims and numbers. Its time is reported in the summary, not asserted."""
    source = ROOT / "data" / "results" / f"{notebook.stem}.cpu.json"
    recorded = load(source)
    rendered = render_recorded(notebook, source, tmp_path)
    smoke_timings.append((f"{notebook.stem} rendered from its cpu results", rendered["render_time_s"]))
    problems = _rendered_problems(rendered, recorded)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_checked_cells_print_plain_text_only(notebook):
    """nbval compares a checked cell verbatim on any CPU: printed text only, rounded to what kernels reproduce."""
    problems = checked_cell_problems(json.loads(notebook.read_text()))
    assert not problems, "\n".join(problems)


def test_checked_cell_rule_catches_a_rich_display_and_stderr():
    def cell(*outputs):
        return {"cell_type": "code", "source": ["# NBVAL_CHECK_OUTPUT\n", "print(verdicts)"], "outputs": list(outputs)}

    printed = {"output_type": "stream", "name": "stdout", "text": ["AUC 0.80\n"]}
    shown = {"output_type": "execute_result", "data": {"text/plain": ["Table(...)"], "text/html": ["<table>"]}}
    bar = {"output_type": "stream", "name": "stderr", "text": ["  0%|"]}
    assert checked_cell_problems({"cells": [cell(printed)]}) == []
    problems = checked_cell_problems({"cells": [cell(printed, shown), cell(bar)]})
    assert len(problems) == 2 and "cell 0" in problems[0] and "stderr" in problems[1]
    unchecked = {"cell_type": "code", "source": ["table"], "outputs": [shown]}
    assert checked_cell_problems({"cells": [unchecked]}) == []
    ends_on_a_value = {"cell_type": "code", "source": ["# NBVAL_CHECK_OUTPUT\n", "x = 1\n", "results.metric('m', x);"],
                       "outputs": []}
    assert "ends on an expression" in checked_cell_problems({"cells": [ends_on_a_value]})[0]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_prose_has_no_internal_words_or_unrendered_templates(notebook):
    problems = prose_problems(json.loads(notebook.read_text()))
    assert not problems, "\n".join(problems)


def test_prose_rule_catches_a_planted_cell():
    def markdown(text):
        return {"cell_type": "markdown", "source": [text]}

    clean = markdown("The ratio is 0.49 ($R \\approx 4$, the configuration's `ledger_ratio`); see `accel.moe`.")
    assert prose_problems({"cells": [clean]}) == []
    planted = [markdown("As the feasibility study found (see the issue), R is `cfg.wall_ratio`."),
               markdown("Speedup {results.speedup:.2f}; TODO rerun")]
    problems = prose_problems({"cells": planted})
    assert len(problems) == 5, problems
    assert "cell 0" in problems[0] and "'feasibility study'" in problems[0] and "cell 1" in problems[-1]
    code = {"cell_type": "code", "source": ["# the issue is cfg.x\n"], "outputs": []}
    assert prose_problems({"cells": [code]}) == []  # code comments are not prose


SPREAD = ROOT / "data" / "results" / "smoke_spread.json"
MARGIN = 1.5  # a declared tolerance must cover the measured cross-kernel spread with this much room


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_declared_tolerances_cover_the_measured_cross_kernel_spread(notebook):
    """Every compared smoke metric was measured under each CPU kernel (and one thread) by `make spread`, and its
    tolerance covers that spread with room; no compared claim flips between kernels at one seed."""
    measured = json.loads(SPREAD.read_text())["chapters"].get(notebook.stem)
    assert measured, f"{notebook.stem}: no measured spread; run `make spread`"
    reference = load(reference_path(notebook.stem))
    for name, metric in reference["metrics"].items():
        if metric["abs"] is None and metric["rel"] is None:
            continue
        assert name in measured["metrics"], f"{name}: no measured spread; run `make spread` for {notebook.name}"
        spread = measured["metrics"][name]["kernel_spread"] or 0.0
        allowed = max(metric["abs"] or 0.0, (metric["rel"] or 0.0) * abs(metric["value"]))
        assert allowed >= MARGIN * spread, f"{name}: tolerance {allowed:.4g} < {MARGIN} x measured spread {spread:.4g}"
    flipping = [n for n in measured["flipping_claims"] if reference["claims"].get(n) is not None]
    assert not flipping, f"claims compared by outcome that flip between kernels: {flipping}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_the_parameters_cell(notebook):
    """Papermill parses the `parameters` cell line by line; a comment it cannot parse (an '=' in it, say) makes it
    drop that parameter with only a warning."""
    from papermill.translators import PythonTranslator

    cells = [c for c in json.loads(notebook.read_text())["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1, "one cell tagged `parameters`"
    names = {p.name for p in PythonTranslator.inspect({"source": "".join(cells[0]["source"])})}
    assert {"PROFILE", "SEED", "RESULTS_PATH"} <= names, names
