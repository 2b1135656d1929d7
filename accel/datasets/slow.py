"""An input side whose cost is real work: samples stored compressed, decoded on every read with adjustable effort.

Chapter 02 needs an upstream that is genuinely slower than the training step, by a ratio R = t_up / t_down it can set.
``SlowDecoded`` stores each sample as zlib-compressed float32 bytes (as a real dataset stores encoded files) and
decodes it on every read with ``work`` passes over the stored bytes, like a multi-pass decoder: the cost grows
linearly with ``work`` and the decoded sample is bit-for-bit the same whatever ``work`` is, so training results do not
depend on the dial. ``augment_signal`` is the matching augmentation (shift, scale, noise) drawn from a generator.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch.utils.data import Dataset


class SlowDecoded(Dataset):
    """``dataset[i] -> (x, y)``: x float32 [*sample_shape] (e.g. [C, L]) decoded from compressed bytes with ``work``
    passes, y int64 scalar.

    Args:
        x: float tensor [N, *sample_shape] of samples to store ([N, C, L] signals, [N, C, H, W] images).
        y: int64 tensor [N] of labels.
        work: decode passes per read (>= 1); the cost knob.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, work: int = 1):
        if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"Invalid x, y: shapes {tuple(x.shape)} and {tuple(y.shape)}; expected [N, *sample_shape] and [N]"
            )
        if not isinstance(work, int) or isinstance(work, bool) or work < 1:
            raise ValueError(f"Invalid work: {work!r}; expected an integer >= 1")
        self.shape = tuple(x.shape[1:])
        self.work = work
        array = x.detach().cpu().numpy().astype(np.float32)
        self.blobs = [zlib.compress(row.tobytes()) for row in array]
        self.labels = y.detach().cpu().long()

    def __len__(self) -> int:
        return len(self.blobs)

    def with_work(self, work: int) -> SlowDecoded:
        """The same stored samples with another decode effort (shares the stored bytes)."""
        if not isinstance(work, int) or isinstance(work, bool) or work < 1:
            raise ValueError(f"Invalid work: {work!r}; expected an integer >= 1")
        other = object.__new__(SlowDecoded)
        other.shape, other.work, other.blobs, other.labels = self.shape, work, self.blobs, self.labels
        return other

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(self.work):  # the adjustable decode effort; every pass yields the same bytes
            raw = zlib.decompress(self.blobs[index])
        return torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(self.shape), self.labels[index]


def augment_signal(sample: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator, *, max_shift: int = 3,
                   scale: tuple[float, float] = (0.85, 1.15), noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment one (x [C, L], y) sample: circular shift by up to ``max_shift``, random gain, additive noise."""
    x, y = sample
    draws = torch.rand(2, generator=generator)
    shift = int(draws[0] * (2 * max_shift + 1)) - max_shift
    gain = scale[0] + (scale[1] - scale[0]) * float(draws[1])
    x = torch.roll(x, shift, dims=-1) * gain + noise * torch.randn(x.shape, generator=generator)
    return x, y
