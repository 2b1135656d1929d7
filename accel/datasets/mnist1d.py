"""MNIST-1D (Greydanus, 2020), generated offline by the ``mnist1d`` package and cached as a compressed .npz.

MNIST-1D is a procedural benchmark: ten 1-D digit templates, each padded, sheared, scaled, translated and noised into a
40-sample signal. Small CNNs reach ~98% on it in seconds, yet (unlike scikit-learn's digits) it separates models and
training methods the way CIFAR does. The ``mnist1d`` package reseeds NumPy's *global* generator while generating; we
save and restore that state, so building the data never changes the caller's randomness.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .cache import cache_dir, new_part


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # float32 [n, 1, 40]
    y: torch.Tensor  # int64 [n]

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.x, self.y)


def load_mnist1d(num_samples: int = 12_000, *, seed: int = 42, train_split: float = 0.8,
                 root: str | os.PathLike | None = None) -> tuple[Split, Split]:
    """(train, test) splits of MNIST-1D with ``num_samples`` in total (a multiple of 10).

    The first call generates the data (a few seconds per 10,000 samples) and caches it under ``root`` (default: the
    accel data cache); later calls read the cache. Same (num_samples, seed, train_split), same data.
    """
    if not isinstance(num_samples, int) or num_samples < 20 or num_samples % 10:
        raise ValueError(f"Invalid num_samples: {num_samples!r}; expected a multiple of 10, at least 20")
    if not 0 < train_split < 1:
        raise ValueError(f"Invalid train_split: {train_split!r}; expected 0 < train_split < 1")
    folder = Path(root) if root is not None else cache_dir()
    path = folder / f"mnist1d_n{num_samples}_seed{seed}_split{train_split:g}.npz"
    if not path.exists():
        arrays = _generate(num_samples, seed, train_split)
        part = new_part(folder, suffix=".npz")  # written whole, then renamed: never a half-written cache file
        try:
            with open(part, "wb") as handle:
                np.savez_compressed(handle, **arrays)
            os.replace(part, path)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    with np.load(path) as data:
        def split(x: str, y: str) -> Split:
            return Split(torch.from_numpy(data[x].astype(np.float32))[:, None, :], torch.from_numpy(data[y]).long())

        return split("x", "y"), split("x_test", "y_test")


def _generate(num_samples: int, seed: int, train_split: float) -> dict[str, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("MNIST-1D needs the `mnist1d` package: pip install mnist1d") from error
    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, train_split
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:  # mnist1d seeds the global generators; give the caller theirs back
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}
