"""CBAM-style channel and spatial attention as UNet v2 and VM-UNetV2 use them (maps, not products).

Both return a sigmoid map; the caller multiplies: ``f = CA(f) * f; f = SA(f) * f``.
"""
from __future__ import annotations

import torch
from torch import nn

CHANNEL_REDUCTION = 16  # hard-coded upstream; their `ratio` argument is ignored


class ChannelAttention(nn.Module):
    """sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))), one MLP (1x1 convs, no bias) shared by both pools."""

    def __init__(self, in_planes: int):
        super().__init__()
        hidden = in_planes // CHANNEL_REDUCTION
        if hidden < 1:
            raise ValueError(
                f"ChannelAttention needs at least {CHANNEL_REDUCTION} channels (reduction {CHANNEL_REDUCTION}), "
                f"got {in_planes}; use a wider encoder (embed_dim >= {CHANNEL_REDUCTION})"
            )
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, in_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_out = self.fc2(self.relu1(self.fc1(self.avg_pool(x))))
        max_out = self.fc2(self.relu1(self.fc1(self.max_pool(x))))
        return torch.sigmoid(avg_out + max_out)


class SpatialAttention(nn.Module):
    """sigmoid(conv7x7([mean over channels, max over channels])), no bias."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.max(dim=1, keepdim=True).values], dim=1)
        return torch.sigmoid(self.conv1(pooled))
