"""What every committed chapter must show a reader without a kernel (the notebook anatomy of DESIGN.md), as checks.

``anatomy_problems(notebook, results)`` lists each way a committed notebook falls short: progress-bar outputs, a
recorded claim not printed with its mark, a missing part of the textbook's furniture (header, diagram, "When it pays",
exercises, references, executed drop-in, "Results at a glance"), or outputs from a commit with uncommitted changes.
"""

from __future__ import annotations

import re
from typing import Any

from .results import MARKS

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_PROGRESS = re.compile(r"\d+%\|")


def _text(output: dict) -> str:
    if output.get("output_type") == "stream":
        text = output.get("text", "")
    else:
        data = output.get("data", {})
        text = data.get("text/markdown") or data.get("text/plain") or ""
    return "".join(text) if isinstance(text, list) else str(text)


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def anatomy_problems(notebook: dict, results: dict[str, Any] | None) -> list[str]:
    """Every way a committed chapter departs from the anatomy (empty: it reads as a finished chapter)."""
    problems = []
    cells = notebook.get("cells", [])
    code = [c for c in cells if c.get("cell_type") == "code"]
    markdown = [_source(c) for c in cells if c.get("cell_type") == "markdown"]
    outputs = [(i, o) for i, c in enumerate(cells) if c.get("cell_type") == "code" for o in c.get("outputs", [])]
    shown = "\n".join(_text(o) for _, o in outputs)

    for index, output in outputs:
        if _PROGRESS.search(_text(output)):
            problems.append(f"cell {index}: a progress bar in the committed outputs")
        if WIDGET_MIME in output.get("data", {}) and "explorer(" not in _source(cells[index]):
            problems.append(f"cell {index}: a widget output outside an explorer (a progress widget?)")

    header = markdown[0] if markdown else ""
    for part in ("What you will learn", "Prerequisites", "Run time"):
        if part.lower() not in header.lower():
            problems.append(f"header: no {part!r} in the first markdown cell")
    if not any(re.search(r"diagrams|\bdraw_\w+\(", _source(c))
               and any("image/png" in o.get("data", {}) for o in c.get("outputs", [])) for c in code):
        problems.append("no concept diagram (a cell drawing one of accel.book.diagrams with a figure output)")
    if "When it pays, and when it does not" not in shown:
        problems.append("no \"When it pays, and when it does not\" box in the outputs")
    exercises = next((m for m in markdown if re.search(r"^#+ .*Exercises", m, re.M)), None)
    if exercises is None or len(re.findall(r"^\s*\d+\.\s", exercises, re.M)) < 3:
        problems.append("no Exercises section with at least 3 numbered exercises")
    if not any(re.search(r"^#+ .*References", m, re.M) for m in markdown):
        problems.append("no References section")
    drop_in = [i for i, c in enumerate(cells) if c.get("cell_type") == "code" and "drop-in" in _source(c).lower()
               and c.get("outputs")]
    if not drop_in:
        problems.append("no executed drop-in (a code cell mentioning 'drop-in' with outputs)")
    last = code[-1] if code else {}
    if "at_a_glance" not in _source(last) or "Results at a glance" not in "".join(_text(o) for o in last.get(
            "outputs", [])):
        problems.append("the last code cell does not show \"Results at a glance\"")

    if results is not None:
        for name, claim in results.get("claims", {}).items():
            if f"{MARKS[claim['passed']]} {name}" not in shown:
                problems.append(f"claim {name!r} is not shown with its mark {MARKS[claim['passed']]}")
        if str(results.get("git_commit") or "").endswith("-dirty") or not results.get("git_commit"):
            problems.append(f"results recorded from {results.get('git_commit')!r}, not a clean commit")
    return problems
