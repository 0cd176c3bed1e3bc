"""``trap-weights``: the server puts the trap layer of "When the Curious Abandon Honesty" (Boenisch et al.) in front.

Every party builds the run's model behind a block of ``rows`` ReLU neurons on the input image
(the imprint block's architecture, :class:`~fedpriv.imprint.ImprintBlock`). Before each broadcast
the server sets the block's measuring layer to trap weights drawn from the run's seed (the same
ones every round; :func:`fedpriv.trap_weights.trap_rows`), so that each neuron fires for few
images and the rows of its gradient hold single images (:mod:`attacks.trap_readout` reads them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fedpriv.behaviours.base import BEHAVIOURS
from fedpriv.imprint import ImprintedModel
from fedpriv.options import option
from fedpriv.trap_weights import arm, normalised_trap, trap_rows

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.specs import DatasetSpec

MAX_ROWS = 10_000


@dataclass(frozen=True)
class TrapOptions:
    """Options of the trap-weights behaviour (the paper's construction; breaching's defaults for sigma, scale)."""

    rows: int = option(500, "neurons of the trap layer; each fires for few images", low=1, high=MAX_ROWS)
    scale: float = option(0.95, "weight of each row's positive half against its negative half (below 1: the "
                                "neurons fire for few images)", above=0.0, high=2.0)
    sigma: float = option(0.5, "standard deviation of the drawn weight magnitudes", above=0.0)


class TrapWeights:
    """Broadcasts the model behind a trap layer whose weights it resets before every broadcast."""

    name: ClassVar[str] = "trap-weights"
    malicious: ClassVar[bool] = True
    protocols: ClassVar[tuple[str, ...]] = ("fedsgd", "fedavg", "secagg")  # through the gradient or (mean) update
    Options: ClassVar[type] = TrapOptions

    def __init__(self, options: TrapOptions, seed: int) -> None:
        self.options = options
        self.seed = seed

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any, dataset: DatasetSpec) -> list[str]:
        """A protocol that sends a gradient or update; under ``secagg``, weights inside the clipping range."""
        if config.protocol not in cls.protocols:
            return [f"server-behaviour='trap-weights' changes the model whose gradient or update clients send; "
                    f"protocol {config.protocol!r} sends neither (valid: {', '.join(cls.protocols)})"]
        if config.protocol == "secagg":
            weight, bias = normalised_trap(cls._draw(options, config.seed, dataset), dataset)
            largest = max(float(weight.abs().max()), float(bias.abs().max()))
            if largest > config.secagg_clipping_range:
                return [f"server-behaviour='trap-weights' sends weights up to {largest:.4g}, outside "
                        f"secagg-clipping-range={config.secagg_clipping_range:g} (SecAgg+ would clip them); set "
                        f"secagg-clipping-range >= {largest:.4g} or lower behaviour.trap-weights.sigma"]
        return []

    @staticmethod
    def _draw(options: TrapOptions, seed: int, dataset: DatasetSpec) -> torch.Tensor:
        features = dataset.channels * dataset.size * dataset.size
        return trap_rows(options.rows, features, options.sigma, options.scale, torch.Generator().manual_seed(seed))

    def architecture(self, model: nn.Module, dataset: DatasetSpec) -> nn.Module:
        """``model`` behind a block of ``rows`` neurons (placeholder weights until the first broadcast)."""
        placeholder = torch.arange(self.options.rows, dtype=torch.float32)
        return ImprintedModel(model, dataset.shape, placeholder)

    def before_broadcast(self, model: nn.Module, aux_images: torch.Tensor | None, dataset: DatasetSpec) -> None:
        """Reset the block to the trap weights of the run's seed."""
        if not isinstance(model, ImprintedModel):
            raise ValueError("the trap-weights behaviour needs the model it built (behind its block)")
        arm(model.imprint, self._draw(self.options, self.seed, dataset), dataset)

    def describe(self) -> str:
        """Malicious: what it sends."""
        return (f"malicious (trap-weights): broadcasts the model behind a trap layer of {self.options.rows} neurons "
                f"(scale {self.options.scale:g}) and attacks what each reply carries")


BEHAVIOURS.add(TrapWeights.name, TrapWeights)
