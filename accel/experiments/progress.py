"""Progress for the chapters' long loops: a live tqdm bar where someone is watching, one summary line where the
notebook is being executed to be read later.

A tqdm bar in a notebook is a widget; saved into a committed notebook it shows as a frozen ``0%|`` bar or a widget
repr on GitHub, nbviewer and VS Code. ``make outputs`` and ``make book`` therefore set ACCEL_STATIC_PROGRESS=1 for the
kernels they start, and under it ``progress_bar`` counts silently and prints one line when the loop ends, e.g.
``Table 1: 60 epochs in 58 s``.
"""

from __future__ import annotations

import os
import time

STATIC_ENV = "ACCEL_STATIC_PROGRESS"
_UNIT_NAMES = {"it": "runs"}  # tqdm's default unit, as the chapters' loops count


class SummaryLine:
    """The tqdm subset the chapters use (update, close, a context manager); prints one line at close."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False):
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.n, self._start, self._closed = 0, time.perf_counter(), False

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.disable:
            return
        unit = _UNIT_NAMES.get(self.unit, self.unit if self.n == 1 or self.unit.endswith("s") else self.unit + "s")
        done = f"{self.n:,}" if self.total in (None, self.n) else f"{self.n:,} of {self.total:,}"
        print(f"{self.desc or 'done'}: {done} {unit} in {time.perf_counter() - self._start:.0f} s", flush=True)

    def __enter__(self) -> SummaryLine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False):
    """tqdm.auto.tqdm(total=, desc=, unit=, disable=), or a SummaryLine when ACCEL_STATIC_PROGRESS is set (non-empty,
    not "0")."""
    if os.environ.get(STATIC_ENV, "") not in ("", "0"):
        return SummaryLine(total=total, desc=desc, unit=unit, disable=disable)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=disable)
