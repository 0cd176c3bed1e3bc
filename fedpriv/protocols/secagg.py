"""``secagg``: FedAvg's local training, sent through Flower's SecAgg+; the server sees only the aggregate.

The client round is FedAvg's (``local-epochs`` or ``local-steps`` of ``batch-size``); the reply
is the trained weights, which Flower's ``secaggplus_mod`` masks and the server's
``SecAggPlusWorkflow`` unmasks only as the weighted mean of the round's replies
(``strategies/secure_aggregation.py``). Nothing else travels per client but the plaintext
``num_examples`` and metrics, so :meth:`SecAgg.observe_aggregate` is the server's one view, and a
single reply is never observed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fedpriv.config import RunConfig
from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses import Defense
from fedpriv.leaks import AggregateLeak, Leak
from fedpriv.protocols.base import PROTOCOLS, ClientReply, local_settings
from fedpriv.protocols.fedavg import FedAvg


def outside_range(state: Mapping[str, torch.Tensor], bound: float) -> tuple[str, float] | None:
    """The first weight with a value beyond [-bound, bound] (SecAgg+ would clip it) and its largest magnitude.

    Returns ``None`` when every value lies inside; the clients and the server's preflight both ask.
    """
    for name, value in state.items():
        largest = float(value.abs().max()) if value.numel() else 0.0
        if largest > bound:
            return name, largest
    return None


@dataclass(frozen=True)
class SentNothing:
    """What a SecAgg+ client sends beside its masked arrays: nothing (labels would leak per client)."""


class SecAgg:
    """FedAvg's local training whose replies the server sees only as SecAgg+'s aggregate."""

    name: ClassVar[str] = "secagg"
    leak_kind: ClassVar[str] = AggregateLeak.kind
    defends: ClassVar[tuple[str, ...]] = FedAvg.defends
    Sent: ClassVar[type[SentNothing]] = SentNothing

    def client_round(
        self, config: RunConfig, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
        defense: Defense, dataset: DatasetSpec, generator: torch.Generator, attacked: bool,
        client_state: dict[str, torch.Tensor], properties: torch.Tensor | None = None,
    ) -> ClientReply:
        """FedAvg's round (the truth holds the images the local steps used); nothing is sent beside the weights."""
        reply = FedAvg().client_round(config, model, images, labels, defense, dataset, generator, attacked,
                                      client_state, properties)
        reply.sent = SentNothing()
        return reply

    def observe(
        self, config: RunConfig, broadcast: dict[str, torch.Tensor], reply: dict[str, torch.Tensor],
        parameter_names: Sequence[str], num_examples: int, sent: Any,
    ) -> Leak:
        """Never called: under SecAgg+ the server holds no single reply (see :meth:`observe_aggregate`).

        Raises
        ------
        TypeError
            Always.
        """
        raise TypeError("protocol 'secagg': the server never holds one client's reply, only the aggregate")

    def observe_aggregate(
        self, config: RunConfig, broadcast: dict[str, torch.Tensor], aggregate: dict[str, torch.Tensor],
        parameter_names: Sequence[str], client_examples: Sequence[int],
    ) -> AggregateLeak:
        """The unmasked weighted mean minus the broadcast, with each client's plaintext ``num_examples``."""
        local = local_settings(config)
        return AggregateLeak(
            deltas=tuple(aggregate[n] - broadcast[n] for n in parameter_names), parameter_names=tuple(parameter_names),
            client_examples=tuple(client_examples), steps=tuple(local.total_steps(n) for n in client_examples),
            batch_size=local.batch_size, lr=local.lr, momentum=local.momentum, weight_decay=local.weight_decay,
        )


PROTOCOLS.add(SecAgg.name, SecAgg())
