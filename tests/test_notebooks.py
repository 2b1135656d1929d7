"""Every chapter executes in the smoke profile and reproduces its reference results (tests/reference/)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from accel.book.regression import compare, load, reference_path, run_smoke

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SMOKE_BUDGET_S = 60  # DESIGN.md: smoke takes seconds on one core; a chapter past a minute has outgrown it


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    cache = {}

    def run(notebook: Path) -> dict:
        if notebook not in cache:
            cache[notebook] = run_smoke(notebook, tmp_path_factory.mktemp(notebook.stem))
        return cache[notebook]

    return run


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb found"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_smoke_matches_reference(notebook, smoke_results):
    results = smoke_results(notebook)
    assert results["profile"] == "smoke"
    assert results["notebook"] == notebook.stem, "start(..., notebook=...) should name the chapter's file"
    assert results["wall_time_s"] < SMOKE_BUDGET_S, f"smoke run took {results['wall_time_s']} s"
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
