"""nnU-Net's residual-encoder U-Net (ResEnc-M), 2D, as nnU-Net plans it for a 256x256 patch.

"nnU-Net Revisited" (Isensee et al., MICCAI 2024) asks for a compute-matched residual-encoder CNN
beside any new architecture; this is that baseline, built with MIC-DKFZ's
``dynamic_network_architectures`` ``ResidualEncoderUNet``. Every architecture number is what
``nnUNetPlannerResEncM`` chooses for our data (RGB, spacing 1x1, median shape = the 256x256 cache),
read from MIC-DKFZ/nnUNet @ 0e495086:

- planner: ``experiment_planning/experiment_planners/residual_unets/residual_encoder_unet_planners.py``
  (``ResEncUNetPlanner`` L24-30 and ``get_plans_for_configuration`` L50-114; ``nnUNetPlannerResEncM``
  L220-243 only sets the VRAM target, 8 GB, and ``UNet_reference_val_2d`` 135e6);
- defaults from ``default_experiment_planner.py`` L50-66: base features 32, max 2D features 512,
  feature-map min edge 4;
- topology from ``network_topology.py`` ``get_pool_and_conv_props`` L30-107: a 256 axis is halved
  while it is >= 2 x 4, i.e. 6 times (256 -> 4), so 7 stages, strides (1,1) then 6 x (2,2), kernels
  7 x (3,3) (the last, L107, is the bottleneck's), input divisible by 2**6 = 64;
- features ``min(32 * 2**i, 512)`` (L50-52) = 32, 64, 128, 256, 512, 512, 512; blocks per stage
  (1, 3, 4, 6, 6, 6, 6) (L29), one conv per decoder stage (L30); conv bias True, InstanceNorm2d
  (eps 1e-5, affine), no dropout, LeakyReLU (inplace, torch default slope 0.01) (L103-111);
- the VRAM check (L116-134): the network's ``compute_conv_feature_map_size((256, 256))`` is
  32,317,440 < 135e6, so the 256x256 patch is kept (the planner would then pick batch size 50);
- built as ``get_network_from_plans`` does (``utilities/get_network_from_plans.py`` L34-41):
  the class with those kwargs, then ``network.apply(network.initialize)`` (He init, neg. slope 1e-2;
  the last norm of each residual block zeroed).
"""
from __future__ import annotations

from typing import Sequence

import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from torch import nn

from segbench.registry import ModelCard, register_model

# ResEncUNetPlanner: UNet_blocks_per_stage_encoder, cut to the number of stages
PLANNER_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
INPUT_NORMALIZATIONS = ("zscore", "none")
ZSCORE_EPS = 1e-8  # nnU-Net's ZScoreNormalization for float32


class ResEncUNet(ResidualEncoderUNet):
    """``ResidualEncoderUNet`` with nnU-Net's per-image, per-channel z-score in front.

    State-dict names are dynamic_network_architectures' (``encoder.stem``, ``encoder.stages``,
    ``decoder.stages``, ``decoder.seg_layers``), those of an nnU-Net checkpoint's network weights.
    """

    def __init__(
        self,
        num_classes: int = 1,
        input_channels: int = 3,
        n_stages: int = 7,
        base_features: int = 32,
        max_features: int = 512,
        n_blocks_per_stage: Sequence[int] | None = None,
        input_normalization: str = "zscore",
    ):
        if input_normalization not in INPUT_NORMALIZATIONS:
            raise ValueError(
                f"ResEncUNet: input_normalization must be one of {INPUT_NORMALIZATIONS}, got {input_normalization!r}"
            )
        super().__init__(
            input_channels=input_channels,
            n_stages=n_stages,
            features_per_stage=[min(base_features * 2**i, max_features) for i in range(n_stages)],
            conv_op=nn.Conv2d,
            kernel_sizes=[[3, 3]] * n_stages,
            strides=[[1, 1]] + [[2, 2]] * (n_stages - 1),
            n_blocks_per_stage=list(n_blocks_per_stage or PLANNER_BLOCKS_PER_STAGE[:n_stages]),
            num_classes=num_classes,
            n_conv_per_stage_decoder=[1] * (n_stages - 1),
            conv_bias=True,
            norm_op=nn.InstanceNorm2d,
            norm_op_kwargs={"eps": 1e-5, "affine": True},
            dropout_op=None,
            dropout_op_kwargs=None,
            nonlin=nn.LeakyReLU,
            nonlin_kwargs={"inplace": True},
            deep_supervision=False,
        )
        self.input_normalization = input_normalization
        self.apply(self.initialize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        divisor = 2 ** (len(self.encoder.stages) - 1)
        if height % divisor or width % divisor or height * width < 2 * divisor**2:
            raise ValueError(
                f"ResEncUNet: input {height}x{width} must be divisible by {divisor} and hold at least 2 bottleneck "
                f"pixels (instance norm needs them), i.e. >= {2 * divisor}x{divisor}, for n_stages="
                f"{len(self.encoder.stages)}; raise image_size or lower n_stages"
            )
        if self.input_normalization == "zscore":
            mean = x.mean(dim=(2, 3), keepdim=True)
            std = x.std(dim=(2, 3), correction=0, keepdim=True)
            x = (x - mean) / std.clamp_min(ZSCORE_EPS)
        return super().forward(x)


@register_model(
    card=ModelCard(
        paper="Isensee et al., nnU-Net Revisited: A Call for Rigorous Validation in 3D Medical Image Segmentation, MICCAI 2024 (arXiv:2404.09556)",
        origin="https://github.com/MIC-DKFZ/nnUNet @ 0e495086 (nnUNetPlannerResEncM, 2d) built with dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
        output="logits",
        input_divisor=64,
        test_kwargs={"n_stages": 3, "base_features": 4, "n_blocks_per_stage": [1, 1, 1]},
        notes=(
            "Defaults = what nnUNetPlannerResEncM plans for a 256x256 RGB patch (spacing 1x1): 7 stages, "
            "features 32,64,128,256,512,512,512, encoder blocks 1,3,4,6,6,6,6 (BasicBlockD), 1 conv per decoder "
            "stage, 3x3 kernels, strides 1 then 6 x 2 (input divisible by 64), conv bias, InstanceNorm2d "
            "(eps 1e-5, affine), LeakyReLU(0.01, inplace), no dropout, nnU-Net's He init; sources by file and "
            "line in models/resenc_unet.py. 105,915,878 parameters at the default (1 output channel; 105,914,401 thop-style, the 5 coarse "
            "seg_layers never run). "
            "Output: one logit map (num_classes=1, trained with the recipe's BCE+Dice); nnU-Net would use 2 "
            "softmax channels and CE+Dice, the same model up to the softmax-vs-sigmoid parametrisation. "
            "deep_supervision=False: nnU-Net trains 6 heads with weights 1/2**i normalised, the coarsest "
            "weighted 0, against downsampled targets (nnUNetTrainer._build_loss); train_output='heads' sums "
            "full-size heads with equal weights, which is not that, so under our single recipe it trains its "
            "final map only, like every other model here (the 5 coarse seg_layers exist, as in nnU-Net's "
            "network, and get no gradient). Input: nnU-Net z-scores each channel of each image "
            "(ZScoreNormalization, the default for channels named R/G/B as in its Dataset120_RoadSegmentation "
            "example; no nonzero mask for natural images); done here inside the model, so the result does not "
            "depend on input_scaling (minmax255 or unit). input_normalization='none' feeds the input as is. "
            "Input sides must be divisible by 2**(n_stages-1) and give a bottleneck of at least 2 pixels (instance "
            "norm): 128x128 or more for the default; a one-line error otherwise. n_stages, base_features, "
            "max_features and n_blocks_per_stage are for toy runs: n_stages=5 is what the planner's topology rule "
            "gives a 64x64 patch (64 -> 4), blocks default to the planner's (1,3,4,6,...) cut to n_stages. "
            "At 1x3x256x256: 34.35 GMACs thop-style, 32.51 G fvcore. No pretrained weights (nnU-Net trains from "
            "scratch)."
        ),
    )
)
def resenc_unet(**kwargs) -> nn.Module:
    return ResEncUNet(**kwargs)
