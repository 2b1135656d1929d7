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


class BasicBlock(nn.Module):
    """The two-conv residual block of ResNet-18/34: [B, C_in, H, W] -> [B, C_out, H / stride, W / stride].

    out = relu(bn(conv3x3(relu(bn(conv3x3_stride(x))))) + shortcut(x)); the shortcut is the identity when shapes
    match, else a strided 1x1 conv with batch norm (the "option B" projection of He et al., 2016).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet of :class:`BasicBlock` stages for small images: [B, in_channels, H, W] -> logits [B, num_classes].

    Stem: 3x3 conv (stride 1, no max-pool, so 32x32 inputs keep their resolution), batch norm, ReLU. Then one stage per
    entry of ``widths`` with ``blocks_per_stage`` blocks each; every stage after the first halves H and W in its first
    block. Global average pooling and a linear layer finish. For 32x32 inputs and the default widths:
    stem [B, 64, 32, 32] -> [B, 64, 32, 32] -> [B, 128, 16, 16] -> [B, 256, 8, 8] -> [B, 512, 4, 4] -> pool
    [B, 512] -> [B, num_classes].

    Convs use He (fan-out) initialisation; batch norms start at weight 1, bias 0. ``zero_init_residual`` zeroes the
    last batch-norm weight of every block, so each block starts as the identity (Goyal et al., 2017).
    """

    def __init__(
        self,
        blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if len(blocks_per_stage) != len(widths) or not widths:
            raise ValueError(
                f"Invalid blocks_per_stage/widths: {blocks_per_stage!r}, {widths!r}; expected equal, non-zero lengths"
            )
        if num_classes < 1:
            raise ValueError(f"Invalid num_classes: {num_classes!r}; expected >= 1")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        stages: list[nn.Module] = []
        channels = widths[0]
        for index, (count, width) in enumerate(zip(blocks_per_stage, widths)):
            blocks = [BasicBlock(channels, width, stride=1 if index == 0 else 2)]
            blocks += [BasicBlock(width, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(channels, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(x))  # [B, C, H', W']
        return self.head(features.mean(dim=(2, 3)))


def resnet18_cifar(num_classes: int = 10, **kwargs) -> ResNet:
    """ResNet-18 for CIFAR (32x32 RGB): 3x3 stride-1 stem, no max-pool, [2, 2, 2, 2] BasicBlocks of 64-128-256-512
    channels, global average pool, linear. [B, 3, 32, 32] -> logits [B, num_classes]; 11,173,962 parameters for
    10 classes (11.22M for 100). ``kwargs`` go to :class:`ResNet` (e.g. ``zero_init_residual=True``).
    """
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, **kwargs)


def resnet32_cifar(num_classes: int = 10, **kwargs) -> ResNet:
    """ResNet-32 for CIFAR (He et al., 2016, section 4.2), the data-echoing paper's CIFAR-10 model: a 3x3 stem of
    16 channels, three stages of five BasicBlocks of 16-32-64 channels (32 = 1 + 6 * 5 + 1 layers), global average
    pool, linear. [B, 3, 32, 32] -> logits [B, num_classes]. Shortcuts that change shape are 1x1 projections
    ("option B"; the original used zero-padding, "option A"): 466,906 parameters for 10 classes (0.46M in the paper).
    """
    return ResNet((5, 5, 5), (16, 32, 64), num_classes, **kwargs)
