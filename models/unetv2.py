"""UNet v2 (Peng et al., 2023): PVTv2-b2 encoder + SDI (channel 32) + the UNet v2 decoder.

The decoder follows yaoppeng/U-Net_v2 @ 8a43be26 (``PolypSeg/unet_v2/UNet_v2.py``); the encoder is
timm's ``pvt_v2_b2`` (``features_only``), the same network as the in-repo PVTv2 with timm's
parameter names. Written for segbench from ``reference-facts.md`` section 1.3.
"""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from segbench.nn.sdi import UNetV2Decoder
from segbench.pretrained import PVT_V2_B2, load_pretrained
from segbench.registry import ModelCard, register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NORMALIZATIONS = ("imagenet", "none")


class UNetV2(UNetV2Decoder):
    def __init__(
        self,
        num_classes: int = 1,
        channel: int = 32,
        deep_supervision: bool = True,
        encoder: str = "pvt_v2_b2",
        input_normalization: str = "imagenet",
        drop_path_rate: float = 0.1,
    ):
        if input_normalization not in INPUT_NORMALIZATIONS:
            raise ValueError(f"UNetV2: input_normalization must be one of {INPUT_NORMALIZATIONS}, got {input_normalization!r}")
        # 0.1 as the official pvt_v2_b2 (PolypSeg/unet_v2/pvtv2.py); timm's default would be 0
        backbone = timm.create_model(encoder, pretrained=False, features_only=True, drop_path_rate=drop_path_rate)
        super().__init__(backbone.feature_info.channels(), channel, num_classes)
        self.encoder = backbone
        self.deep_supervision = deep_supervision
        self.input_normalization = input_normalization
        # not persistent: the state dict stays the official decoder + timm encoder names
        self.register_buffer("pixel_mean", 255.0 * torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", 255.0 * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if self.input_normalization == "imagenet":
            x = (x - self.pixel_mean) / self.pixel_std
        heads = self.side_outputs(self.encoder(x))
        p1 = heads[3]
        if not self.deep_supervision:
            return p1
        # structure_loss in upstream's Train.py resizes P2 to the mask the same way before its loss
        p2 = F.interpolate(heads[2], size=p1.shape[-2:], mode="bilinear", align_corners=False)
        return [p1, p2] if self.training else p1 + p2


@register_model(
    card=ModelCard(
        paper="Peng et al., U-Net v2: Rethinking the Skip Connections of U-Net for Medical Image Segmentation, arXiv:2311.17791 (2023)",
        origin="https://github.com/yaoppeng/U-Net_v2 @ 8a43be26 (PolypSeg/unet_v2/UNet_v2.py); encoder = timm pvt_v2_b2",
        output="logits",
        train_output="heads",
        input_divisor=32,
        needs_mamba_ssm=False,
        pretrained=PVT_V2_B2,
        test_kwargs={"encoder": "pvt_v2_b0", "channel": 8},
        notes=(
            "With deep_supervision=True, as upstream's polyp code: in train mode the heads [P1, interp(P2)] "
            "(train_output='heads': the trainer applies the recipe's loss to each and sums them, as upstream "
            "sums two structure losses; our recipe's loss is BCE+Dice, not structure loss); in eval mode the "
            "logits P1 + interp(P2) (bilinear, align_corners=False), exactly the map the upstream polyp test "
            "thresholds after a sigmoid. deep_supervision=False returns P1. Encoder drop path 0.1 "
            "(stochastic depth linspace(0, 0.1) over the 16 blocks), as upstream's pvt_v2_b2. "
            "Input: the benchmark feeds 0..255 (per-image min-max); input_normalization='imagenet' (default) "
            "divides by 255 and applies the ImageNet mean/std that upstream's PVT pipeline uses, 'none' feeds "
            "the input unchanged. Parameters: 25,145,036 total, equal to the official count (the timm "
            "features_only PVTv2-b2 has the official 24,849,856 encoder parameters, no classifier head); "
            "thop-style 25,128,652 (deconv5 is never run); the paper's 25.15M is the total. "
            "pretrained=PATH loads pvt_v2_b2.pth (official or timm names) into the encoder. "
            "Attention in timm's PVT runs through scaled_dot_product_attention (same maths as upstream's "
            "matmul/softmax; thop counts neither, fvcore flops_g counts both matmuls). At 1x3x256x256: "
            "5.40 GMACs thop-style (official 5.399308, equal), 5.58 G fvcore."
        ),
    )
)
def unetv2(pretrained: str | None = None, **kwargs) -> nn.Module:
    model = UNetV2(**kwargs)
    if pretrained:
        load_pretrained(model, "unetv2", pretrained)
    return model
