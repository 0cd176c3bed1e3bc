"""Training-based model inversion from prediction vectors (Yang, Chang, Liang; CCS 2019).

The server trains an inversion network G on its auxiliary split: pairs (trunc_m(F(x)), x) made
with the round's global classifier F, so that G maps a released prediction vector back to an
image. With ``align=true`` (the paper's alignment) G is trained on vectors truncated to the same
m as the leak, where m is read off the leak itself (its count of non-zero entries); with
``align=false`` on full vectors. G's input is the official code's transform
(:func:`inversion_input`); the loss is MSE on [0,1] pixels; Adam 2e-4, betas (0.5, 0.999),
amsgrad. The epoch kept is the one with the lowest MSE on a held-out part of the auxiliary
split (``val-fraction``), never on the victims' data. The same G turns one-hot vectors into one
representative image per class (training-class inference), shown as a gallery per round.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

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
from fedpriv.data.specs import DatasetSpec
from fedpriv.errors import ConfigError
from fedpriv.leaks import PredictionLeak
from fedpriv.options import option
from fedpriv.training import adam

LOG_FLOOR = -1000.0


def inversion_input(predictions: torch.Tensor, top: int, c: torch.Tensor | float = 50.0) -> torch.Tensor:
    """The official code's input to G: top-``top`` log-probabilities, floored, shifted to be >= 0.

    For each row p: (v, idx) = topk(p, top); v = max(log v, -1000) + c; v += ReLU(-min v); the
    result is zero everywhere except at idx, where it is v. Zero entries of p (a truncated leak)
    count as log 0 = -1000. So a one-hot e_k gives 50 e_k for ``top=1`` and 1000 e_k for
    ``top`` > 1 (the floor shifted up).

    Parameters
    ----------
    predictions
        (n, K) probability vectors (possibly truncated).
    top
        Entries kept, 1 <= top <= K.
    c
        The additive constant (50 in the reference; a tensor when learned).
    """
    values, index = predictions.topk(top, dim=1)
    positive = values > 0
    logs = torch.where(positive, torch.log(torch.where(positive, values, torch.ones_like(values))), LOG_FLOOR)
    shifted = logs.clamp_min(LOG_FLOOR) + c
    shifted = shifted + F.relu(-shifted.min(dim=1, keepdim=True).values)
    return torch.zeros_like(predictions).scatter(1, index, shifted)


class PredictionInverter(nn.Module):
    """Yang et al.'s MNIST inversion network: prediction vector -> 32x32 image in [0,1].

    ConvT(K -> 4w, k4 s1) to 4x4, BN, Tanh; ConvT(4w -> 2w, k4 s2 p1) to 8x8, BN, Tanh;
    ConvT(2w -> w) to 16x16, BN, Tanh; ConvT(w -> channels) to 32x32, Sigmoid (w = 128 in the
    reference). The truncation transform runs inside ``forward``, as in the official code.

    Parameters
    ----------
    num_classes, channels
        Prediction length K and image channels.
    top
        The m of :func:`inversion_input` (K: full vectors).
    width
        w above.
    c, learn_c
        The constant of :func:`inversion_input` and whether it is a learned parameter.
    """

    def __init__(self, num_classes: int, channels: int, top: int, width: int = 128, c: float = 50.0,
                 learn_c: bool = False) -> None:
        super().__init__()
        self.top = top
        if learn_c:
            self.c = nn.Parameter(torch.tensor(float(c)))
        else:
            self.register_buffer("c", torch.tensor(float(c)))
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(num_classes, 4 * width, 4, 1, 0), nn.BatchNorm2d(4 * width), nn.Tanh(),
        ]
        for wide, narrow in ((4 * width, 2 * width), (2 * width, width)):
            layers += [nn.ConvTranspose2d(wide, narrow, 4, 2, 1), nn.BatchNorm2d(narrow), nn.Tanh()]
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*layers)

    def forward(self, predictions: torch.Tensor) -> torch.Tensor:
        z = inversion_input(predictions, self.top, self.c)
        return self.decoder(z[:, :, None, None])


@torch.no_grad()
def predict(classifier: nn.Module, pixels: torch.Tensor, dataset: DatasetSpec, batch: int = 500) -> torch.Tensor:
    """Softmax vectors of ``classifier`` (eval mode) on [0,1] pixel images."""
    classifier.eval()
    device = next(classifier.parameters()).device
    return torch.cat([
        torch.softmax(classifier(dataset.normalize(pixels[i : i + batch].to(device))).float(), 1).cpu()
        for i in range(0, len(pixels), batch)
    ])


def released_top(predictions: torch.Tensor) -> int:
    """The truncation m a leak shows: the largest count of non-zero entries in one of its vectors."""
    return max(1, int((predictions > 0).sum(dim=1).max()))


@dataclass(frozen=True)
class InversionOptions:
    """How the attacker trains its inversion network (Yang et al.'s reference settings by default)."""

    align: bool = option(True, "train on vectors truncated like the leak (false: on full vectors)")
    epochs: int = option(100, "passes over the auxiliary split per attacked round", low=1, high=10_000)
    batch: int = option(128, "vectors per training step", low=2, high=100_000)
    width: int = option(128, "width of the inversion network", low=1, high=4096)
    adam_lr: float = option(2e-4, "the inverter's Adam learning rate", above=0, high=1)
    c: float = option(50.0, "the inverter's input scale c", low=0, high=1e6)
    learn_c: bool = option(False, "learn c with the network")
    val_fraction: float = option(0.1, "fraction of the auxiliary split held out for validation", above=0, high=0.9)
    warm_start: bool = option(True, "continue from the previous round's inverter (or the jointly trained one)")


class PredictionInversion(Attack):
    """Inverts leaked prediction vectors with a network trained on the server's auxiliary split.

    Options (:class:`InversionOptions`, keys ``attack.prediction-inversion.OPTION``): ``align``
    (true: train on vectors truncated like the leak; false: on full vectors), ``epochs`` per
    attacked round (100 in the reference), ``batch`` (128), ``width`` (128), ``adam-lr`` (2e-4),
    ``c`` (50), ``learn-c`` (false),
    ``val-fraction`` (0.1), ``warm-start`` (true: each round continues from the previous round's
    inverter for the same m, or from the jointly trained one).
    """

    name: ClassVar[str] = "prediction-inversion"
    leak_kinds: ClassVar[tuple[str, ...]] = (PredictionLeak.kind,)
    model_modes: ClassVar[tuple[str, ...]] = ("eval",)
    optimises: ClassVar[bool] = False
    Options: ClassVar[type] = InversionOptions
    knowledge: ClassVar[Knowledge] = Knowledge(model="weights", aux="server")

    def __init__(self, settings: AttackSettings) -> None:
        options = own_options(InversionOptions, settings, self.name)
        self.epochs, self.batch, self.width, self.lr = options.epochs, options.batch, options.width, options.adam_lr
        self.c, self.val_fraction = options.c, options.val_fraction
        self.align, self.learn_c, self.warm_start = options.align, options.learn_c, options.warm_start
        self.device = torch.device(settings.device)
        self.aux: AuxiliaryData | None = None
        self.inverters: dict[int, nn.Module] = {}

    def new_inverter(self, dataset: DatasetSpec, top: int) -> PredictionInverter:
        """A freshly initialised G for truncation ``top`` with this attack's architecture options."""
        if dataset.size != 32:
            raise ConfigError(f"{self.name}: the reference inversion network makes 32x32 images; "
                              f"data set {dataset.name!r} has size {dataset.size}")
        return PredictionInverter(dataset.num_classes, dataset.channels, top, self.width, self.c, self.learn_c)

    def prepare(self, dataset: DatasetSpec, aux: AuxiliaryData | None) -> None:
        """Keep the auxiliary split; adopt the server's jointly trained inverter if it has one."""
        if aux is None or len(aux.labels) < 2:
            raise ConfigError(f"{self.name} trains on the server's auxiliary split: set aux-samples >= 2")
        self.aux = aux
        if aux.inverter is not None:
            self.inverters[int(aux.inverter.top)] = aux.inverter  # type: ignore[arg-type]

    def _trained(self, vectors: torch.Tensor, pixels: torch.Tensor, dataset: DatasetSpec, top: int,
                 seed: int) -> tuple[nn.Module, FitReport]:
        previous = self.inverters.get(top) if self.warm_start else None
        torch.manual_seed(seed)
        inverter = copy.deepcopy(previous) if previous is not None else self.new_inverter(dataset, top)
        inverter = inverter.to(self.device)
        report = fit_decoder(inverter, vectors, pixels, self.epochs, self.batch,
                             adam(inverter.parameters(), self.lr), self.val_fraction,
                             torch.Generator().manual_seed(seed))
        self.inverters[top] = inverter
        return inverter, report

    def reconstruct(
        self, model: nn.Module, dataset: DatasetSpec, targets: Sequence[AttackTarget]
    ) -> list[Reconstruction]:
        """Train one G per truncation level present this round, then invert every leak with it."""
        model = model.to(self.device).eval()
        leaks = [t.leak for t in targets]
        assert all(isinstance(leak, PredictionLeak) for leak in leaks)
        tops = [released_top(leak.predictions) if self.align else dataset.num_classes for leak in leaks]  # type: ignore[attr-defined]
        assert self.aux is not None
        pixels = self.aux.images.float() / 255.0
        vectors = predict(model, pixels, dataset)  # the round's classifier on the aux split, once for every m
        trained = {top: self._trained(vectors, pixels, dataset, top, targets[tops.index(top)].seed)
                   for top in sorted(set(tops))}
        eye = torch.eye(dataset.num_classes)
        results = []
        for leak, top in zip(leaks, tops, strict=True):
            inverter, report = trained[top]
            with torch.no_grad():
                images = inverter(leak.predictions.to(self.device)).cpu()  # type: ignore[attr-defined]
                classes = inverter(eye.to(self.device)).cpu()
            predicted = predict(model, classes, dataset).argmax(1)
            class_accuracy = float((predicted == torch.arange(len(eye))).float().mean())
            results.append(Reconstruction(
                images=images, ordered=True, gallery=classes,
                fields={"top_m": float(released_top(leak.predictions)), "inverter_top": float(top),  # type: ignore[attr-defined]
                        "aligned": float(self.align), "aux_val_mse": report.val_mse,
                        "inverter_epoch": float(report.best_epoch), "class_accuracy": class_accuracy,
                        "inverter_images_per_s": report.images_per_second},
            ))
        return results


ATTACKS.add(PredictionInversion.name, PredictionInversion)
