"""The book's one plotting style and palette, so that a colour means the same thing in every chapter's figures.

- ``COLORS``: one colour per role. The baseline (full data, e = 1, no clip, dense) is always grey; each method keeps
  its colour wherever it appears; "model" (a law, a bound, a closed form) is near-black and drawn dashed; "measured" is
  orange; "paper" marks the paper's own numbers.
- ``knob_colors(n)``: the values of one knob (prune ratio, echo factor, batch multiplier, expert count), low to high,
  on one sequential map, never the method colours.
- ``category_colors(n)``: unrelated categories (frequency buckets, classes, datasets), a muted qualitative set that
  never reuses a method colour.
- ``SEED_BAND_ALPHA``: the shading of a mean ± std band over seeds.
- ``STAGE_COLORS``: the stages of one training step (Set2 too: stages are categories, not methods).
"""

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
    "paper": "#17becf",
}

SEED_BAND_ALPHA = 0.2


def knob_colors(n: int) -> list:
    """``n`` colours for the values of one knob, low to high (viridis, light ends trimmed)."""
    import matplotlib.pyplot as plt
    import numpy as np

    return list(plt.cm.viridis(np.linspace(0.05, 0.85, max(n, 1))))[:n]


def category_colors(n: int) -> list:
    """``n`` colours for unrelated categories (matplotlib's Set2, cycled)."""
    import matplotlib.pyplot as plt

    return [plt.cm.Set2(i % 8) for i in range(n)]


STAGE_COLORS = {
    "data loading": "#e78ac3",
    "host→device copy": "#a6d854",
    "forward": "#66c2a5",
    "backward": "#fc8d62",
    "optimizer": "#8da0cb",
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
