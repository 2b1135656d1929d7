"""Chapter 01's concept diagram: InfoBatch's prune–rescale–anneal cycle."""

from __future__ import annotations

from accel.book.diagrams.draw import arrow, box, canvas, label
from accel.book.style import COLORS, SEED_BAND_ALPHA


def draw_infobatch_cycle(prune_ratio: float = 0.5, delta: float = 0.875):
    """One epoch of InfoBatch as a cycle (scores → threshold → soft pruning → rescaled loss → new scores), and below
    it the schedule of epochs: pruning until δ·C, then the full data (annealing). Returns the figure."""
    method, base, model = COLORS["infobatch"], COLORS["baseline"], COLORS["model"]
    keep = 1 - prune_ratio
    fig, ax = canvas(13.0, 6.7, scale=0.85, title=f"InfoBatch, one epoch (r = {prune_ratio:g}) and the whole schedule")

    # the per-epoch cycle
    scores = box(ax, 0.2, 3.6, 2.6, 1.4, "scores H(z)\n= each sample's\nlast loss", color=base)
    split = box(ax, 3.6, 3.6, 2.4, 1.4, "threshold\nH̄ = mean of H\n(no sorting)", color=model, alpha=0.12)
    high = box(ax, 6.9, 4.6, 2.9, 1.1, "H ≥ H̄: always kept,\nweight 1", color=base)
    low = box(ax, 6.9, 2.9, 2.9, 1.3,
              f"H < H̄ (well learned):\nsoft pruning, each skips\nwith probability r = {prune_ratio:g}", color=method)
    rescale = box(ax, 10.4, 2.9, 2.4, 1.3, f"kept ones:\nloss × 1/(1−r) = {1 / keep:g}", color=method, alpha=0.5)
    train = box(ax, 10.4, 4.6, 2.4, 1.1, "train the epoch:\nweighted mean loss", color=base)
    arrow(ax, (scores[0] + 1.3, scores[1]), (split[0] - 1.2, split[1]))
    arrow(ax, (split[0] + 1.2, split[1] + 0.3), (high[0] - 1.45, high[1]))
    arrow(ax, (split[0] + 1.2, split[1] - 0.3), (low[0] - 1.45, low[1]))
    arrow(ax, (low[0] + 1.45, low[1]), (rescale[0] - 1.2, rescale[1]))
    arrow(ax, (high[0] + 1.45, high[1]), (train[0] - 1.2, train[1]))
    arrow(ax, (rescale[0], rescale[1] + 0.65), (train[0], train[1] - 0.55))
    arrow(ax, (train[0], train[1] + 0.55), (scores[0], scores[1] + 0.7), curve=0.18)
    label(ax, 6.5, 6.45, "per-sample losses become the next epoch's scores (skipped samples keep their old score)",
          fontsize=8)
    label(ax, 8.35, 2.55, "E[gradient] = full-data gradient", fontsize=8, italic=True, color=method)

    # the schedule of epochs
    label(ax, 0.2, 1.85, "epochs 0 … C", ha="left", fontsize=9, bold=True)
    box(ax, 0.2, 0.6, 0.5, 0.8, "0", color=base, fontsize=8)
    box(ax, 0.8, 0.6, 9.3 * delta, 0.8, f"epochs 1 … ⌈δ·C⌉ − 1: prune and rescale (δ = {delta:g})", color=method,
        fontsize=9)
    start = 0.9 + 9.3 * delta
    box(ax, start, 0.6, 12.8 - start, 0.8, "annealing, epochs ⌈δ·C⌉ …:\nfull data, weight 1", color=base, fontsize=8)
    label(ax, 0.45, 0.35, "all scores equal:\nnothing pruned", fontsize=7, ha="left", color=base)
    return fig



def full_data_band(ax, mean: float, std: float, label: str | None = None):
    """The full-data accuracy as a grey band of ± std, or as a grey line where the std is 0 (one seed), so that the
    reference the prose points to is always visible. ``label`` defaults to saying which of the two it is."""
    if std > 0:
        return ax.axhspan(mean - std, mean + std, color=COLORS["baseline"], alpha=SEED_BAND_ALPHA,
                          label=label or "full data, mean ± std")
    return ax.axhline(mean, color=COLORS["baseline"], lw=1.5, label=label or "full data (one seed: a line)")
