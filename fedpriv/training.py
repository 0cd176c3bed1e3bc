"""Client-side computation without Flower: local SGD behind a defense, evaluation, one batch gradient."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses import Defense, defended_inputs


@dataclass(frozen=True)
class TrainSettings:
    """Local SGD hyper-parameters; ``steps`` > 0 runs exactly that many steps instead of epochs."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    steps: int = 0

    def total_steps(self, num_examples: int) -> int:
        """SGD steps one local round takes on ``num_examples`` samples."""
        return self.steps or self.epochs * -(-num_examples // self.batch_size)


@dataclass(frozen=True)
class LocalRound:
    """What one client's local training did.

    Attributes
    ----------
    loss
        The mean training loss over all steps.
    used
        Indices of the images the steps used, ascending: the client's own order, which says
        nothing of its batches (all of them unless ``steps`` x ``batch_size`` is less than the
        client's data: then the first batches of one shuffle).
    first_seen
        Those images as the model first saw them, T(x) in pixel space, in the same order.
    """

    loss: float
    used: torch.Tensor
    first_seen: torch.Tensor


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (n, C, H, W) to float pixels in [0,1]."""
    return images.float() / 255.0


def train_local(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    defense: Defense,
    dataset: DatasetSpec,
    settings: TrainSettings,
    generator: torch.Generator,
) -> LocalRound:
    """Train ``model`` in place with SGD on defended images.

    Each pass over the data is a fresh shuffle cut into batches of ``batch_size``; with
    ``settings.steps`` the passes repeat until that many steps ran.

    Parameters
    ----------
    model
        The model, trained in train mode (batch-norm statistics update as usual).
    images, labels
        The client's uint8 images (n, C, H, W) and int64 labels.
    defense
        Applied to every batch in pixel space before normalisation (fresh draws per batch).
    dataset
        Normalisation constants.
    settings
        Epochs or steps, batch size, lr, momentum, weight decay.
    generator
        Seeds shuffling and the defense's randomness.

    Returns
    -------
    LocalRound
        The mean training loss, which images the steps used and each as the model first saw it.
    """
    model.train()
    device = next(model.parameters()).device
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    first_seen = torch.empty(images.shape, dtype=torch.float32)
    seen = torch.zeros(len(labels), dtype=torch.bool)
    used: list[torch.Tensor] = []
    total, count, remaining = 0.0, 0, settings.total_steps(len(labels))
    while remaining > 0:
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            index = order[start : start + settings.batch_size]
            defended = defended_inputs(defense, to_pixels(images[index]), generator)
            fresh = ~seen[index]
            first_seen[index[fresh]] = defended[fresh]
            used.append(index[fresh])
            seen[index] = True
            loss = F.cross_entropy(model(dataset.normalize(defended.to(device))), labels[index].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.item()) * len(index)
            count += len(index)
            remaining -= 1
            if remaining == 0:
                break
    order = torch.cat(used).sort().values if used else torch.zeros(0, dtype=torch.long)
    return LocalRound(total / max(count, 1), order, first_seen[order])


@torch.no_grad()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dataset: DatasetSpec, batch_size: int = 500
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` (eval mode) on clean images."""
    model.eval()
    device = next(model.parameters()).device
    loss, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        x = dataset.normalize(to_pixels(images[start : start + batch_size]).to(device))
        y = labels[start : start + batch_size].to(device)
        logits = model(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return loss / max(len(labels), 1), correct / max(len(labels), 1)


def batch_gradient(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, mode: str
) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...], float]:
    """Cross-entropy gradient of one normalised batch at ``model``, which is left unchanged.

    Parameters
    ----------
    model
        The model; a train-mode pass would move batch-norm running statistics, so they are
        restored afterwards.
    inputs, labels
        The normalised batch and its labels.
    mode
        ``"eval"`` (running batch-norm statistics, ATS's setting) or ``"train"`` (batch statistics).

    Returns
    -------
    tuple
        Trainable parameter names, their gradients (on the CPU) and the loss.
    """
    device = next(model.parameters()).device
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train(mode == "train")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    loss = F.cross_entropy(model(inputs.to(device)), labels.to(device))
    grads = torch.autograd.grad(loss, [p for _, p in named])
    model.load_state_dict(buffers)
    model.train(was_training)
    return tuple(n for n, _ in named), tuple(g.detach().cpu() for g in grads), float(loss.detach())


def adam(parameters: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Yang et al.'s optimiser for classifier and inverter: Adam(lr, betas (0.5, 0.999), amsgrad)."""
    return torch.optim.Adam(parameters, lr=lr, betas=(0.5, 0.999), amsgrad=True)
