"""The speedup ledger as every chapter shows and records it: one code path, one meaning of "to target"."""

from __future__ import annotations

from accel.experiments.ledger import LEDGER_COLUMNS, LedgerEntry, ledger_rows

from .results import Results
from .tables import Table


def ledger_table(entries: list[LedgerEntry], *, baseline: str, target: str, quality: str, samples: str = "samples",
                 note: str = "") -> Table:
    """The ledger as a table: each arm's cost to the target's first crossing and its ratio to ``baseline``'s.

    Args:
        entries: one per arm (``accel.experiments.ledger.entry_from_runs`` builds them from per-seed curves).
        baseline: the arm the ratios divide by.
        target: the target in words, e.g. "88% test accuracy".
        quality: what the quality column holds, e.g. "test accuracy % at the end".
        samples: what the first column counts ("samples" = sample-iterations, or "fresh examples").
    """
    columns = list(LEDGER_COLUMNS)
    columns[1:3] = [f"{samples} to target", f"{samples} × baseline"]
    title = f"Ledger: cost to {target} (first crossing; mean over seeds), quality = {quality}"
    return Table(title, columns, ledger_rows(entries, baseline=baseline),
                 note=note or "— : not every seed reached the target within the budget.")


def show_ledger(results: Results, entries: list[LedgerEntry], *, baseline: str, arm: str, target: str, quality: str,
                samples: str = "samples", note: str = "") -> Table:
    """Build the ledger table, record it (with ``arm``'s row as the chapter's headline row) and return it for
    display."""
    table = ledger_table(entries, baseline=baseline, target=target, quality=quality, samples=samples, note=note)
    return results.ledger(table, arm=arm)
