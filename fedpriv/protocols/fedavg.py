"""``fedavg``: local SGD for ``local-epochs`` (or ``local-steps``); the reply is the trained weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from fedpriv.config import RunConfig
from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses import Defense, UpdateDefense
from fedpriv.leaks import UpdateLeak
from fedpriv.models import wire_state
from fedpriv.protocols.base import PROTOCOLS, ClientReply, ground_truth, local_settings
from fedpriv.protocols.fedsgd import SentLabels
from fedpriv.training import train_local


class FedAvg:
    """Local SGD for ``local-epochs`` (or ``local-steps``); the reply is the trained weights.

    The leak is the update reply - w with the protocol's hyper-parameters.
    """

    name: ClassVar[str] = "fedavg"
    leak_kind: ClassVar[str] = UpdateLeak.kind
    defends: ClassVar[tuple[str, ...]] = ("nothing", "inputs", "updates")
    Sent: ClassVar[type[SentLabels]] = SentLabels

    def client_round(
        self, config: RunConfig, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
        defense: Defense, dataset: DatasetSpec, generator: torch.Generator, attacked: bool,
        client_state: dict[str, torch.Tensor], properties: torch.Tensor | None = None,
    ) -> ClientReply:
        """Train locally behind the defense and send the weights.

        The update depends only on the images the local steps used (``local-steps`` x
        ``batch-size`` of a larger partition are the first of one shuffle): the truth holds
        exactly those, and revealed labels are theirs. ``num_examples`` stays the client's data
        size, FedAvg's weight.
        """
        start = wire_state(model)
        trained = train_local(model, images, labels, defense, dataset, local_settings(config), generator)
        used_labels = labels[trained.used]
        state = wire_state(model)
        if isinstance(defense, UpdateDefense):
            protected = defense.protect({name: state[name] - start[name] for name in state}, generator)
            state = {name: start[name] + protected[name] for name in state}
        return ClientReply(
            state=state, num_examples=len(labels), train_loss=trained.loss,
            sent=SentLabels("train", used_labels.clone() if config.reveal_labels else None),
            truth=ground_truth(images[trained.used], trained.first_seen, used_labels, defense) if attacked else None,
        )

    def observe(
        self, config: RunConfig, broadcast: dict[str, torch.Tensor], reply: dict[str, torch.Tensor],
        parameter_names: Sequence[str], num_examples: int, sent: SentLabels,
    ) -> UpdateLeak:
        """The update reply - broadcast with the local SGD the protocol prescribes."""
        local = local_settings(config)
        return UpdateLeak(
            deltas=tuple(reply[n] - broadcast[n] for n in parameter_names), parameter_names=tuple(parameter_names),
            num_examples=num_examples, batch_size=local.batch_size, steps=local.total_steps(num_examples),
            lr=local.lr, momentum=local.momentum, weight_decay=local.weight_decay, labels=sent.labels,
            model_mode=sent.model_mode, protocol=self.name,
        )


PROTOCOLS.add(FedAvg.name, FedAvg())
