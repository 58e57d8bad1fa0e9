"""resenc_unet: the network nnU-Net's ResEnc-M planner builds for a 256x256 2D patch, its z-score input,
its init, and a clear error for inputs too small for its stages."""
from __future__ import annotations

import pydoc

import pytest
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

from segbench.registry import create_model

# The 2D ResEnc plan as nnU-Net writes it down itself (nnunetv2/utilities/get_network_from_plans.py,
# __main__, MIC-DKFZ/nnUNet @ 0e495086), resolved the way get_network_from_plans resolves it.
NNUNET_2D_PLAN = {
    "n_stages": 7,
    "features_per_stage": [32, 64, 128, 256, 512, 512, 512],
    "conv_op": "torch.nn.modules.conv.Conv2d",
    "kernel_sizes": [[3, 3]] * 7,
    "strides": [[1, 1]] + [[2, 2]] * 6,
    "n_blocks_per_stage": [1, 3, 4, 6, 6, 6, 6],
    "n_conv_per_stage_decoder": [1, 1, 1, 1, 1, 1],
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}


def _nnunet_network(num_classes: int) -> ResidualEncoderUNet:
    kwargs = {key: pydoc.locate(value) if key in ("conv_op", "norm_op", "nonlin") else value for key, value in NNUNET_2D_PLAN.items()}
    return ResidualEncoderUNet(input_channels=3, num_classes=num_classes, deep_supervision=False, **kwargs)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_default_is_the_network_nnunet_plans():
    with torch.device("meta"):
        ours, reference = create_model("resenc_unet"), _nnunet_network(num_classes=1)
    assert repr(ours.encoder) == repr(reference.encoder) and repr(ours.decoder) == repr(reference.decoder)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in reference.state_dict().items()]
    assert sum(p.numel() for p in ours.parameters()) == 105_915_878


def test_the_planners_vram_check_keeps_the_256_patch():
    """ResEncUNetPlanner shrinks the patch while the 2-class network's feature-map size exceeds
    UNet_reference_val_2d = 135e6 (residual_encoder_unet_planners.py L131-134, ResEnc-M: 8 GB / 8 GB)."""
    with torch.device("meta"):
        network = _nnunet_network(num_classes=2)  # background + foreground, as nnU-Net's dataset.json
    assert network.compute_conv_feature_map_size((256, 256)) == 32_317_440 < 135_000_000


def test_init_is_nnunets_he_init_with_the_residual_branch_zeroed():
    torch.manual_seed(0)
    model = create_model("resenc_unet", n_stages=3, base_features=8)
    block = model.encoder.stages[1].blocks[0]
    assert not block.conv2.norm.weight.any() and not block.conv2.norm.bias.any()
    stem = model.encoder.stem.convs[0].conv
    assert not stem.bias.any()
    expected_std = (2 / (1 + 0.01**2) / (3 * 9)) ** 0.5  # kaiming_normal_, a=1e-2, fan_in 3*3*3
    assert stem.weight.std().item() == pytest.approx(expected_std, rel=0.3)


def test_input_is_z_scored_per_image_and_channel_as_nnunet():
    torch.manual_seed(0)
    model = create_model("resenc_unet", n_stages=3, base_features=4).eval()
    images = torch.rand(2, 3, 32, 32) * 255
    mean = images.mean(dim=(2, 3), keepdim=True)
    std = images.flatten(2).numpy().std(axis=2)  # numpy's population std, as ZScoreNormalization
    zscored = (images - mean) / torch.from_numpy(std)[..., None, None]
    rescaled = images * torch.tensor([0.5, 2.0]).view(2, 1, 1, 1) + 7.0  # unit vs minmax255: a positive affine map
    with torch.no_grad():
        expected = ResidualEncoderUNet.forward(model, zscored)
        torch.testing.assert_close(model(images), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(rescaled), expected, rtol=1e-4, atol=1e-4)
        model.input_normalization = "none"
        assert not torch.allclose(model(images), expected, atol=1e-2)


def test_an_input_too_small_for_the_stages_is_a_one_line_error():
    model = create_model("resenc_unet", base_features=2, max_features=4, n_blocks_per_stage=[1] * 7).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 128, 64) * 255).shape == (1, 1, 128, 64)
        with pytest.raises(ValueError, match=r"input 64x64 must be divisible by 64 and hold at least 2 bottleneck") as error:
            model(torch.rand(1, 3, 64, 64) * 255)
    assert "\n" not in str(error.value)


def test_an_unknown_input_normalization_is_refused():
    with pytest.raises(ValueError, match="input_normalization must be one of"):
        create_model("resenc_unet", n_stages=3, base_features=4, input_normalization="imagenet")
