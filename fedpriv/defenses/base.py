"""The defense interface, the spec-string registry and the ``none`` defense."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch

from fedpriv.errors import ConfigError
from fedpriv.registry import Registry

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.specs import DatasetSpec


ACTS_ON = ("nothing", "inputs", "predictions", "features")


class Defense(Protocol):
    """A client-side defense, on the inputs the model trains on or on what the client releases.

    ``acts_on`` says where: ``"inputs"`` (ATS policies: :meth:`transform` is T), ``"predictions"``
    (:class:`~fedpriv.defenses.truncation.Truncation`: :meth:`transform` is the identity and the
    prediction protocol calls its ``release``), ``"features"`` (split networks' feature codecs:
:mod:`fedpriv.defenses.features`), ``"nothing"`` (``none``). A protocol lists the
    kinds it applies (``FederatedProtocol.defends``); any other is a config error. A defense
    must not change the model update's keys or shapes; randomness comes only from the generator.
    """

    spec: str
    acts_on: str

    def fit_errors(self, config: RunConfig, dataset: DatasetSpec) -> list[str]:
        """What in the run config (model, data set, batch, attacks) this defense cannot run with."""
        ...

    def transform(
        self, images: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Defend a batch of [0,1] pixel images (n, C, H, W).

        Returns
        -------
        defended, extras
            T(x) in pixel space, and the parameters drawn per image (evaluation only).
        """
        ...


class NoDefense:
    """The identity: the client trains on its images as they are."""

    spec = "none"
    acts_on = "nothing"

    def fit_errors(self, config: RunConfig, dataset: DatasetSpec) -> list[str]:
        """The identity fits every run."""
        return []

    def transform(
        self, images: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the images unchanged."""
        return images, {}


# A factory takes the part of the spec after "name:" ("" when there is none).
DEFENSES: Registry[Callable[[str], Defense]] = Registry("defense")
DEFENSE_FORMS: dict[str, str] = {}


def register_defense(name: str, form: str) -> Callable[[Callable[[str], Defense]], Callable[[str], Defense]]:
    """Register a defense factory under ``name``; ``form`` documents its spec syntax."""
    DEFENSE_FORMS[name] = form
    return DEFENSES.register(name)


@register_defense("none", "none")
def _none(argument: str) -> Defense:
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
