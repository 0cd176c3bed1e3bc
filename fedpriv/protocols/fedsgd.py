"""``fedsgd``: one batch gradient per client and round, sent as the one-step model w - server-lr * g."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fedpriv.config import RunConfig
from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses import Defense, UpdateDefense, defended_inputs
from fedpriv.leaks import GradientLeak
from fedpriv.models import wire_state
from fedpriv.protocols.base import PROTOCOLS, ClientReply, ground_truth
from fedpriv.training import batch_gradient, to_pixels


@dataclass(frozen=True)
class SentLabels:
    """What a gradient or update protocol sends beside its arrays.

    Attributes
    ----------
    model_mode
        Batch-norm mode of the computation behind the arrays (``eval`` or ``train``).
    labels
        The labels of the images the arrays depend on when the protocol reveals them
        (``reveal-labels``), else ``None``.
    """

    model_mode: str = "eval"
    labels: torch.Tensor | None = None


class FedSGD:
    """One batch gradient per client and round, sent as the one-step model w - server-lr * g.

    FedAvg's weighted mean of the replies is then exactly "average the gradients, step with
    server-lr", and Flower's update clipping and noise act on server-lr * g. The leak is
    g = (w - reply) / server-lr. ATS's setting is ``fedsgd`` with ``batch-size=1``.
    """

    name: ClassVar[str] = "fedsgd"
    leak_kind: ClassVar[str] = GradientLeak.kind
    defends: ClassVar[tuple[str, ...]] = ("nothing", "inputs", "updates")
    Sent: ClassVar[type[SentLabels]] = SentLabels

    def client_round(
        self, config: RunConfig, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
        defense: Defense, dataset: DatasetSpec, generator: torch.Generator, attacked: bool,
        client_state: dict[str, torch.Tensor], properties: torch.Tensor | None = None,
    ) -> ClientReply:
        """Sample ``batch-size`` images, defend them, and send w - server-lr * grad."""
        pick = torch.randperm(len(labels), generator=generator)[: config.batch_size]
        batch, batch_labels = images[pick], labels[pick]
        defended = defended_inputs(defense, to_pixels(batch), generator)
        device = next(model.parameters()).device
        names, grads, loss = batch_gradient(
            model, dataset.normalize(defended.to(device)), batch_labels, config.attack_model_mode
        )
        if isinstance(defense, UpdateDefense):
            protected = defense.protect(dict(zip(names, grads, strict=True)), generator)
            grads = tuple(protected[name] for name in names)
        state = wire_state(model)
        for name, grad in zip(names, grads, strict=True):
            state[name] = state[name] - config.server_lr * grad
        return ClientReply(
            state=state, num_examples=len(pick), train_loss=loss,
            sent=SentLabels(config.attack_model_mode, batch_labels.clone() if config.reveal_labels else None),
            truth=ground_truth(batch, defended, batch_labels, defense) if attacked else None,
        )

    def observe(
        self, config: RunConfig, broadcast: dict[str, torch.Tensor], reply: dict[str, torch.Tensor],
        parameter_names: Sequence[str], num_examples: int, sent: SentLabels,
    ) -> GradientLeak:
        """g = (broadcast - reply) / server-lr for every trainable parameter."""
        grads = tuple((broadcast[n].double() - reply[n].double()).div(config.server_lr).float()
                      for n in parameter_names)
        return GradientLeak(grads, tuple(parameter_names), num_examples, sent.model_mode, sent.labels, self.name)


PROTOCOLS.add(FedSGD.name, FedSGD())
