"""What a client can check in the model it receives before training on it: signs of a malicious server.

A client sees the weights of the model it is asked to train. Some malicious modifications show
in properties of those weights that an honest model (freshly initialised or trained) does not
have. The check here finds the imprint block of "Robbing the Fed" (:mod:`fedpriv.imprint`) and
any layer built like it: a linear or convolutional layer whose output units (rows) are all
multiples of one vector, i.e. a layer of rank one with several units, so that they measure one
and the same statistic of their input. Random initialisation and training give rank-one layers
with probability zero; a layer with a single unit is not flagged.

Flower-free; the client mod that runs it on every received model is
:func:`fedpriv.clients.mods.model_check_mod`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

RANK_ONE_RATIO = 1e-4  # second singular value / first below this: the rows are one vector's multiples
MIN_UNITS = 4  # layers with fewer output units are not judged (a rank-one 2-unit layer is not rare)


@dataclass(frozen=True)
class Finding:
    """One suspicious layer: its parameter name and why."""

    parameter: str
    reason: str


def rank_one_ratio(weight: torch.Tensor) -> float:
    """sigma_2 / sigma_1 of the weight viewed as (output units, inputs); 0 for an exact rank-one matrix."""
    rows = weight.detach().double().reshape(len(weight), -1)
    values = torch.linalg.svdvals(rows)
    return float(values[1] / values[0]) if len(values) > 1 and float(values[0]) > 0 else 0.0


def inspect_model(state: Mapping[str, torch.Tensor]) -> list[Finding]:
    """The layers of a received state dict that look built to measure one statistic many times.

    Parameters
    ----------
    state
        The model's floating-point state (what the server sent).

    Returns
    -------
    list[Finding]
        One per weight (2-D or more, at least :data:`MIN_UNITS` output units, not all zero) whose
        rows are multiples of one vector; empty for an honest model.
    """
    findings = []
    for name, tensor in state.items():
        if not name.endswith("weight") or tensor.dim() < 2 or len(tensor) < MIN_UNITS or not tensor.is_floating_point():
            continue
        if not bool(tensor.abs().gt(0).any()):
            continue
        ratio = rank_one_ratio(tensor)
        if ratio < RANK_ONE_RATIO:
            findings.append(Finding(name, f"its {len(tensor)} output units are multiples of one vector "
                                          f"(sigma2/sigma1 = {ratio:.1e}): they measure one statistic, as an imprint "
                                          "layer does"))
    return findings
