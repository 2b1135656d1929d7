"""Chapter 04's concept diagram: an MoE layer dispatching by index, on four tokens, three experts and top-2."""

from __future__ import annotations

from accel.book.style import COLORS, category_colors

from .draw import arrow, box, canvas, label

# each token's (first, second) choice in the drawn example: t3's first choice (e0) outranks t1's second (e0)
CHOICES = {"t0": ("e0", "e1"), "t1": ("e1", "e0"), "t2": ("e2", "e1"), "t3": ("e0", "e2")}
EXPERTS = ("e0", "e1", "e2")
CAPACITY = 2  # floor(CF · k · T / E) with CF 0.75, k 2, T 4, E 3


def dispatch_plan() -> tuple[list[tuple[str, str, int]], dict[str, list[tuple[str, int, bool]]]]:
    """The drawn example's assignments, choice-major ``[(token, expert, choice)]``, and per expert, in the stable
    sorted order, ``[(token, choice, kept)]`` with the first ``CAPACITY`` kept."""
    assignments = [(t, CHOICES[t][c], c + 1) for c in range(2) for t in CHOICES]
    by_expert = {e: [(t, c, False) for t, ex, c in assignments if ex == e] for e in EXPERTS}
    return assignments, {e: [(t, c, i < CAPACITY) for i, (t, c, _) in enumerate(rows)] for e, rows in by_expert.items()}


def _nth(c: int) -> str:
    return "first" if c == 1 else "second"


def dispatch_story() -> list[str]:
    """One line per dropped assignment of the drawn example: which kept assignments took the expert's slots, and
    whether a later token's first choice pushed out an earlier token's second choice (top-2's look-ahead)."""
    lines = []
    for e, rows in dispatch_plan()[1].items():
        kept = [(t, c) for t, c, k in rows if k]
        for t, c, k in rows:
            if k:
                continue
            later = [(u, cu) for u, cu in kept if cu < c and int(u[1:]) > int(t[1:])]
            names = " and ".join(u for u, _ in later)
            whose = "a later token" if len(later) == 1 else "later tokens"
            why = (f", pushed out by the first choice{'s' if len(later) > 1 else ''} of {names}, {whose}" if later
                   else f"; {' and '.join(f'{u} ({_nth(cu)} choice)' for u, cu in kept)} came first in drop order")
            lines.append(f"{e} is full: {t}'s {_nth(c)} choice is dropped{why}")
    return lines


def draw_moe_dispatch():
    """Tokens → router (top-k) → assignments listed choice-major → stable-sorted by expert → capacity cut → each
    expert on its contiguous rows → outputs scaled by the gates and added back to their tokens. Returns the figure."""
    fig, ax = canvas(16, 7.2, scale=0.72, title="MoE dispatch by index (4 tokens, 3 experts, top-2, capacity 2)")
    colors = dict(zip(EXPERTS, category_colors(len(EXPERTS))))
    assignments, by_expert = dispatch_plan()
    grey = COLORS["baseline"]

    label(ax, 0.75, 6.6, "tokens", bold=True)
    token_y = {t: 5.4 - 1.05 * i for i, t in enumerate(CHOICES)}
    for t, y in token_y.items():
        box(ax, 0.25, y, 1.0, 0.7, f"x_{t[1]}", color="#bbbbbb")
    box(ax, 1.9, 1.6, 1.6, 4.5, "router\n\nh = x W_r\np = softmax(h)\n\ntop-2\nper token", color=COLORS["moe"],
        fontsize=8)
    arrow(ax, (1.3, 3.85), (1.9, 3.85))

    label(ax, 4.75, 6.6, "assignments\n(choice-major)", bold=True, fontsize=8)
    for i, (t, e, c) in enumerate(assignments):
        y = 5.85 - 0.62 * i
        box(ax, 4.05, y, 1.4, 0.48, f"{t}→{e} ({'1st' if c == 1 else '2nd'})", color=colors[e], fontsize=7)
    arrow(ax, (3.5, 3.85), (4.0, 3.85))
    arrow(ax, (5.55, 3.85), (6.45, 3.85), "stable sort\nby expert", fontsize=7)

    label(ax, 7.3, 6.6, "sorted by expert,\ncut at capacity", bold=True, fontsize=8)
    y, expert_y = 5.85, {}
    for e in EXPERTS:
        top = y
        for t, c, kept in by_expert[e]:
            box(ax, 6.6, y, 1.45, 0.48, f"{t} ({'1st' if c == 1 else '2nd'})" + ("" if kept else " ✗"),
                color=colors[e] if kept else "#ffffff", edge=None if kept else grey, dashed=not kept, fontsize=7)
            y -= 0.62
        expert_y[e] = (top + y + 0.62 + 0.48) / 2
        y -= 0.25
    label(ax, 7.3, 0.35, f"✗ dropped: beyond C = {CAPACITY}\n(1st choices first, then token order)", fontsize=7,
          color=grey)

    label(ax, 10.0, 6.6, "experts", bold=True)
    for e in EXPERTS:
        kept = [t for t, _, k in by_expert[e] if k]
        box(ax, 9.2, expert_y[e] - 0.45, 1.6, 0.9, f"FFN_{e}\nrows {', '.join(kept)}", color=colors[e], fontsize=7)
        arrow(ax, (8.1, expert_y[e]), (9.15, expert_y[e]))
        arrow(ax, (10.85, expert_y[e]), (11.9, 3.85), curve=0.0)

    kept = {t: sum(k for rows in by_expert.values() for u, _, k in rows if u == t) for t in CHOICES}
    partial = [t for t, n in kept.items() if 0 < n < 2]
    lost = [t for t, n in kept.items() if n == 0]
    fate = (f"{', '.join(partial)}: one expert each\n(a dropped slot adds 0)" if partial else "")
    fate += ("\n" if fate and lost else "") + (f"{', '.join(lost)} lost both: y = 0,\nthe residual carries it" if lost
                                                  else "")
    box(ax, 11.95, 2.3, 3.8, 3.1, "combine by index\n\ny_t = Σ_j g_tj · FFN_ej(x_t)\n(gates g: renormalised\n"
        f"top-2 probabilities)\n\n{fate}", color=COLORS["moe"], fontsize=7.5)
    label(ax, 8.0, -0.05, "routing metadata: O(T·k) indices, never a [T, E, C] one-hot tensor", fontsize=7.5,
          italic=True)
    return fig
