"""Shadow (reference) models: the run's architecture trained by the server on data it holds.

LiRA's shadow models and RMIA's reference models are the same thing: models of the target's
architecture, trained with the clients' local recipe (batch size, lr, momentum, weight decay) on
data the server holds. :func:`train_shadows` trains each on a random half of the auxiliary split,
which is disjoint from every client, so every shadow is OUT for every candidate (the offline
setting of both attacks). :func:`train_paired_shadows` adds the candidates the attack is asked
about, in pairs that split them into two random halves, so each candidate is IN for exactly half
the models (LiRA's online setting). By default a shadow trains centrally; with the options
``clients`` and ``rounds`` it trains as a federation of that many clients over that many FedAvg
rounds, which is how the released model saw its members (the attacker knows the protocol).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from fedpriv.behaviours import run_model
from fedpriv.data.loading import LabeledImages
from fedpriv.defenses import build_defense
from fedpriv.options import option
from fedpriv.training import TrainSettings, train_local

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.specs import DatasetSpec

Value = TypeVar("Value")


@dataclass(frozen=True)
class ShadowOptions:
    """How many shadow models the attack trains, and for how long."""

    shadows: int = option(4, "shadow models trained on halves of the auxiliary split", low=2, high=1024)
    epochs: int = option(5, "epochs each shadow model trains (per round and client with clients or rounds > 1)",
                         low=1, high=10_000)
    clients: int = option(1, "clients a shadow's training set is split into, as the federation trains (1: central)",
                          low=1, high=10_000)
    rounds: int = option(1, "FedAvg rounds over those clients, each of epochs local epochs", low=1, high=10_000)


def shadow_errors(name: str, config: RunConfig, options: ShadowOptions) -> list[str]:
    """Shadow models need an auxiliary split of the clients' distribution, a sample per shadow client of its half."""
    if config.aux_samples < 2 or config.aux_type != "same":
        return [f"membership attack {name!r} trains shadow models on the server's auxiliary split: "
                f"aux-samples={config.aux_samples}, aux-type={config.aux_type!r}; valid: aux-samples >= 2 with "
                "aux-type='same'"]
    if options.clients > config.aux_samples // 2:
        return [f"membership.{name}.clients={options.clients} exceeds the {config.aux_samples // 2} samples of "
                f"half the auxiliary split each shadow trains on; valid: 1..{config.aux_samples // 2}"]
    return []


def paired_shadow_errors(name: str, config: RunConfig, options: ShadowOptions) -> list[str]:
    """:func:`shadow_errors`, and an even number of shadows (each candidate is IN for half of them)."""
    errors = shadow_errors(name, config, options)
    if options.shadows % 2:
        errors.append(f"membership.{name}.shadows={options.shadows} must be even (each candidate is IN for half the "
                      "shadow models); valid: an even number in 2..1024")
    return errors


def _train_shadow(config: RunConfig, dataset: DatasetSpec, options: ShadowOptions, images: torch.Tensor,
                  labels: torch.Tensor, seed: int, generator: torch.Generator) -> nn.Module:
    """One model of the run's architecture trained with the clients' recipe on uint8 ``images`` (eval mode).

    With ``options.clients`` or ``options.rounds`` above 1 the images are split at random into
    that many clients, and the model trains as the federation does: each round every client
    trains a copy for ``options.epochs`` epochs, and the copies are averaged weighted by their
    sizes (FedAvg, buffers included). ``seed`` draws its initial weights, ``generator`` the
    split and the batches.
    """
    settings = TrainSettings(epochs=options.epochs, batch_size=config.batch_size, lr=config.lr,
                             momentum=config.momentum, weight_decay=config.weight_decay)
    none = build_defense("none")
    torch.manual_seed(seed)
    model = run_model(config, dataset)
    if options.clients == 1 and options.rounds == 1:
        train_local(model, images, labels, none, dataset, settings, generator)
        return model.eval()
    shards = torch.randperm(len(labels), generator=generator).tensor_split(options.clients)
    for _ in range(options.rounds):
        states = []
        for shard in shards:
            local = copy.deepcopy(model)
            train_local(local, images[shard], labels[shard], none, dataset, settings, generator)
            states.append(local.state_dict())
        model.load_state_dict(_fedavg(states, [len(shard) / len(labels) for shard in shards]))
    return model.eval()


def _fedavg(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of the floating-point tensors of ``states``; the first state's other tensors (counters)."""
    return {name: torch.stack([weight * state[name] for state, weight in zip(states, weights, strict=True)]).sum(0)
            if value.is_floating_point() else value for name, value in states[0].items()}


def _halves(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random split of range(n) into two halves (the first one shorter when n is odd)."""
    order = torch.randperm(n, generator=generator)
    return order[: n // 2], order[n // 2 :]


def train_shadows(config: RunConfig, dataset: DatasetSpec, aux: LabeledImages | None, options: ShadowOptions,
                  seed: int) -> list[nn.Module]:
    """``options.shadows`` models (eval mode), each trained on a seeded random half of ``aux``."""
    if aux is None:
        raise ValueError("shadow models need the server's auxiliary split")
    shadows = []
    for shadow in range(options.shadows):
        shadow_seed = seed * 1_000_003 + shadow
        generator = torch.Generator().manual_seed(shadow_seed)
        half, _ = _halves(len(aux.labels), generator)
        shadows.append(_train_shadow(config, dataset, options, aux.images[half], aux.labels[half], shadow_seed,
                                     generator))
    return shadows


def train_paired_shadows(config: RunConfig, dataset: DatasetSpec, aux: LabeledImages | None,
                         candidates: LabeledImages, options: ShadowOptions,
                         seed: int) -> tuple[list[nn.Module], torch.Tensor]:
    """``options.shadows`` (even) models in pairs; each candidate is IN for one model of every pair.

    Each pair splits the candidates into two seeded random halves; each model of the pair trains
    on one half together with a random half of ``aux``.

    Returns
    -------
    tuple[list[nn.Module], torch.Tensor]
        The models (eval mode) and a (shadows, candidates) bool tensor: which candidates each trained on.
    """
    if aux is None:
        raise ValueError("shadow models need the server's auxiliary split")
    shadows, included = [], torch.zeros(options.shadows, len(candidates.labels), dtype=torch.bool)
    for pair in range(options.shadows // 2):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + 2 * pair)
        for side, chosen in enumerate(_halves(len(candidates.labels), generator)):
            shadow = 2 * pair + side
            half, _ = _halves(len(aux.labels), generator)
            images = torch.cat([aux.images[half], candidates.images[chosen]])
            labels = torch.cat([aux.labels[half], candidates.labels[chosen]])
            shadows.append(_train_shadow(config, dataset, options, images, labels, seed * 1_000_003 + shadow,
                                         generator))
            included[shadow, chosen] = True
    return shadows, included


def candidate_images(dataset: DatasetSpec, inputs: torch.Tensor) -> torch.Tensor:
    """The uint8 images (what shadow models train on) of the normalised candidates ``inputs``."""
    return (dataset.denormalize(inputs) * 255).round().clamp(0, 255).to(torch.uint8)


class PerCandidates(Generic[Value]):
    """A value computed from the candidates once, kept while the same candidates come back.

    Every scored round asks about the same candidates (fixed by the run's seed), so what an
    attack derives from them alone (its shadow models' statistics) is computed in the first
    scored round only.
    """

    def __init__(self, compute: Callable[[torch.Tensor, torch.Tensor], Value]) -> None:
        self.compute = compute
        self.key: tuple[torch.Tensor, torch.Tensor] | None = None
        self.value: Value | None = None

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> Value:
        """The value for these candidates (computed again only when they differ from the last ones)."""
        if self.key is None or not (torch.equal(self.key[0], inputs) and torch.equal(self.key[1], labels)):
            self.key, self.value = (inputs, labels), self.compute(inputs, labels)
        assert self.value is not None
        return self.value


class CandidateShadows:
    """What the online attacks share: paired shadows trained on the candidates of the first scored round.

    A subclass names itself and its ``Options`` (a :class:`ShadowOptions`) and calls
    :meth:`paired_shadows` from what it computes once per candidate set.
    """

    name: ClassVar[str]

    def __init__(self, options: Any, seed: int) -> None:
        self.options, self.seed = options, seed
        self.setting: tuple[RunConfig, DatasetSpec, LabeledImages | None] | None = None

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """The auxiliary split, and an even number of shadows (each candidate is IN for half of them)."""
        return paired_shadow_errors(cls.name, config, options)

    def prepare(self, config: RunConfig, dataset: DatasetSpec, aux: LabeledImages | None) -> None:
        """Keep what the shadows train with: they need the candidates, which the first scored round brings."""
        self.setting = (config, dataset, aux)

    def paired_shadows(self, inputs: torch.Tensor,
                       labels: torch.Tensor) -> tuple[list[nn.Module], torch.Tensor, DatasetSpec, LabeledImages]:
        """:func:`train_paired_shadows` on the normalised candidates; also the data set and the auxiliary split."""
        if self.setting is None:
            raise ValueError(f"{self.name} needs prepare() first")
        config, dataset, aux = self.setting
        if aux is None:
            raise ValueError(f"{self.name} trains shadow models on the server's auxiliary split, and the run has none")
        candidates = LabeledImages(candidate_images(dataset, inputs), labels)
        models, included = train_paired_shadows(config, dataset, aux, candidates, self.options, self.seed)
        return models, included, dataset, aux
