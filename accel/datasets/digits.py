"""scikit-learn's bundled 8x8 digits (1,797 images, shipped with the package: no download), as 1-D signals.

Used by the smoke profiles: big enough to learn something in a second, small enough for CI.
"""

from __future__ import annotations

import numpy as np
import torch

from .mnist1d import Split


def load_digits_1d(*, seed: int = 0, test_fraction: float = 0.2) -> tuple[Split, Split]:
    """(train, test) with x float32 [n, 1, 64] scaled to [0, 1] and y int64 [n]; the split is drawn from ``seed``."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"Invalid test_fraction: {test_fraction!r}; expected 0 < test_fraction < 1")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy((digits.data / 16.0).astype(np.float32))[:, None, :]
    y = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return Split(x[train], y[train]), Split(x[test], y[test])
