"""``loss``: the loss-threshold attack (Yeom et al., CSF 2018): a low loss on a sample suggests it was trained on.

The score is minus the cross-entropy of the released model on the candidate with its label;
the ROC sweeps every threshold. No shadow models, no auxiliary data: the weakest attack and the
baseline every stronger one is compared with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedpriv.membership.base import MEMBERSHIP_ATTACKS, RELEASED_MODEL, Observation, logits_of
from fedpriv.options import NoOptions

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.loading import LabeledImages
    from fedpriv.data.specs import DatasetSpec


def loss_scores(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Minus the cross-entropy of each normalised input with its label under ``model`` (eval mode)."""
    return -F.cross_entropy(logits_of(model, inputs), labels, reduction="none")


class LossThreshold:
    """Scores each candidate by minus its loss under the released model."""

    name: ClassVar[str] = "loss"
    Options: ClassVar[type] = NoOptions
    observer: ClassVar[str] = RELEASED_MODEL

    def __init__(self, options: Any, seed: int) -> None:
        self.options = options  # it trains nothing: the seed is not needed

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """Fits every run."""
        return []

    def prepare(self, config: RunConfig, dataset: DatasetSpec, aux: LabeledImages | None) -> None:
        """Nothing to prepare."""

    def score(self, observation: Observation, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """-cross-entropy per candidate."""
        return loss_scores(observation.model, inputs, labels)


MEMBERSHIP_ATTACKS.add(LossThreshold.name, LossThreshold)
