"""The attack interface: (model, leaks, declared attacker knowledge) -> reconstructions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch
from torch import nn

from fedpriv.attacks.precision import check_precision
from fedpriv.data.specs import DatasetSpec
from fedpriv.errors import ConfigError
from fedpriv.leaks import Leak
from fedpriv.registry import Registry


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
        Total-variation weight (1e-4).
    device
        Where the attack runs ("cpu", "cuda", "cuda:1").
    progress
        Print a progress line every this many iterations (0: never).
    precision
        ``default`` (PyTorch's own), ``strict-fp32`` (no TF32) or ``bf16`` (autocast), see
        :mod:`fedpriv.attacks.precision`.
    extra
        Attack-specific options by name (e.g. translation clamps).
    """

    iterations: int = 4800
    restarts: int = 1
    lr: float = 0.1
    tv: float = 1e-4
    device: str = "cpu"
    progress: int = 0
    precision: str = "default"
    extra: dict[str, str] = field(default_factory=dict)


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
        The client's defense spec, only for attacks that declare ``knows_defense``.
    """

    leak: Leak
    seed: int
    defense_spec: str | None = None


@dataclass
class Reconstruction:
    """An attack's output for one target, in pixel space [0,1].

    Attributes
    ----------
    images
        Estimate of the client's original images x, shape (n, C, H, W).
    defended
        Estimate of the defended images T(x) where the attack models the defense, else ``None``
        (then ``images`` is also the estimate of T(x)).
    fields
        Attack-specific scalars for the results row (final loss, learned translation, ...).
    """

    images: torch.Tensor
    defended: torch.Tensor | None = None
    fields: dict[str, float] = field(default_factory=dict)


class Attack(Protocol):
    """An attack plugin. ``leak_kind`` says which leaks it consumes; ``options`` names the
    ``AttackSettings.extra`` keys it reads (``attack-options`` in a run config)."""

    name: ClassVar[str]
    leak_kind: ClassVar[str]
    knows_defense: ClassVar[bool]
    options: ClassVar[tuple[str, ...]]

    def reconstruct(
        self, model: nn.Module, dataset: DatasetSpec, targets: Sequence[AttackTarget]
    ) -> list[Reconstruction]:
        """Attack every target; independent targets may be solved in one batch."""
        ...


ATTACKS: Registry[Callable[[AttackSettings], Attack]] = Registry("attack")


def build_attack(name: str, settings: AttackSettings) -> Attack:
    """Build the attack registered as ``name`` (the error lists valid names)."""
    return ATTACKS.get(name)(settings)


def check_settings(settings: AttackSettings) -> None:
    """Reject settings no attack can run with, naming the value and the valid range."""
    if settings.iterations < 1:
        raise ConfigError(f"attack-iterations must be >= 1, got {settings.iterations}")
    if settings.restarts < 1:
        raise ConfigError(f"attack-restarts must be >= 1, got {settings.restarts}")
    if not settings.lr > 0:
        raise ConfigError(f"attack-lr must be > 0, got {settings.lr}")
    if settings.tv < 0:
        raise ConfigError(f"attack-tv must be >= 0, got {settings.tv}")
    try:
        torch.device(settings.device)
    except RuntimeError:
        raise ConfigError(f"attack-device {settings.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    check_precision(settings.precision)
