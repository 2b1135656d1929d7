"""Every committed chapter reads as a finished chapter without a kernel (accel.book.anatomy), and the check can fail."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from accel.book.anatomy import anatomy_problems

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def recorded(notebook: Path) -> dict | None:
    profile = (json.loads(notebook.read_text()).get("metadata", {}).get("accel") or {}).get("profile")
    path = ROOT / "data" / "results" / f"{notebook.stem}.{profile}.json"
    return json.loads(path.read_text()) if path.exists() else None


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_chapter_has_its_anatomy(notebook):
    results = recorded(notebook)
    assert results is not None, f"{notebook.name}: no recorded results file for its committed outputs"
    problems = anatomy_problems(json.loads(notebook.read_text()), results)
    assert not problems, "\n".join(problems)


def _md(text):
    return {"cell_type": "markdown", "source": text}


def _code(source, *outputs):
    return {"cell_type": "code", "source": source, "outputs": list(outputs)}


def _out(text):
    return {"output_type": "stream", "name": "stdout", "text": text}


GOOD = {"cells": [
    _md("# 9 · A chapter\n\nWhat you will learn: a.\n\nPrerequisites: b.\n\nRun time: printed below."),
    _code("fig = diagrams.cycle.draw()", {"output_type": "display_data", "data": {"image/png": "..."}}),
    _code("results.claim('x holds', True, 'detail')", _out("✓ x holds: detail\n")),
    _code("# drop-in on a toy\nrun()", _out("ok\n")),
    _code("when_it_pays(...)", {"output_type": "display_data",
                                "data": {"text/markdown": "> **When it pays, and when it does not**"}}),
    _md("## Exercises\n\n1. a\n2. b\n3. c\n"),
    _md("## References\n\n- paper"),
    _code("at_a_glance(results)",
          {"output_type": "display_data", "data": {"text/markdown": "### Results at a glance"}}),
]}
RESULTS = {"claims": {"x holds": {"passed": True, "detail": "detail"}}, "git_commit": "abc123"}


def test_a_complete_chapter_passes():
    assert anatomy_problems(GOOD, RESULTS) == []


@pytest.mark.parametrize("plant, expected", [
    (lambda nb, r: nb["cells"][2]["outputs"].append(_out("  0%|          | 0/720\n")), "progress bar"),
    (lambda nb, r: nb["cells"][2].update(outputs=[_out("x holds: detail\n")]), "not shown with its mark"),
    (lambda nb, r: r["claims"].update({"y": {"passed": False, "detail": ""}}), "'y' is not shown"),
    (lambda nb, r: nb["cells"][0].update(source="# 9 · A chapter"), "What you will learn"),
    (lambda nb, r: nb["cells"][1].update(outputs=[]), "diagram"),
    (lambda nb, r: nb["cells"][4].update(outputs=[]), "When it pays"),
    (lambda nb, r: nb["cells"][5].update(source="## Exercises\n\n1. only one"), "Exercises"),
    (lambda nb, r: nb["cells"][6].update(source="## Further reading"), "References"),
    (lambda nb, r: nb["cells"][3].update(outputs=[]), "drop-in"),
    (lambda nb, r: nb["cells"].pop(), "Results at a glance"),
    (lambda nb, r: r.update(git_commit="abc123-dirty"), "not a clean commit"),
    (lambda nb, r: nb["cells"][2]["outputs"].append(
        {"output_type": "display_data", "data": {"application/vnd.jupyter.widget-view+json": {}}}), "widget output"),
])
def test_each_planted_flaw_is_caught(plant, expected):
    notebook, results = copy.deepcopy(GOOD), copy.deepcopy(RESULTS)
    plant(notebook, results)
    problems = anatomy_problems(notebook, results)
    assert any(expected in p for p in problems), problems
