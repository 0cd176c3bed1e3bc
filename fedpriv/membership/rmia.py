"""``rmia-offline`` and ``rmia-online``: RMIA (Zarifzadeh et al., ICML 2024).

In :meth:`OfflineRmia.prepare` the server trains ``shadows`` reference models
(:mod:`fedpriv.membership.shadows`, each OUT for every candidate) and keeps its auxiliary split
as the population z. A candidate x scores the fraction of population samples it dominates:
Pr(x | released) / Pr(x) > ``gamma`` x Pr(z | released) / Pr(z), with Pr(. | model) the
softmax probability of the true label and Pr(x) the references' mean, interpolated for OUT-only
references as ((1 + a) / 2) mean + (1 - a) / 2 with ``offline-a``
(:func:`fedpriv.membership.statistics.rmia`). The paper tunes a on reference models per data
set; the defaults here are a starting point, not its values.

:class:`OnlineRmia` trains its references in the first scored round, on the auxiliary split and
the candidates, in pairs that make each candidate IN for half of them
(:func:`fedpriv.membership.shadows.train_paired_shadows`, as ``lira-online``); Pr(x) is then
their plain mean, the paper's online setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fedpriv.membership.base import MEMBERSHIP_ATTACKS, RELEASED_MODEL, Observation, logits_of
from fedpriv.membership.shadows import CandidateShadows, PerCandidates, ShadowOptions, shadow_errors, train_shadows
from fedpriv.membership.statistics import rmia
from fedpriv.options import option
from fedpriv.training import to_pixels

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.loading import LabeledImages
    from fedpriv.data.specs import DatasetSpec

Population = tuple[torch.Tensor, torch.Tensor]  # normalised inputs and labels of the server's auxiliary split


@dataclass(frozen=True)
class OnlineRmiaOptions(ShadowOptions):
    """Reference models (as LiRA's shadows) and the dominance threshold."""

    gamma: float = option(2.0, "a candidate dominates z when its likelihood ratio exceeds gamma times z's",
                          low=1.0, high=1e6)


@dataclass(frozen=True)
class RmiaOptions(OnlineRmiaOptions):
    """Reference models, the dominance threshold and the offline interpolation."""

    offline_a: float = option(0.3, "Pr(x) = ((1 + a) / 2) mean over references + (1 - a) / 2", low=0.0, high=1.0)


def true_label_probability(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(n,) the softmax probability the model gives each input's label."""
    return logits_of(model, inputs).softmax(1).gather(1, labels[:, None])[:, 0]


def reference_probabilities(references: list[nn.Module], inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(references, n) :func:`true_label_probability` under each reference model."""
    return torch.stack([true_label_probability(m, inputs, labels) for m in references])


def population_of(dataset: DatasetSpec, aux: LabeledImages) -> Population:
    """The auxiliary split as the population z: normalised inputs and labels."""
    return dataset.normalize(to_pixels(aux.images)), aux.labels


class OfflineRmia:
    """Scores each candidate by the share of population samples its likelihood ratio dominates."""

    name: ClassVar[str] = "rmia-offline"
    Options: ClassVar[type] = RmiaOptions
    observer: ClassVar[str] = RELEASED_MODEL

    def __init__(self, options: RmiaOptions, seed: int) -> None:
        self.options, self.seed = options, seed
        self.references: list[nn.Module] = []
        self.population: Population | None = None
        self.reference_z: torch.Tensor | None = None
        self.reference_x = PerCandidates(lambda inputs, labels: reference_probabilities(self.references, inputs,
                                                                                        labels))

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """Reference models and the population need an auxiliary split of the clients' distribution."""
        return shadow_errors(cls.name, config, options)

    def prepare(self, config: RunConfig, dataset: DatasetSpec, aux: LabeledImages | None) -> None:
        """Train the reference models; keep the auxiliary split as the population and its reference probabilities."""
        self.references = train_shadows(config, dataset, aux, self.options, self.seed)
        assert aux is not None  # train_shadows refuses None
        self.population = population_of(dataset, aux)
        self.reference_z = reference_probabilities(self.references, *self.population)

    def score(self, observation: Observation, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The fraction of population samples z that each candidate dominates."""
        assert self.population is not None and self.reference_z is not None
        target_x = true_label_probability(observation.model, inputs, labels)
        target_z = true_label_probability(observation.model, *self.population)
        return rmia(target_x, self.reference_x(inputs, labels), target_z, self.reference_z, self.options.gamma,
                    self.options.offline_a)


class OnlineRmia(CandidateShadows):
    """RMIA with reference models trained with and without each candidate (Pr(x): their plain mean)."""

    name: ClassVar[str] = "rmia-online"
    Options: ClassVar[type] = OnlineRmiaOptions
    observer: ClassVar[str] = RELEASED_MODEL

    def __init__(self, options: OnlineRmiaOptions, seed: int) -> None:
        super().__init__(options, seed)
        self.references = PerCandidates(self._train)

    def _train(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Population]:
        """(references, n) and (references, p) probabilities of the candidates and the population; the population."""
        references, _, dataset, aux = self.paired_shadows(inputs, labels)
        population = population_of(dataset, aux)
        return (reference_probabilities(references, inputs, labels), reference_probabilities(references, *population),
                population)

    def score(self, observation: Observation, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The fraction of population samples z that each candidate dominates."""
        reference_x, reference_z, population = self.references(inputs, labels)
        target_x = true_label_probability(observation.model, inputs, labels)
        target_z = true_label_probability(observation.model, *population)
        return rmia(target_x, reference_x, target_z, reference_z, self.options.gamma)


MEMBERSHIP_ATTACKS.add(OfflineRmia.name, OfflineRmia)
MEMBERSHIP_ATTACKS.add(OnlineRmia.name, OnlineRmia)
