"""The recipe as the authors trained: UNetV2's encoder drop path and its two heads, and the official order of
scaling and rotation (the BCE of a saturated probability is pinned in test_losses.py)."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from segbench.losses import BceDiceLoss
from segbench.registry import create_model, get_card
from segbench.train import epoch_batches, recipe_loss, training_batch
from segbench.transforms import scale_input

# the official pvt_v2_b2 (PolypSeg/unet_v2/pvtv2.py): depths [3, 4, 6, 3], drop_path_rate 0.1, stochastic
# depth linear over the 16 blocks
PVT_V2_B2_DEPTHS = (3, 4, 6, 3)


def test_unetv2_encoder_has_the_official_drop_path_schedule():
    model = create_model("unetv2")
    rates = [block.drop_path1.drop_prob if hasattr(block.drop_path1, "drop_prob") else 0.0
             for stage in model.encoder.children() if hasattr(stage, "blocks") for block in stage.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.1, sum(PVT_V2_B2_DEPTHS)).tolist())


def test_unetv2_in_train_mode_equals_pvt_v2_b2_with_drop_path_0_1_under_the_same_random_stream():
    """Same weights, same torch RNG: our encoder's train-mode features equal those of timm's pvt_v2_b2 (the
    official network, with timm's names) built with drop_path_rate=0.1, so the stochastic depth is applied
    in the same blocks with the same draws; the model returns both heads, at the input size."""
    torch.manual_seed(0)
    model = create_model("unetv2").train()
    reference = timm.create_model("pvt_v2_b2", pretrained=False, features_only=True, drop_path_rate=0.1).train()
    reference.load_state_dict(model.encoder.state_dict())
    images = torch.rand(2, 3, 64, 64) * 255
    normalised = (images - model.pixel_mean) / model.pixel_std
    torch.manual_seed(7)
    ours = model.encoder(normalised)
    torch.manual_seed(7)
    theirs = reference(normalised)
    for mine, official in zip(ours, theirs):
        assert torch.equal(mine, official)
    torch.manual_seed(7)
    without_drop_path = timm.create_model("pvt_v2_b2", pretrained=False, features_only=True).train()
    without_drop_path.load_state_dict(model.encoder.state_dict())
    assert not torch.equal(without_drop_path(normalised)[-1], ours[-1]), "drop path must act in train mode"
    heads = model(images)
    assert get_card("unetv2").train_output == "heads" and [head.shape for head in heads] == [(2, 1, 64, 64)] * 2


def test_the_trainer_sums_the_recipe_loss_over_the_heads():
    torch.manual_seed(0)
    first, second = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    masks = (torch.rand(2, 1, 8, 8) > 0.5).float()
    criterion = BceDiceLoss("logits")
    assert float(recipe_loss(criterion, [first, second], masks)) == pytest.approx(
        float(criterion(first, masks) + criterion(second, masks)))
    assert float(recipe_loss(criterion, first, masks)) == pytest.approx(float(criterion(first, masks)))


def test_a_rotated_training_image_equals_scale_then_rotate():
    """The official pipeline min-max scales each image, then torchvision rotates it (nearest, fill 0): the fill
    is the scaled minimum (0), not the raw image's minimum."""
    rng = np.random.default_rng(0)
    images = rng.uniform(40, 200, (2, 32, 32, 3)).astype(np.uint8)
    masks = (rng.uniform(0, 1, (2, 32, 32)) > 0.5).astype(np.uint8) * 255
    train_cfg = {"input_scaling": "minmax255", "hflip": 0.0, "vflip": 0.0, "rotate": 1.0}
    batch, _ = training_batch(images, masks, np.array([0, 1]), train_cfg, torch.Generator().manual_seed(5),
                              torch.device("cpu"), fixed_angle=30.0)
    scaled = scale_input(torch.from_numpy(images).permute(0, 3, 1, 2), "minmax255")
    assert torch.equal(batch, TF.rotate(scaled, 30.0, interpolation=InterpolationMode.NEAREST, fill=0))
    assert float(batch[:, :, 0, 0].max()) == 0.0 and images.min() >= 40


def test_a_final_batch_of_one_joins_the_batch_before_it():
    batches = epoch_batches(np.arange(11), 2)
    assert [len(batch) for batch in batches] == [2, 2, 2, 2, 3]
    assert sorted(np.concatenate(batches).tolist()) == list(range(11))
    assert [len(batch) for batch in epoch_batches(np.arange(1), 2)] == [1]
