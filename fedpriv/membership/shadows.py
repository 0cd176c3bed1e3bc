"""Shadow (reference) models: the run's architecture trained by the server on halves of its auxiliary split.

LiRA's shadow models and RMIA's reference models are the same thing: models of the target's
architecture, trained with the clients' local recipe (batch size, lr, momentum, weight decay) on
data the server holds. The auxiliary split is disjoint from every client, so every shadow is OUT
for every candidate (the offline setting of both attacks). They train centrally, not in a
federation: they approximate the federation's training by a central one (stated in the threat
model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedpriv.behaviours import run_model
from fedpriv.defenses import build_defense
from fedpriv.options import option
from fedpriv.training import TrainSettings, train_local

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.loading import LabeledImages
    from fedpriv.data.specs import DatasetSpec


@dataclass(frozen=True)
class ShadowOptions:
    """How many shadow models the attack trains, and for how long."""

    shadows: int = option(4, "shadow models trained on halves of the auxiliary split", low=2, high=1024)
    epochs: int = option(5, "epochs each shadow model trains", low=1, high=10_000)


def shadow_errors(name: str, config: RunConfig) -> list[str]:
    """Shadow models need an auxiliary split of the clients' distribution (at least two samples)."""
    if config.aux_samples < 2 or config.aux_type != "same":
        return [f"membership attack {name!r} trains shadow models on the server's auxiliary split: "
                f"aux-samples={config.aux_samples}, aux-type={config.aux_type!r}; valid: aux-samples >= 2 with "
                "aux-type='same'"]
    return []


def train_shadows(config: RunConfig, dataset: DatasetSpec, aux: LabeledImages | None, options: ShadowOptions,
                  seed: int) -> list[nn.Module]:
    """``options.shadows`` models (eval mode), each trained on a seeded random half of ``aux``."""
    if aux is None:
        raise ValueError("shadow models need the server's auxiliary split")
    settings = TrainSettings(epochs=options.epochs, batch_size=config.batch_size, lr=config.lr,
                             momentum=config.momentum, weight_decay=config.weight_decay)
    none = build_defense("none")
    shadows = []
    for shadow in range(options.shadows):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + shadow)
        half = torch.randperm(len(aux.labels), generator=generator)[: len(aux.labels) // 2]
        torch.manual_seed(seed * 1_000_003 + shadow)
        model = run_model(config, dataset)
        train_local(model, aux.images[half], aux.labels[half], none, dataset, settings, generator)
        shadows.append(model.eval())
    return shadows
