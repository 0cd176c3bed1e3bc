"""The membership attack interface: (what an observer holds, candidate samples) -> scores per candidate.

A membership attack is told what its observer holds after a round (:class:`Observation`) and a
set of candidate samples, and scores each (higher: more likely in the clients' training data); it
never sees which candidates are members. Two observers matter (Steinke et al.'s and Flower's DP
modes tell them apart): a user of the released global model, and the server, which also holds
each client's reply to the model it broadcast (under ``secagg`` only their aggregate). A
released-model attack (:class:`ModelMembershipAttack`) returns one score per candidate; a server
attack (:class:`ServerMembershipAttack`) scores each candidate against each reply alone, and pools
those into the score of a server that does not know whose reply holds the candidate, so that a
client's row (its reply alone) and the pooled row come from one pass. An attack that needs shadow
models trains them in :meth:`MembershipAttack.prepare` on the server's auxiliary split, once per
run. Its own options are the run-config keys ``membership.NAME.OPTION``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

from fedpriv.errors import ConfigError, join_errors
from fedpriv.options import parse_options
from fedpriv.registry import Registry

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.loading import LabeledImages
    from fedpriv.data.specs import DatasetSpec


RELEASED_MODEL = "released model"  # the observer that holds the global model after a round
SERVER = "server"  # the observer that also holds the round's replies to the model it broadcast
OBSERVERS = (RELEASED_MODEL, SERVER)


@dataclass(frozen=True)
class Observation:
    """What an observer holds when its attacks score a round.

    Attributes
    ----------
    model
        The released global model after the round (observer ``released model``) or the model the
        server broadcast for it (observer ``server``), in eval mode.
    directions
        Server only: each reply's descent direction by parameter name
        (:func:`fedpriv.leaks.descent_direction`; one, the aggregate's, under ``secagg``).
    """

    model: nn.Module
    directions: tuple[dict[str, torch.Tensor], ...] = ()


class MembershipAttack(Protocol):
    """A membership attack plugin, built once per run from its options and the run's seed.

    What it scores depends on its ``observer``: :class:`ModelMembershipAttack` for
    :data:`RELEASED_MODEL`, :class:`ServerMembershipAttack` for :data:`SERVER`.
    """

    name: ClassVar[str]
    Options: ClassVar[type]
    observer: ClassVar[str]  # one of OBSERVERS: what its :meth:`score` is given

    def __init__(self, options: Any, seed: int) -> None:
        """Keep the parsed options and the seed (of any model it trains)."""
        ...

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """What in the run config it cannot run with (e.g. no auxiliary split for shadow models)."""
        ...

    def prepare(self, config: RunConfig, dataset: DatasetSpec, aux: LabeledImages | None) -> None:
        """Once before the first scored round: train what it needs on the server's auxiliary split."""
        ...


class ModelMembershipAttack(MembershipAttack, Protocol):
    """An attack of the released model's user (``observer`` :data:`RELEASED_MODEL`)."""

    def score(self, observation: Observation, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(n,) membership scores of the normalised candidates ``inputs`` with their ``labels``."""
        ...


class ServerMembershipAttack(MembershipAttack, Protocol):
    """An attack of the server (``observer`` :data:`SERVER`) on the round's replies."""

    def reply_scores(self, observation: Observation, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(n, len(observation.directions)) scores of each candidate against each reply alone."""
        ...

    def pool(self, reply_scores: torch.Tensor) -> torch.Tensor:
        """(n,) scores of a server that does not know which reply holds a candidate, from :meth:`reply_scores`."""
        ...


MEMBERSHIP_ATTACKS: Registry[type[MembershipAttack]] = Registry("membership attack")


def build_membership_attack(config: RunConfig, name: str) -> MembershipAttack:
    """The attack ``name`` with its ``membership.NAME.OPTION`` options (validated runs only).

    Raises
    ------
    ConfigError
        For an unknown attack (the valid ones listed) or bad options (every one named).
    """
    factory = MEMBERSHIP_ATTACKS.get(name)
    options: Any
    options, errors = parse_options(factory.Options, config.plugin_values("membership", name), f"membership.{name}.")
    if errors:
        raise ConfigError(join_errors(errors, f"membership attack {name}'s options"))
    return factory(options, config.seed)


def logits_of(model: nn.Module, inputs: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The model's logits on ``inputs`` in eval mode, in batches, without gradients."""
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat([model(inputs[i : i + batch_size].to(device)).double().cpu()
                          for i in range(0, len(inputs), batch_size)])


def client_label(row: Mapping[str, Any]) -> str:
    """Whose members a membership row scores: ``all``, or the client's partition id (``partition_id``)."""
    return "all" if row.get("partition_id") is None else str(row["partition_id"])
