"""Chapter 03's concept diagram: the CowClip threshold, row by row."""

from __future__ import annotations

from accel.book.diagrams.draw import arrow, box, canvas, label
from accel.book.style import COLORS

# (row, what it is, cnt in the batch, ||w_k||, ||g_k||): illustrative numbers, r = 1, zeta = 1e-5
ROWS = (
    ("row 3", "frequent ID", 41, 0.90, 11.0),
    ("row 9", "frequent ID", 12, 0.50, 4.5),
    ("row 5,120", "rare ID", 1, 0.02, 0.05),
    ("row 40,311", "rare ID, row shrunk to ~0", 1, 1e-6, 0.03),
)


def draw_clip_threshold(r: float = 1.0, zeta: float = 1e-5):
    """An embedding table's rows touched by one batch (with their counts), each row's gradient norm against its
    threshold cnt · max(r · ||w||, zeta), and which rows the clip scales down before Adam. Returns the figure."""
    fig, ax = canvas(15.5, 6.2, scale=0.8, title="CowClip, row by row: clip_k = cnt_k · max(r·‖w_k‖, ζ), "
                                                      "then Adam on the clipped rows")
    label(ax, 1.2, 5.55, "embedding table", bold=True)
    label(ax, 4.3, 5.55, "the batch's rows: cnt, ‖w‖", bold=True)
    label(ax, 8.6, 5.55, "‖g_k‖ (bar) against clip_k (dashed line)", bold=True)
    label(ax, 14.4, 5.55, "optimizer", bold=True)
    top, height, gap = 4.7, 0.75, 0.3
    for i, (row, what, cnt, weight, grad) in enumerate(ROWS):
        y = top - i * (height + gap)
        clip = cnt * max(r * weight, zeta)
        binds = grad > clip
        box(ax, 0.2, y, 2.0, height, f"{row}\n{what}", color=COLORS["paper"], fontsize=8)
        arrow(ax, (2.3, y + height / 2), (3.0, y + height / 2))
        box(ax, 3.1, y, 2.4, height, f"cnt = {cnt}, ‖w‖ = {weight:g}\nclip_k = {clip:.2g}", color="#eeeeee",
            fontsize=8)
        # the gradient bar on a scale where the threshold sits at x = 8.6 (ratio 1); clipped part dashed
        scale_x, start = 2.0, 6.6
        ratio = grad / clip if clip > 0 else float("inf")
        length = scale_x * min(ratio, 1.9)
        kept = min(length, scale_x)
        color = COLORS["cowclip"] if binds else COLORS["baseline"]
        box(ax, start, y + 0.15, kept, height - 0.3, color=color, alpha=0.5)
        if binds:
            box(ax, start + scale_x, y + 0.15, length - scale_x, height - 0.3, color=color, alpha=0.1, dashed=True)
        ax.plot([start + scale_x] * 2, [y - 0.05, y + height + 0.05], ls="--", color=COLORS["model"], lw=1)
        verdict = (f"binds: ‖g‖ = {ratio:,.1f}× clip,\nscaled down to clip" if binds
                   else f"passes: ‖g‖ = {ratio:.2g}× clip")
        label(ax, 10.75, y + height / 2, verdict, fontsize=8, color=color, ha="left")
        arrow(ax, (start + length + 0.05, y + height / 2), (10.65, y + height / 2), color="#bbbbbb")
        arrow(ax, (13.1, y + height / 2), (13.75, y + height / 2), color="#bbbbbb")
    box(ax, 13.8, 0.55, 1.3, 4.8, "Adam\n(embedding lr,\nfixed)", color=COLORS["cowclip"], alpha=0.15, fontsize=8)
    label(ax, 0.2, 0.25, "Rows absent from the batch have cnt = 0 here (the official code clips them with cnt = 1; "
                         "their only gradient, the L2 term 2λ·w, cannot bind while 2λ ≤ r).", fontsize=7.5,
          ha="left", italic=True)
    return fig
