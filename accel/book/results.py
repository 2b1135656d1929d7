"""The results file: one JSON per chapter run, holding every recorded metric, table and claim.

Schema (tests/reference/*.smoke.json compare against ``metrics``, ``tables`` and ``claims``)::

    {"notebook", "profile", "device", "versions", "git_commit", "seed", "started", "wall_time_s",
     "metrics": {name: {"value": float, "abs": float|None, "rel": float|None, "unit": str}},
     "tables":  {name: {"title", "columns": [...], "rows": [[...]], "note"}},
     "claims":  {name: {"passed": bool|None, "detail": str, "compare": bool}},
     "key_results": [{"label", "this_run", "paper"}],
     "ledger": {"title", "baseline", "arm", "row": {column: value}},  # the chapter's headline ledger row
     "plan": {"estimate_s", "parts_s", "basis", "budget_minutes", "trimmed"},  # the run-time estimate, the trims
     "replay": {key: encoded value}}  # what the chapter's long computations returned (accel.experiments.replay)

A chapter rendered from a recorded run (``RESULTS_FROM``) keeps the recorded run's provenance (profile, device,
versions, commit, seed, wall time, plan) and adds ``"replayed_from"`` and ``"render_time_s"``.

``abs``/``rel`` are the tolerances the chapter declares for its smoke regression: a metric that depends on timing gets
a wide one, a metric that depends only on seeds a tight one, and None means "not compared". A claim's ``passed`` is
None when the run could not evaluate it (its detail says why).

The file is first written when the run records something, so re-running a chapter that dies early leaves the previous
run's file intact; every value is checked to be JSON-writable where it is added, so one bad value fails at the line that
added it instead of breaking every later save.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .tables import Table


def git_commit(notebook: str | None = None) -> str | None:
    """The commit of the checkout accel runs from (with ``-dirty`` when it has changes), or None outside git.

    Recorded outputs do not count as changes: results files (data/results/) and the other chapters' notebooks, which
    ``make outputs`` rewrites one after another while later chapters run. Everything else does, this chapter's
    notebook (``notebook``, its stem) included.
    """
    root = Path(__file__).resolve().parents[2]
    outputs = [":(exclude)data/results", ":(exclude)notebooks/*.ipynb"]
    this_notebook = [f"notebooks/{notebook}.ipynb"] if notebook else ["notebooks/*.ipynb"]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = "".join(
            subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", *paths],
                capture_output=True, text=True, timeout=5,
            ).stdout.strip()
            for paths in ([".", *outputs], this_notebook)
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


MARKS = {True: "✓", False: "✗", None: "–"}


def claim_line(name: str, claim: dict) -> str:
    """One claim as a reader sees it: its mark, its statement and the measured detail that decided it."""
    detail = claim.get("detail") or ""
    if claim.get("passed") is None:
        return f"{MARKS[None]} {name}: not evaluated" + (f": {detail}" if detail else "")
    return f"{MARKS[claim['passed']]} {name}" + (f": {detail}" if detail else "")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_json"):
        return value.to_json()
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _checked(value: Any, what: str) -> Any:
    """``value`` in its JSON form, or TypeError naming ``what`` when it cannot be written as JSON."""
    try:
        converted = _jsonable(value)
        json.dumps(converted)
    except (TypeError, ValueError) as error:
        raise TypeError(f"Invalid {what}: it holds a value that cannot be written to the results file as JSON "
                        f"({error}); use numbers, strings, None, lists or dicts of them") from None
    return converted


class Results:
    """Collects a chapter's results and rewrites its JSON file (atomically) after every record."""

    def __init__(self, path: Path | None, *, notebook: str | None, profile: str, device: str, seed: int,
                 versions: dict[str, str]):
        self.path = path
        self._started = time.perf_counter()
        self.data: dict[str, Any] = {
            "notebook": notebook,
            "profile": profile,
            "device": device,
            "versions": versions,
            "git_commit": git_commit(notebook),
            "seed": seed,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": 0.0,
            "metrics": {},
            "tables": {},
            "claims": {},
            "key_results": [],
            "ledger": None,
        }

    def metric(self, name: str, value: float, *, abs: float | None = None, rel: float | None = None,
               unit: str = "") -> float:
        """Record one number with the tolerance a smoke re-run must meet (abs and/or rel; both None: not compared)."""
        for arg, tol in (("abs", abs), ("rel", rel)):
            if tol is not None and not tol >= 0:
                raise ValueError(f"Invalid {arg} tolerance for metric {name!r}: {tol!r}; expected >= 0 or None")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"Invalid value for metric {name!r}: {value!r}; expected one number") from None
        self.data["metrics"][name] = {"value": _jsonable(number), "abs": abs, "rel": rel, "unit": str(unit)}
        self.save()
        return value

    def table(self, name: str, table: Table) -> Table:
        """Record a table (usually a paper-vs-this-run comparison) and return it for display."""
        self.data["tables"][name] = _checked(table.to_json(), f"table {name!r}")
        self.save()
        return table

    def claim(self, name: str, passed: bool | None, detail: str = "", *, compare: bool = True,
              show: bool = True) -> bool | None:
        """Record whether one of the paper's claims held in this run, with the numbers that decided it, and print it
        where it is checked: ``✓ name: detail`` (held), ``✗ ...`` (did not hold), ``– name: not evaluated: detail``.

        ``passed=None``: the run could not evaluate the claim; ``detail`` says why. ``compare=False`` for a claim that
        rests on wall-clock timings: the smoke regression then checks that it was recorded, not its outcome (a loaded
        CI machine may flip it; ``make verify`` judges it at full size). ``show=False`` records without printing."""
        if passed is not None and not isinstance(passed, (bool, np.bool_)):
            raise TypeError(f"Invalid passed for claim {name!r}: {passed!r}; expected True, False or None")
        outcome = None if passed is None else bool(passed)
        self.data["claims"][name] = {"passed": outcome, "detail": str(detail), "compare": bool(compare)}
        self.save()
        if show:
            print(claim_line(name, self.data["claims"][name]))
        return outcome

    def verdicts(self, *names: str) -> str:
        """One line per named claim, as recorded: ✓ held, ✗ did not hold, – not evaluated (for printing where the
        claims are checked)."""
        missing = [name for name in names if name not in self.data["claims"]]
        if missing:
            raise KeyError(f"no claim recorded under {missing}; recorded: {sorted(self.data['claims'])}")
        return "\n".join(f"{MARKS[self.data['claims'][name]['passed']]} {name}" for name in names)

    def key_result(self, label: str, this_run: str, paper: str) -> None:
        """The line ``make book`` prints for this chapter: what was measured here beside the paper's number."""
        for arg, text in (("label", label), ("this_run", this_run), ("paper", paper)):
            if not isinstance(text, str):
                raise TypeError(f"Invalid {arg} for key result {label!r}: {text!r}; expected a string (format numbers "
                                "into it)")
        entries = [e for e in self.data["key_results"] if e["label"] != label]
        self.data["key_results"] = entries + [{"label": label, "this_run": this_run, "paper": paper}]
        self.save()

    def ledger(self, table: Table, *, arm: str) -> Table:
        """Record the chapter's speedup ledger (a table from ``accel.book.ledger_table``) under ``tables["ledger"]``,
        and ``arm``'s row as the chapter's headline ledger row (shown in "Results at a glance")."""
        names = [row[0] for row in table.rows]
        if arm not in names:
            raise ValueError(f"Invalid arm: {arm!r}; the ledger's arms are {names}")
        row = next(r for r in table.rows if r[0] == arm)
        self.table("ledger", table)
        self.data["ledger"] = _checked({"title": table.title, "arm": arm, "row": dict(zip(table.columns, row))},
                                       "ledger row")
        self.save()
        return table

    def plan(self, plan: dict) -> None:
        """Record the run-time estimate and what the budget trimmed (``accel.book.budget``)."""
        self.data["plan"] = _checked(plan, "plan")
        self.save()

    def replay_value(self, key: str, encoded: Any) -> None:
        """Record what one of the chapter's long computations returned (encoded by ``accel.experiments.replay``)."""
        self.data.setdefault("replay", {})[key] = encoded
        self.save()

    def replayed_from(self, recorded: dict, source: str) -> None:
        """Take the provenance of the recorded run this chapter renders."""
        for key in ("profile", "device", "versions", "git_commit", "seed", "started", "wall_time_s", "plan"):
            if key in recorded:
                self.data[key] = recorded[key]
        self.data["replayed_from"] = source
        self.save()

    @property
    def replayed(self) -> bool:
        return "replayed_from" in self.data

    def save(self) -> None:
        elapsed = round(time.perf_counter() - self._started, 3)
        self.data["render_time_s" if self.replayed else "wall_time_s"] = elapsed
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_jsonable(self.data), indent=1)
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, suffix=".tmp") as handle:
            handle.write(text)
        os.replace(handle.name, self.path)
