"""What a client can check in the model it receives before training on it: signs of a malicious server.

A client sees the weights of the model it is asked to train. Some malicious modifications show
in properties of those weights that an honest model (freshly initialised or trained) does not
have. The check here finds three:

- the imprint block of "Robbing the Fed" (:mod:`fedpriv.imprint`) and any layer built like it: a
  linear or convolutional layer whose output units (rows) are all multiples of one vector, i.e.
  a layer of rank one with several units, so that they measure one and the same statistic of
  their input. Random initialisation and training give rank-one layers with probability zero; a
  layer with a single unit is not flagged.
- the trap weights of "When the Curious Abandon Honesty" (:mod:`fedpriv.trap_weights`) and any
  layer built like them: units whose weights all sum to the same share of their norm, t_r =
  sum(w_r) / ||w_r||, so that on a common input level every unit sits equally far below (or
  above) zero. Over the K units of a layer, z = mean(t) / (std(t) / sqrt(K)) is a Student t
  statistic: about N(0, 1) for independently initialised units; measured
  (``benchmarks/bench_model_check.py``), at most 5.5 over every model freshly initialised and
  10.5 over 65 trained ones, against 52-2,300 for the published trap construction of 64 to
  1,024 units at scales 0.9-0.99 and 23-35 for 16 units at scale 0.99 (missed: z grows with
  sqrt(K) and with 1 - scale). It is judged for layers of at least :data:`MIN_TRAP_UNITS` units.
- class fishing (:mod:`fedpriv.fishing`): a layer whose output units are all exactly zero but
  one, so that nothing below it learns from any input but the kept unit's class. Random
  initialisation and training give an exactly zero unit with probability zero.

Flower-free; the client mod that runs it on every received model is
:func:`fedpriv.clients.mods.model_check_mod`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

RANK_ONE_RATIO = 1e-4  # second singular value / first below this: the rows are one vector's multiples
MIN_UNITS = 4  # layers with fewer output units are not judged (a rank-one 2-unit layer is not rare)
TRAP_T = 50.0  # |z| of the units' normalised sums above this: one shared offset (see the module docstring)
MIN_TRAP_UNITS = 16  # with fewer units the t statistic's tails are too heavy to judge


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


def shared_offset(weight: torch.Tensor) -> float:
    """z = mean(t) / (std(t) / sqrt(K)) of the units' normalised sums t_r = sum(w_r) / ||w_r|| (0 if all t equal 0)."""
    rows = weight.detach().double().reshape(len(weight), -1)
    sums = rows.sum(1) / rows.norm(dim=1).clamp_min(1e-300)
    spread = float(sums.std())
    mean = float(sums.mean())
    if spread == 0.0:
        return 0.0 if mean == 0.0 else float("inf") * (1 if mean > 0 else -1)
    return mean / (spread / len(sums) ** 0.5)


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
        units are all zero but one, whose rows are multiples of one vector, or (at least
        :data:`MIN_TRAP_UNITS` units) that share one offset; empty for an honest model.
    """
    findings = []
    for name, tensor in state.items():
        if not name.endswith("weight") or tensor.dim() < 2 or len(tensor) < MIN_UNITS or not tensor.is_floating_point():
            continue
        if not bool(tensor.abs().gt(0).any()):
            continue
        zero_units = int((~tensor.reshape(len(tensor), -1).ne(0).any(dim=1)).sum())
        ratio = rank_one_ratio(tensor)
        if zero_units == len(tensor) - 1:
            findings.append(Finding(name, f"{zero_units} of its {len(tensor)} output units are exactly zero: the "
                                          "gradient below it keeps the one other unit's inputs, as class fishing does"))
        elif ratio < RANK_ONE_RATIO:
            findings.append(Finding(name, f"its {len(tensor)} output units are multiples of one vector "
                                          f"(sigma2/sigma1 = {ratio:.1e}): they measure one statistic, as an imprint "
                                          "layer does"))
        elif len(tensor) >= MIN_TRAP_UNITS and abs(offset := shared_offset(tensor)) > TRAP_T:
            findings.append(Finding(name, f"its {len(tensor)} output units' weights all sum to one share of their "
                                          f"norm (t = {offset:.3g}): each sits below zero for most inputs, as trap "
                                          "weights do"))
    return findings
