"""Load a data set split by name as uint8 images at the spec's size, cached per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2.functional import resize

from fedpriv.data import archives, digits, embedded
from fedpriv.data.custom import is_custom, read_custom
from fedpriv.data.specs import DATASET_SPECS, DatasetSpec, resolve_spec
from fedpriv.errors import ConfigError

# Sets shipped inside installed packages: no folder, no download, no checksum.
EMBEDDED = {embedded.NAME: embedded.load_embedded, embedded.LARGE_NAME: embedded.load_embedded_large,
            digits.NAME: digits.load_digits}

Split = Literal["train", "test"]


@dataclass(frozen=True)
class LabeledImages:
    """Images with their labels.

    Attributes
    ----------
    images
        uint8 tensor (N, C, H, W), pixels 0-255, at the data set spec's shape.
    labels
        int64 tensor (N,).
    properties
        A private property per sample other than the task label (``cifar100-super``: the fine
        label), or ``None`` (the property is the label).
    """

    images: torch.Tensor
    labels: torch.Tensor
    properties: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor | list[int]) -> LabeledImages:
        """Return the images and labels at ``indices`` (e.g. one client's partition)."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return LabeledImages(self.images[index], self.labels[index],
                             None if self.properties is None else self.properties[index])

    def property_of(self, index: torch.Tensor) -> torch.Tensor:
        """The private property of the samples at ``index`` (the label where none is defined)."""
        return (self.labels if self.properties is None else self.properties)[index]


def check_available(name: str, data_dir: str | Path, download: bool = False, verify: bool = True,
                    size: int = 32, channels: int = 3) -> None:
    """Fail fast, before training, if data set ``name`` cannot be loaded from ``data_dir``.

    Verifies that every file of both splits is present with its official md5 checksum
    (extracting an archive that is present, downloading only if ``download``), without parsing
    the data.

    Parameters
    ----------
    name
        A registered data set name (``fedpriv.data.specs.DATASET_SPECS``).
    data_dir
        Folder holding the archives in torchvision's layout (ignored for the embedded sets).
    download
        Fetch missing or corrupt files from the official URLs.
    verify
        Check the official md5 checksums (``data-verify``); ``False`` accepts a lab's own
        export in the standard format.
    size, channels
        Image size and channels of ``folder:``/``hf:`` data sets (read fully here, once).

    Raises
    ------
    ConfigError
        Unknown name (the message lists the valid ones), or a missing or corrupt file (the
        message names the file, the folder looked in and how to provide it).
    """
    if is_custom(name):
        train, test = (_custom(name, split, size, channels) for split in archives.SPLITS)
        if train[2] != test[2]:
            raise ConfigError(f"dataset {name!r}: train classes {train[2]} differ from test classes {test[2]}")
        return
    DATASET_SPECS.get(name)
    if name not in EMBEDDED:
        archives.ensure(name, Path(data_dir).expanduser().resolve(), archives.SPLITS, download, verify)


def load_split(
    name: str, data_dir: str | Path, split: Split, download: bool = False, verify: bool = True,
    size: int = 32, channels: int = 3,
) -> LabeledImages:
    """Load one split of data set ``name``.

    Results are cached per process, so clients sharing a process parse the data once; treat
    the returned tensors as read-only. MNIST, Fashion-MNIST and the embedded digits (28x28) are resized to
    32x32 with antialiased bilinear interpolation, as ATS does with ``Resize(32)`` (torchvision's
    uint8 kernel matches PIL's bilinear resize up to rounding).

    Parameters
    ----------
    name
        ``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``, ``embedded-photos``, ``embedded-photos-large``
        or ``embedded-digits``.
    data_dir
        Folder holding the archives in torchvision's layout (ignored for the embedded sets).
    split
        ``"train"`` or ``"test"``.
    download
        Fetch missing or corrupt files from the official URLs.
    verify
        Check the official checksums (see :func:`check_available`).
    size, channels
        Image size and channels of ``folder:``/``hf:`` data sets (built-in sets have their own).

    Returns
    -------
    LabeledImages
        uint8 images (N, C, size, size) with C and size from the data set spec, int64 labels.

    Raises
    ------
    ConfigError
        As for ``check_available``, or for an unknown split.
    """
    if split not in archives.SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid splits: {', '.join(archives.SPLITS)}")
    if is_custom(name):
        images, labels, _ = _custom(name, split, size, channels)
        return LabeledImages(images, labels)
    DATASET_SPECS.get(name)
    root = "" if name in EMBEDDED else str(Path(data_dir).expanduser().resolve())
    return _load(name, root, split, download, verify)


@functools.lru_cache(maxsize=4)
def _custom(name: str, split: str, size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    return read_custom(name, split, size, channels)


def dataset_spec(name: str, normalization: str = "dataset", size: int = 32, channels: int = 3) -> DatasetSpec:
    """The spec of any data set, a researcher's own included.

    For ``folder:``/``hf:`` sets the classes come from the training split and the normalisation
    constants are computed from it (``normalization='dataset'``) or given as
    ``'MEAN,MEAN,MEAN/STD,STD,STD'`` (one value per channel).

    Raises
    ------
    ConfigError
        For an unknown name or normalisation, or malformed constants.
    """
    if not is_custom(name):
        return resolve_spec(name, normalization)
    images, _, classes = _custom(name, "train", size, channels)
    if normalization == "dataset":
        pixels = images.double() / 255
        mean = tuple(float(v) for v in pixels.mean(dim=(0, 2, 3)))
        std = tuple(max(float(v), 1e-3) for v in pixels.std(dim=(0, 2, 3)))
    else:
        try:
            mean_text, std_text = normalization.split("/")
            mean = tuple(float(v) for v in mean_text.split(","))
            std = tuple(float(v) for v in std_text.split(","))
        except ValueError:
            mean = std = ()
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ConfigError(f"normalization {normalization!r} for {name!r}: give 'dataset' or "
                              f"{channels} means and {channels} positive stds as 'M,M,M/S,S,S'")
    return DatasetSpec(name, len(classes), channels, size, mean, std)


@functools.lru_cache(maxsize=8)
def _load(name: str, root: str, split: str, download: bool, verify: bool) -> LabeledImages:
    spec = DATASET_SPECS.get(name)
    properties = None
    if name in EMBEDDED:
        images, labels = EMBEDDED[name](split)
    else:
        archives.ensure(name, Path(root), (split,), download, verify)
        images, labels, properties = archives.read(name, Path(root), split, verify)
    if images.shape[-1] != spec.size:
        images = resize(
            images, [spec.size, spec.size], InterpolationMode.BILINEAR, antialias=True
        )
    return LabeledImages(images, labels, properties)
