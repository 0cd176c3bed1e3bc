"""Attacks on split-inference features: U-Net inversion, angle estimation, gradient phase, two-image decoding.

The attacker is the server hosting Phi. It knows the global model (white-box g, Phi, d after
aggregation), the clients' defense specs and its auxiliary split, on which it simulates clients:
x_aux = codec(g(I_aux)) with its own angles and partners. Per defense spec it trains, once per
attacked round (continuing from the previous round's networks):

- ``unet-inversion`` (inversion attack 2): a U-Net from x ([Re; Im] channels) to the image.
- ``angle-unet-inversion`` (inversion attack 1): a WGAN-GP critic of real against wrongly
  decoded features; the angle is the argmax of the critic over 360 candidate angles; a U-Net
  trained on (a, I) of its own queries inverts a* = Re[x e^{-i theta-hat}].
- ``gradient-phase`` (U-shaped split training only): every element of dL/dh has phase theta or
  theta + pi, so theta mod pi is read off the returned gradient; the critic picks between the
  two candidates and the attack-1 U-Net inverts, as against the plain network.
- ``two-image-decoder``: a U-Net with two outputs trained to give the pair (I, I') whose
  features made x = e^{i theta}(a + i b), whatever the order; scored best-of-two, it tests the
  claim that the defense gives 2-anonymity, not k-anonymity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedpriv.attacks.base import (
    ATTACKS,
    Attack,
    AttackSettings,
    AttackTarget,
    AuxiliaryData,
    Knowledge,
    Reconstruction,
    own_options,
)
from fedpriv.attacks.decoder_training import FitReport, fit_decoder
from fedpriv.attacks.unet import UNet
from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses import build_defense
from fedpriv.defenses.features import RotationCodec, feature_codec
from fedpriv.errors import ConfigError
from fedpriv.leaks import FeatureLeak
from fedpriv.options import option
from fedpriv.rotation.adversarial import (
    FeatureCritic,
    critic_optimizer,
    decode_at,
    grid_angles,
    train_critic,
    wrong_decodings,
)
from fedpriv.rotation.networks import SplitNetwork

if TYPE_CHECKING:
    from fedpriv.config import RunConfig

QUERY_BATCH = 64  # the attacker's simulated clients encode in batches of this size (b from the same batch)


def as_channels(x: torch.Tensor) -> torch.Tensor:
    """Complex features as [Re; Im] channels; real features unchanged."""
    return torch.cat([x.real, x.imag], 1) if x.is_complex() else x


def simulate_clients(model: SplitNetwork, pixels: torch.Tensor, dataset: DatasetSpec, spec: str,
                     generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The attacker's own queries: x, a, the decoding angle and the partner index, per auxiliary image."""
    defense = build_defense(spec)
    out: dict[str, list[torch.Tensor]] = {"x": [], "a": [], "angle": [], "partner": []}
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pixels), QUERY_BATCH):
            batch = pixels[start : start + QUERY_BATCH].to(device)
            if len(batch) < 2:
                break
            codec = feature_codec(defense, model.is_complex, generator)
            a = model.encoder(dataset.normalize(batch))
            x = codec.obfuscate(a)
            out["x"].append(x.cpu())
            out["a"].append(a.cpu())
            out["angle"].append(codec.truth().get("angles", torch.zeros(len(a))).cpu())
            partner = codec.last.partner.cpu() if isinstance(codec, RotationCodec) else torch.arange(len(a))
            out["partner"].append(partner + start)
    return {k: torch.cat(v) for k, v in out.items()}


@dataclass(frozen=True)
class DecoderOptions:
    """How the attacker trains its U-Net decoder on the auxiliary split."""

    epochs: int = option(15, "passes of the decoder's training over the auxiliary split", low=1, high=10_000)
    width: int = option(64, "channels of the U-Net's first level", low=1, high=4096)
    convs: int = option(6, "convolutions of the U-Net", low=1, high=64)
    batch: int = option(64, "images per decoder training step", low=1, high=100_000)
    adam_lr: float = option(1e-4, "the decoder's Adam learning rate", above=0, high=1)
    val_fraction: float = option(0.1, "fraction of the auxiliary split held out for the validation MSE",
                                 low=0, high=0.9)


@dataclass(frozen=True)
class AngleOptions(DecoderOptions):
    """The decoder's options and the critic that estimates each sample's rotation angle."""

    # 50 passes over the auxiliary split (350 Adam steps on 400 images): 5 (35 steps) left the critic
    # under-trained: 1.02 rad against 0.82 on a trained complex LeNet (benchmarks/bench_angle_estimate.py)
    critic_epochs: int = option(50, "passes of the critic's training over the attacker's queries", low=1,
                                high=10_000)
    angles: int = option(360, "angles on the grid the critic scores", low=1, high=100_000)


class FeatureAttack(Attack):
    """Shared lifecycle: the auxiliary split, per-spec simulations and networks kept across rounds."""

    name: ClassVar[str] = ""
    leak_kinds: ClassVar[tuple[str, ...]] = (FeatureLeak.kind,)
    model_modes: ClassVar[tuple[str, ...]] = ("eval",)
    optimises: ClassVar[bool] = False
    Options: ClassVar[type] = DecoderOptions
    knowledge: ClassVar[Knowledge] = Knowledge(model="weights", defense=True, aux="server")

    def __init__(self, settings: AttackSettings) -> None:
        self.options: Any = own_options(self.Options, settings, self.name)
        self.device = torch.device(settings.device)
        self.aux: AuxiliaryData | None = None
        self.networks: dict[tuple[str, str], nn.Module] = {}

    def prepare(self, dataset: DatasetSpec, aux: AuxiliaryData | None) -> None:
        """Keep the auxiliary split."""
        if aux is None or len(aux.labels) < 2 * QUERY_BATCH:
            raise ConfigError(f"{self.name} trains on the server's auxiliary split: "
                              f"set aux-samples >= {2 * QUERY_BATCH}")
        self.aux = aux

    def _pixels(self) -> torch.Tensor:
        assert self.aux is not None
        return self.aux.images.float() / 255.0

    def _unet(self, key: tuple[str, str], in_channels: int, out_channels: int, dataset: DatasetSpec) -> nn.Module:
        if key not in self.networks:
            self.networks[key] = UNet(in_channels, out_channels, dataset.size, self.options.width,
                                      self.options.convs).to(self.device)
        return self.networks[key]

    def _fit(self, network: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, seed: int,
             loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.mse_loss) -> FitReport:
        optimizer = torch.optim.Adam(network.parameters(), lr=self.options.adam_lr)
        return fit_decoder(network, inputs, targets, self.options.epochs, self.options.batch, optimizer,
                           self.options.val_fraction, torch.Generator().manual_seed(seed), loss)

    def reconstruct(
        self, model: nn.Module, dataset: DatasetSpec, targets: Sequence[AttackTarget]
    ) -> list[Reconstruction]:
        """Group the targets by defense spec, train once per spec, attack each target."""
        assert isinstance(model, SplitNetwork)
        model = model.to(self.device).eval()
        results: dict[int, Reconstruction] = {}
        for spec in sorted({t.defense_spec or "none" for t in targets}):
            chosen = [i for i, t in enumerate(targets) if (t.defense_spec or "none") == spec]
            seed = targets[chosen[0]].seed
            own = simulate_clients(model, self._pixels(), dataset, spec, torch.Generator().manual_seed(seed))
            self.train_round(model, dataset, spec, own, seed)
            for i in chosen:
                results[i] = self.attack_one(model, dataset, spec, targets[i].leak)  # type: ignore[arg-type]
        return [results[i] for i in range(len(targets))]

    def train_round(self, model: SplitNetwork, dataset: DatasetSpec, spec: str, own: dict[str, torch.Tensor],
                    seed: int) -> None:
        """Train this round's networks for ``spec`` on the attacker's own queries."""
        raise NotImplementedError

    def attack_one(self, model: SplitNetwork, dataset: DatasetSpec, spec: str, leak: FeatureLeak) -> Reconstruction:
        """Attack one client's leak with this round's networks."""
        raise NotImplementedError


class UNetInversion(FeatureAttack):
    """Inversion attack 2: a U-Net from the sent features x straight to the image."""

    name: ClassVar[str] = "unet-inversion"

    def train_round(self, model: SplitNetwork, dataset: DatasetSpec, spec: str, own: dict[str, torch.Tensor],
                    seed: int) -> None:
        inputs = as_channels(own["x"])
        unet = self._unet((spec, "x"), inputs.shape[1], dataset.channels, dataset)
        self.report = self._fit(unet, inputs, self._pixels()[: len(inputs)], seed)

    def attack_one(self, model: SplitNetwork, dataset: DatasetSpec, spec: str, leak: FeatureLeak) -> Reconstruction:
        with torch.no_grad():
            images = self.networks[(spec, "x")](as_channels(leak.features).to(self.device)).cpu()
        return Reconstruction(images=images, ordered=True, fields={"aux_val_mse": self.report.val_mse})


class AngleUNetInversion(FeatureAttack):
    """Inversion attack 1: angle by the argmax of a critic over a grid, then a U-Net on a*."""

    name: ClassVar[str] = "angle-unet-inversion"
    Options: ClassVar[type] = AngleOptions

    def train_round(self, model: SplitNetwork, dataset: DatasetSpec, spec: str, own: dict[str, torch.Tensor],
                    seed: int) -> None:
        if own["x"].is_complex():
            self.fit_critic(spec, own, seed)
        unet = self._unet((spec, "a"), own["a"].shape[1], dataset.channels, dataset)
        self.report = self._fit(unet, own["a"], self._pixels()[: len(own["a"])], seed)

    def fit_critic(self, spec: str, own: dict[str, torch.Tensor], seed: int) -> None:
        """Train the attacker's own critic of real a against x decoded at a wrong angle on its queries ``own``.

        WGAN-GP, one step per batch of ``QUERY_BATCH`` with one wrong decoding per sample,
        ``critic-epochs`` passes. The critic scores a real decoding high, so :meth:`estimate_angles`
        takes the argmax. Its best mean error is about pi/4, not 0: x = e^{i theta}(a + i b) decodes
        to the partner's real features b at theta + pi/2, as real as a (the defense's 2-anonymity).
        """
        generator = torch.Generator().manual_seed(seed)
        critic = self.networks.setdefault((spec, "critic"), FeatureCritic(own["a"].shape[1]).to(self.device))
        critic.train()
        optimizer = critic_optimizer(critic)
        for _ in range(self.options.critic_epochs):
            for index in torch.randperm(len(own["a"]), generator=generator).split(QUERY_BATCH):
                x, a = own["x"][index].to(self.device), own["a"][index].to(self.device)
                fakes = wrong_decodings(x, own["angle"][index].to(self.device), 1, 2 * math.pi, generator)
                train_critic(critic, optimizer, a, fakes, 10.0, 1, generator)
        critic.eval()

    def estimate_angles(self, spec: str, leak: FeatureLeak) -> torch.Tensor:
        """theta-hat per sample by grid search (0 for real features)."""
        if not leak.features.is_complex():
            return torch.zeros(len(leak.features))
        critic = self.networks[(spec, "critic")]
        return grid_angles(critic, leak.features.to(self.device), self.options.angles).cpu()

    def attack_one(self, model: SplitNetwork, dataset: DatasetSpec, spec: str, leak: FeatureLeak) -> Reconstruction:
        angles = self.estimate_angles(spec, leak)
        features = decode_at(leak.features, angles) if leak.features.is_complex() else leak.features
        with torch.no_grad():
            images = self.networks[(spec, "a")](features.to(self.device)).cpu()
        estimates = {"angles": angles} if leak.features.is_complex() else {}
        return Reconstruction(images=images, ordered=True, estimates=estimates,
                              fields={"aux_val_mse": self.report.val_mse})


class GradientPhase(AngleUNetInversion):
    """Reads theta mod pi from the phase of dL/dh, picks the sign with the critic, inverts a* with a U-Net."""

    name: ClassVar[str] = "gradient-phase"

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """The phase is read from dL/dh, which only U-shaped split training sends back."""
        if not config.split_training:
            return ["attack 'gradient-phase' reads the gradient dL/dh that U-shaped split training sends back: "
                    "set split-training=true"]
        return []

    def estimate_angles(self, spec: str, leak: FeatureLeak) -> torch.Tensor:
        if leak.gradients is None:
            raise ValueError("gradient-phase needs dL/dh in the leak: set split-training=true")
        if not leak.features.is_complex():
            return torch.zeros(len(leak.features))
        grads = leak.gradients.flatten(1)
        weights = grads.abs()
        doubled = (weights * torch.polar(torch.ones_like(weights), 2 * grads.angle())).sum(1)
        base = torch.remainder(doubled.angle() / 2, math.pi)  # theta mod pi: a weighted circular mean
        critic = self.networks[(spec, "critic")]
        with torch.no_grad():
            x = leak.features.to(self.device)
            scores = torch.stack([critic(decode_at(x, (base + shift).to(self.device))) for shift in (0.0, math.pi)])
        return base + math.pi * scores.argmax(0).cpu().float()


class TwoImageDecoder(FeatureAttack):
    """A U-Net with two outputs, trained order-free on (I, I'), scored best-of-two."""

    name: ClassVar[str] = "two-image-decoder"

    def train_round(self, model: SplitNetwork, dataset: DatasetSpec, spec: str, own: dict[str, torch.Tensor],
                    seed: int) -> None:
        inputs = as_channels(own["x"])
        pixels = self._pixels()[: len(inputs)]
        pairs = torch.cat([pixels, pixels[own["partner"]]], 1)
        unet = self._unet((spec, "pair"), inputs.shape[1], 2 * dataset.channels, dataset)
        channels = dataset.channels

        def order_free(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            first, second = output[:, :channels], output[:, channels:]
            straight = (first - target[:, :channels]).square().flatten(1).mean(1) + \
                (second - target[:, channels:]).square().flatten(1).mean(1)
            swapped = (first - target[:, channels:]).square().flatten(1).mean(1) + \
                (second - target[:, :channels]).square().flatten(1).mean(1)
            return torch.minimum(straight, swapped).mean() / 2

        self.report = self._fit(unet, inputs, pairs, seed, order_free)

    def attack_one(self, model: SplitNetwork, dataset: DatasetSpec, spec: str, leak: FeatureLeak) -> Reconstruction:
        with torch.no_grad():
            out = self.networks[(spec, "pair")](as_channels(leak.features).to(self.device)).cpu()
        channels = dataset.channels
        return Reconstruction(images=out[:, :channels], alternatives=out[:, channels:], ordered=True,
                              fields={"aux_val_mse": self.report.val_mse})


for _attack in (UNetInversion, AngleUNetInversion, GradientPhase, TwoImageDecoder):
    ATTACKS.add(_attack.name, _attack)
