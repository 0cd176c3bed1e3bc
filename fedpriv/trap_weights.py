"""Trap weights of "When the Curious Abandon Honesty" (Boenisch et al., EuroS&P 2023): a malicious first layer.

A malicious server sets a linear layer of ``rows`` ReLU neurons on the input image so that each
neuron fires for few images. Row r draws D/2 values z ~ -|N(0, sigma^2)| for a random half of
the pixels and puts ``-scale * z`` on the other half: on non-negative pixels the negative half
outweighs the positive one when ``scale`` < 1, so the neuron's input is negative for most images
(a *trap*). A neuron that fires for a single image x of a batch has the gradient

    dL/dW_r = g_r(x) x,   dL/db_r = g_r(x)

so x = dL/dW_r / dL/db_r, exactly; a neuron that fires for several images gives their g-weighted
mean. Many rows fire for the same single image (about ``rows * p (1 - p)^(B - 1)`` per image
for a firing rate p and batch size B) and give the same estimate, while a given group of
several images traps fewer rows (a factor p less for every extra image): the readout
(:func:`read_out_rows`) groups equal estimates and ranks the groups by their number of rows.

The layer works on pixels in [0, 1]; the models see normalised inputs x_n = (x - m) / s, so the
server writes the pixel-space weights W as W * s on the normalised input and b = W m
(:func:`normalised_trap`). The block's architecture is the imprint block's
(:class:`fedpriv.imprint.ImprintBlock`): only the weights differ.

Flower-free; the server behaviour ``trap-weights`` arms the block, the attack ``trap-readout``
reads it out.
"""

from __future__ import annotations

import torch

from fedpriv.data.specs import DatasetSpec
from fedpriv.imprint import ImprintBlock


def trap_rows(rows: int, features: int, sigma: float, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Pixel-space trap weights: per row, -|z| on a random half of the inputs and ``scale`` |z| on the other.

    Parameters
    ----------
    rows, features
        Shape (rows, features) of the layer; ``features`` >= 2.
    sigma
        Standard deviation of the drawn magnitudes.
    scale
        Factor of the positive half against the negative one (< 1: the neuron fires rarely).
    generator
        The source of the draws (seeded by the run).

    Returns
    -------
    torch.Tensor
        (rows, features) float32.
    """
    half = features // 2
    weights = torch.zeros(rows, features)
    for row in range(rows):  # one permutation per row: argsort of a (rows, features) draw costs 8x the memory
        order = torch.randperm(features, generator=generator)
        magnitudes = torch.randn(half, generator=generator).abs() * sigma
        weights[row, order[:half]] = -magnitudes
        weights[row, order[half : 2 * half]] = scale * magnitudes
    return weights


def normalised_trap(pixel_weights: torch.Tensor, dataset: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias on normalised inputs that compute ``pixel_weights @ pixels`` (no bias in pixel space)."""
    per_feature = (dataset.channels, dataset.size * dataset.size)
    std = torch.tensor(dataset.std).view(-1, 1).expand(per_feature).reshape(-1)
    mean = torch.tensor(dataset.mean).view(-1, 1).expand(per_feature).reshape(-1)
    return pixel_weights * std, pixel_weights @ mean


def arm(block: ImprintBlock, pixel_weights: torch.Tensor, dataset: DatasetSpec) -> None:
    """Set ``block`` to the trap: measuring layer from ``pixel_weights``, spreading weights of one.

    Spreading weights of one (as breaching's construction has them), not the imprint block's
    1 / rows: the gradient reaching each row is then large enough to survive the float32 round
    trip of a FedSGD reply, (w - (w - lr g)) / lr; at 1 / rows the rows of one image no longer
    agree and the readout recovers at most one image of eight (measured in eval mode).
    """
    weight, bias = normalised_trap(pixel_weights, dataset)
    if weight.shape != block.measure.weight.shape:
        raise ValueError(f"trap weights of shape {tuple(weight.shape)} do not fit the block's "
                         f"{tuple(block.measure.weight.shape)}")
    with torch.no_grad():
        block.measure.weight.copy_(weight)
        block.measure.bias.copy_(bias)
        block.spread.weight.fill_(1.0)
        block.spread.bias.zero_()


def read_out_rows(weight_grad: torch.Tensor, bias_grad: torch.Tensor, tolerance: float = 1e-3,
                  silent: float = 1e-4) -> torch.Tensor:
    """The images the trap rows show, one per group of equal row estimates, most rows first.

    Parameters
    ----------
    weight_grad, bias_grad
        (rows, D) and (rows,): the gradient (or update: each ratio is invariant to its scale) of
        the trap layer's weight and bias.
    tolerance
        Two rows' estimates are equal when their largest difference is at most this times the
        largest magnitude of the estimates (float32 leaves about 1e-6; two different images of a
        batch differ by far more).
    silent
        Rows whose |bias gradient| is at most this times the largest fired for no image.

    Returns
    -------
    torch.Tensor
        (m, D): the mean estimate of each group, in order of decreasing group size (ties: the
        larger summed |bias gradient| first); m = 0 when no row fired.
    """
    bias = bias_grad.double()
    scale = float(bias.abs().max()) if len(bias) else 0.0
    fired = bias.abs() > silent * max(scale, 1e-30)
    estimates = weight_grad.double()[fired] / bias[fired, None]
    weights = bias[fired].abs()
    if not len(estimates):
        return torch.zeros(0, weight_grad.shape[1])
    limit = tolerance * float(estimates.abs().max())
    group = torch.full((len(estimates),), -1, dtype=torch.long)
    groups = 0
    for row in range(len(estimates)):  # greedy: a row joins every ungrouped row equal to it
        if group[row] >= 0:
            continue
        equal = (estimates - estimates[row]).abs().amax(1) <= limit
        group[equal & (group < 0)] = groups
        groups += 1
    sizes = torch.bincount(group, minlength=groups)
    mass = torch.zeros(groups, dtype=torch.float64).index_add_(0, group, weights)
    means = torch.zeros(groups, estimates.shape[1], dtype=torch.float64).index_add_(0, group, estimates)
    means /= sizes[:, None]
    order = sorted(range(groups), key=lambda g: (-int(sizes[g]), -float(mass[g])))
    return means[order].float()
