"""The speedup ledger every chapter reports: what a method saved, measured against a baseline run in the same place.

Four columns, because a speedup claim is only as good as what it counts: sample-iterations (or fresh examples) to
the target, optimizer steps, wall clock, and the quality change. A method can win on one and lose on another (data
echoing needs fewer fresh examples but more steps; InfoBatch needs fewer sample-iterations and fewer steps).

"To target" means one thing in every chapter: the first evaluation at which the run's quality metric reaches the
chapter's target (``first_reach``); an arm reaches it only if every seed does, and its cost is then the mean over
seeds. A run that never reaches the target has no cost to the target (None), whatever it reached at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# One evaluation of a run: (sample-iterations or fresh examples so far, optimizer steps so far, seconds so far, quality)
Point = tuple[float, float, float, float]


@dataclass(frozen=True)
class LedgerEntry:
    """One arm of an experiment. ``None`` means the target was not reached within the budget."""

    arm: str
    samples_to_target: int | None  # sample-iterations, or fresh examples for data echoing
    steps_to_target: int | None
    seconds_to_target: float | None
    quality: float  # the chapter's quality metric at the end of the budget (accuracy, AUC, ...)


def first_reach(curve: Sequence[Point], target: float, *, lower_is_better: bool = False) -> Point | None:
    """The first evaluation of ``curve`` whose quality reaches ``target`` (>=, or <= when ``lower_is_better``),
    or None when none does."""
    for point in curve:
        quality = point[3]
        if (quality <= target) if lower_is_better else (quality >= target):
            return point
    return None


def entry_from_runs(arm: str, curves: Sequence[Sequence[Point]], target: float, *,
                    lower_is_better: bool = False) -> LedgerEntry:
    """A ledger entry from one curve per seed (each a list of ``(samples, steps, seconds, quality)`` evaluations):
    the mean cost to the target's first crossing when every seed reaches it (None otherwise), and the mean final
    quality."""
    if not curves or any(len(curve) == 0 for curve in curves):
        raise ValueError(f"Invalid curves for arm {arm!r}: every seed needs at least one evaluation")
    hits = [first_reach(curve, target, lower_is_better=lower_is_better) for curve in curves]
    final = float(np.mean([curve[-1][3] for curve in curves]))
    if any(hit is None for hit in hits):
        return LedgerEntry(arm, None, None, None, final)
    samples, steps, seconds = (np.mean([hit[i] for hit in hits]) for i in range(3))
    return LedgerEntry(arm, int(round(samples)), int(round(steps)), float(seconds), final)


def ledger_rows(entries: list[LedgerEntry], baseline: str) -> list[list]:
    """Rows with each arm's numbers and their ratio to the baseline arm's (< 1 is a saving)."""
    base = next((e for e in entries if e.arm == baseline), None)
    if base is None:
        raise ValueError(f"Invalid baseline: {baseline!r}; arms are {[e.arm for e in entries]}")

    def ratio(a, b):
        return None if a is None or not b else a / b

    return [
        [e.arm, e.samples_to_target, ratio(e.samples_to_target, base.samples_to_target), e.steps_to_target,
         ratio(e.steps_to_target, base.steps_to_target), e.seconds_to_target,
         ratio(e.seconds_to_target, base.seconds_to_target), e.quality, e.quality - base.quality]
        for e in entries
    ]


LEDGER_COLUMNS = ["arm", "samples to target", "samples × baseline", "steps to target", "steps × baseline",
                  "wall clock to target (s)", "wall clock × baseline", "quality", "Δ quality"]
