"""Notebook support: start-up, the results file, paper-vs-this-run tables, explorers, plotting style, Colab set-up.

The only part of accel that imports notebook machinery (ipywidgets, IPython), and only inside the functions that
need it, so ``import accel.book`` stays cheap.
"""

from .explorer import explorer
from .links import colab_badge, install_line, repository_url
from .results import Results
from .session import PROFILES, Book, resolve_profile, start
from .style import COLORS, STAGE_COLORS, use_style
from .tables import MeanStd, Table, paper_vs_ours

__all__ = [
    "PROFILES", "Book", "COLORS", "MeanStd", "Results", "STAGE_COLORS", "Table", "colab_badge", "explorer",
    "install_line", "paper_vs_ours", "repository_url", "resolve_profile", "start", "use_style",
]
