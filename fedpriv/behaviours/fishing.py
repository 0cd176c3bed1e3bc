"""``fishing``: the server fishes one class out of every batch (class fishing, after Wen et al., ICML 2022).

Before each broadcast the server rewrites the model's final linear layer (:mod:`fedpriv.fishing`)
so that the gradient below the head, and in the target class's row, is that of the batch's
images of ``target-class`` alone; :mod:`attacks.fishing_inversion` inverts it as one image. The
architecture is the run's model, unchanged: only the weights it sends differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fedpriv.behaviours.base import BEHAVIOURS
from fedpriv.fishing import final_linear, fish
from fedpriv.models import build_model
from fedpriv.options import option

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.specs import DatasetSpec


@dataclass(frozen=True)
class FishingOptions:
    """Options of class fishing."""

    target_class: int = option(0, "the class whose images the gradient keeps", low=0, high=100_000)
    boost: float = option(30.0, "bias of every other class: their images' probability of the target class is "
                                "about exp(target logit - boost)", above=0.0, high=1e4)


class Fishing:
    """Broadcasts the model with its final layer rewritten to keep one class's gradient."""

    name: ClassVar[str] = "fishing"
    malicious: ClassVar[bool] = True
    protocols: ClassVar[tuple[str, ...]] = ("fedsgd", "fedavg", "secagg")  # through the gradient or (mean) update
    Options: ClassVar[type] = FishingOptions

    def __init__(self, options: FishingOptions, seed: int) -> None:
        self.options = options  # it draws nothing: the seed is not needed

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any, dataset: DatasetSpec) -> list[str]:
        """A protocol that sends a gradient or update, a final linear layer with the target's row, the SecAgg+ range."""
        if config.protocol not in cls.protocols:
            return [f"server-behaviour='fishing' changes the model whose gradient or update clients send; protocol "
                    f"{config.protocol!r} sends neither (valid: {', '.join(cls.protocols)})"]
        try:
            name, layer = final_linear(build_model(config.model, dataset.num_classes, dataset.channels))
        except ValueError as error:
            return [f"server-behaviour='fishing' needs a model that ends in a linear layer: {error}"]
        if options.target_class >= layer.out_features:
            return [f"behaviour.fishing.target-class={options.target_class} is not a class of the final layer "
                    f"{name} ({layer.out_features} outputs); valid: 0..{layer.out_features - 1}"]
        if config.protocol == "secagg" and options.boost > config.secagg_clipping_range:
            return [f"behaviour.fishing.boost={options.boost:g} lies outside secagg-clipping-range="
                    f"{config.secagg_clipping_range:g} (SecAgg+ would clip it); set secagg-clipping-range >= "
                    f"{options.boost:g} or lower behaviour.fishing.boost"]
        return []

    def architecture(self, model: nn.Module, dataset: DatasetSpec) -> nn.Module:
        """The model itself."""
        return model

    def before_broadcast(self, model: nn.Module, aux_images: torch.Tensor | None, dataset: DatasetSpec) -> None:
        """Rewrite the final linear layer to keep ``target-class`` only."""
        fish(final_linear(model)[1], self.options.target_class, self.options.boost)

    def describe(self) -> str:
        """Malicious: what it sends."""
        return (f"malicious (fishing): broadcasts the model with its final layer rewritten so that each gradient keeps "
                f"only class {self.options.target_class} (boost {self.options.boost:g}) and attacks what each reply "
                "carries")


BEHAVIOURS.add(Fishing.name, Fishing)
