"""``predictions``: FedAvg training; in attacked rounds clients also release predictions on private inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fedpriv.config import RunConfig
from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses import Defense, PredictionDefense
from fedpriv.leaks import PredictionLeak
from fedpriv.models import wire_state
from fedpriv.protocols.base import PROTOCOLS, ClientReply, ground_truth, local_settings
from fedpriv.training import to_pixels, train_local


@dataclass(frozen=True)
class SentPredictions:
    """What a ``predictions`` client sends beside its weights: the released vectors (n, K) in attacked rounds."""

    predictions: torch.Tensor | None = None


class Predictions:
    """FedAvg training; in attacked rounds the client also releases predictions on private inputs.

    A deployed model whose inference results reach its provider: the vectors come from the
    broadcast model (eval mode), i.e. the deployed model of the round, on ``prediction-samples``
    of the client's samples drawn from its seed, after its prediction defense (``truncate:M``).
    The weights go to FedAvg as under ``fedavg``; the attacks see only the vectors.
    """

    name: ClassVar[str] = "predictions"
    leak_kind: ClassVar[str] = PredictionLeak.kind
    defends: ClassVar[tuple[str, ...]] = ("nothing", "predictions")
    Sent: ClassVar[type[SentPredictions]] = SentPredictions

    def client_round(
        self, config: RunConfig, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
        defense: Defense, dataset: DatasetSpec, generator: torch.Generator, attacked: bool,
        client_state: dict[str, torch.Tensor], properties: torch.Tensor | None = None,
    ) -> ClientReply:
        """Release (defended) predictions when attacked, then train locally and send the weights."""
        released, truth = None, None
        if attacked:
            pick = torch.randperm(len(labels), generator=generator)[: config.prediction_samples]
            pixels = to_pixels(images[pick])
            model.eval()
            with torch.no_grad():
                logits = model(dataset.normalize(pixels.to(next(model.parameters()).device)))
            released = torch.softmax(logits.float(), 1).cpu()
            if isinstance(defense, PredictionDefense):
                released = defense.release(released)
            truth = ground_truth(images[pick], pixels, labels[pick], defense)
        loss = train_local(model, images, labels, defense, dataset, local_settings(config), generator).loss
        return ClientReply(state=wire_state(model), num_examples=len(labels), train_loss=loss,
                           sent=SentPredictions(released), truth=truth)

    def observe(
        self, config: RunConfig, broadcast: dict[str, torch.Tensor], reply: dict[str, torch.Tensor],
        parameter_names: Sequence[str], num_examples: int, sent: SentPredictions,
    ) -> PredictionLeak:
        """The released vectors the reply carries."""
        if sent.predictions is None:
            raise ValueError("a predictions-protocol reply of an attacked round carries no prediction vectors")
        return PredictionLeak(sent.predictions, self.name)


PROTOCOLS.add(Predictions.name, Predictions())
