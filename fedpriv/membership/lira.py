"""``lira-offline``: LiRA with OUT shadow models only (Carlini et al., S&P 2022, the offline attack).

In :meth:`OfflineLira.prepare` the server trains ``shadows`` models of the run's architecture,
each on a random half of its auxiliary split with the clients' local recipe (batch size, lr,
momentum, weight decay) for ``epochs`` epochs; the auxiliary split is disjoint from every
client, so each shadow is OUT for every candidate. A candidate's score is where the released
model's logit-scaled confidence in its label falls in the Gaussian fitted to the shadows'
(:func:`fedpriv.membership.statistics.lira_offline`; one variance pooled over candidates, the
paper's choice for few shadows). The shadows train on the server's data, not the clients':
they approximate the federation's training by a central one (stated in the threat model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fedpriv.behaviours import run_model
from fedpriv.defenses import build_defense
from fedpriv.membership.base import MEMBERSHIP_ATTACKS, RELEASED_MODEL, Observation, logits_of
from fedpriv.membership.statistics import lira_offline, logit_confidence
from fedpriv.options import option
from fedpriv.training import TrainSettings, train_local

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.loading import LabeledImages
    from fedpriv.data.specs import DatasetSpec


@dataclass(frozen=True)
class LiraOptions:
    """Options of offline LiRA."""

    shadows: int = option(4, "shadow models trained on halves of the auxiliary split", low=2, high=1024)
    epochs: int = option(5, "epochs each shadow model trains", low=1, high=10_000)


class OfflineLira:
    """Scores each candidate against OUT shadow models trained on the server's auxiliary split."""

    name: ClassVar[str] = "lira-offline"
    Options: ClassVar[type] = LiraOptions
    observer: ClassVar[str] = RELEASED_MODEL

    def __init__(self, options: LiraOptions, seed: int) -> None:
        self.options, self.seed = options, seed
        self.shadows: list[nn.Module] = []

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """Shadow models need an auxiliary split of the clients' distribution."""
        if config.aux_samples < 2 or config.aux_type != "same":
            return [f"membership attack 'lira-offline' trains shadow models on the server's auxiliary split: "
                    f"aux-samples={config.aux_samples}, aux-type={config.aux_type!r}; valid: aux-samples >= 2 with "
                    "aux-type='same'"]
        return []

    def prepare(self, config: RunConfig, dataset: DatasetSpec, aux: LabeledImages | None) -> None:
        """Train the shadow models (each on a seeded random half of ``aux``)."""
        if aux is None:
            raise ValueError("lira-offline needs the server's auxiliary split")
        settings = TrainSettings(epochs=self.options.epochs, batch_size=config.batch_size, lr=config.lr,
                                 momentum=config.momentum, weight_decay=config.weight_decay)
        none = build_defense("none")
        for shadow in range(self.options.shadows):
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + shadow)
            half = torch.randperm(len(aux.labels), generator=generator)[: len(aux.labels) // 2]
            torch.manual_seed(self.seed * 1_000_003 + shadow)
            model = run_model(config, dataset)
            train_local(model, aux.images[half], aux.labels[half], none, dataset, settings, generator)
            self.shadows.append(model.eval())

    def score(self, observation: Observation, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The OUT Gaussian's CDF at the released model's logit-scaled confidence."""
        target = logit_confidence(logits_of(observation.model, inputs), labels)
        out = torch.stack([logit_confidence(logits_of(shadow, inputs), labels) for shadow in self.shadows])
        return lira_offline(target, out)


MEMBERSHIP_ATTACKS.add(OfflineLira.name, OfflineLira)
