"""Tables that put the paper's numbers beside this run's, rendered as HTML in a notebook and as text elsewhere."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from accel.experiments.words import number_text


@dataclass(frozen=True)
class MeanStd:
    """A mean ± standard deviation over ``n`` seeds (sample std, ddof=1; 0 when n == 1)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> MeanStd:
        array = np.asarray(list(values), dtype=float)
        if array.size == 0:
            raise ValueError("Invalid values: empty; MeanStd needs at least one value")
        std = float(array.std(ddof=1)) if array.size > 1 else 0.0
        return cls(float(array.mean()), std, int(array.size))

    def format(self, digits: int = 2) -> str:
        """``mean ± std``; a single seed has no spread to show, so it reads ``mean (n = 1)``."""
        if self.n == 1:
            return f"{self.mean:.{digits}f} (n = 1)"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def format_cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, MeanStd):
        return value.format(digits)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "nan"
        return number_text(float(value), digits)  # a count carried as a float: no decimals, separators
    return str(value)


@dataclass
class Table:
    """A titled table of cells (str, number, MeanStd or None for "not reported")."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""
    digits: int = 2

    def to_json(self) -> dict[str, Any]:
        cells = [[c.to_json() if isinstance(c, MeanStd) else c for c in row] for row in self.rows]
        return {"title": self.title, "columns": list(self.columns), "rows": cells, "note": self.note}

    def to_text(self) -> str:
        body = [[format_cell(c, self.digits) for c in row] for row in self.rows]
        widths = [max(len(str(h)), *(len(r[i]) for r in body)) for i, h in enumerate(self.columns)]
        line = lambda cells: " | ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        out = [self.title, line(self.columns), "-+-".join("-" * w for w in widths)] + [line(r) for r in body]
        return "\n".join(out + ([self.note] if self.note else []))

    def __str__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in self.columns)
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(format_cell(c, self.digits))}</td>" for c in row) + "</tr>"
            for row in self.rows
        )
        note = f"<p><small>{html.escape(self.note)}</small></p>" if self.note else ""
        return (f"<p><b>{html.escape(self.title)}</b></p><table class='accel-table'><thead><tr>{head}</tr></thead>"
                f"<tbody>{rows}</tbody></table>{note}")


def paper_vs_ours(
    title: str,
    rows: Sequence[tuple[str, dict[str, tuple[Any, Any]]]],
    *,
    label: str = "setting",
    note: str = "",
    digits: int = 2,
) -> Table:
    """A "paper | this run" table.

    ``rows`` is a list of ``(row label, {metric: (paper value, this run's value)})``; every metric becomes two
    adjacent columns, ``metric · paper`` and ``metric · this run``. Use None where the paper reports nothing.
    """
    metrics: list[str] = []
    for _, cells in rows:
        metrics += [m for m in cells if m not in metrics]
    columns = [label] + [f"{m} · {side}" for m in metrics for side in ("paper", "this run")]
    body = [[name] + [v for m in metrics for v in cells.get(m, (None, None))] for name, cells in rows]
    return Table(title, columns, body, note=note, digits=digits)
