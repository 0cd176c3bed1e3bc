"""Inverting Gradients (Geiping et al., NeurIPS 2020) at the ATS "inversed" settings.

Objective 1 - cos(grad(x), grad*) over all parameter tensors at once (global cosine) plus
TV(x) * 1e-4; Adam (lr 0.1) on the sign of the image gradient; the image boxed to [0,1] in
pixel space after every step; lr x0.1 at iterations//2.667, //1.6, //1.142 (1799, 2999, 4203
of 4800); N(0,1) initialisation in normalised space; known labels; the last iterate returned;
with several restarts the one with the lowest final objective is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedpriv.attacks.base import ATTACKS, AttackSettings, AttackTarget, Reconstruction, check_settings
from fedpriv.data.specs import DatasetSpec
from fedpriv.leaks import GradientLeak


def lr_milestones(iterations: int) -> list[int]:
    """ATS/inversefed decay points: floors of iterations / 2.667, / 1.6, / 1.142."""
    return [int(iterations // 2.667), int(iterations // 1.6), int(iterations // 1.142)]


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV of one problem's images: mean |dx| + mean |dy| over all elements."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


def infer_labels(leak: GradientLeak) -> torch.Tensor:
    """Labels from the last layer's bias gradient when the protocol hides them.

    With cross-entropy, the bias gradient is negative exactly at the batch's labels (iDLG for
    one image; Wainakh et al.'s "simple" rule for several: the most negative entries). Batches
    with repeated labels get distinct labels here, which is this rule's known limitation.
    """
    bias = [g for n, g in zip(leak.parameter_names, leak.gradients) if g.dim() == 1][-1]
    return torch.argsort(bias)[: leak.batch_size].sort().values


def box_bounds(dataset: DatasetSpec, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel bounds of [0,1] pixels in normalised space, shaped (C, 1, 1)."""
    zeros = torch.zeros(dataset.channels, 1, 1, dtype=like.dtype, device=like.device)
    return dataset.normalize(zeros), dataset.normalize(zeros + 1)


def gradient_cosine_loss(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, target: Sequence[torch.Tensor]
) -> torch.Tensor:
    """1 - global cosine between the gradient at ``x`` and ``target`` (graph kept for x)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), labels)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((g * t).sum() for g, t in zip(grads, target))
    norm = torch.sqrt(sum((g * g).sum() for g in grads)) * torch.sqrt(sum((t * t).sum() for t in target))
    return 1 - dot / norm.clamp_min(1e-8)


class InvertingGradients:
    """The Inverting Gradients attack, one target and restart at a time (the sources' loop).

    Parameters
    ----------
    settings
        Iterations, restarts, lr, TV weight, device and progress interval.
    """

    name: ClassVar[str] = "inverting-gradients"
    leak_kind: ClassVar[str] = "gradient"
    knows_defense: ClassVar[bool] = False

    def __init__(self, settings: AttackSettings) -> None:
        check_settings(settings)
        self.settings = settings

    def reconstruct(
        self, model: nn.Module, dataset: DatasetSpec, targets: Sequence[AttackTarget]
    ) -> list[Reconstruction]:
        """Reconstruct each target's images from its gradient.

        Returns
        -------
        list[Reconstruction]
            Per target: images in pixel space [0,1] and the final objective ``loss``.
        """
        device = torch.device(self.settings.device)
        model = model.to(device).eval()
        return [self._one_target(model, dataset, t, device) for t in targets]

    def _one_target(
        self, model: nn.Module, dataset: DatasetSpec, target: AttackTarget, device: torch.device
    ) -> Reconstruction:
        leak = target.leak
        assert isinstance(leak, GradientLeak)
        labels = (leak.labels if leak.labels is not None else infer_labels(leak)).to(device)
        grads = [g.to(device) for g in leak.gradients]
        generator = torch.Generator().manual_seed(target.seed)
        best: tuple[float, torch.Tensor] | None = None
        for _ in range(self.settings.restarts):
            init = torch.randn((leak.batch_size, *dataset.shape), generator=generator)
            x, loss = self._optimize(model, dataset, init.to(device), labels, grads)
            if best is None or loss < best[0]:
                best = (loss, x)
        assert best is not None
        return Reconstruction(
            images=dataset.denormalize(best[1]).cpu(), fields={"loss": best[0]}
        )

    def _optimize(
        self,
        model: nn.Module,
        dataset: DatasetSpec,
        init: torch.Tensor,
        labels: torch.Tensor,
        target: list[torch.Tensor],
    ) -> tuple[torch.Tensor, float]:
        s = self.settings
        low, high = box_bounds(dataset, init)
        x = init.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=s.lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, lr_milestones(s.iterations), 0.1)
        for it in range(s.iterations):
            optimizer.zero_grad()
            loss = gradient_cosine_loss(model, x, labels, target) + s.tv * total_variation(x)
            (x.grad,) = torch.autograd.grad(loss, [x])
            x.grad.sign_()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))
            if s.progress and (it + 1) % s.progress == 0:
                print(f"[{self.name}] iteration {it + 1}/{s.iterations} loss {loss.item():.4f}", flush=True)
        final = gradient_cosine_loss(model, x, labels, target) + s.tv * total_variation(x)
        return x.detach(), float(final.item())


ATTACKS.add(InvertingGradients.name, InvertingGradients)
