"""SDI (semantics and detail infusion) and the UNet v2 decoder that VM-UNetV2 reuses.

Facts from ``reference-facts.md`` section 1.1 ("SDI") and 1.3: per-level CBAM attention, a 1x1
projection to ``channel`` (conv + BN, no ReLU), one SDI per level fusing all four levels by an
elementwise product, then a transposed-conv decoder with a 1x1 head at every level.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segbench.nn.cbam import ChannelAttention, SpatialAttention

NUM_LEVELS = 4


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm. No ReLU: upstream defines one and never applies it."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SDI(nn.Module):
    """Resize every level to the anchor's size, 3x3 conv (with bias) each, multiply them all.

    Larger maps are average-pooled (adaptive), smaller ones upsampled bilinearly with
    ``align_corners=True``, as upstream (which compares widths only: inputs are square).
    """

    def __init__(self, channel: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channel, channel, 3, padding=1) for _ in range(NUM_LEVELS))

    def forward(self, features: Sequence[torch.Tensor], anchor: torch.Tensor) -> torch.Tensor:
        target_size = anchor.shape[-2:]
        fused = None
        for conv, x in zip(self.convs, features):
            if x.shape[-1] > anchor.shape[-1]:
                x = F.adaptive_avg_pool2d(x, target_size)
            elif x.shape[-1] < anchor.shape[-1]:
                x = F.interpolate(x, size=target_size, mode="bilinear", align_corners=True)
            fused = conv(x) if fused is None else fused * conv(x)
        return fused


class UNetV2Decoder(nn.Module):
    """The UNet v2 decoder, as a base class so that its modules sit at the model's top level.

    Subclasses (UNetV2, VMUNetV2) add an encoder and call ``side_outputs`` on its four feature
    maps (B, C_i, H/2^(i+1), W/2^(i+1)). Attribute names are the official ones (``ca_1``,
    ``sa_1``, ``Translayer_1``, ``sdi_1``, ``seg_outs``, ``deconv2``...) so official checkpoints load.
    ``deconv5`` exists upstream but is never used; it is kept for the state dict.
    """

    def __init__(self, encoder_channels: Sequence[int], channel: int, num_classes: int):
        super().__init__()
        if len(encoder_channels) != NUM_LEVELS:
            raise ValueError(f"UNetV2Decoder needs {NUM_LEVELS} encoder levels, got channels {list(encoder_channels)}")
        for level, in_planes in enumerate(encoder_channels, start=1):
            setattr(self, f"ca_{level}", ChannelAttention(in_planes))
            setattr(self, f"sa_{level}", SpatialAttention())
        for level, in_planes in enumerate(encoder_channels, start=1):
            setattr(self, f"Translayer_{level}", BasicConv2d(in_planes, channel, 1))
        for level in range(1, NUM_LEVELS + 1):
            setattr(self, f"sdi_{level}", SDI(channel))
        self.seg_outs = nn.ModuleList(nn.Conv2d(channel, num_classes, 1) for _ in range(NUM_LEVELS))
        for index in range(2, 6):
            setattr(self, f"deconv{index}", nn.ConvTranspose2d(channel, channel, 4, stride=2, padding=1, bias=False))

    def side_outputs(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Head logits from the coarsest to the finest level, each upsampled x4 (bilinear,
        align_corners=False): sizes H/8, H/4, H/2, H for an encoder with strides 4..32."""
        projected = []
        for level, f in enumerate(features, start=1):
            f = getattr(self, f"ca_{level}")(f) * f
            f = getattr(self, f"sa_{level}")(f) * f
            projected.append(getattr(self, f"Translayer_{level}")(f))
        fused = [getattr(self, f"sdi_{level}")(projected, anchor) for level, anchor in enumerate(projected, start=1)]

        y = fused[3]
        heads = [self.seg_outs[0](y)]
        for deconv, skip, head in zip((self.deconv2, self.deconv3, self.deconv4), fused[2::-1], self.seg_outs[1:]):
            y = deconv(y) + skip
            heads.append(head(y))
        return [F.interpolate(h, scale_factor=4, mode="bilinear", align_corners=False) for h in heads]
