"""The imprint module of "Robbing the Fed" (Fowl et al., ICLR 2022): a malicious server's first layer.

A server that does not stay honest puts a linear layer of ``bins`` neurons in front of the model
it broadcasts. Every neuron measures the same statistic of the (normalised) input image, the
mean of its pixels, and neuron i fires when that measurement exceeds a threshold c_i, the
thresholds being quantiles of the statistic on data the server holds, in increasing order. Its
output goes through a second linear layer whose columns are all equal, so the gradient that
flows back into neuron i from an image does not depend on i. Then, for the gradient of a batch,

    dL/dW_i - dL/dW_{i+1} = sum over images x with c_i < h(x) <= c_{i+1} of g(x) x
    dL/db_i - dL/db_{i+1} = sum over the same images of g(x)

so a bin that holds exactly one image gives that image exactly, as the ratio of the two
differences. An image shares its bin with others with a probability set by ``bins`` and the
batch size (:func:`expected_singletons`, :func:`fowl_expected_recovered`).

Flower-free and independent of the federation; the server behaviour that inserts it and the
attack that reads it out use these functions.
"""

from __future__ import annotations

from math import comb

import torch
from torch import nn

IMPRINT = "imprint"  # the wrapped model's attribute: its parameters are named "imprint.measure.weight", ...
# The first bin's threshold: below every measurement. Finite, and small in magnitude, because a
# FedSGD leak is recovered from float32 weights as (w - reply) / server-lr: the bias's rounding
# error, about |b| * 6e-8 / server-lr, would otherwise swamp the bins' differences.
FLOOR = -10.0


class ImprintBlock(nn.Module):
    """Linear(D -> bins) measuring each image's mean pixel against thresholds, ReLU, Linear(bins -> D).

    Parameters
    ----------
    features
        D: the number of input values of one image (C * H * W).
    thresholds
        (bins,) increasing thresholds c_i of the measurement; the first lies below every measurement.
    """

    def __init__(self, features: int, thresholds: torch.Tensor) -> None:
        super().__init__()
        bins = len(thresholds)
        self.measure = nn.Linear(features, bins)
        self.spread = nn.Linear(bins, features)
        self.imprint(thresholds)

    def imprint(self, thresholds: torch.Tensor) -> None:
        """Set the malicious weights: equal measuring rows, biases -c_i, equal spreading columns."""
        bins, features = self.measure.weight.shape
        if thresholds.shape != (bins,) or not bool((thresholds[1:] > thresholds[:-1]).all()):
            raise ValueError(f"expected {bins} increasing thresholds, got {tuple(thresholds.shape)}")
        with torch.no_grad():
            self.measure.weight.fill_(1.0 / features)
            self.measure.bias.copy_(-thresholds.to(self.measure.bias))
            self.spread.weight.fill_(1.0 / bins)
            self.spread.bias.zero_()

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.spread(torch.relu(self.measure(flat)))


class ImprintedModel(nn.Module):
    """``body`` behind an :class:`ImprintBlock`: the block's output, reshaped to the image, feeds the body.

    Parameters
    ----------
    body
        The model the run would otherwise train.
    shape
        (C, H, W) of the input images.
    thresholds
        The block's thresholds (see :func:`thresholds_from`).
    """

    def __init__(self, body: nn.Module, shape: tuple[int, int, int], thresholds: torch.Tensor) -> None:
        super().__init__()
        self.shape = shape
        self.imprint = ImprintBlock(shape[0] * shape[1] * shape[2], thresholds)
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.imprint(x.flatten(1)).reshape(len(x), *self.shape))


def thresholds_from(images: torch.Tensor, bins: int) -> torch.Tensor:
    """Thresholds that split the measurement (mean pixel) of ``images`` into ``bins`` bins of equal mass.

    Parameters
    ----------
    images
        (m, C, H, W) normalised images the server holds (its auxiliary split), m >= 1.
    bins
        Number of bins, >= 1.

    Returns
    -------
    torch.Tensor
        (bins,) increasing: :data:`FLOOR` (or lower, below every measurement), then the
        (i / bins)-quantiles for i = 1 .. bins - 1
        (made strictly increasing where quantiles tie).
    """
    if bins < 1 or len(images) < 1:
        raise ValueError(f"need bins >= 1 and at least one image, got bins={bins}, {len(images)} images")
    measured = images.flatten(1).double().mean(1)
    inner = torch.quantile(measured, torch.arange(1, bins, dtype=torch.float64) / bins)
    floor = min(FLOOR, float(measured.min()) - 1.0)
    cuts = torch.cat([torch.tensor([floor], dtype=torch.float64), inner])
    for i in range(1, bins):  # ties (few images, many bins) would give empty, ambiguous bins
        cuts[i] = torch.maximum(cuts[i], cuts[i - 1] + 1e-6)
    return cuts.float()


def read_out(weight_grad: torch.Tensor, bias_grad: torch.Tensor, tolerance: float = 1e-4) -> torch.Tensor:
    """The images of the bins the gradient shows, from the imprint block's measuring-layer gradient.

    Parameters
    ----------
    weight_grad, bias_grad
        (bins, D) and (bins,): the gradient (or the update: the ratio is invariant to its
        scale) of ``imprint.measure.weight`` and ``.bias``.
    tolerance
        Bias differences at most this (relative to the largest) mark an empty bin. An empty bin's
        difference is zero in exact arithmetic; a FedSGD leak recovered from float32 weights
        (w - (w - lr g)) / lr leaves about 1e-6 of the largest there, which this stays above.

    Returns
    -------
    torch.Tensor
        (m, D): one estimate per non-empty bin, in order of decreasing weight |db| (a bin of
        several images gives their g-weighted mean).
    """
    weight = torch.cat([weight_grad[:-1] - weight_grad[1:], weight_grad[-1:]]).double()
    bias = torch.cat([bias_grad[:-1] - bias_grad[1:], bias_grad[-1:]]).double()
    scale = float(bias.abs().max()) if len(bias) else 0.0
    keep = bias.abs() > tolerance * max(scale, 1e-30)
    order = bias[keep].abs().argsort(descending=True)
    return (weight[keep] / bias[keep, None])[order].float()


def expected_singletons(bins: int, images: int) -> float:
    """Expected images alone in their bin when ``images`` fall independently into ``bins`` equal-mass bins.

    n (1 - 1/k)^(n - 1): each image is recovered exactly when no other shares its bin.
    """
    if bins < 1 or images < 0:
        raise ValueError(f"need bins >= 1 and images >= 0, got {bins}, {images}")
    return images * (1 - 1 / bins) ** max(images - 1, 0)


def fowl_expected_recovered(bins: int, images: int) -> float:
    """The expected recovered count of Fowl et al. (ICLR 2022), as breaching's ``imprint_guarantee`` computes it.

    It counts occupancy configurations of n images in k bins as equally likely (stars and bars)
    and subtracts n/k; e.g. 4.66 for 128 bins and 5 images, 28.2 for 128 and 64. Independent
    draws into equal-mass bins give :func:`expected_singletons` instead (4.85 and 39.1); both are
    printed beside the measured counts.
    """
    k, n = bins, images
    total = comb(k + n - 1, k - 1)
    weight = n * comb(k, n)
    for alone in range(1, min(n - 1, k + 1)):  # C(k, alone) = 0 beyond k bins
        shared = sum(comb(k - alone, groups) * comb(n - alone - groups - 1, groups - 1)
                     for groups in range(1, (n - alone) // 2 + 1))
        weight += alone * comb(k, alone) * shared
    return weight / total - n / k
