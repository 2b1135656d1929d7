"""The book's one plotting style and colour for each method, so every chapter's figures read alike."""

from __future__ import annotations

import matplotlib as mpl

# One colour per role, used by every chapter: the baseline is always grey, each method keeps its colour.
COLORS = {
    "baseline": "#6b6b6b",
    "infobatch": "#1f77b4",
    "echo": "#2ca02c",
    "cowclip": "#d62728",
    "moe": "#9467bd",
    "model": "#222222",
    "measured": "#ff7f0e",
}

STAGE_COLORS = {
    "data loading": "#8c564b",
    "host→device copy": "#e377c2",
    "forward": "#1f77b4",
    "backward": "#ff7f0e",
    "optimizer": "#2ca02c",
}

RC = {
    "figure.figsize": (7.0, 3.6),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "figure.constrained_layout.use": True,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "legend.frameon": False,
    "legend.fontsize": 9,
    "font.size": 10,
}


def use_style() -> None:
    """Apply the book's matplotlib settings (call once per notebook; ``accel.book.start`` does)."""
    mpl.rcParams.update(RC)
