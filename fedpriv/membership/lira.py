"""``lira-offline``: LiRA with OUT shadow models only (Carlini et al., S&P 2022, the offline attack).

In :meth:`OfflineLira.prepare` the server trains ``shadows`` models of the run's architecture
(:mod:`fedpriv.membership.shadows`), each OUT for every candidate. A candidate's score is where
the released model's logit-scaled confidence in its label falls in the Gaussian fitted to the
shadows' (:func:`fedpriv.membership.statistics.lira_offline`; one variance pooled over
candidates, the paper's choice for few shadows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fedpriv.membership.base import MEMBERSHIP_ATTACKS, RELEASED_MODEL, Observation, logits_of
from fedpriv.membership.shadows import ShadowOptions, shadow_errors, train_shadows
from fedpriv.membership.statistics import lira_offline, logit_confidence

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.loading import LabeledImages
    from fedpriv.data.specs import DatasetSpec


class OfflineLira:
    """Scores each candidate against OUT shadow models trained on the server's auxiliary split."""

    name: ClassVar[str] = "lira-offline"
    Options: ClassVar[type] = ShadowOptions
    observer: ClassVar[str] = RELEASED_MODEL

    def __init__(self, options: ShadowOptions, seed: int) -> None:
        self.options, self.seed = options, seed
        self.shadows: list[nn.Module] = []

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """Shadow models need an auxiliary split of the clients' distribution."""
        return shadow_errors(cls.name, config)

    def prepare(self, config: RunConfig, dataset: DatasetSpec, aux: LabeledImages | None) -> None:
        """Train the shadow models."""
        self.shadows = train_shadows(config, dataset, aux, self.options, self.seed)

    def score(self, observation: Observation, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The OUT Gaussian's CDF at the released model's logit-scaled confidence."""
        target = logit_confidence(logits_of(observation.model, inputs), labels)
        out = torch.stack([logit_confidence(logits_of(shadow, inputs), labels) for shadow in self.shadows])
        return lira_offline(target, out)


MEMBERSHIP_ATTACKS.add(OfflineLira.name, OfflineLira)
