"""Feature defenses of split networks: complex rotation (Xiang et al.), plain features, noisy features.

Each acts on the features a = g(I) a client sends to the processing module Phi; it hands the
network a codec (:class:`~fedpriv.rotation.networks.FeatureCodec`) seeded per client round.

- ``complex[:k=8,swap=false,dtheta=2pi,gp=10,n-critic=5,adv=1,b-grad=true]``: x = e^{i theta}(a + i b)
  with theta ~ U[0, 2 pi) per sample and b = a of another sample of the batch (a derangement:
  never the sample itself); with ``swap`` the parts are exchanged with probability 1/2. The
  client decodes Re[h e^{-i theta}] (theta + pi/2 when swapped). The encoder trains against a
  WGAN-GP critic that separates a from k-1 features decoded at wrong angles (Delta theta ~
  U(0, 2 pi), or U(0, pi) with ``dtheta=pi``), with gradient-penalty weight ``gp``, ``n-critic``
  critic steps per task step and adversarial weight ``adv``.
- ``plain``: x = a (theta = 0, no b); Phi runs on it unchanged.
- ``noise:GAMMA``: x = a + GAMMA * sigma_a * eps, eps ~ N(0, I), sigma_a the batch std of a
  (the noisy-DNN baseline with the reference's recommended noise; GAMMA >= 0).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from fedpriv.defenses.base import Defense, register_defense
from fedpriv.errors import ConfigError
from fedpriv.rotation.networks import FeatureCodec, PlainCodec
from fedpriv.spec_numbers import spec_float, spec_int

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.specs import DatasetSpec

COMPLEX_FORM = "complex[:k=8,swap=false,dtheta=2pi,gp=10,n-critic=5,adv=1,b-grad=true] (k >= 2)"
COMPLEX_OPTIONS = ("k", "swap", "dtheta", "gp", "n-critic", "adv", "b-grad")
# (type, low, high) of the numeric options: k - 1 fake angles per real one, critic steps per task step, weights
COMPLEX_RANGES: dict[str, tuple[type, float, float]] = {"k": (int, 2, 64), "n-critic": (int, 1, 100),
                                                        "gp": (float, 0.0, 1000.0), "adv": (float, 0.0, 1000.0)}
NOISE_MAX = 100.0  # GAMMA: noise std in units of the features' std
BOOLEANS = {"true": True, "false": False}


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random permutation of n >= 2 items without fixed points (rejection sampling)."""
    while True:
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == torch.arange(n)).any()):
            return perm


@dataclass(frozen=True)
class RotationSettings:
    """Options of the ``complex`` defense (see the module docstring)."""

    k: int = 8
    swap: bool = False
    dtheta: float = 2 * math.pi
    gp: float = 10.0
    n_critic: int = 5
    adv: float = 1.0
    b_grad: bool = True


@dataclass(frozen=True)
class RotationDraw:
    """One batch's secret under the rotation: a, its partner's features b, x, theta, swap flags, partners."""

    a: torch.Tensor
    b: torch.Tensor
    x: torch.Tensor
    theta: torch.Tensor
    swap: torch.Tensor
    partner: torch.Tensor

    def decode_angle(self) -> torch.Tensor:
        """The angle the client rotates back by: theta, plus pi/2 where the parts were swapped."""
        return self.theta + self.swap.float() * (math.pi / 2)


class RotationCodec:
    """One client round's rotation: draws theta, b and swaps per batch and keeps them to decode.

    :attr:`last` holds the latest batch's :class:`RotationDraw` (the client's secret; the
    critic's fakes and the evaluation-only truth are built from it).
    """

    def __init__(self, settings: RotationSettings, generator: torch.Generator) -> None:
        self.settings, self.generator = settings, generator
        self._last: RotationDraw | None = None

    @property
    def last(self) -> RotationDraw:
        """The latest batch's draw (an error before the first batch)."""
        if self._last is None:
            raise RuntimeError("the rotation codec has obfuscated no batch yet")
        return self._last

    def obfuscate(self, a: torch.Tensor) -> torch.Tensor:
        n = len(a)
        if n < 2:
            raise ValueError("the complex defense needs batches of at least 2 samples (b comes from another sample)")
        theta = (torch.rand(n, generator=self.generator) * 2 * math.pi).to(a.device)
        perm = derangement(n, self.generator).to(a.device)
        swap = (torch.rand(n, generator=self.generator) < 0.5).to(a.device) if self.settings.swap else \
            torch.zeros(n, dtype=torch.bool, device=a.device)
        b = a[perm] if self.settings.b_grad else a[perm].detach()
        flags = swap.reshape(-1, *([1] * (a.dim() - 1)))
        real, imag = torch.where(flags, b, a), torch.where(flags, a, b)
        x = _rotate(torch.complex(real, imag), theta)
        self._last = RotationDraw(a, b, x, theta, swap, perm)
        return x

    def decode_angle(self) -> torch.Tensor:
        """The angle the client rotates back by (:meth:`RotationDraw.decode_angle` of the last batch)."""
        return self.last.decode_angle()

    def recover(self, h: torch.Tensor) -> torch.Tensor:
        return _rotate(h, -self.decode_angle()).real

    def truth(self) -> dict[str, torch.Tensor]:
        """The last batch's decoding angles, the output kind ``angles`` (evaluation only)."""
        return {"angles": self.decode_angle().detach().cpu()}


def _rotate(f: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """e^{i angle} f with one angle per sample."""
    return f * torch.polar(torch.ones_like(angle), angle).reshape(-1, *([1] * (f.dim() - 1)))


class NoisyCodec:
    """a + gamma * std(a) * N(0, I), sent as real (or zero-imaginary complex) features."""

    def __init__(self, gamma: float, is_complex: bool, generator: torch.Generator) -> None:
        self.gamma, self.generator, self.plain = gamma, generator, PlainCodec(is_complex)

    def obfuscate(self, a: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(a.shape, generator=self.generator).to(a.device)
        return self.plain.obfuscate(a + self.gamma * a.detach().std() * noise)

    def recover(self, h: torch.Tensor) -> torch.Tensor:
        return self.plain.recover(h)

    def truth(self) -> dict[str, torch.Tensor]:
        """No output kind: the noise has no secret an attack estimates."""
        return {}


class FeatureDefense(Defense):
    """The kind of defense on the features a split network sends: a codec per round around Phi."""

    acts_on = "features"
    spec = ""

    @abstractmethod
    def codec(self, is_complex: bool, generator: torch.Generator) -> FeatureCodec:
        """This client round's codec around Phi (each feature defense has its own)."""

    def critic(self) -> RotationSettings | None:
        """The settings of the adversarial critic the client trains beside its network, if this defense has one."""
        return None


class ComplexRotation(FeatureDefense):
    """The complex-rotation defense (needs a ``complex-*`` model)."""

    def fit_errors(self, config: RunConfig, dataset: DatasetSpec) -> list[str]:
        """A complex network, and batches of two or more (b is another sample's features)."""
        errors = []
        if not config.model.startswith("complex-"):
            errors.append(f"defense {self.spec!r} rotates features and needs a complex network; model "
                          f"{config.model!r} is not one (valid: complex-resnet20-alpha, ..., complex-lenet)")
        if min(config.batch_size, config.feature_samples) < 2:
            errors.append(f"defense {self.spec!r} takes b from another sample of the batch: batch-size and "
                          f"feature-samples must be >= 2, got {config.batch_size} and {config.feature_samples}")
        return errors

    def __init__(self, settings: RotationSettings, spec: str) -> None:
        self.settings, self.spec = settings, spec

    def codec(self, is_complex: bool, generator: torch.Generator) -> RotationCodec:
        """A fresh rotation codec drawing from ``generator``."""
        return RotationCodec(self.settings, generator)

    def critic(self) -> RotationSettings:
        """The client's WGAN-GP critic (``k``, ``gp``, ``n-critic``, ``adv``)."""
        return self.settings


class PlainFeatures(FeatureDefense):
    """Plain features through the same network: the in-run baseline."""

    spec = "plain"

    def codec(self, is_complex: bool, generator: torch.Generator) -> PlainCodec:
        """The plain codec."""
        return PlainCodec(is_complex)


class NoisyFeatures(FeatureDefense):
    """Noisy features a + gamma * sigma_a * eps."""

    def __init__(self, gamma: float) -> None:
        self.gamma, self.spec = gamma, f"noise:{gamma:g}"

    def codec(self, is_complex: bool, generator: torch.Generator) -> NoisyCodec:
        """A noisy codec drawing from ``generator``."""
        return NoisyCodec(self.gamma, is_complex, generator)


def feature_codec(
    defense: Defense, is_complex: bool, generator: torch.Generator
) -> FeatureCodec:
    """The codec a client runs around Phi behind ``defense``: the feature defense's own, else plain features."""
    if isinstance(defense, FeatureDefense):
        return defense.codec(is_complex, generator)
    return PlainCodec(is_complex)


def parse_rotation(argument: str) -> RotationSettings:
    """Parse ``k=8,swap=true,...`` (empty: the defaults).

    Raises
    ------
    ConfigError
        For an unknown or repeated option, or a value that is malformed, not finite or out of
        range (``COMPLEX_RANGES``).
    """
    where = f"defense 'complex:{argument}'"
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in argument.split(","))):
        key, sep, value = (s.strip() for s in item.partition("="))
        name = key.replace("-", "_")
        if key not in COMPLEX_OPTIONS:
            raise ConfigError(f"{where}: unknown option {key!r}; valid options: {', '.join(COMPLEX_OPTIONS)}")
        if name in values:
            raise ConfigError(f"{where}: option {key!r} is given twice; give each option once")
        if key in COMPLEX_RANGES:
            kind, low, high = COMPLEX_RANGES[key]
            values[name] = spec_int(where, key, value, int(low), int(high)) if kind is int else \
                spec_float(where, key, value, low, high)
        elif key == "dtheta":
            if value not in ("2pi", "pi"):
                raise ConfigError(f"{where}: dtheta={value!r}; valid: 2pi, pi")
            values[name] = {"2pi": 2 * math.pi, "pi": math.pi}[value]
        else:
            if value not in BOOLEANS:
                raise ConfigError(f"{where}: {key}={value!r}; valid: true, false")
            values[name] = BOOLEANS[value]
    return RotationSettings(**values)


@register_defense("complex", COMPLEX_FORM)
def _complex(argument: str) -> ComplexRotation:
    return ComplexRotation(parse_rotation(argument), f"complex:{argument}" if argument else "complex")


@register_defense("plain", "plain (split networks: features sent as they are)")
def _plain(argument: str) -> PlainFeatures:
    if argument:
        raise ConfigError(f"defense 'plain' takes no argument, got 'plain:{argument}'")
    return PlainFeatures()


@register_defense("noise", "noise:GAMMA (split networks: a + GAMMA * std(a) * N(0, I), 0 <= GAMMA <= 100)")
def _noise(argument: str) -> NoisyFeatures:
    return NoisyFeatures(spec_float(f"defense 'noise:{argument}'", "GAMMA", argument, 0.0, NOISE_MAX))
