"""How long a chapter will take on this device, and trimming it to a time budget.

Each chapter module has a ``cost_model(cfg, data, device)``: it times a few training steps of the chapter's model on
the reader's device (the probe) and returns a function that turns any config of that chapter into an ``Estimate``: the
seconds each part of the chapter will take. ``fit_budget`` then trims the config's knobs named in the chapter's
``TRIMS`` (seeds first, then epochs or steps), one notch at a time, until the estimate fits the budget, and says what it
trimmed.
"""

from __future__ import annotations

__all__ = ["DEFAULT_BUDGET_MINUTES", "Estimate", "describe", "fit_budget", "minutes"]

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from accel.experiments.run_time import Estimate

#: The budget a profile gets when the chapter's BUDGET_MINUTES is None: a free Colab GPU session is short.
DEFAULT_BUDGET_MINUTES = {"gpu": 15.0}


def minutes(seconds: float, minutes_from: float = 60) -> str:
    """A duration as a reader reads it: whole seconds below ``minutes_from`` seconds, minutes to one decimal above."""
    return f"{seconds / 60:.1f} min" if seconds >= minutes_from else f"{seconds:.0f} s"


def describe(estimate: Estimate) -> str:
    parts = ", ".join(f"{name} {minutes(s)}" for name, s in estimate.parts.items() if s > 0)
    return f"{minutes(estimate.seconds)} ({parts}); probe: {estimate.basis}"


def _smaller(value: Any, floor: int) -> Any | None:
    """One notch down from ``value`` (a tuple loses its last entry; a number shrinks by a fifth, at least by one), or
    None at the floor."""
    if isinstance(value, tuple):
        return value[:-1] if len(value) > floor else None
    if isinstance(value, int) and not isinstance(value, bool):
        smaller = max(floor, min(value - 1, int(value * 0.8)))
        return smaller if smaller < value else None
    raise TypeError(f"Invalid trim: value {value!r} is neither a tuple nor an int")


def _shown(value: Any) -> str:
    return f"{len(value)} ({', '.join(map(str, value))})" if isinstance(value, tuple) else f"{value:,}"


def fit_budget(cfg: Any, estimate: Callable[[Any], Estimate], budget_minutes: float | None,
               trims: Sequence[tuple[str, int]]) -> tuple[Any, Estimate, list[str]]:
    """The config trimmed to fit ``budget_minutes`` (None: untouched), its estimate, and one line per trimmed knob.

    ``trims``: (field, floor) pairs in the order to trim; a tuple field (seeds) keeps at least ``floor`` entries, an
    int field (epochs, steps) stays at least ``floor``. When even the floors do not fit, the floors are used and the
    caller says so (the estimate is above the budget)."""
    if budget_minutes is not None and (isinstance(budget_minutes, bool) or not isinstance(budget_minutes, (int, float))
                                       or not math.isfinite(budget_minutes) or budget_minutes <= 0):
        raise ValueError(f"Invalid BUDGET_MINUTES: {budget_minutes!r}; expected a positive number of minutes or None")
    names = {f.name for f in dataclasses.fields(cfg)}
    for name, floor in trims:
        if name not in names:
            raise ValueError(f"Invalid trim: {type(cfg).__name__} has no field {name!r}; fields: {sorted(names)}")
        if not isinstance(floor, int) or floor < 1:
            raise ValueError(f"Invalid floor for trim {name!r}: {floor!r}; expected an int >= 1")
    current = estimate(cfg)
    if budget_minutes is None:
        return cfg, current, []
    budget, original = 60.0 * budget_minutes, cfg
    for name, floor in trims:
        while current.seconds > budget:
            smaller = _smaller(getattr(cfg, name), floor)
            if smaller is None:
                break
            cfg = dataclasses.replace(cfg, **{name: smaller})
            current = estimate(cfg)
    trimmed = [f"{name} {_shown(getattr(original, name))} → {_shown(getattr(cfg, name))}"
               for name, _ in trims if getattr(cfg, name) != getattr(original, name)]
    return cfg, current, trimmed
