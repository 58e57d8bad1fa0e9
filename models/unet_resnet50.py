"""U-Net with an ImageNet-pretrained ResNet-50 encoder (segmentation_models_pytorch ``Unet``).

The pretraining booster that "nnU-Net Revisited" asks to separate from architectural claims: a
plain CNN U-Net whose only advantage is an ImageNet encoder, trained under the same recipe as the
Mamba models with their ImageNet encoders. Built with ``encoder_weights=None`` (nothing is fetched at
run time); ``pretrained=PATH`` loads the encoder file that smp itself downloads for
``encoder_weights="imagenet"`` through ``segbench.pretrained.load_pretrained``.
"""
from __future__ import annotations

from typing import Sequence

import segmentation_models_pytorch as smp
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from segbench.pretrained import RESNET50_IMAGENET, load_pretrained
from segbench.registry import ModelCard, register_model

INPUT_NORMALIZATIONS = ("imagenet", "none")


class UNetResNet(smp.Unet):
    """smp's Unet (state-dict names ``encoder.*`` = torchvision's ResNet names, ``decoder.*``,
    ``segmentation_head.*``) fed 0..255 images, normalised as smp's preprocessing for ImageNet
    weights would: x / 255, then the ImageNet mean and std."""

    def __init__(
        self,
        num_classes: int = 1,
        encoder_name: str = "resnet50",
        encoder_depth: int = 5,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        input_normalization: str = "imagenet",
    ):
        if input_normalization not in INPUT_NORMALIZATIONS:
            raise ValueError(
                f"UNetResNet: input_normalization must be one of {INPUT_NORMALIZATIONS}, got {input_normalization!r}"
            )
        super().__init__(
            encoder_name=encoder_name,
            encoder_depth=encoder_depth,
            encoder_weights=None,
            in_channels=3,
            classes=num_classes,
            decoder_channels=tuple(decoder_channels),
        )
        self.input_normalization = input_normalization
        # not persistent: the state dict stays smp's
        self.register_buffer("pixel_mean", 255.0 * torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", 255.0 * torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_normalization == "imagenet":
            x = (x - self.pixel_mean) / self.pixel_std
        return super().forward(x)


@register_model(
    card=ModelCard(
        paper="Ronneberger et al., U-Net, MICCAI 2015, with He et al.'s ResNet-50 (CVPR 2016) ImageNet encoder, as segmentation_models_pytorch builds it",
        origin="segmentation_models_pytorch 0.6.0 Unet(encoder_name='resnet50'); encoder weights = smp-hub/resnet50.imagenet (smp's 'imagenet')",
        output="logits",
        input_divisor=32,
        pretrained=RESNET50_IMAGENET,
        test_kwargs={"encoder_name": "resnet18", "decoder_channels": [16, 8, 8, 8, 8]},
        notes=(
            "smp defaults: decoder channels 256,128,64,32,16 with BatchNorm, nearest upsampling, no attention; "
            "32,521,105 parameters (encoder 23,508,032, torchvision's ResNet-50 without fc); at 1x3x256x256 "
            "10.71 GMACs thop-style, 10.67 G fvcore. "
            "Input: the benchmark's 0..255 (per-image min-max) is divided by 255 and normalised with the ImageNet "
            "mean/std (smp's preprocess_input with the resnet 'imagenet' settings: RGB, range [0, 1], mean "
            "0.485,0.456,0.406, std 0.229,0.224,0.225), as models/unetv2.py does for PVT; input_normalization="
            "'none' feeds the input unchanged. pretrained=PATH loads torchvision-named ResNet weights into "
            "encoder.*: the card's file (smp's own download, safetensors) or torchvision's resnet50-19c8e357.pth, "
            "the original its model card names (fc is dropped; a torchvision name's sha256 prefix is checked). "
            "Trained from scratch unless config 'pretrained' names the file. encoder_name, encoder_depth (stages "
            "used, 1-5; the unused ones stay in the state dict, unused) and decoder_channels (one per used stage) "
            "are for toy runs (any torchvision ResNet encoder of smp: resnet18/34/50/101/152)."
        ),
    )
)
def unet_resnet50(pretrained: str | None = None, **kwargs) -> nn.Module:
    model = UNetResNet(**kwargs)
    if pretrained:
        load_pretrained(model, "unet_resnet50", pretrained)
    return model
