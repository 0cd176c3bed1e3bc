"""``imprint``: the server puts the imprint block of "Robbing the Fed" (Fowl et al., ICLR 2022) in front of the model.

Every party builds the run's model behind an :class:`~fedpriv.imprint.ImprintBlock` of ``bins``
neurons (the architecture is part of what the server distributes). Before each broadcast the
server sets the block's weights to the malicious ones: equal measuring rows, thresholds at the
bin quantiles of the mean pixel of its auxiliary split, equal spreading columns, so the gradient
or update of the block holds each bin's images (:mod:`attacks.imprint_readout` reads them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fedpriv.behaviours.base import BEHAVIOURS
from fedpriv.imprint import FLOOR, ImprintedModel, thresholds_from
from fedpriv.options import option

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.specs import DatasetSpec

MAX_BINS = 100_000


@dataclass(frozen=True)
class ImprintOptions:
    """Options of the imprint behaviour."""

    bins: int = option(128, "neurons of the imprint block, one bin of the measured statistic each", low=1,
                       high=MAX_BINS)


class Imprint:
    """Broadcasts the model behind an imprint block whose weights it resets before every broadcast."""

    name: ClassVar[str] = "imprint"
    malicious: ClassVar[bool] = True
    protocols: ClassVar[tuple[str, ...]] = ("fedsgd", "fedavg", "secagg")  # through the gradient or (mean) update
    Options: ClassVar[type] = ImprintOptions

    def __init__(self, options: ImprintOptions, seed: int) -> None:
        self.options = options  # its weights follow from the auxiliary data: it draws nothing

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any, dataset: DatasetSpec) -> list[str]:
        """Image inputs, and an auxiliary split with at least one image per bin to place the thresholds."""
        errors = []
        if config.protocol not in cls.protocols:
            errors.append(f"server-behaviour='imprint' changes the model whose gradient or update clients send; "
                          f"protocol {config.protocol!r} sends neither (valid: {', '.join(cls.protocols)})")
        if config.protocol == "secagg" and config.secagg_clipping_range < -FLOOR:
            errors.append(f"server-behaviour='imprint' sends its first bin's bias {-FLOOR:g}, outside "
                          f"secagg-clipping-range={config.secagg_clipping_range:g} (SecAgg+ would clip it); "
                          f"set secagg-clipping-range >= {-FLOOR:g}")
        if config.aux_samples < options.bins:
            errors.append(f"server-behaviour='imprint' places its {options.bins} thresholds at quantiles of the "
                          f"server's auxiliary split: aux-samples={config.aux_samples} is too few; valid: "
                          f"aux-samples >= behaviour.imprint.bins")
        return errors

    def architecture(self, model: nn.Module, dataset: DatasetSpec) -> nn.Module:
        """``model`` behind an imprint block (placeholder thresholds until the first broadcast)."""
        placeholder = torch.arange(self.options.bins, dtype=torch.float32)
        return ImprintedModel(model, (dataset.channels, dataset.size, dataset.size), placeholder)

    def before_broadcast(self, model: nn.Module, aux_images: torch.Tensor | None, dataset: DatasetSpec) -> None:
        """Reset the block to the malicious weights (thresholds from the server's normalised auxiliary images)."""
        if not isinstance(model, ImprintedModel) or aux_images is None:
            raise ValueError("the imprint behaviour needs its imprinted model and the server's auxiliary images")
        model.imprint.imprint(thresholds_from(aux_images, self.options.bins))

    def describe(self) -> str:
        """Malicious: what it sends."""
        return (f"malicious (imprint): broadcasts the model behind an imprint block of {self.options.bins} bins "
                "and attacks what each reply carries")


BEHAVIOURS.add(Imprint.name, Imprint)
