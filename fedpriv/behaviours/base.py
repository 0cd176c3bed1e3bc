"""Server behaviours: what the server does to the model it broadcasts (``server-behaviour``), as plugins.

An honest server broadcasts the global model as aggregation left it. A malicious one changes
it: it may build the run's architecture differently (a module in front of the model, which the
clients receive and train like any other part) and overwrite some weights before each
broadcast. A behaviour declares both, its own options (run-config keys
``behaviour.NAME.OPTION``) and its checks, and says in one line what it does (the run's
threat model states it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

from fedpriv.errors import ConfigError, join_errors
from fedpriv.models import build_model
from fedpriv.options import NoOptions, parse_options
from fedpriv.registry import Registry

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.specs import DatasetSpec


class ServerBehaviour(Protocol):
    """A server behaviour plugin, built once per run from its options.

    ``Options`` is the dataclass of its own options (fields made with
    :func:`fedpriv.options.option`), ``malicious`` whether it departs from the protocol,
    ``protocols`` the protocols it works under (empty: all).
    """

    name: ClassVar[str]
    malicious: ClassVar[bool]
    protocols: ClassVar[tuple[str, ...]]
    Options: ClassVar[type]

    def __init__(self, options: Any, seed: int) -> None:
        """Keep the parsed options and the run's ``seed`` (the source of any weights it draws)."""
        ...

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any, dataset: DatasetSpec) -> list[str]:
        """What in the run config (model, data, auxiliary split) it cannot run with."""
        ...

    def architecture(self, model: nn.Module, dataset: DatasetSpec) -> nn.Module:
        """The model every party builds for this run, from the one ``model`` names (both sides)."""
        ...

    def before_broadcast(self, model: nn.Module, aux_images: torch.Tensor | None, dataset: DatasetSpec) -> None:
        """Change the global model in place before it is sent (``aux_images``: the server's normalised data)."""
        ...

    def describe(self) -> str:
        """One line for the threat model."""
        ...


class Honest:
    """Broadcasts the global model as the aggregation left it (the protocol as declared)."""

    name: ClassVar[str] = "honest"
    malicious: ClassVar[bool] = False
    protocols: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any, seed: int) -> None:
        self.options = options  # it draws nothing: the seed is not needed

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any, dataset: DatasetSpec) -> list[str]:
        """Fits every run."""
        return []

    def architecture(self, model: nn.Module, dataset: DatasetSpec) -> nn.Module:
        """The model itself."""
        return model

    def before_broadcast(self, model: nn.Module, aux_images: torch.Tensor | None, dataset: DatasetSpec) -> None:
        """Nothing."""

    def describe(self) -> str:
        """The honest-but-curious server."""
        return "honest-but-curious: runs the protocol as declared and attacks what each reply carries"


BEHAVIOURS: Registry[type[ServerBehaviour]] = Registry("server behaviour")
BEHAVIOURS.add(Honest.name, Honest)


def run_model(config: RunConfig, dataset: DatasetSpec) -> nn.Module:
    """The model every party of the run builds: ``model`` as the server behaviour arranges it (freshly initialised)."""
    return build_behaviour(config).architecture(build_model(config.model, dataset.num_classes, dataset.channels),
                                                dataset)


def build_behaviour(config: RunConfig) -> ServerBehaviour:
    """The run's ``server-behaviour`` with its ``behaviour.NAME.OPTION`` options (validated runs only).

    Raises
    ------
    ConfigError
        For an unknown behaviour (the valid ones listed) or bad options (every one named).
    """
    factory = BEHAVIOURS.get(config.server_behaviour)
    options: Any
    options, errors = parse_options(factory.Options, config.plugin_values("behaviour", factory.name),
                                    f"behaviour.{factory.name}.")
    if errors:
        raise ConfigError(join_errors(errors, f"server behaviour {factory.name}'s options"))
    return factory(options, config.seed)
