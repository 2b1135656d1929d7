"""Chapter 00's concept diagram: a synchronous step against a pipelined one, on one time axis."""

from __future__ import annotations

from accel.book.diagrams.draw import arrow, box, canvas, label
from accel.book.style import COLORS, STAGE_COLORS


def draw_pipeline(t_up: float = 3.0, t_down: float = 1.0, echo_factor: int = 2):
    """Two timelines in units of t_down: above, loading and training take turns in one process (Amdahl's picture:
    every step pays t_up + t_down); below, a worker loads while the trainer steps and each fresh batch is used
    ``echo_factor`` times (the overlap law's picture: a fresh batch costs max(t_up, e·t_down))."""
    width = 13.0
    fig, ax = canvas(width, 5.6, scale=0.75, title="Where the time goes: one process, or a pipeline")
    load, step = STAGE_COLORS["data loading"], STAGE_COLORS["backward"]
    x0 = 2.2
    label(ax, 0.1, 4.6, "synchronous\n(one process)", ha="left", fontsize=8, bold=True)
    x = x0
    while x + t_up + t_down <= width - 0.2:
        box(ax, x, 4.25, t_up, 0.7, "load", color=load, fontsize=7)
        box(ax, x + t_up, 4.25, t_down, 0.7, "step", color=step, fontsize=7)
        x += t_up + t_down
    label(ax, x0, 3.85, "each step costs t_up + t_down: speeding one part up is bounded by Amdahl's law",
          ha="left", fontsize=7.5, italic=True)
    label(ax, 0.1, 2.6, "pipelined\n(worker)", ha="left", fontsize=8, bold=True)
    label(ax, 0.1, 1.45, f"trainer\n(e = {echo_factor})", ha="left", fontsize=8, bold=True)
    x = x0
    for k in range(int((width - x0) // t_up)):
        box(ax, x0 + k * t_up, 2.25, t_up, 0.7, f"fresh batch {k + 1}", color=load, fontsize=7)
        start = x0 + (k + 1) * t_up
        for copy in range(echo_factor):
            if start + (copy + 1) * t_down <= width - 0.2:
                box(ax, start + copy * t_down, 1.1, t_down, 0.7, "step" if copy == 0 else "echo",
                    color=step if copy == 0 else COLORS["echo"], fontsize=7)
        if start + echo_factor * t_down < width - 0.4 and start + t_up <= width:
            label(ax, start + echo_factor * t_down + (t_up - echo_factor * t_down) / 2, 1.45, "idle", fontsize=7,
                  color=COLORS["baseline"], italic=True)
        if k == 0:
            arrow(ax, (start - 0.1, 2.2), (start + 0.2, 1.85), color=COLORS["model"])
    label(ax, x0, 0.55, "a fresh batch costs max(t_up, e·t_down): echoing fills the idle gap while e ≤ R = t_up / "
          "t_down", ha="left", fontsize=7.5, italic=True)
    arrow(ax, (x0, 0.15), (width - 0.9, 0.15), color=COLORS["model"])
    label(ax, width - 0.8, 0.15, "time", ha="left", fontsize=8, color=COLORS["model"])
    return fig
