"""UNet++ from segmentation_models_pytorch: a library model in one file."""
import segmentation_models_pytorch as smp
from torch import nn

from segbench.registry import ModelCard, register_model


@register_model(
    card=ModelCard(
        paper="Zhou et al., UNet++, DLMIA 2018",
        origin="segmentation_models_pytorch.UnetPlusPlus (resnet34 encoder, no pretrained weights)",
        output="logits",
        input_divisor=32,
        test_kwargs={"encoder_name": "resnet18", "decoder_channels": (16, 8, 8, 8, 8)},
        notes="Trained from scratch (encoder_weights=None): ImageNet weights cannot be fetched at run time.",
    )
)
def unetpp(encoder_name: str = "resnet34", num_classes: int = 1, input_channels: int = 3, **kwargs) -> nn.Module:
    return smp.UnetPlusPlus(
        encoder_name=encoder_name,
        encoder_weights=None,
        in_channels=input_channels,
        classes=num_classes,
        **kwargs,
    )
