"""Imprint readout ("Robbing the Fed", Fowl et al., ICLR 2022): images read off a malicious first layer.

A malicious server broadcasts the model behind an imprint block (:mod:`fedpriv.imprint`); the
gradient (or update) of the block's measuring layer holds, per bin of the measured statistic,
the g-weighted sum of the bin's images. Differences of consecutive rows divided by the bias
differences give one estimate per non-empty bin: exact for an image alone in its bin, the mean
of the images that share one. No optimisation: the cost is one division per bin.

The attack returns as many images as the leak holds (the batch size under ``fedsgd``, the
images the update depends on under ``fedavg``): the estimates of the heaviest bins first, then
mid-grey images for the images that share a bin; the scorer matches them to the truth and
counts the recovered ones (``images_recovered``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fedpriv.attacks.base import ATTACKS, Attack, AttackSettings, AttackTarget, Knowledge, NoOptions, Reconstruction
from fedpriv.data.specs import DatasetSpec
from fedpriv.errors import ConfigError
from fedpriv.imprint import IMPRINT, read_out
from fedpriv.leaks import parameter_change

if TYPE_CHECKING:
    from fedpriv.config import RunConfig

WEIGHT, BIAS = f"{IMPRINT}.measure.weight", f"{IMPRINT}.measure.bias"


class ImprintReadout(Attack):
    """Reads each bin's image off the imprint block's gradient (the server built the block)."""

    name: ClassVar[str] = "imprint-readout"
    leak_kinds: ClassVar[tuple[str, ...]] = ("gradient", "update", "aggregate")
    model_modes: ClassVar[tuple[str, ...]] = ("eval", "train")
    optimises: ClassVar[bool] = False
    Options: ClassVar[type] = NoOptions
    knowledge: ClassVar[Knowledge] = Knowledge(model="weights")
    behaviour: ClassVar[str] = "imprint"  # the server behaviour that builds the block it reads

    def __init__(self, settings: AttackSettings) -> None:
        self.settings = settings

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """The server must build the block it reads (its behaviour)."""
        if config.server_behaviour == cls.behaviour:
            return []
        return [f"attack {cls.name!r} reads the layer that server-behaviour='{cls.behaviour}' builds; this run has "
                f"server-behaviour={config.server_behaviour!r} (set server-behaviour='{cls.behaviour}')"]

    def reconstruct(
        self, model: nn.Module, dataset: DatasetSpec, targets: Sequence[AttackTarget]
    ) -> list[Reconstruction]:
        """One image per image of each leak: the bins' estimates, then grey."""
        return [self._one(dataset, target) for target in targets]

    def read(self, weight_grad: torch.Tensor, bias_grad: torch.Tensor) -> torch.Tensor:
        """The estimates the block's measuring-layer gradient holds, most reliable first (one per bin)."""
        return read_out(weight_grad, bias_grad)

    def _one(self, dataset: DatasetSpec, target: AttackTarget) -> Reconstruction:
        tensors, count = parameter_change(target.leak)
        if WEIGHT not in tensors or BIAS not in tensors:
            raise ConfigError(f"{self.name}: the broadcast model has no imprint block ({WEIGHT}); "
                              f"run it with server-behaviour='{self.behaviour}'")
        shape = (dataset.channels, dataset.size, dataset.size)
        found = self.read(tensors[WEIGHT], tensors[BIAS])
        images = torch.full((count, *shape), 0.5)
        kept = found[:count].reshape(-1, *shape)
        images[: len(kept)] = dataset.denormalize(kept).clamp(0, 1)
        return Reconstruction(images=images)


ATTACKS.add(ImprintReadout.name, ImprintReadout)
