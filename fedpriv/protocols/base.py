"""The protocol contract: what a client round returns, the protocol plugin's shape, and its registry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

from fedpriv.config import RunConfig
from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses import Defense
from fedpriv.leaks import GroundTruth, Leak
from fedpriv.registry import Registry
from fedpriv.training import TrainSettings, to_pixels

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


@dataclass
class ClientReply:
    """What one client produces in one round.

    Attributes
    ----------
    state
        The one ArrayRecord it sends (floating-point state dict).
    num_examples, train_loss
        Its MetricRecord values.
    sent
        What it sends beside the arrays: an instance of its protocol's ``Sent`` dataclass
        (revealed labels, released predictions, features, ...), encoded field by field
        (:func:`fedpriv.wire.encode_fields`).
    truth
        Evaluation-only ground truth (in attacked rounds), else ``None``.
    """

    state: dict[str, torch.Tensor]
    num_examples: int
    train_loss: float
    sent: DataclassInstance
    truth: GroundTruth | None


class FederatedProtocol(Protocol):
    """A protocol plugin.

    ``leak_kind`` is the kind of leak :meth:`observe` returns; ``defends`` the defense kinds
    (``Defense.acts_on``) that act on what it sends (``"nothing"``, the ``none`` defense, always);
    ``Sent`` the dataclass of what a reply carries beside its arrays (every field with a default,
    so a reply without it decodes to the defaults).
    """

    name: ClassVar[str]
    leak_kind: ClassVar[str]
    defends: ClassVar[tuple[str, ...]]

    @property
    def Sent(self) -> type[DataclassInstance]:  # noqa: N802 - a class, named as one
        """The dataclass of what a reply carries beside its arrays."""
        ...

    def client_round(
        self, config: RunConfig, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
        defense: Defense, dataset: DatasetSpec, generator: torch.Generator, attacked: bool,
        client_state: dict[str, torch.Tensor], properties: torch.Tensor | None = None,
    ) -> ClientReply:
        """Compute the reply of one client from the broadcast ``model`` (changed in place).

        ``client_state`` is the client's own state across rounds (Flower's client state; e.g. the
        rotation defense's critic), updated in place; it is never sent. ``properties`` are the
        samples' private property where the data set defines one (else the labels are).
        """
        ...

    def observe(
        self, config: RunConfig, broadcast: dict[str, torch.Tensor], reply: dict[str, torch.Tensor],
        parameter_names: Sequence[str], num_examples: int, sent: Any,
    ) -> Leak:
        """The leak the server derives from a received reply and what was sent beside it (a ``Sent``)."""
        ...


PROTOCOLS: Registry[FederatedProtocol] = Registry("protocol")


def ground_truth(images: torch.Tensor, defended: torch.Tensor, labels: torch.Tensor, defense: Defense,
                 targets: dict[str, torch.Tensor] | None = None) -> GroundTruth:
    """The evaluation-only truth of a batch: x in pixels, T(x), labels, the defense spec and the output targets."""
    return GroundTruth(to_pixels(images), defended, labels.clone(), defense.spec, targets or {})


def local_settings(config: RunConfig) -> TrainSettings:
    """The local SGD a run's clients use under FedAvg."""
    return TrainSettings(config.local_epochs, config.batch_size, config.lr, config.momentum, config.weight_decay,
                         config.local_steps)
