"""Scoring an attack's output against the evaluation-only truth: images, labels and the registered output kinds."""

from __future__ import annotations

from typing import Any

import torch
from scipy.optimize import linear_sum_assignment

from fedpriv.attacks import Reconstruction
from fedpriv.baselines import baseline_fields
from fedpriv.leaks import GroundTruth
from fedpriv.metrics import label_accuracy, mse_per_image, psnr_per_image, ssim_per_image
from fedpriv.outputs import OUTPUT_KINDS

# An image counts as recovered at 30 dB PSNR or more: an exact readout (an imprint bin of one
# image) scores far above it in float32, a bin of two images' mean far below (10-20 dB).
RECOVERED_PSNR_DB = 30.0


def match_order(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The permutation of ``estimate`` that maximises the summed PSNR against ``truth``.

    The attacker does not know the order of a batch, so reconstructions are registered to the
    true images by an optimal assignment on per-pair PSNR (breaching's "registered" scores).
    """
    n = len(truth)
    pairs = psnr_per_image(
        estimate.repeat_interleave(n, 0), truth.repeat(n, 1, 1, 1)
    ).reshape(n, n).clamp(max=1e6)
    rows, cols = linear_sum_assignment(pairs.numpy(), maximize=True)
    order = torch.empty(n, dtype=torch.long)
    order[torch.as_tensor(cols)] = torch.as_tensor(rows)
    return order


def match_targets(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """For k estimates of a batch of n > k images: the k distinct images of ``truth`` they match best.

    A targeted attack (fishing) reconstructs fewer images than the batch holds and the attacker
    does not know which; the optimal assignment on per-pair PSNR picks them, estimate by estimate.
    """
    k, n = len(estimate), len(truth)
    pairs = psnr_per_image(estimate.repeat_interleave(n, 0), truth.repeat(k, 1, 1, 1)).reshape(k, n).clamp(max=1e6)
    rows, cols = linear_sum_assignment(pairs.numpy(), maximize=True)
    return torch.as_tensor(cols)[torch.as_tensor(rows).argsort()]


def score_images(
    reconstruction: Reconstruction, truth: GroundTruth, matched: bool = True, prior: torch.Tensor | None = None
) -> dict[str, Any]:
    """PSNR, SSIM and MSE of an image reconstruction, averaged over its images.

    ``psnr``/``ssim``/``mse`` compare the attack's estimate of x with the original x;
    ``psnr_defended``/``ssim_defended`` compare its estimate of T(x) (``defended`` when the
    attack models the defense, else ``images``) with the defended batch T(x), the reference's
    convention. With ``matched`` and more than one image, estimates are first put in the order
    :func:`match_order` finds against x (recorded as ``matched``: true). The row carries its
    baselines and verdict (:func:`fedpriv.baselines.baseline_fields`: ``psnr_grey``, ``psnr_prior``
    when the attacker has a ``prior`` image, ``psnr_baseline``, ``beats_baseline``). ``mae`` is the mean
    absolute error on [0,1] pixels (the rotation defense's primary metric). ``images_recovered``
    counts the images reconstructed at :data:`RECOVERED_PSNR_DB` or more. With ``alternatives``
    (two candidates per image) each image is scored by its better candidate (``best_of_two``). A
    targeted reconstruction (fewer images than the batch) is scored on the images it matches best
    (:func:`match_targets`; ``targeted``: their number), and so are its baselines.
    """
    assert reconstruction.images is not None
    images = reconstruction.images.detach().cpu()
    if reconstruction.alternatives is not None:  # best-of-two: per image, the candidate nearer the truth
        other = reconstruction.alternatives.detach().cpu()
        closer = psnr_per_image(other, truth.images) > psnr_per_image(images, truth.images)
        images = torch.where(closer.reshape(-1, 1, 1, 1), other, images)
    defended = images if reconstruction.defended is None else reconstruction.defended.detach().cpu()
    originals, defended_truth = truth.images, truth.defended
    targeted = len(images) < len(originals)
    if targeted:
        chosen = match_targets(images, originals)
        originals, defended_truth = originals[chosen], defended_truth[chosen]
    matched = matched and len(images) > 1
    if matched:
        order = match_order(images, originals)
        images, defended = images[order], defended[order]
    per_image = psnr_per_image(images, originals)
    psnr = float(per_image.mean())
    return {
        "psnr": psnr,
        "images_recovered": int((per_image >= RECOVERED_PSNR_DB).sum()),
        "psnr_defended": float(psnr_per_image(defended, defended_truth).mean()),
        "ssim": float(ssim_per_image(images, originals).mean()),
        "ssim_defended": float(ssim_per_image(defended, defended_truth).mean()),
        "mse": float(mse_per_image(images, originals).mean()),
        "mae": float((images.double() - originals.double()).abs().mean()),
        "matched": matched,
    } | baseline_fields(psnr, truth.images, prior, len(images) if targeted else None) | (
        {"best_of_two": True} if reconstruction.alternatives is not None else {}
    ) | ({"targeted": len(images)} if targeted else {})


def score(reconstruction: Reconstruction, truth: GroundTruth, prior: torch.Tensor | None = None) -> dict[str, Any]:
    """Every score that applies to the outputs the reconstruction has.

    Images (:func:`score_images`, with the attacker's ``prior`` image as a baseline), labels
    (``label_accuracy``), and each estimate of a registered output kind
    (:data:`fedpriv.outputs.OUTPUT_KINDS`: ``angles``, ``properties``) by its kind's scorer against
    the truth's target of that kind; an estimate whose target the truth lacks is not scored.
    """
    row: dict[str, Any] = {}
    if reconstruction.images is not None:
        row |= score_images(reconstruction, truth, matched=not reconstruction.ordered, prior=prior)
    if reconstruction.labels is not None:
        row["label_accuracy"] = label_accuracy(reconstruction.labels.cpu(), truth.labels)
    for kind, estimate in sorted(reconstruction.estimates.items()):
        if kind in truth.targets:
            row |= OUTPUT_KINDS.get(kind).score(estimate, truth.targets[kind])
    return row
