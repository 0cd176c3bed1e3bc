"""The attack interface: (model, leaks, declared attacker knowledge) -> reconstructions."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from fedpriv.attacks.precision import check_precision
from fedpriv.data.specs import DatasetSpec
from fedpriv.errors import ConfigError, join_errors
from fedpriv.leaks import Leak
from fedpriv.options import NoOptions as NoOptions  # the attacks' own name for it
from fedpriv.options import declared, parse_options
from fedpriv.outputs import check_kinds
from fedpriv.registry import Registry

if TYPE_CHECKING:
    from fedpriv.config import RunConfig

OptionsT = TypeVar("OptionsT")


@dataclass(frozen=True)
class AttackSettings:
    """Attack hyper-parameters common to the optimisation attacks (published defaults).

    Attributes
    ----------
    iterations
        Optimisation steps (ATS "inversed": 4800).
    restarts
        Independent initialisations per target; the one with the lowest final loss is kept.
    lr
        Adam learning rate (0.1), decayed x0.1 at 3/8, 5/8 and 7/8 of the iterations.
    tv
        Total-variation weight of every target (``attack-tv``), or ``None``: the attack's own
        weight, its option ``attack.NAME.tv`` (:func:`tv_weight`).
    device
        Where the attack runs ("cpu", "cuda", "cuda:1").
    progress
        Print a progress line every this many iterations (0: never).
    precision
        ``default`` (PyTorch's own), ``strict-fp32`` (no TF32) or ``bf16`` (autocast), see
        :mod:`fedpriv.attacks.precision`.
    options
        The attack's own options as given (the run config's ``attack.NAME.OPTION`` keys, by
        option name, in their TOML types); the attack reads them into its ``Options`` with
        :func:`own_options`.
    """

    iterations: int = 4800
    restarts: int = 1
    lr: float = 0.1
    tv: float | None = None
    device: str = "cpu"
    progress: int = 0
    precision: str = "default"
    options: Mapping[str, Any] = field(default_factory=dict)


MODEL_KNOWLEDGE = ("weights", "architecture")
AUX_KNOWLEDGE = ("none", "server")


@dataclass(frozen=True)
class Knowledge:
    """What an attacker knows; the harness hands it exactly this.

    Labels reach an attack only inside a leak, when the protocol reveals them
    (``reveal-labels``); the protocol's hyper-parameters travel in every leak.

    Attributes
    ----------
    model
        ``"weights"``: its own copy of the broadcast model; ``"architecture"``: a freshly
        initialised model of the same architecture (seeded), not the weights.
    defense
        The client's defense spec, as the run config (which the server has) declares it; the
        run config may withhold it (``attacker-knows-defense=false``), and the attack then
        models no defense.
    defense_required
        Whether the attack cannot run without the defense spec (a run that withholds it is a
        config error).
    aux
        ``"none"``, or ``"server"``: the server's auxiliary split (``aux-samples`` images drawn as
        ``aux-type`` says, disjoint from every client), handed to :meth:`Attack.prepare`.
    """

    model: str = "weights"
    defense: bool = False
    defense_required: bool = False
    aux: str = "none"


@dataclass(frozen=True)
class AttackTarget:
    """One problem for an attack: a leak plus what this attacker is allowed to know.

    Attributes
    ----------
    leak
        What the server observed from one client.
    seed
        Seeds the attack's initialisation for this target.
    defense_spec
        The client's defense spec from the run config, only for attacks whose knowledge
        declares ``defense``.
    """

    leak: Leak
    seed: int
    defense_spec: str | None = None


@dataclass(frozen=True)
class AuxiliaryData:
    """The server's own samples, disjoint from every client's data, and what it trained on them.

    Attributes
    ----------
    images, labels
        uint8 images at the victim's shape and their labels (another data set's labels under
        ``aux-type='distinct'``).
    inverter
        An inversion network the server trained jointly with the initial model
        (``joint-training``), else ``None``.
    properties
        The samples' private property where the data set defines one (else ``None``: the labels).
    """

    images: torch.Tensor
    labels: torch.Tensor
    inverter: nn.Module | None = None
    properties: torch.Tensor | None = None


@dataclass
class Reconstruction:
    """An attack's output for one target: images in pixel space [0,1] and/or labels.

    Attributes
    ----------
    images
        Estimate of the client's original images x, shape (n, C, H, W), or ``None`` for
        attacks that output no images.
    defended
        Estimate of the defended images T(x) where the attack models the defense, else ``None``
        (then ``images`` is also the estimate of T(x)).
    labels
        Estimated labels (a multiset, any order), or ``None``.
    fields
        Attack-specific scalars for the results row (final loss, learned translation, ...).
    engine
        The gradient-matching engine that ran (what ``engine=auto`` chose), if any.
    ordered
        Whether ``images[i]`` estimates the i-th true image (leaks with one output per sample,
        such as prediction vectors); otherwise a batch is first matched to the truth.
    gallery
        Extra images to show beside the row (e.g. one representative per class), or ``None``.
    alternatives
        A second candidate per image (two-image decoding); images are then scored best-of-two.
    estimates
        Per-sample estimates of other registered output kinds (:data:`fedpriv.outputs.OUTPUT_KINDS`:
        ``angles``, ``properties``), each (n,) in sample order, scored by the kind's scorer
        against the truth's target of the same kind.
    """

    images: torch.Tensor | None = None
    defended: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    fields: dict[str, float] = field(default_factory=dict)
    engine: str | None = None
    ordered: bool = False
    gallery: torch.Tensor | None = None
    alternatives: torch.Tensor | None = None
    estimates: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_kinds(self.estimates, "Reconstruction.estimates")


@runtime_checkable
class JointlyTrainable(Protocol):
    """An attack whose network a malicious developer can train jointly with the model it deploys.

    Yang et al.'s (CCS 2019) developer trains the classifier F and the inverter G together
    (``joint-training``) before round 1, so that F's released vectors are easy to invert; the
    trained G reaches the attack in :attr:`AuxiliaryData.inverter`.
    """

    def new_inverter(self, dataset: DatasetSpec, top: int) -> nn.Module:
        """A freshly initialised inverter for vectors that keep ``top`` entries."""
        ...


class Attack(Protocol):
    """An attack plugin, built once per run and kept across rounds.

    ``leak_kinds`` lists the leaks it consumes (a run whose protocol sends another kind is a
    config error), ``model_modes`` the batch-norm modes of gradient leaks it models,
    ``optimises`` whether the ``attack-*`` optimisation keys apply to it, ``Options`` the
    dataclass of its own options (fields made with :func:`fedpriv.options.option`; the run
    config's ``attack.NAME.OPTION`` keys), ``knowledge`` what it is handed.
    """

    name: ClassVar[str]
    leak_kinds: ClassVar[tuple[str, ...]]
    model_modes: ClassVar[tuple[str, ...]]
    optimises: ClassVar[bool]
    Options: ClassVar[type]
    knowledge: ClassVar[Knowledge]

    def __init__(self, settings: AttackSettings) -> None:
        """Read the settings (own options with :func:`own_options`); every attack defines its own."""
        ...

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """What in the run config does not fit this attack with these options (beyond leak kind and
        batch-norm mode, which every attack declares); none by default."""
        return []

    def prepare(self, dataset: DatasetSpec, aux: AuxiliaryData | None) -> None:
        """Called once before the first round (``aux`` only when ``knowledge.aux`` asks for it).

        Stateless attacks inherit this no-op by subclassing :class:`Attack`.
        """
        return None

    def reconstruct(
        self, model: nn.Module, dataset: DatasetSpec, targets: Sequence[AttackTarget]
    ) -> list[Reconstruction]:
        """Attack every target; independent targets may be solved in one batch."""
        ...


ATTACKS: Registry[type[Attack]] = Registry("attack")


def build_attack(name: str, settings: AttackSettings, options: Mapping[str, Any] | None = None) -> Attack:
    """Build the attack registered as ``name`` (the error lists valid names).

    ``options``, when given, replaces ``settings.options``: the attack's own options by name.
    """
    if options is not None:
        settings = dataclasses.replace(settings, options=options)
    return ATTACKS.get(name)(settings)


def own_options(cls: type[OptionsT], settings: AttackSettings, name: str) -> OptionsT:
    """Read ``settings.options`` into the attack's ``Options`` dataclass ``cls``.

    Raises
    ------
    ConfigError
        Naming every bad option (``attack.NAME.OPTION``), its value and what is valid.
    """
    options, errors = parse_options(cls, settings.options, f"attack.{name}.")
    if errors:
        raise ConfigError(join_errors(errors, f"attack {name}'s options"))
    return options


def settings_for(config: RunConfig, name: str) -> AttackSettings:
    """The settings attack ``name`` runs with in this run: the ``attack-*`` keys and its own options.

    ``attack-tv`` at -1 gives ``tv=None``: the attack's own weight.
    """
    return AttackSettings(
        iterations=config.attack_iterations, restarts=config.attack_restarts, lr=config.attack_lr,
        tv=None if config.attack_tv < 0 else config.attack_tv, device=config.attack_device,
        progress=config.attack_progress, precision=config.attack_precision,
        options=config.plugin_values("attack", name),
    )


def check_device(name: str) -> None:
    """Reject an ``attack-device`` that is not a torch device name."""
    try:
        torch.device(name)
    except RuntimeError:
        raise ConfigError(f"attack-device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None


def check_settings(settings: AttackSettings) -> None:
    """Reject settings no attack can run with, naming the value and the valid range.

    The run config's declarations check the same ranges before a run; this check guards
    attacks built from Python (``build_attack`` with hand-made settings).
    """
    if settings.iterations < 1:
        raise ConfigError(f"attack-iterations must be >= 1, got {settings.iterations}")
    if settings.restarts < 1:
        raise ConfigError(f"attack-restarts must be >= 1, got {settings.restarts}")
    if not settings.lr > 0:
        raise ConfigError(f"attack-lr must be > 0, got {settings.lr}")
    if settings.tv is not None and settings.tv < 0:
        raise ConfigError(f"attack-tv must be >= 0, got {settings.tv}")
    check_device(settings.device)
    check_precision(settings.precision)


class TvOptions(Protocol):
    """The own options of an attack with a total-variation prior: its weight ``tv``."""

    @property
    def tv(self) -> float: ...


def tv_errors(run_tv: float | None, options: TvOptions, name: str) -> list[str]:
    """``attack-tv`` and ``attack.NAME.tv`` both set (the option away from its default): one must go."""
    default = next(d.default for d in declared(type(options)) if d.name == "tv")
    if run_tv is None or options.tv == default:
        return []
    return [f"attack-tv={run_tv!r} and attack.{name}.tv={options.tv!r} both set {name}'s total-variation weight; "
            "set one (attack-tv=-1 leaves each attack its own weight)"]


def check_tv(settings: AttackSettings, options: TvOptions, name: str) -> None:
    """Raise :func:`tv_errors`' error, if any (for attacks built from Python)."""
    if errors := tv_errors(settings.tv, options, name):
        raise ConfigError(errors[0])


def tv_weight(settings: AttackSettings, options: TvOptions) -> float:
    """The total-variation weight an attack runs with: ``attack-tv`` if given, else its ``attack.NAME.tv``."""
    return options.tv if settings.tv is None else settings.tv
