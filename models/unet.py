"""UNet: the textbook encoder-decoder (Ronneberger et al., 2015) as the benchmark's CNN baseline.

None of the VM-UNet/VM-UNetV2 repositories ships a UNet; their UNet rows are copied from earlier
papers. This is the common milesial-style form: double 3x3 conv + BN + ReLU, max-pool down,
transposed-conv up, widths 32..512 (7,763,041 parameters, 13.75 GMACs at 256x256).
"""
import torch
from torch import nn

from segbench.registry import ModelCard, register_model


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, num_classes: int = 1, input_channels: int = 3, base_width: int = 32, depth: int = 4):
        super().__init__()
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.encoder = nn.ModuleList([_double_conv(input_channels, widths[0])])
        self.encoder.extend(_double_conv(widths[i], widths[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.decoder = nn.ModuleList(_double_conv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.up, self.decoder):
            x = block(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


@register_model(
    card=ModelCard(
        paper="Ronneberger et al., U-Net, MICCAI 2015",
        origin="segbench (textbook form; no official code in the VM-UNet(V2) repositories)",
        output="logits",
        input_divisor=16,
        test_kwargs={"base_width": 4},
        notes="7,763,041 parameters at base_width 32; the paper's UNet rows are quoted from earlier work.",
    )
)
def unet(**kwargs) -> nn.Module:
    return UNet(**kwargs)
