"""``rmia-offline``: RMIA with OUT reference models (Zarifzadeh et al., ICML 2024, the offline attack).

In :meth:`OfflineRmia.prepare` the server trains ``shadows`` reference models
(:mod:`fedpriv.membership.shadows`, each OUT for every candidate) and keeps its auxiliary split
as the population z. A candidate x scores the fraction of population samples it dominates:
Pr(x | released) / Pr(x) > ``gamma`` x Pr(z | released) / Pr(z), with Pr(. | model) the
softmax probability of the true label and Pr(x) the references' mean, interpolated for OUT-only
references as ((1 + a) / 2) mean + (1 - a) / 2 with ``offline-a``
(:func:`fedpriv.membership.statistics.rmia`). The paper tunes a on reference models per data
set; the defaults here are a starting point, not its values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fedpriv.membership.base import MEMBERSHIP_ATTACKS, RELEASED_MODEL, Observation, logits_of
from fedpriv.membership.shadows import ShadowOptions, shadow_errors, train_shadows
from fedpriv.membership.statistics import rmia
from fedpriv.options import option
from fedpriv.training import to_pixels

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.loading import LabeledImages
    from fedpriv.data.specs import DatasetSpec


@dataclass(frozen=True)
class RmiaOptions(ShadowOptions):
    """Reference models (as LiRA's shadows), the dominance threshold and the offline interpolation."""

    gamma: float = option(2.0, "a candidate dominates z when its likelihood ratio exceeds gamma times z's",
                          low=1.0, high=1e6)
    offline_a: float = option(0.3, "Pr(x) = ((1 + a) / 2) mean over references + (1 - a) / 2", low=0.0, high=1.0)


def true_label_probability(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(n,) the softmax probability the model gives each input's label."""
    return logits_of(model, inputs).softmax(1).gather(1, labels[:, None])[:, 0]


class OfflineRmia:
    """Scores each candidate by the share of population samples its likelihood ratio dominates."""

    name: ClassVar[str] = "rmia-offline"
    Options: ClassVar[type] = RmiaOptions
    observer: ClassVar[str] = RELEASED_MODEL

    def __init__(self, options: RmiaOptions, seed: int) -> None:
        self.options, self.seed = options, seed
        self.references: list[nn.Module] = []
        self.population: tuple[torch.Tensor, torch.Tensor] | None = None
        self.reference_z: torch.Tensor | None = None

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """Reference models and the population need an auxiliary split of the clients' distribution."""
        return shadow_errors(cls.name, config)

    def prepare(self, config: RunConfig, dataset: DatasetSpec, aux: LabeledImages | None) -> None:
        """Train the reference models; keep the auxiliary split as the population and its reference probabilities."""
        self.references = train_shadows(config, dataset, aux, self.options, self.seed)
        assert aux is not None  # train_shadows refuses None
        inputs = dataset.normalize(to_pixels(aux.images))
        self.population = (inputs, aux.labels)
        self.reference_z = torch.stack([true_label_probability(m, inputs, aux.labels) for m in self.references])

    def score(self, observation: Observation, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The fraction of population samples z that each candidate dominates."""
        assert self.population is not None and self.reference_z is not None
        target_x = true_label_probability(observation.model, inputs, labels)
        reference_x = torch.stack([true_label_probability(m, inputs, labels) for m in self.references])
        target_z = true_label_probability(observation.model, *self.population)
        return rmia(target_x, reference_x, target_z, self.reference_z, self.options.gamma, self.options.offline_a)


MEMBERSHIP_ATTACKS.add(OfflineRmia.name, OfflineRmia)
