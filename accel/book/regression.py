"""Smoke regression: compare a chapter's results file with its reference under the tolerances the chapter declared.

A reference (``tests/reference/<notebook>.smoke.json``) is a trimmed results file: each metric's value with its
``abs``/``rel`` tolerance, each table's columns and row labels, and each claim's outcome. ``make references``
regenerates them from a fresh smoke run and prints what changed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_DIR = ROOT / "tests" / "reference"


def reference_path(notebook: str, profile: str = "smoke") -> Path:
    return REFERENCE_DIR / f"{notebook}.{profile}.json"


def make_reference(results: dict[str, Any]) -> dict[str, Any]:
    """The part of a results file that a re-run must reproduce."""
    return {
        "notebook": results["notebook"],
        "profile": results["profile"],
        # not compared: what the chapter's header reports as the smoke run time on the machine that made the reference
        "wall_time_s": round(float(results.get("wall_time_s") or 0.0), 1),
        "device": results.get("device"),
        "metrics": {
            name: {k: m[k] for k in ("value", "abs", "rel", "unit")}
            for name, m in sorted(results["metrics"].items())
        },
        "tables": {
            name: {"columns": t["columns"], "row_labels": [row[0] for row in t["rows"]]}
            for name, t in sorted(results["tables"].items())
        },
        "claims": {name: c["passed"] if c.get("compare", True) else None
                   for name, c in sorted(results["claims"].items())},
    }


def within(value: float, expected: float, abs_tol: float | None, rel_tol: float | None) -> bool:
    """True when |value - expected| <= max(abs_tol, rel_tol·|expected|) (a missing tolerance counts as 0)."""
    if abs_tol is None and rel_tol is None:
        return True
    if isinstance(value, str) or isinstance(expected, str):  # nan / inf are stored as strings
        return str(value) == str(expected)
    allowed = max(abs_tol or 0.0, (rel_tol or 0.0) * abs(expected))
    return math.isfinite(value) and abs(value - expected) <= allowed


def compare(results: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """Every way ``results`` departs from ``reference``; an empty list means it passes."""
    problems = []
    if results.get("profile") != reference.get("profile"):
        problems.append(f"profile {results.get('profile')!r} != reference {reference.get('profile')!r}")
    for name, ref in reference["metrics"].items():
        got = results["metrics"].get(name)
        if got is None:
            problems.append(f"metric {name!r} missing from the results")
        elif not within(got["value"], ref["value"], ref["abs"], ref["rel"]):
            tolerance = f"abs {ref['abs']}, rel {ref['rel']}"
            problems.append(f"metric {name!r} = {got['value']} outside reference {ref['value']} ({tolerance})")
    for name in results["metrics"].keys() - reference["metrics"].keys():
        problems.append(f"metric {name!r} is new: regenerate the reference (make references)")
    for name, ref in reference["tables"].items():
        got = results["tables"].get(name)
        if got is None:
            problems.append(f"table {name!r} missing from the results")
            continue
        if got["columns"] != ref["columns"]:
            problems.append(f"table {name!r} columns {got['columns']} != reference {ref['columns']}")
        labels = [row[0] for row in got["rows"]]
        if labels != ref["row_labels"]:
            problems.append(f"table {name!r} rows {labels} != reference {ref['row_labels']}")
    for name, passed in reference["claims"].items():
        got = results["claims"].get(name)
        if got is None:
            problems.append(f"claim {name!r} missing from the results")
        elif passed is not None and got["passed"] != passed:
            problems.append(f"claim {name!r} passed={got['passed']} but reference says {passed} ({got['detail']})")
    return problems


def diff_references(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Human-readable changes between two references (for ``make references``)."""
    if old is None:
        return ["new reference"]
    lines = []
    for name in sorted(old["metrics"].keys() | new["metrics"].keys()):
        a, b = old["metrics"].get(name), new["metrics"].get(name)
        if a is None or b is None:
            lines.append(f"metric {name}: {'added' if a is None else 'removed'}")
        elif (a["abs"], a["rel"], a["unit"]) != (b["abs"], b["rel"], b["unit"]):
            lines.append(f"metric {name}: tolerance abs {a['abs']}, rel {a['rel']} -> abs {b['abs']}, rel {b['rel']}")
        elif a["value"] != b["value"] and (b["abs"] is not None or b["rel"] is not None):
            lines.append(f"metric {name}: {a['value']} -> {b['value']}")  # uncompared (timing) values are noise
    for section in ("tables", "claims"):
        for name in sorted(old[section].keys() | new[section].keys()):
            if old[section].get(name) != new[section].get(name):
                lines.append(f"{section[:-1]} {name}: {old[section].get(name)} -> {new[section].get(name)}")
    return lines


def render_recorded(notebook: Path, results_from: Path, out_dir: Path) -> dict[str, Any]:
    """Execute ``notebook`` rendering the run recorded in ``results_from`` (RESULTS_FROM: no training) and return the
    results file it writes."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / f"{notebook.stem}.rendered.json"
    results_path.unlink(missing_ok=True)
    papermill.execute_notebook(
        str(notebook), str(out_dir / notebook.name), kernel_name="python3", cwd=str(notebook.parent),
        parameters={"RESULTS_FROM": str(Path(results_from).resolve()), "RESULTS_PATH": str(results_path)},
        progress_bar=False,
    )
    return load(results_path)


def run_smoke(notebook: Path, out_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Execute ``notebook`` in the smoke profile (a fresh kernel, ACCEL_PROFILE ignored) and return its results.
    The references come from ``seed=0``; other seeds measure how far a seed-driven metric moves (accel.book.spread)."""
    import os

    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / f"{notebook.stem}.smoke.json"
    results_path.unlink(missing_ok=True)
    saved = os.environ.pop("ACCEL_PROFILE", None)
    try:
        papermill.execute_notebook(
            str(notebook), str(out_dir / notebook.name), kernel_name="python3", cwd=str(notebook.parent),
            parameters={"PROFILE": "smoke", "SEED": seed, "RESULTS_PATH": str(results_path)}, progress_bar=False,
        )
    finally:
        if saved is not None:
            os.environ["ACCEL_PROFILE"] = saved
    return load(results_path)


def load(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
