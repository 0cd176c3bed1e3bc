"""Networks split into a real encoder g, a processing module Phi and a real decoder d (Xiang et al.).

``SplitNetwork.forward`` runs g, then the feature codec it holds (the client's defense: rotate
with a secret angle, send plain features, add noise; plain by default), Phi on what the codec
sends, the codec's inverse on Phi's output, and d. ``complex-*`` models have a complex,
rotation-equivariant Phi; ``original-*`` models are the same split of the original real network
(the paper's "original DNN" baseline), on which only ``plain`` and ``noise:GAMMA`` apply.

Split points (CIFAR shapes), as both public reproductions cut them: the encoder is the stem and
stage 1 (16 x 32 x 32), ended by a 3x3 convolution without activation (a ReLU at g's end leaks
the angle through the features' phases); ``alpha``: Phi = stage 2 and the first stage-3 block,
d = the other stage-3 blocks, pooling and the classifier; ``beta``: Phi = stage 2 and all but the
last stage-3 block, d = the last block, pooling and the classifier. LeNet: g = conv5x5(3->6),
ReLU, max-pool, conv3x3(6->6); Phi = conv5x5(6->16), gate, norm max-pool, FC 400-120-84-classes
with gates; d = the identity (softmax in the loss).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from fedpriv.errors import ConfigError
from fedpriv.rotation import layers

RESNET_DEPTHS = (20, 32, 44, 56, 110)
SPLITS = ("alpha", "beta")
ARCHITECTURES = tuple(f"resnet{d}" for d in RESNET_DEPTHS) + ("lenet",)
_NAME = re.compile(r"(complex|original)-(resnet\d+|lenet)(?:-(\w+))?$")


class FeatureCodec(Protocol):
    """What a client does around the processing module: x = obfuscate(a), u = recover(h)."""

    def obfuscate(self, a: torch.Tensor) -> torch.Tensor:
        """The features sent to Phi (complex for complex networks); keeps its secret for ``recover``."""
        ...

    def recover(self, h: torch.Tensor) -> torch.Tensor:
        """The real decoder input from Phi's output."""
        ...

    def truth(self) -> dict[str, torch.Tensor]:
        """The true values of output kinds (:mod:`fedpriv.outputs`) the last batch's secret holds (evaluation only)."""
        ...


class PlainCodec:
    """Plain features: x = a (+ 0i for a complex Phi), u = Re[h]."""

    def __init__(self, is_complex: bool) -> None:
        self.is_complex = is_complex

    def obfuscate(self, a: torch.Tensor) -> torch.Tensor:
        return torch.complex(a, torch.zeros_like(a)) if self.is_complex else a

    def recover(self, h: torch.Tensor) -> torch.Tensor:
        return h.real if h.is_complex() else h

    def truth(self) -> dict[str, torch.Tensor]:
        """No output kind: plain features hold no secret."""
        return {}


class SplitNetwork(nn.Module):
    """g -> codec -> Phi -> codec^-1 -> d, with the codec held as a plain attribute.

    Parameters
    ----------
    encoder, processing, decoder
        g (real), Phi (complex or real), d (real).
    is_complex
        Whether Phi is complex (then every codec sends complex features).
    """

    def __init__(self, encoder: nn.Module, processing: nn.Module, decoder: nn.Module, is_complex: bool) -> None:
        super().__init__()
        self.encoder, self.processing, self.decoder = encoder, processing, decoder
        self.is_complex = is_complex
        self.codec: FeatureCodec = PlainCodec(is_complex)

    @property
    def feature_channels(self) -> int:
        """Channels of the features a = g(I) (the last layer of the encoder is a convolution)."""
        last = list(self.encoder.children())[-1]
        assert isinstance(last, nn.Conv2d), f"the encoder ends in {type(last).__name__}, not a convolution"
        return last.out_channels

    def process(self, x: torch.Tensor) -> torch.Tensor:
        """h = Phi(x): complex in, complex out for complex networks (stacked [Re; Im] inside)."""
        if not self.is_complex:
            return self.processing(x)
        return layers.from_stacked(self.processing(layers.to_stacked(x)))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        a = self.encoder(inputs)
        return self.decoder(self.codec.recover(self.process(self.codec.obfuscate(a))))


def _real_block(inplanes: int, width: int, stride: int) -> BasicBlock:
    downsample = None
    if stride != 1 or inplanes != width:
        downsample = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride, bias=False), nn.BatchNorm2d(width))
    return BasicBlock(inplanes, width, stride, downsample)


def _stage_blocks(kind: str, inplanes: int, width: int, count: int, stride: int) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    for index in range(count):
        first = index == 0
        make = layers.ComplexBasicBlock if kind == "complex" else _real_block
        blocks.append(make(inplanes if first else width, width, stride if first else 1))
    return blocks


def resnet_split(depth: int, split: str, kind: str, num_classes: int, channels: int) -> SplitNetwork:
    """ResNet-``depth`` for 32x32 images split at ``alpha`` or ``beta`` (see the module docstring)."""
    blocks = (depth - 2) // 6
    encoder = nn.Sequential(
        nn.Conv2d(channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        *[_real_block(16, 16, 1) for _ in range(blocks)],
        nn.Conv2d(16, 16, 3, 1, 1, bias=False),  # no activation at g's end
    )
    stage2 = _stage_blocks(kind, 16, 32, blocks, 2)
    in_phi = 1 if split == "alpha" else blocks - 1  # stage-3 blocks inside Phi
    stage3_phi = _stage_blocks(kind, 32, 64, in_phi, 2)
    decoder = nn.Sequential(*[_real_block(64, 64, 1) for _ in range(blocks - in_phi)], nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(64, num_classes))
    return SplitNetwork(encoder, nn.Sequential(*stage2, *stage3_phi), decoder, kind == "complex")


def lenet_split(kind: str, num_classes: int, channels: int) -> SplitNetwork:
    """LeNet-5 split as in the reproduction: g = first conv block + extra conv, d = identity."""
    encoder = nn.Sequential(
        nn.Conv2d(channels, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1)
    )
    if kind == "complex":
        processing: nn.Module = nn.Sequential(
            layers.ComplexConv2d(6, 16, 5), layers.NormGate(None), layers.NormMaxPool2d(2), layers.ComplexFlatten(),
            layers.ComplexLinear(400, 120), layers.NormGate(None), layers.ComplexLinear(120, 84), layers.NormGate(None),
            layers.ComplexLinear(84, num_classes),
        )
    else:
        processing = nn.Sequential(
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )
    return SplitNetwork(encoder, processing, nn.Identity(), kind == "complex")


def split_factory(name: str) -> Callable[[int, int], SplitNetwork]:
    """The factory of a split model name: ``complex-resnet20-alpha``, ``original-lenet``, ...

    Raises
    ------
    ConfigError
        Naming the unknown architecture or split point and the valid ones.
    """
    match = _NAME.match(name)
    if match is None:
        raise ConfigError(f"split model {name!r}: expected (complex|original)-ARCH[-SPLIT], ARCH one of "
                          f"{', '.join(ARCHITECTURES)}, SPLIT one of {', '.join(SPLITS)} for ResNets")
    kind, architecture, split = match.groups()
    if architecture not in ARCHITECTURES:
        raise ConfigError(
            f"split model {name!r}: unknown architecture {architecture!r}; valid: {', '.join(ARCHITECTURES)}"
        )
    if architecture == "lenet":
        if split is not None:
            raise ConfigError(f"split model {name!r}: LeNet has one split point; use {kind}-lenet")
        return lambda n, c: lenet_split(kind, n, c)
    if split not in SPLITS:
        raise ConfigError(f"split model {name!r}: unknown split point {split!r}; valid: {', '.join(SPLITS)} "
                          f"(e.g. {kind}-{architecture}-alpha)")
    depth = int(architecture.removeprefix("resnet"))
    return lambda n, c: resnet_split(depth, split, kind, n, c)


def split_model_names() -> list[str]:
    """Every registered split model name."""
    names = []
    for kind in ("complex", "original"):
        names += [f"{kind}-resnet{d}-{s}" for d in RESNET_DEPTHS for s in SPLITS] + [f"{kind}-lenet"]
    return names
