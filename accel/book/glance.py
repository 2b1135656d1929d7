"""What a reader sees first and last: each profile's recorded run time, "When it pays" and "Results at a glance".

All three are rendered from recorded runs (results files), never typed: a number here is a number a run computed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .budget import minutes
from .results import MARKS, Results, claim_line
from .tables import format_cell

ROOT = Path(__file__).resolve().parents[2]
PROFILE_ORDER = ("smoke", "cpu", "gpu", "paper")


def recorded_run_times(notebook: str) -> dict[str, tuple[float, str]]:
    """``{profile: (seconds, device)}`` for each recorded full run of ``notebook``
    (``data/results/<nb>.<profile>.json``) and its smoke reference (``tests/reference/<nb>.smoke.json``); profiles
    without a record are left out."""
    found = {}
    candidates = [ROOT / "tests" / "reference" / f"{notebook}.smoke.json"]
    candidates += [ROOT / "data" / "results" / f"{notebook}.{profile}.json" for profile in PROFILE_ORDER[1:]]
    for path in candidates:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        seconds = record.get("wall_time_s")
        if seconds:
            found[record.get("profile", path.stem.split(".")[-1])] = (float(seconds), str(record.get("device") or "?"))
    return found


def run_time_line(notebook: str) -> str:
    """One line for a chapter's set-up: how long each profile took when it was last recorded, and where."""
    times = recorded_run_times(notebook)
    if not times:
        return "No recorded run of this chapter yet: the first run records its time."
    parts = [f"{profile} {_duration(times[profile][0])} on {times[profile][1]}"
             for profile in PROFILE_ORDER if profile in times]
    return "Recorded run time of this chapter: " + "; ".join(parts) + "."


def _duration(seconds: float) -> str:
    return minutes(seconds, minutes_from=120)  # recorded run times: seconds up to two minutes


def _md(value: Any) -> str:
    return format_cell(value, 3).replace("|", "\\|").replace("\n", " ")


def _display_markdown(text: str) -> None:
    try:
        from IPython.display import Markdown, display
    except ImportError:  # outside Jupyter: plain text
        print(text)
        return
    display(Markdown(text))


def when_it_pays(benefit: Sequence[str], cost: Sequence[str], rule: str, *, show: bool = True) -> str | None:
    """The "When it pays, and when it does not" box: measured benefit, measured cost and a decision rule.

    Each item is a sentence the chapter formats from its run's numbers. Displays the Markdown (``show``, returning None
    so that a notebook does not show it twice) or returns it."""
    if not benefit or not cost or not rule:
        raise ValueError("Invalid when_it_pays: benefit, cost and rule must each be non-empty")
    lines = ["> **When it pays, and when it does not**", ">", "> *Measured benefit in this run*", ">"]
    lines += [f"> - {item}" for item in benefit]
    lines += [">", "> *Measured cost in this run*", ">"] + [f"> - {item}" for item in cost]
    lines += [">", f"> **Rule of thumb.** {rule}"]
    text = "\n".join(lines)
    if show:
        _display_markdown(text)
        return None
    return text


def at_a_glance(results: Results | dict, *, show: bool = True) -> str | None:
    """The chapter's closing summary: key results beside the paper, every claim with its mark, the ledger's headline
    row, and the run's provenance (profile, device, versions, commit, seconds). Displays the Markdown (``show``,
    returning None) or returns it."""
    data = results.data if isinstance(results, Results) else results
    if isinstance(results, Results):
        results.save()  # brings wall_time_s up to now
    lines = ["### Results at a glance", "", "| result | this run | paper |", "|---|---|---|"]
    lines += [f"| {_md(k['label'])} | {_md(k['this_run'])} | {_md(k['paper'])} |" for k in data.get("key_results", [])]
    claims = data.get("claims", {})
    held = sum(c["passed"] is True for c in claims.values())
    failed = sum(c["passed"] is False for c in claims.values())
    unevaluated = len(claims) - held - failed
    lines += ["", f"**Claims checked: {held} held {MARKS[True]}, {failed} did not {MARKS[False]}"
              + (f", {unevaluated} not evaluated {MARKS[None]}" if unevaluated else "") + "**", ""]
    lines += [f"- {claim_line(name, claim)}" for name, claim in claims.items()]
    ledger = data.get("ledger")
    if ledger:
        row = ledger["row"]
        lines += ["", f"**Ledger** ({_md(ledger['title'])}), headline row:", "",
                  "| " + " | ".join(_md(c) for c in row) + " |", "|" + "---|" * len(row),
                  "| " + " | ".join(_md(v) for v in row.values()) + " |"]
    versions = data.get("versions", {})
    lines += ["", f"**Provenance:** profile `{data.get('profile')}` on {data.get('device')}; "
              f"torch {versions.get('torch', '?')}, python {versions.get('python', '?')}, accel "
              f"{versions.get('accel', '?')}; commit `{data.get('git_commit') or 'unknown'}`; "
              f"seed {data.get('seed')}; "
              f"{_duration(float(data.get('wall_time_s') or 0))} from set-up to this cell; "
              f"started {data.get('started')}."]
    plan = data.get("plan")
    if plan and plan.get("estimate_s") is not None:
        lines[-1] += (f" Estimated beforehand: {_duration(float(plan['estimate_s']))}"
                      + (f"; trimmed to a {plan['budget_minutes']:g}-minute budget: {'; '.join(plan['trimmed'])}"
                         if plan.get("trimmed") else "") + ".")
    if data.get("replayed_from"):
        lines[-1] += (f" Rendered from the recorded run `{data['replayed_from']}` in "
                      f"{_duration(float(data.get('render_time_s') or 0))}, without training.")
    text = "\n".join(lines)
    if show:
        _display_markdown(text)
        return None
    return text
