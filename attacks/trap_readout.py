"""Trap readout ("When the Curious Abandon Honesty", Boenisch et al., EuroS&P 2023): images read off trap rows.

A malicious server broadcasts the model behind a trap layer (``server-behaviour='trap-weights'``,
:mod:`fedpriv.trap_weights`); every row of that layer's gradient (or update) that fired for one
image holds it exactly, as the ratio of the row's weight and bias gradients. The readout groups
equal row estimates and returns the groups with most rows first (a single image traps more rows
than any group of images), then mid-grey images; the scorer matches them to the truth and counts
the recovered ones (``images_recovered``). No optimisation.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from fedpriv.attacks.base import ATTACKS
from fedpriv.attacks.imprint_readout import ImprintReadout
from fedpriv.trap_weights import read_out_rows


class TrapReadout(ImprintReadout):
    """Reads single images off the trap layer's gradient rows (the server built the layer)."""

    name: ClassVar[str] = "trap-readout"
    behaviour: ClassVar[str] = "trap-weights"

    def read(self, weight_grad: torch.Tensor, bias_grad: torch.Tensor) -> torch.Tensor:
        """One estimate per group of equal rows, most rows first."""
        return read_out_rows(weight_grad, bias_grad)


ATTACKS.add(TrapReadout.name, TrapReadout)
