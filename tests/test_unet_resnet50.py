"""unet_resnet50: smp's Unet with a ResNet-50 encoder, ImageNet-normalised inside, torchvision names."""
from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torchvision

from segbench.registry import create_model, get_card


def test_default_is_smps_unet_resnet50_with_torchvision_encoder_names():
    with torch.device("meta"):
        model = create_model("unet_resnet50")
        reference = smp.Unet("resnet50", encoder_weights=None, classes=1)
        classifier = torchvision.models.resnet50()
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in reference.state_dict().items()]
    assert set(model.encoder.state_dict()) == set(classifier.state_dict()) - {"fc.weight", "fc.bias"}
    assert sum(p.numel() for p in model.parameters()) == 32_521_105


def test_input_is_normalised_as_smps_imagenet_preprocessing():
    torch.manual_seed(0)
    kwargs = get_card("unet_resnet50").test_kwargs
    model = create_model("unet_resnet50", **kwargs).eval()
    reference = smp.Unet(kwargs["encoder_name"], encoder_weights=None, classes=1, decoder_channels=kwargs["decoder_channels"]).eval()
    reference.load_state_dict(model.state_dict())
    images = torch.rand(2, 3, 64, 64) * 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference((images / 255 - mean) / std), rtol=1e-4, atol=1e-4)
        model.input_normalization = "none"
        torch.testing.assert_close(model(images), reference(images))
