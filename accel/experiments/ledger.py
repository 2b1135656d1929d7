"""The speedup ledger every chapter reports: what a method saved, measured against a baseline run in the same place.

Four columns, because a speedup claim is only as good as what it counts: sample-iterations (or fresh examples) to
the target, optimizer steps, wall clock, and the quality change. A method can win on one and lose on another (data
echoing needs fewer fresh examples but more steps; InfoBatch needs fewer sample-iterations and fewer steps).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LedgerEntry:
    """One arm of an experiment. ``None`` means the target was not reached within the budget."""

    arm: str
    samples_to_target: int | None  # sample-iterations, or fresh examples for data echoing
    steps_to_target: int | None
    seconds_to_target: float | None
    quality: float  # the chapter's quality metric at the end of the budget (accuracy, AUC, ...)


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


LEDGER_COLUMNS = ["arm", "samples to target", "× baseline", "steps to target", "× baseline", "wall clock (s)",
                  "× baseline", "quality", "Δ quality"]
