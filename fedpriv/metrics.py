"""Scores of estimates against the truth: PSNR, SSIM, MSE per image, label-multiset accuracy, angle error."""

from __future__ import annotations

import math
from typing import cast

import torch
from torchmetrics.functional.image import structural_similarity_index_measure


def mse_per_image(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each image over C*H*W, shape (n,)."""
    return ((estimate.double() - truth.double()) ** 2).flatten(1).mean(dim=1)


def psnr_per_image(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image: 10*log10(1 / MSE) with data range 1, shape (n,).

    Both inputs are (n, C, H, W) pixel images in [0,1] (de-normalised, not clamped: the
    attacks box their estimates into [0,1]). This is the ATS / inversefed definition
    (``metrics.psnr(batched=False)``, factor 1 in pixel space), then averaged by the caller.
    Identical images give +inf.
    """
    return 10.0 * torch.log10(1.0 / mse_per_image(estimate, truth))


def ssim_per_image(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Standard SSIM (Gaussian window 11, sigma 1.5, data range 1) of each image, shape (n,)."""
    ssim = structural_similarity_index_measure(
        estimate.double().clamp(0, 1), truth.double(), data_range=1.0, reduction="none"
    )
    return cast(torch.Tensor, ssim)  # a (Tensor, Tensor) pair only with return_full_image=True


def label_accuracy(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """Fraction of the true label multiset recovered: |estimate ∩ truth| / |truth| (as multisets)."""
    classes = int(torch.cat([estimate, truth, torch.zeros(1, dtype=torch.long)]).max()) + 1
    found = torch.minimum(torch.bincount(estimate, minlength=classes), torch.bincount(truth, minlength=classes))
    return float(found.sum()) / max(len(truth), 1)


def circular_error(estimate: torch.Tensor, truth: torch.Tensor, period: float = 2 * math.pi) -> torch.Tensor:
    """Circular distance min(|d| mod p, p - |d| mod p) per sample (chance: p/4 for uniform guesses)."""
    diff = torch.remainder(estimate - truth, period)
    return torch.minimum(diff, period - diff)
