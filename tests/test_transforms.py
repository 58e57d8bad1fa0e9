import pytest
import torch

from segbench.transforms import augment_batch, scale_input


def test_minmax255_spans_0_to_255_per_image():
    images = torch.stack([torch.full((3, 4, 4), 10.0), torch.arange(48.0).view(3, 4, 4)])
    images[0, 0, 0, 0] = 30
    scaled = scale_input(images, "minmax255")
    for image in scaled:
        assert float(image.min()) == 0.0 and float(image.max()) == pytest.approx(255.0)


def test_unit_scaling_and_unknown_mode():
    assert float(scale_input(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), "unit").max()) == 1.0
    with pytest.raises(ValueError, match="input_scaling"):
        scale_input(torch.zeros(1, 3, 2, 2), "imagenet")


def test_augmentation_moves_image_and_mask_together_and_is_seeded():
    torch.manual_seed(0)
    images = torch.rand(6, 3, 16, 16)
    masks = images[:, :1].clone()  # a mask equal to the first channel must stay equal to it
    first = augment_batch(images, masks, torch.Generator().manual_seed(1), rotate=1.0)
    second = augment_batch(images, masks, torch.Generator().manual_seed(1), rotate=1.0)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(first[0][:, :1], first[1])
    assert not torch.equal(first[0], images)


def test_no_augmentation_is_identity():
    images, masks = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    out_images, out_masks = augment_batch(images, masks, torch.Generator(), hflip=0, vflip=0, rotate=0)
    assert torch.equal(out_images, images) and torch.equal(out_masks, masks)
