"""Every rotation-equivariant layer and processing module: Phi(e^{i theta} x) = e^{i theta} Phi(x)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedpriv.rotation import layers

TOLERANCE = 1e-4


def _rotation(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.polar(torch.ones(n), torch.rand(n, generator=generator) * 2 * math.pi)


def _apply(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer on a complex tensor, through the stacked [Re; Im] representation Phi uses."""
    return layers.from_stacked(module(layers.to_stacked(x)))


def _gap(module: nn.Module, x: torch.Tensor, train: bool, seed: int = 0) -> float:
    """max |Phi(e^{i theta} x) - e^{i theta} Phi(x)|, one random theta per sample, same dropout draw."""
    module.train(train)
    rotation = _rotation(len(x), torch.Generator().manual_seed(seed)).reshape(-1, *([1] * (x.dim() - 1)))
    state = {k: v.clone() for k, v in module.state_dict().items()}
    torch.manual_seed(seed)
    rotated_first = _apply(module, rotation * x)
    module.load_state_dict(state)  # batch norm's running statistics move in train mode
    torch.manual_seed(seed)
    out = _apply(module, x)
    rotated_after = rotation.reshape(-1, *([1] * (out.dim() - 1))) * out
    return float((rotated_first - rotated_after).detach().abs().max())


def _input(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))


LAYERS = {
    "conv": (lambda: layers.ComplexConv2d(3, 5, 3, padding=1), (4, 3, 8, 8)),
    "conv-stride": (lambda: layers.ComplexConv2d(3, 5, 3, stride=2, padding=1), (4, 3, 8, 8)),
    "linear": (lambda: layers.ComplexLinear(7, 4), (4, 7)),
    "gate-c1": (lambda: layers.NormGate(1.0), (4, 3, 8, 8)),
    "gate-channel-mean": (lambda: layers.NormGate(None), (4, 3, 8, 8)),
    "gate-features-mean": (lambda: layers.NormGate(None), (4, 9)),
    "batchnorm-channel": (lambda: layers.ComplexBatchNorm(3), (4, 3, 8, 8)),
    "batchnorm-element": (lambda: layers.ComplexBatchNorm(3, per_element=True, shape=(3, 8, 8)), (4, 3, 8, 8)),
    "batchnorm-features": (lambda: layers.ComplexBatchNorm(9), (4, 9)),
    "maxpool-norm": (lambda: layers.NormMaxPool2d(2), (4, 3, 8, 8)),
    "avgpool": (lambda: layers.ComplexAvgPool2d(2), (4, 3, 8, 8)),
    "dropout": (lambda: layers.ComplexDropout(0.5), (4, 3, 8, 8)),
    "block": (lambda: layers.ComplexBasicBlock(3, 3), (4, 3, 8, 8)),
    "block-down": (lambda: layers.ComplexBasicBlock(3, 6, stride=2), (4, 3, 8, 8)),
}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_is_rotation_equivariant(name: str, train: bool) -> None:
    factory, shape = LAYERS[name]
    torch.manual_seed(0)
    module = factory()
    x = _input(shape)
    if not train:  # give eval-mode batch norm non-trivial running statistics first
        module.train()
        _apply(module, x * 3)
    assert _gap(module, x, train) < TOLERANCE


class _Biased(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = layers.ComplexConv2d(3, 5, 3, padding=1)
        self.bias = nn.Parameter(torch.ones(10, 1, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.conv(f) + self.bias


class _SplitRelu(nn.Module):
    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.relu(f)  # on each of the real and imaginary halves


class _IndependentDropout(nn.Module):
    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(f, 0.5)  # one mask per half


@pytest.mark.parametrize("breaker", [_Biased, _SplitRelu, _IndependentDropout])
def test_the_check_catches_known_equivariance_breakers(breaker: type[nn.Module]) -> None:
    torch.manual_seed(0)
    assert _gap(breaker(), _input((4, 3, 8, 8)), train=True) > 0.1
