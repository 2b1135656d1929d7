"""Procedural 1-D signals with an input side of adjustable cost, made offline in seconds.

Each class is a fixed smooth template (a sum of random sinusoids); a sample is its class template, circularly shifted,
rescaled and stored zlib-compressed, as a real dataset stores encoded files. Reading sample ``i`` decodes it and
augments it with fresh Gaussian noise. ``work`` sets the input side's cost: the decoder makes ``work`` passes over the
stored bytes (as a multi-pass or progressive decoder does), so the cost grows linearly with ``work`` while the sample
it returns is bit-for-bit the same. That makes the ratio R = t_up / t_down a dial, not a sleep, and keeps training
reproducible whatever the dial says.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch.utils.data import Dataset


class CompressedSignals(Dataset):
    """``dataset[i] -> (x, y)``: x float32 [1, length], y int64 class in [0, num_classes).

    Args:
        num_samples: dataset size.
        length: samples per signal.
        num_classes: number of templates.
        noise: standard deviation of the additive noise drawn afresh at every read (the augmentation).
        work: cost multiplier of a read (>= 1), see the module docstring.
        seed: generates the class templates (shared by every split) and the stored samples.
        split: ``"train"`` or ``"test"``: same templates, different samples and noise.

    Reads draw their noise from (seed, split, epoch, index), so a read is reproducible and workers need no state.
    """

    SPLITS = ("train", "test")

    def __init__(self, num_samples: int = 4096, length: int = 128, num_classes: int = 10, *, noise: float = 0.6,
                 work: int = 1, seed: int = 0, split: str = "train"):
        for name, value, low in (("num_samples", num_samples, 1), ("length", length, 8),
                                 ("num_classes", num_classes, 2), ("work", work, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"Invalid {name}: {value!r}; expected an integer >= {low}")
        if split not in self.SPLITS:
            raise ValueError(f"Invalid split: {split!r}; allowed: {self.SPLITS}")
        if not noise >= 0:
            raise ValueError(f"Invalid noise: {noise!r}; expected >= 0")
        self.length, self.num_classes, self.noise, self.work, self.seed = length, num_classes, noise, work, seed
        self.epoch = 0
        self.split_id = self.SPLITS.index(split)
        rng = np.random.default_rng([seed, 0])
        t = np.linspace(0.0, 2 * np.pi, length, endpoint=False)
        freqs = rng.integers(1, 6, size=(num_classes, 3))
        phases = rng.uniform(0, 2 * np.pi, size=(num_classes, 3))
        amps = rng.uniform(0.5, 1.0, size=(num_classes, 3))
        self.templates = (amps[..., None] * np.sin(freqs[..., None] * t + phases[..., None])).sum(1)
        rng = np.random.default_rng([seed, 1, self.split_id])
        self.labels = rng.integers(0, num_classes, size=num_samples)
        shifts = rng.integers(-length // 8, length // 8 + 1, size=num_samples)
        scales = rng.uniform(0.8, 1.2, size=num_samples)
        self.blobs = [
            zlib.compress(np.ascontiguousarray(np.roll(self.templates[c] * s, k), dtype=np.float32).tobytes())
            for c, k, s in zip(self.labels, shifts, scales)
        ]

    def __len__(self) -> int:
        return len(self.blobs)

    def set_epoch(self, epoch: int) -> None:
        """Reads in a new epoch draw new noise (a DataLoader with persistent workers needs this before forking)."""
        self.epoch = epoch

    def decode(self, index: int) -> np.ndarray:
        """The stored (clean) signal, float32 [length]."""
        return np.frombuffer(zlib.decompress(self.blobs[index]), dtype=np.float32)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(self.work):  # the adjustable decoding cost; every pass yields the same bytes
            raw = zlib.decompress(self.blobs[index])
        clean = np.frombuffer(raw, dtype=np.float32)
        rng = np.random.default_rng([self.seed, 2, self.split_id, self.epoch, index])
        noisy = clean + self.noise * rng.standard_normal(self.length, dtype=np.float32)
        return torch.from_numpy(noisy[None]), torch.tensor(int(self.labels[index]))
