"""A chapter's run-time estimate: what each chapter module's ``cost_model`` returns (``accel.book.budget`` trims a
config to a time budget with it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Estimate:
    """Seconds per part of a chapter (e.g. {"Table 1": 120.0, ...}) and what the probe measured."""

    parts: dict[str, float]
    basis: str

    @property
    def seconds(self) -> float:
        return float(sum(self.parts.values()))
