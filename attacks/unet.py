"""The modified U-Net of the feature-inversion attacks (Xiang et al.; the reproductions' layout).

The input features are first up-sampled (nearest) to the image size; then 4 down and 4 up blocks,
each block ``convs`` x [Conv3x3 (no bias) -> BN -> ReLU] (6 in the paper, each its own module: no
shared weights), max-pool down, bilinear x2 up with skip concatenation, and a 1x1 convolution to
the output channels with a sigmoid ([0,1] pixels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(convs):
        layers += [nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                   nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """Features (n, C_in, h, w) -> images (n, C_out, size, size) in [0, 1].

    Parameters
    ----------
    in_channels, out_channels
        Input feature channels (2C for complex features as [Re; Im]) and output image channels.
    size
        Output image size (a multiple of 16).
    width
        Channels of the first block (64 in the reference; levels w, 2w, 4w, 8w, 8w).
    convs
        Convolutions per block (6 in the paper).
    """

    def __init__(self, in_channels: int, out_channels: int, size: int = 32, width: int = 64, convs: int = 6) -> None:
        super().__init__()
        self.size = size
        widths = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.down = nn.ModuleList([_block(in_channels, widths[0], convs)] +
                                  [_block(widths[i - 1], widths[i], convs) for i in range(1, 5)])
        ups = [(widths[4] + widths[3], widths[2]), (widths[2] + widths[2], widths[1]),
               (widths[1] + widths[1], widths[0]), (widths[0] + widths[0], widths[0])]
        self.up = nn.ModuleList([_block(i, o, convs) for i, o in ups])
        self.out = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(features, size=(self.size, self.size), mode="nearest")
        skips = []
        for index, block in enumerate(self.down):
            x = block(x if index == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            x = block(torch.cat([x, skip], 1))
        return torch.sigmoid(self.out(x))
