"""``lira-offline`` and ``lira-online``: the likelihood-ratio attack (Carlini et al., S&P 2022).

A candidate's statistic is the logit-scaled confidence in its label
(:func:`fedpriv.membership.statistics.logit_confidence`); one variance is pooled over
candidates, the paper's choice for few shadow models.

- :class:`OfflineLira` trains ``shadows`` models in :meth:`OfflineLira.prepare`, each OUT for
  every candidate (:func:`fedpriv.membership.shadows.train_shadows`), and scores where the
  released model's statistic falls in the Gaussian fitted to theirs.
- :class:`OnlineLira` trains its shadows in the first scored round, on the server's auxiliary
  split and the candidates it is asked about, so each candidate is IN for half of them
  (:func:`fedpriv.membership.shadows.train_paired_shadows`), and scores the likelihood ratio of
  the IN and OUT Gaussians: the attacker trains on the samples it asks about, as in the paper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from fedpriv.membership.base import MEMBERSHIP_ATTACKS, RELEASED_MODEL, Observation, logits_of
from fedpriv.membership.shadows import CandidateShadows, PerCandidates, ShadowOptions, shadow_errors, train_shadows
from fedpriv.membership.statistics import lira_offline, lira_online, logit_confidence

if TYPE_CHECKING:
    from torch import nn

    from fedpriv.config import RunConfig
    from fedpriv.data.loading import LabeledImages
    from fedpriv.data.specs import DatasetSpec


def shadow_statistics(shadows: list[nn.Module], inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(shadows, n) each shadow model's logit-scaled confidence in each candidate's label."""
    return torch.stack([logit_confidence(logits_of(shadow, inputs), labels) for shadow in shadows])


class OfflineLira:
    """Scores each candidate against OUT shadow models trained on the server's auxiliary split."""

    name: ClassVar[str] = "lira-offline"
    Options: ClassVar[type] = ShadowOptions
    observer: ClassVar[str] = RELEASED_MODEL

    def __init__(self, options: ShadowOptions, seed: int) -> None:
        self.options, self.seed = options, seed
        self.out = PerCandidates(lambda inputs, labels: shadow_statistics(self.shadows, inputs, labels))
        self.shadows: list[nn.Module] = []

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """Shadow models need an auxiliary split of the clients' distribution."""
        return shadow_errors(cls.name, config, options)

    def prepare(self, config: RunConfig, dataset: DatasetSpec, aux: LabeledImages | None) -> None:
        """Train the shadow models."""
        self.shadows = train_shadows(config, dataset, aux, self.options, self.seed)

    def score(self, observation: Observation, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The OUT Gaussian's CDF at the released model's logit-scaled confidence."""
        target = logit_confidence(logits_of(observation.model, inputs), labels)
        return lira_offline(target, self.out(inputs, labels))


class OnlineLira(CandidateShadows):
    """Scores each candidate by the likelihood ratio of shadow models trained with and without it."""

    name: ClassVar[str] = "lira-online"
    Options: ClassVar[type] = ShadowOptions
    observer: ClassVar[str] = RELEASED_MODEL

    def __init__(self, options: ShadowOptions, seed: int) -> None:
        super().__init__(options, seed)
        self.in_out = PerCandidates(self._train)

    def _train(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shadows / 2, n) IN and OUT statistics of every candidate, from freshly trained paired shadows."""
        shadows, included, _, _ = self.paired_shadows(inputs, labels)
        statistics = shadow_statistics(shadows, inputs, labels)
        width = self.options.shadows // 2
        return (statistics.T[included.T].view(-1, width).T, statistics.T[~included.T].view(-1, width).T)

    def score(self, observation: Observation, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log N(phi; IN fit) - log N(phi; OUT fit) at the released model's logit-scaled confidence."""
        target = logit_confidence(logits_of(observation.model, inputs), labels)
        return lira_online(target, *self.in_out(inputs, labels))


MEMBERSHIP_ATTACKS.add(OfflineLira.name, OfflineLira)
MEMBERSHIP_ATTACKS.add(OnlineLira.name, OnlineLira)
