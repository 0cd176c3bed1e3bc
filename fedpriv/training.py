"""Client-side computation without Flower: local SGD behind a defense, evaluation, the leak."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses import Defense
from fedpriv.leaks import GradientLeak, GroundTruth


@dataclass(frozen=True)
class TrainSettings:
    """Local SGD hyper-parameters."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float


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
) -> float:
    """Train ``model`` in place with SGD on defended images; return the mean training loss.

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
        Epochs, batch size, lr, momentum, weight decay.
    generator
        Seeds shuffling and the defense's randomness.
    """
    model.train()
    device = next(model.parameters()).device
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    total, count = 0.0, 0
    for _ in range(settings.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            index = order[start : start + settings.batch_size]
            defended, _ = defense.transform(to_pixels(images[index]), generator)
            loss = F.cross_entropy(model(dataset.normalize(defended.to(device))), labels[index].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.item()) * len(index)
            count += len(index)
    return total / max(count, 1)


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


def gradient_leak(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    defense: Defense,
    dataset: DatasetSpec,
    mode: str,
    reveal_labels: bool,
    generator: torch.Generator,
    defense_spec: str,
) -> tuple[GradientLeak, GroundTruth]:
    """The FedSGD gradient of one defended batch at the current model, and its ground truth.

    Parameters
    ----------
    model
        The broadcast model; it is not changed (a train-mode pass would move batch-norm
        running statistics, so they are restored).
    images, labels
        The batch (uint8 images, int64 labels) whose gradient the client sends.
    defense
        The client's defense; T(x) is what the model sees.
    dataset
        Normalisation constants.
    mode
        ``"eval"`` (ATS's setting, running batch-norm statistics) or ``"train"``.
    reveal_labels
        Whether the protocol sends the labels with the gradient.
    generator
        Seeds the defense's draws for this batch.
    defense_spec
        Recorded in the ground truth.
    """
    pixels = to_pixels(images)
    defended, extras = defense.transform(pixels, generator)
    device = next(model.parameters()).device
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train(mode == "train")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    loss = F.cross_entropy(model(dataset.normalize(defended.to(device))), labels.to(device))
    grads = torch.autograd.grad(loss, [p for _, p in named])
    model.load_state_dict(buffers)
    model.train(was_training)
    leak = GradientLeak(
        gradients=tuple(g.detach().cpu() for g in grads),
        parameter_names=tuple(n for n, _ in named),
        batch_size=len(labels),
        model_mode=mode,
        labels=labels.clone() if reveal_labels else None,
    )
    truth = GroundTruth(images=pixels, defended=defended, labels=labels.clone(), defense=defense_spec, extras=extras)
    return leak, truth
