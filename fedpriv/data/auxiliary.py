"""The server's auxiliary data by ``aux-type``: same distribution, generic (other classes), distinct (another set)."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2.functional import resize, rgb_to_grayscale

from fedpriv.data.loading import LabeledImages
from fedpriv.data.partition import partition_indices
from fedpriv.errors import ConfigError

# aux-type='distinct' draws from another data set; these pairs are the default (aux-dataset='').
DISTINCT_DEFAULTS = {
    "embedded-digits": "embedded-photos", "embedded-photos": "embedded-digits",
    "embedded-photos-large": "embedded-digits",
    "mnist": "fashion-mnist", "fashion-mnist": "mnist",
    "cifar10": "cifar100", "cifar100": "cifar10", "cifar100-super": "cifar10",
}


def client_classes(aux_type: str, num_classes: int) -> int:
    """How many classes (labels 0..n-1) the clients hold: the first half under ``generic``, else all."""
    return num_classes // 2 if aux_type == "generic" else num_classes


def split_with_aux(
    labels: np.ndarray, num_partitions: int, partitioner: str, alpha: float, seed: int, aux_samples: int,
    aux_type: str = "same", num_classes: int = 0,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Carve the server's auxiliary split out of the training set, then partition the clients' part.

    ``same``: ``aux_samples`` seeded indices of the whole set, the rest partitioned.
    ``generic``: the clients hold only the first half of the classes (labels < K // 2, as in
    Yang et al.'s MNIST setting, digits 0-4) and the auxiliary samples come from the other half.
    ``distinct``: the clients hold the whole set; the auxiliary samples come from another data
    set (:func:`distinct_images`), so no index is returned. The auxiliary samples are disjoint
    from every client by construction; with ``aux_samples=0`` the partitions are exactly
    :func:`~fedpriv.data.partition.partition_indices` on the whole set.

    Raises
    ------
    ConfigError
        If the request is larger than what is left after the clients' share, naming the valid range.
    """
    labels = np.asarray(labels)
    if aux_samples == 0 or aux_type == "distinct":
        return partition_indices(labels, num_partitions, partitioner, alpha, seed), np.empty(0, dtype=np.int64)
    if aux_type == "generic":
        held = client_classes(aux_type, num_classes)
        clients, pool = np.flatnonzero(labels < held), np.flatnonzero(labels >= held)
        if aux_samples > len(pool):
            raise ConfigError(f"aux-samples={aux_samples} exceeds the {len(pool)} training samples of classes "
                              f"{held}..{num_classes - 1} (aux-type='generic'); valid: 1..{len(pool)}")
    else:
        clients = pool = np.arange(len(labels))
        if aux_samples > len(labels) - num_partitions:
            raise ConfigError(f"aux-samples={aux_samples} leaves too few of the {len(labels)} training samples for "
                              f"{num_partitions} clients; valid: 0..{len(labels) - num_partitions}")
    aux = np.sort(pool[np.random.default_rng([seed, 0xA0C]).choice(len(pool), aux_samples, replace=False)])
    rest = np.setdiff1d(clients, aux)
    parts = partition_indices(labels[rest], num_partitions, partitioner, alpha, seed)
    return [rest[p].astype(np.int64) for p in parts], aux.astype(np.int64)


def distinct_images(other: LabeledImages, aux_samples: int, seed: int, channels: int, size: int) -> LabeledImages:
    """``aux_samples`` seeded images of another data set, converted to the victim's channels and size.

    Colour becomes grey with ITU-R 601 luma (torchvision's ``rgb_to_grayscale``), grey becomes
    three equal channels, and a different size is resized with antialiased bilinear
    interpolation.

    Raises
    ------
    ConfigError
        If the other set has fewer than ``aux_samples`` training images.
    """
    if aux_samples > len(other):
        raise ConfigError(f"aux-samples={aux_samples} exceeds the {len(other)} training images of the distinct "
                          f"auxiliary data set (aux-type='distinct'); valid: 1..{len(other)}")
    pick = np.sort(np.random.default_rng([seed, 0xD15]).choice(len(other), aux_samples, replace=False))
    images = other.images[torch.as_tensor(pick)]
    if images.shape[1] == 3 and channels == 1:
        images = rgb_to_grayscale(images)
    elif images.shape[1] == 1 and channels == 3:
        images = images.repeat(1, 3, 1, 1)
    if images.shape[-1] != size:
        images = resize(images, [size, size], InterpolationMode.BILINEAR, antialias=True)
    return LabeledImages(images.contiguous(), other.labels[torch.as_tensor(pick)])
