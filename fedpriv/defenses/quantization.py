"""Update quantization: a client sends each tensor of its update rounded to a few uniform levels.

The defense of Zhu et al.'s quantization experiment (Deep Leakage from Gradients, NeurIPS 2019,
section 5: half precision and int-8 quantization did not stop the attack) and the compression
of low-precision federated training. Spec ``quantize:BITS`` (1 <= BITS <= 16): each tensor u of
the update (the gradient under ``fedsgd``, the weight change under ``fedavg``) is sent as
s * round(u / s) with the step s = max|u| / L and L = 2^(BITS-1) levels on each side of zero, so
``quantize:8`` sends int-8 values (-128 is never used) times one float per tensor, and
``quantize:1`` sends {-max|u|, 0, max|u|}. Rounding is to nearest and deterministic (the
generator is not drawn from); an all-zero tensor is sent as it is.
"""

from __future__ import annotations

import torch

from fedpriv.defenses.base import UpdateDefense, register_defense
from fedpriv.spec_numbers import spec_int

FORM = "quantize:BITS (updates: each tensor rounded to 2^BITS - 1 uniform levels, 1 <= BITS <= 16)"
MAX_BITS = 16


class Quantization(UpdateDefense):
    """Round every tensor of the update to ``2 * levels + 1`` uniform values in [-max|u|, max|u|].

    Parameters
    ----------
    bits
        1 <= bits <= 16; ``levels = 2 ** (bits - 1)`` steps on each side of zero.
    """

    def __init__(self, bits: int) -> None:
        self.bits, self.levels = bits, 2 ** (bits - 1)
        self.spec = f"quantize:{bits}"

    def protect(self, update: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Each tensor as s * round(u / s), s = max|u| / levels (same keys, shapes and dtypes)."""
        return {name: self._quantized(tensor) for name, tensor in update.items()}

    def _quantized(self, tensor: torch.Tensor) -> torch.Tensor:
        peak = tensor.abs().max()
        if not peak > 0:
            return tensor.clone()
        step = peak / self.levels
        return (torch.round(tensor / step) * step).to(tensor.dtype)


@register_defense("quantize", FORM)
def _quantize(argument: str) -> Quantization:
    return Quantization(spec_int(f"defense 'quantize:{argument}'", "BITS", argument, 1, MAX_BITS))
