"""Primitives for schematic figures: a blank canvas in data units, labelled boxes, arrows and free text."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch


def canvas(width: float, height: float, *, scale: float = 0.9, title: str = ""):
    """A figure whose axes run 0..width by 0..height (data units), with no ticks, grid or frame. Returns (fig, ax)."""
    if not width > 0 or not height > 0:
        raise ValueError(f"Invalid canvas size: {width!r} × {height!r}; expected positive numbers")
    fig, ax = plt.subplots(figsize=(width * scale, height * scale))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return fig, ax


def box(ax, x: float, y: float, w: float, h: float, text: str = "", *, color: str = "#dddddd", alpha: float = 0.35,
        edge: str | None = None, fontsize: float = 9, bold: bool = False, dashed: bool = False):
    """A rounded box with its lower-left corner at (x, y), filled with ``color`` and ``text`` centred in it.
    Returns the box's centre."""
    patch = FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", facecolor=color, alpha=alpha,
                           edgecolor="none")
    ax.add_patch(patch)
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", facecolor="none",
                                edgecolor=edge or color, linewidth=1.2, linestyle="--" if dashed else "-"))
    centre = (x + w / 2, y + h / 2)
    if text:
        ax.text(*centre, text, ha="center", va="center", fontsize=fontsize, weight="bold" if bold else "normal",
                wrap=True)
    return centre


def arrow(ax, start: tuple[float, float], end: tuple[float, float], text: str = "", *, color: str = "#444444",
          fontsize: float = 8, style: str = "-|>", dashed: bool = False, curve: float = 0.0, offset: float = 0.12):
    """An arrow from ``start`` to ``end`` (data units), with optional ``text`` at its middle, ``offset`` above."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, color=color, linewidth=1.2,
                                 linestyle="--" if dashed else "-", connectionstyle=f"arc3,rad={curve}"))
    if text:
        middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + offset)
        ax.text(*middle, text, ha="center", va="bottom", fontsize=fontsize, color=color)


def label(ax, x: float, y: float, text: str, *, fontsize: float = 9, color: str = "#222222", ha: str = "center",
          va: str = "center", bold: bool = False, italic: bool = False):
    """Free text at (x, y)."""
    ax.text(x, y, text, ha=ha, va=va, fontsize=fontsize, color=color, weight="bold" if bold else "normal",
            style="italic" if italic else "normal")
