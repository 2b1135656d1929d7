"""Small vision-style models for the CPU profiles."""

from __future__ import annotations

import torch
from torch import nn


class ConvNet1D(nn.Module):
    """A small 1-D CNN for MNIST-1D-like signals: [batch, channels, length] -> logits [batch, num_classes].

    Three conv blocks (conv, ReLU, stride-2 downsampling), global average pooling, one linear layer.
    """

    def __init__(self, num_classes: int = 10, *, in_channels: int = 1, width: int = 32, kernel_size: int = 5):
        super().__init__()
        pad = kernel_size // 2
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(3):
            layers += [nn.Conv1d(channels, width, kernel_size, stride=2, padding=pad), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=-1))
