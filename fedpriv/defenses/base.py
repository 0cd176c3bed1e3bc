"""The defense kinds (what a defense acts on, each with its one method), the spec-string registry and ``none``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch

from fedpriv.errors import ConfigError
from fedpriv.registry import Registry

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.specs import DatasetSpec


ACTS_ON = ("nothing", "inputs", "predictions", "features", "updates")


class Defense(ABC):
    """A client-side defense: its spec, the kind of thing it acts on, and what it needs of the run.

    A defense is one of the kinds below, each with its one method: :class:`InputDefense` (the
    images the client trains on), :class:`PredictionDefense` (the prediction vectors it releases),
    :class:`~fedpriv.defenses.features.FeatureDefense` (the features a split network sends) and
    :class:`UpdateDefense` (the gradient or weight change it sends); ``none`` acts on nothing. A
    protocol lists the kinds it applies (``FederatedProtocol.defends``); any other is a config
    error. A defense must not change the model update's keys or shapes; its randomness comes
    only from the generator it is handed.
    """

    spec: str
    acts_on: ClassVar[str]

    def fit_errors(self, config: RunConfig, dataset: DatasetSpec) -> list[str]:
        """What in the run config (model, data set, batch, attacks) this defense cannot run with; none by default."""
        return []


class NoDefense(Defense):
    """The identity: the client trains on its images and sends what the protocol says, as they are."""

    spec = "none"
    acts_on = "nothing"


class InputDefense(Defense):
    """A defense on the images the client trains on (ATS augmentation policies)."""

    acts_on = "inputs"

    @abstractmethod
    def transform(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, object]:
        """Defend a batch of [0,1] pixel images (n, C, H, W).

        Returns
        -------
        defended, drawn
            T(x) in pixel space, and the defense's own typed record of what it drew per image
            (for inspection and tests; it is never sent).
        """


class PredictionDefense(Defense):
    """A defense on the prediction vectors a client releases (truncation)."""

    acts_on = "predictions"

    @abstractmethod
    def release(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The vectors (n, K) the client releases instead of ``probabilities``."""

    def released_entries(self, num_classes: int) -> int:
        """How many entries of a ``num_classes``-vector it releases (all, unless it truncates)."""
        return num_classes


class UpdateDefense(Defense):
    """A defense on what the client sends: the gradient (``fedsgd``) or the weight change (``fedavg``)."""

    acts_on = "updates"

    @abstractmethod
    def protect(self, update: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The update the client sends instead of ``update`` (same keys, shapes and dtypes)."""


def defended_inputs(defense: Defense, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """T(x) under an input defense; the images themselves under any other."""
    if isinstance(defense, InputDefense):
        return defense.transform(images, generator)[0]
    return images


# A factory takes the part of the spec after "name:" ("" when there is none).
DEFENSES: Registry[Callable[[str], Defense]] = Registry("defense")
DEFENSE_FORMS: dict[str, str] = {}


def register_defense(name: str, form: str) -> Callable[[Callable[[str], Defense]], Callable[[str], Defense]]:
    """Register a defense factory under ``name``; ``form`` documents its spec syntax."""
    DEFENSE_FORMS[name] = form
    return DEFENSES.register(name)


@register_defense("none", "none")
def _none(argument: str) -> NoDefense:
    if argument:
        raise ConfigError(f"defense 'none' takes no argument, got 'none:{argument}'")
    return NoDefense()


def defense_names() -> str:
    """The valid spec forms, for error messages."""
    return ", ".join(DEFENSE_FORMS[n] for n in DEFENSES.names())


def build_defense(spec: str) -> Defense:
    """Parse a defense spec (``name`` or ``name:argument``) and build the defense.

    Raises
    ------
    ConfigError
        If the name is unknown or the argument malformed; the message lists valid forms.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty defense spec {spec!r}; valid forms: {defense_names()}")
    name, _, argument = spec.strip().partition(":")
    if name not in DEFENSES:
        raise ConfigError(f"unknown defense {name!r} in spec {spec!r}; valid forms: {defense_names()}")
    return DEFENSES.get(name)(argument)
