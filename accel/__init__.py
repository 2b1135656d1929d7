"""accel: fast PyTorch implementations of four ways to make training cheaper, and the book that measures them.

Method modules (each one file, importing nothing else from accel): ``accel.infobatch``, ``accel.echo``,
``accel.cowclip``, ``accel.moe``. Notebook support lives in ``accel.book``; the chapters' experiments in
``accel.experiments``.
"""

__version__ = "0.1.0"
