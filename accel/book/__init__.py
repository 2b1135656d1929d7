"""Notebook support: start-up, the results file, paper-vs-this-run tables, explorers, plotting style, Colab set-up.

The only part of accel that imports notebook machinery (ipywidgets, IPython), and only inside the functions that
need it, so ``import accel.book`` stays cheap.
"""

from .explorer import explorer, static_readout
from .glance import at_a_glance, recorded_run_times, run_time_line, when_it_pays
from .ledger import ledger_table, show_ledger
from .links import colab_badge, install_line, repository_url
from .results import Results
from .session import PROFILES, Book, resolve_profile, start
from .style import COLORS, SEED_BAND_ALPHA, STAGE_COLORS, category_colors, knob_colors, use_style
from .tables import MeanStd, Table, paper_vs_ours

__all__ = [
    "PROFILES", "SEED_BAND_ALPHA", "Book", "COLORS", "category_colors", "knob_colors", "MeanStd", "Results",
    "STAGE_COLORS", "Table", "at_a_glance", "colab_badge",
    "explorer", "install_line", "ledger_table", "paper_vs_ours", "recorded_run_times", "repository_url",
    "resolve_profile", "run_time_line", "show_ledger", "start", "static_readout", "use_style", "when_it_pays",
]
