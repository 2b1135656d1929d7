"""Numbers in reader-facing words, shared by every chapter's module: counts with their noun, table-style numbers."""

from __future__ import annotations


def plural(count: int, word: str, words: str | None = None) -> str:
    """"1 seed", "3 seeds", "1,000 epochs": ``count`` with ``word`` in the number it needs (``words``: an irregular
    plural)."""
    return f"{count:,} {word if count == 1 else (words or word + 's')}"


def number_text(value: float, digits: int = 2) -> str:
    """A number as the book's tables print it: thousands separators, no decimals on a whole number from 1,000."""
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"
