"""Victim models for 32x32 inputs, by name.

ResNet-20, ATS's ResNet20-4, small ConvNets and Yang et al.'s digit classifier.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from fedpriv.errors import ConfigError
from fedpriv.registry import Registry
from fedpriv.rotation.networks import split_factory, split_model_names

MODELS: Registry[Callable[[int, int], nn.Module]] = Registry("model")


class CifarResNet(nn.Module):
    """ResNet for 32x32 images as in ATS's ``inversefed`` (3x3 stem, no max-pool, 3 stages).

    Parameters
    ----------
    num_classes
        Output size of the final linear layer.
    in_channels
        Input image channels.
    base_width
        Width of the first stage; later stages double it (16 gives ResNet-20, 64 gives ResNet20-4).
    blocks
        Number of BasicBlocks per stage.
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, base_width: int = 16, blocks: int = 3
    ) -> None:
        super().__init__()
        widths = [base_width, 2 * base_width, 4 * base_width]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        inplanes = widths[0]
        for width, stride in zip(widths, [1, 2, 2], strict=True):
            downsample = None
            if stride != 1 or inplanes != width:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
                )
            layers = [BasicBlock(inplanes, width, stride, downsample)]
            inplanes = width
            layers += [BasicBlock(inplanes, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ConvNet(nn.Module):
    """A small ConvNet (three conv-norm-ReLU blocks with pooling, then a linear layer; BatchNorm or GroupNorm).

    Parameters
    ----------
    num_classes
        Output size.
    in_channels
        Input image channels.
    width
        Channels of the first block; the next two double it.
    group_norm
        GroupNorm (8 groups) instead of batch norm: no running statistics, so Flower's DP
        noise on the aggregate cannot make a variance negative (Opacus refuses batch norm too).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32, group_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out in (width, 2 * width, 4 * width):
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.GroupNorm(8, out) if group_norm else nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class ShallowCNN(nn.Module):
    """One convolution block and a linear layer for 32x32 inputs: Conv3x3 -> ReLU -> MaxPool2 -> Linear.

    The demo's victim: on the embedded photographs it trains to about 60 % test accuracy in
    seconds on a CPU, and Inverting Gradients recovers one-image gradients of it within a few
    hundred iterations even once trained (the deep ResNets of the ATS tables need thousands on
    trained weights). Gradient-inversion papers attack such shallow networks for the same reason
    (e.g. DLG's LeNet).

    Parameters
    ----------
    num_classes
        Output size.
    in_channels
        Input image channels.
    width
        Channels of the convolution.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(width * 16 * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class YangClassifier(nn.Module):
    """The MNIST classifier of Yang et al.'s prediction-inversion experiments (32x32 inputs).

    Three blocks Conv3x3(pad 1) -> BatchNorm -> MaxPool2 -> ReLU with ``width``, 2x and 4x
    channels (128, 256, 512 in the reference), then Linear(4w*4*4 -> ``hidden``) -> Dropout 0.5 ->
    Linear(hidden -> num_classes), no activation between the two linear layers.

    Parameters
    ----------
    num_classes
        Output size.
    in_channels
        Input image channels.
    width
        Channels of the first block (128: the reference; ``yang-mnist-small`` uses 32).
    hidden
        Width of the hidden linear layer (50 in the reference).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 128, hidden: int = 50) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.MaxPool2d(2), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * 4 * 4, hidden), nn.Dropout(0.5), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


MODELS.add("resnet20", lambda n, c: CifarResNet(n, c, base_width=16))
MODELS.add("resnet20-4", lambda n, c: CifarResNet(n, c, base_width=64))
MODELS.add("convnet", lambda n, c: ConvNet(n, c))
MODELS.add("convnet-gn", lambda n, c: ConvNet(n, c, group_norm=True))
MODELS.add("shallow-cnn", lambda n, c: ShallowCNN(n, c))
MODELS.add("yang-mnist", lambda n, c: YangClassifier(n, c, width=128))
MODELS.add("yang-mnist-small", lambda n, c: YangClassifier(n, c, width=32))
for _name in split_model_names():  # complex-resnet20-alpha, original-lenet, ... (fedpriv.rotation.networks)
    MODELS.add(_name, split_factory(_name))


def wire_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The floating-point entries of ``model.state_dict()``: what the server broadcasts.

    Integer buffers (batch norm's ``num_batches_tracked``) stay out: Flower's clipping scales
    updates in place, which fails on integer arrays, and batch norm with a momentum never
    reads them.
    """
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def load_wire_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load a :func:`wire_state` dict into ``model`` (integer buffers keep their values)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    floating = [k for k in missing if model.state_dict()[k].is_floating_point()]
    if floating or unexpected:
        raise ValueError(f"state does not fit the model: missing {floating}, unexpected {unexpected}")
    return model


def check_model_name(name: str) -> None:
    """Fail unless ``name`` is a registered model or a ``package.module:factory`` import path.

    Raises
    ------
    ConfigError
        Listing the registered models and the import-path form.
    """
    if ":" in name:
        _factory(name)
    elif name.startswith(("complex-", "original-")) and name not in MODELS:
        split_factory(name)  # names the bad architecture or split point
    elif name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODELS.names())}, or "
                          "'package.module:factory' (factory(num_classes, channels) -> nn.Module)")


def _factory(path: str) -> Callable[[int, int], nn.Module]:
    """The callable behind ``package.module:factory`` (imported; errors name what failed)."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any import failure is the user's to fix
        raise ConfigError(f"model {path!r}: cannot import {module_name!r} ({type(error).__name__}: {error}); "
                          "it must be importable where the server and clients run") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ConfigError(f"model {path!r}: {module_name} has no callable {attribute!r}")
    return factory


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build the model registered as ``name``, or a user's model from ``package.module:factory``.

    Parameters
    ----------
    name
        One of ``MODELS.names()``, or an import path whose factory is called as
        ``factory(num_classes, in_channels)`` and must return an ``nn.Module``.
    num_classes
        Number of output classes.
    in_channels
        Input channels of the images.

    Returns
    -------
    nn.Module
        A freshly initialised model (initialisation follows the global torch seed).

    Raises
    ------
    ConfigError
        For an unknown name, a factory that cannot be imported, or one that returns no module.
    """
    if ":" not in name:
        return MODELS.get(name)(num_classes, in_channels)
    model = _factory(name)(num_classes, in_channels)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r}: the factory returned {type(model).__name__}, not a torch nn.Module")
    return model


def check_model_fits(name: str, num_classes: int, channels: int, size: int) -> None:
    """Fail unless the model maps a (2, channels, size, size) batch to (2, num_classes) logits.

    Raises
    ------
    ConfigError
        Naming the model, the input shape and what came out.
    """
    model = build_model(name, num_classes, channels).eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, channels, size, size))
    except Exception as error:  # noqa: BLE001 - a user's forward may raise anything
        raise ConfigError(f"model {name!r} fails on inputs of shape (2, {channels}, {size}, {size}): "
                          f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model {name!r} maps inputs (2, {channels}, {size}, {size}) to {shape}; "
                          f"expected logits of shape (2, {num_classes})")
