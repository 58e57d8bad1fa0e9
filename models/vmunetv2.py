"""VM-UNetV2 (Zhang et al., 2024): VMamba v0 encoder + the UNet v2 SDI decoder, as the official code runs it.

Faithful to nobodyplayer1/VM-UNetV2 @ b65f04c1 (``models/vmunet/vmunet_v2.py``), quirks included;
see the card's notes. Written for segbench from ``reference-facts.md`` section 1.1.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from segbench.nn.sdi import UNetV2Decoder
from segbench.nn.vmamba import VSSMEncoder, stage_dims
from segbench.pretrained import VMAMBA_V0_SMALL, load_pretrained
from segbench.registry import ModelCard, register_model


class VMUNetV2(UNetV2Decoder):
    def __init__(
        self,
        num_classes: int = 1,
        input_channels: int = 3,
        depths: Sequence[int] = (2, 2, 9, 2),
        depths_decoder: Sequence[int] = (2, 2, 2, 1),
        drop_path_rate: float = 0.2,
        deep_supervision: bool = True,
        mid_channel: int = 48,
        embed_dim: int = 96,
        d_state: int = 16,
        scan_backend: str = "auto",
    ):
        if deep_supervision and num_classes != 1:
            raise ValueError(
                f"VMUNetV2: deep_supervision=True fuses the heads through a 1-channel deconv6 and works only "
                f"with num_classes=1 (got {num_classes}); set deep_supervision=False"
            )
        super().__init__(stage_dims(embed_dim, 4), mid_channel, num_classes)
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.depths_decoder = list(depths_decoder)  # accepted for config compatibility; unused upstream too
        self.deconv6 = nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1)
        self.vmunet = VSSMEncoder(
            in_chans=input_channels,
            depths=depths,
            embed_dim=embed_dim,
            d_state=d_state,
            drop_path_rate=drop_path_rate,
            scan_backend=scan_backend,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        features = [f.permute(0, 3, 1, 2) for f in self.vmunet(x)]
        heads = self.side_outputs(features)
        if self.deep_supervision:
            return torch.sigmoid(heads[3] + self.deconv6(heads[2]))
        return torch.sigmoid(heads[3]) if self.num_classes == 1 else heads[3]


@register_model(
    card=ModelCard(
        paper="Zhang et al., VM-UNetV2: Rethinking Vision Mamba UNet for Medical Image Segmentation, ISBRA 2024 (arXiv:2403.09157)",
        origin="https://github.com/nobodyplayer1/VM-UNetV2 @ b65f04c1 (models/vmunet/vmunet_v2.py); reimplemented, same state-dict keys",
        output="probabilities",
        input_divisor=32,
        needs_mamba_ssm=False,
        pretrained=VMAMBA_V0_SMALL,
        test_kwargs={"embed_dim": 16, "mid_channel": 8, "depths": [1, 1, 1, 1]},
        notes=(
            "Official quirks kept: (1) the encoder taps are the INPUTS of the 4 VSS stages, so f1 is the bare "
            "patch embedding and stage 3 (vmunet.layers.3, 8.9M params at default size) runs but its output is "
            "discarded (never gets a gradient); (2) deep_supervision=True returns ONE tensor "
            "sigmoid(up4(head3) + deconv6(up4(head2))) trained with one loss, heads 0-1 are computed but unused; "
            "(3) deconv5 is defined and never used; (4) BasicConv2d has no ReLU; channel-attention reduction 16 "
            "is hard-coded; (5) a 1-channel input is repeated to 3; (6) depths_decoder is accepted and ignored. "
            "Input: per-image min-max to 0..255 as the official pipeline (no ImageNet normalisation). "
            "Counts at 1x3x256x256: 22,770,934 parameters, 17,907,958 thop-style (without SS2D's raw "
            "x_proj/dt_proj/A/D parameters, what the paper reports), 4.40 GMACs thop-style without the scan. "
            "pretrained=PATH loads VMamba v0-S ImageNet weights into vmunet.* by name (208 tensors for "
            "depths [2,2,9,2]; layers.2 takes the first 9 of 27 blocks). embed_dim and mid_channel are for "
            "toy runs only (embed_dim >= 16)."
        ),
    )
)
def vmunetv2(pretrained: str | None = None, **kwargs) -> nn.Module:
    model = VMUNetV2(**kwargs)
    if pretrained:
        load_pretrained(model, "vmunetv2", pretrained)
    return model
