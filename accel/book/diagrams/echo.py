"""Chapter 02's concept diagram: an input pipeline and the three places an echo stage can sit."""

from __future__ import annotations

from accel.book.diagrams.draw import arrow, box, canvas, label
from accel.book.style import COLORS


def draw_insertion_points():
    """read → decode → augment → batch → train, with the slow part marked and the three echo stages (example echoing
    before or after augmentation, batch echoing) as dashed boxes, each saying what its copies look like."""
    fig, ax = canvas(13.0, 4.4, scale=0.75, title="Data echoing: repeat after the slow stage, at one of three points")
    grey, echo, model = COLORS["baseline"], COLORS["echo"], COLORS["model"]
    stages = [("read", 0.3), ("decode", 2.3), ("augment", 5.9), ("batch", 9.5)]
    centres = {}
    for name, x in stages:
        centres[name] = box(ax, x, 2.5, 1.5, 0.9, name, color=grey)
    train = box(ax, 11.5, 2.5, 1.3, 0.9, "train\nstep", color=model, alpha=0.15)
    box(ax, 0.15, 2.3, 3.85, 1.3, color="#e78ac3", alpha=0.12, dashed=True)
    label(ax, 2.1, 3.85, "slow: t_up per fresh batch", fontsize=8, color="#b0417f")
    points = [(4.1, "echo\nbefore aug.", "copies augmented\nafresh: all differ"),
              (7.7, "echo\nafter aug.", "identical copies")]
    prev = centres["decode"]
    for (x, text, what), nxt in zip(points[:2], ("augment", "batch")):
        e_box = box(ax, x, 2.55, 1.5, 0.8, text, color=echo, dashed=True, fontsize=8)
        arrow(ax, (prev[0] + 0.75, prev[1]), (x, e_box[1]))
        arrow(ax, (x + 1.5, e_box[1]), (centres[nxt][0] - 0.75, centres[nxt][1]))
        label(ax, e_box[0], 1.85, what, fontsize=7.5, color=echo)
        prev = centres[nxt]
    arrow(ax, (1.8, 2.95), (2.3, 2.95))
    b_box = box(ax, 9.5, 0.45, 1.5, 0.8, "batch echo", color=echo, dashed=True, fontsize=8)
    arrow(ax, (centres["batch"][0] + 0.75, 2.95), (train[0] - 0.65, 2.95))
    arrow(ax, (centres["batch"][0], 2.45), (b_box[0], 1.3))
    arrow(ax, (b_box[0] + 0.75, b_box[1]), (train[0], 2.45), curve=0.3)
    label(ax, 7.2, 0.85, "whole batches repeated\n(identical, no per-example work)", fontsize=7.5, color=echo)
    label(ax, 6.5, 4.25, "each fresh item leaves an echo stage e times: e steps per fresh batch", fontsize=8,
          italic=True)
    return fig
