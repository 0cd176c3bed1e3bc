"""Per-sample output kinds beyond images and labels, each registered with its scorer.

An attack may estimate, per attacked sample, a quantity other than the image or its label
(the client's secret rotation angle, a private property). It returns it in
``Reconstruction.estimates`` under a registered kind; the protocol or defense that knows the true
value puts it in ``GroundTruth.targets`` under the same kind; the scorer registered here turns
the pair into the row's metrics. A kind unknown to this registry is an error on either side, so
the names that cross modules are checked, not magic. Images and labels, which every family of
attacks produces, keep their own fields and scorers (:mod:`fedpriv.scoring`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from fedpriv.metrics import circular_error
from fedpriv.registry import Registry


@dataclass(frozen=True)
class OutputKind:
    """A per-sample output kind and how an estimate of it is scored.

    Attributes
    ----------
    name
        The kind's name, the key in ``estimates`` and ``targets``.
    help
        One line: what the value is and what the metrics mean.
    score
        ``score(estimate, target)`` -> the row's metrics; both are (n,) tensors in sample order.
    """

    name: str
    help: str
    score: Callable[[torch.Tensor, torch.Tensor], dict[str, float]]


OUTPUT_KINDS: Registry[OutputKind] = Registry("output kind")


def check_kinds(values: Mapping[str, torch.Tensor], where: str) -> None:
    """Fail unless every key of ``values`` is a registered output kind.

    Raises
    ------
    ValueError
        Naming ``where``, the unknown kinds and the valid ones.
    """
    unknown = sorted(set(values) - set(OUTPUT_KINDS.names()))
    if unknown:
        raise ValueError(f"{where}: unknown output kinds {unknown}; valid: {', '.join(OUTPUT_KINDS.names())}")


def _angle_scores(estimate: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    estimate, target = estimate.detach().cpu().double(), target.double()
    return {"angle_error": float(circular_error(estimate, target).mean()),
            "angle_error_mod_pi": float(circular_error(estimate, target, math.pi).mean())}


def _property_scores(estimate: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    return {"property_error": float((estimate.detach().cpu() != target.long()).float().mean())}


OUTPUT_KINDS.add("angles", OutputKind(
    "angles", "the angle (rad) a rotation-defended client decodes by; angle_error: mean circular error "
    "(chance pi/2), angle_error_mod_pi: modulo pi (chance pi/4)", _angle_scores))
OUTPUT_KINDS.add("properties", OutputKind(
    "properties", "each sample's private property (the label where the data set defines none); "
    "property_error: the error rate", _property_scores))
