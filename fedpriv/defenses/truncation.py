"""Prediction truncation: a client releases only the top m entries of each prediction vector."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fedpriv.defenses.base import PredictionDefense, register_defense
from fedpriv.spec_numbers import spec_int

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.specs import DatasetSpec

FORM = "truncate:M (keep the top M >= 1 entries of each released prediction vector, zero the rest)"
MAX_TOP = 100_000  # above any data set's classes; the run config checks M against its data set's


class Truncation(PredictionDefense):
    """Keep the ``top`` largest entries of each prediction vector and zero the others (no renormalising).

    This is the prediction-API defense of Yang et al. (CCS 2019): the vector is not rescaled,
    so the kept entries are the model's own probabilities. It does not touch training inputs.

    Parameters
    ----------
    top
        Entries kept, 1 <= top <= number of classes (checked against the data set in the config).
    """

    def __init__(self, top: int) -> None:
        self.top = top
        self.spec = f"truncate:{top}"

    def fit_errors(self, config: RunConfig, dataset: DatasetSpec) -> list[str]:
        """At most as many entries as the data set has classes."""
        if self.top > dataset.num_classes:
            return [f"defense {self.spec!r} keeps {self.top} entries, but {config.dataset!r} has "
                    f"{dataset.num_classes} classes; valid: truncate:1..truncate:{dataset.num_classes}"]
        return []

    def released_entries(self, num_classes: int) -> int:
        """The ``top`` entries (at most ``num_classes``)."""
        return min(self.top, num_classes)

    def release(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The vectors (n, K) with all but their ``top`` largest entries set to zero."""
        values, index = probabilities.topk(min(self.top, probabilities.shape[1]), dim=1)
        return torch.zeros_like(probabilities).scatter_(1, index, values)


@register_defense("truncate", FORM)
def _truncate(argument: str) -> Truncation:
    return Truncation(spec_int(f"defense 'truncate:{argument}'", "M", argument, 1, MAX_TOP))
