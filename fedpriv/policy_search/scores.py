"""ATS's policy-search scores (Gao et al., CVPR 2021): privacy score S_pri, accuracy score S_acc."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fedpriv.data.specs import DatasetSpec

INTERPOLATION_STEPS = 20  # ATS's ``bin_num`` K: GradSim is taken at K + 1 points
EIGEN_OFFSET = 1e-5  # ATS's k in S_acc
COSINE_EPS = 1e-8  # F.cosine_similarity's default, as ATS uses it


def noise_start(shape: Sequence[int], dataset: DatasetSpec, generator: torch.Generator) -> torch.Tensor:
    """ATS's starting points x0: uniform noise in [0,1) pixel space, mapped to normalised space.

    Parameters
    ----------
    shape
        (n, C, H, W): one start per image.
    dataset
        Normalisation constants.
    generator
        Seeds the noise.
    """
    return dataset.normalize(torch.rand(tuple(shape), generator=generator))


def interpolation_weights(
    steps: int = INTERPOLATION_STEPS, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The weights i/K, i = 0..K, of x'(i) = (i/K) x_hat + (1 - i/K) x0 (exactly 1.0 at i = K)."""
    return torch.arange(steps + 1, dtype=dtype) / steps


def per_tensor_cosine(gradients: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    """GradSim: the mean over parameter tensors of the per-tensor cosine similarity.

    This is the cosine of each flattened parameter tensor's gradient with the target's, averaged
    over the L tensors (ATS's S_pri; not one global cosine over all parameters). A zero tensor
    contributes 0, as with ``F.cosine_similarity(eps=1e-8)``.

    Parameters
    ----------
    gradients
        Per tensor, a batch of gradients (B, *shape).
    target
        Per tensor, the target gradient (*shape).

    Returns
    -------
    torch.Tensor
        (B,) similarities in [-1, 1].
    """
    total = torch.zeros(len(gradients[0]), dtype=gradients[0].dtype, device=gradients[0].device)
    for batch, aim in zip(gradients, target, strict=True):
        flat, aim = batch.flatten(1), aim.flatten()
        norms = flat.norm(dim=1).clamp_min(COSINE_EPS) * aim.norm().clamp_min(COSINE_EPS)
        total += (flat @ aim) / norms
    return total / len(target)


def grad_similarity_curves(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    starts: torch.Tensor,
    steps: int = INTERPOLATION_STEPS,
    images_per_batch: int = 1,
) -> torch.Tensor:
    """GradSim(i) for i = 0..K along the straight line from x0 to each image, batched.

    The model is put in eval mode (batch norm uses running statistics, as in ATS). For each
    image the K + 1 points x'(i) = (i/K) x_hat + (1 - i/K) x0 go through the model as one batch
    and their per-sample gradients of the cross-entropy with the true label, over all parameters,
    come from ``vmap(grad(...))``; the target gradient g* is the one at x'(K) = x_hat (the same
    computation; ATS's 0.5 loss factor only rescales gradients, so cosines ignore it).

    Parameters
    ----------
    model
        The search model (ATS: the tiny-data checkpoint).
    images
        Normalised defended images x_hat = T(x), (n, C, H, W).
    labels
        True labels (n,).
    starts
        Normalised starting points x0, shaped like ``images``.
    steps
        K.
    images_per_batch
        How many images' K + 1 points share one vmap call (memory grows with it).

    Returns
    -------
    torch.Tensor
        (n, K + 1) GradSim values; column K is 1 up to rounding and zero-gradient tensors.
    """
    model.eval()
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (weights, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    alphas = interpolation_weights(steps, images.dtype).to(images.device).view(1, -1, 1, 1, 1)
    curves = []
    for start in range(0, len(images), images_per_batch):
        x_hat, x0 = images[start : start + images_per_batch], starts[start : start + images_per_batch]
        m = len(x_hat)
        points = (alphas * x_hat.unsqueeze(1) + (1 - alphas) * x0.unsqueeze(1)).flatten(0, 1)
        ys = labels[start : start + images_per_batch].repeat_interleave(steps + 1)
        grads = per_sample(params, points, ys)
        sims = torch.zeros(m, steps + 1, dtype=images.dtype, device=images.device)
        for j in range(m):
            rows = [g[j * (steps + 1) : (j + 1) * (steps + 1)] for g in grads.values()]
            sims[j] = per_tensor_cosine(rows, [g[-1] for g in rows])
        curves.append(sims)
    return torch.cat(curves)


def trapezoid_score(curves: torch.Tensor) -> torch.Tensor:
    """S_pri of each curve: (1/K) sum_{i=1..K} (GradSim(i-1) + GradSim(i)) / 2.

    ATS's area ratio; its step Delta = mean|x0 - x_hat| / K cancels.

    Parameters
    ----------
    curves
        (n, K + 1) GradSim values.

    Returns
    -------
    torch.Tensor
        (n,) scores; lower is more private.
    """
    return ((curves[:, 1:] + curves[:, :-1]) / 2).mean(dim=1)


def privacy_scores(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    starts: torch.Tensor,
    steps: int = INTERPOLATION_STEPS,
    images_per_batch: int = 1,
) -> torch.Tensor:
    """S_pri per image (see :func:`grad_similarity_curves` and :func:`trapezoid_score`).

    Returns
    -------
    torch.Tensor
        (n,) scores in [-1, 1]; ATS ranks policies by their mean, lower being more private.
    """
    return trapezoid_score(grad_similarity_curves(model, images, labels, starts, steps, images_per_batch))


def input_jacobian(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Per-sample input gradients of the sum of logits, flattened: (N, C*H*W).

    The model is put in eval mode, so samples do not interact and one backward pass of the
    summed logits of the whole batch gives every sample's own gradient (ATS's
    ``get_batch_jacobian``).

    Parameters
    ----------
    model
        ATS: the randomly initialised network.
    images
        Normalised defended images (N, C, H, W).
    """
    model.eval()
    inputs = images.detach().clone().requires_grad_(True)
    (jacobian,) = torch.autograd.grad(model(inputs).sum(), inputs)
    return jacobian.flatten(1)


def accuracy_score(jacobian: np.ndarray | torch.Tensor, offset: float = EIGEN_OFFSET) -> float:
    """S_acc = -sum_i [log(lambda_i + k) + 1/(lambda_i + k)] over eigenvalues of corrcoef(J).

    Uses ``eigvalsh`` (``eigh`` without eigenvectors: the correlation matrix is symmetric), so
    the eigenvalues are real; ATS's ``eig`` can return complex values. There is no 1/N factor:
    for decorrelated Jacobians (C = I) the score is -N (up to k), so thresholds (ATS: -85 at N
    about 63) depend on N.
    Higher is better.

    Parameters
    ----------
    jacobian
        (N, D) per-sample Jacobians, one row per sample.
    offset
        k.
    """
    rows = jacobian.detach().cpu().double().numpy() if isinstance(jacobian, torch.Tensor) else jacobian
    eigenvalues = np.linalg.eigvalsh(np.atleast_2d(np.corrcoef(np.asarray(rows, dtype=np.float64))))
    return float(-np.sum(np.log(eigenvalues + offset) + 1.0 / (eigenvalues + offset)))


def first_of_each_label(labels: Sequence[int]) -> list[int]:
    """Positions of the first occurrence of each distinct label, in order (ATS's S_acc sample).

    Parameters
    ----------
    labels
        Labels of consecutive validation images.
    """
    seen: set[int] = set()
    keep = []
    for position, label in enumerate(labels):
        if int(label) not in seen:
            seen.add(int(label))
            keep.append(position)
    return keep
