"""The embedded no-download set: 32x32 patches of ten photographs shipped with scikit-image."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import skimage.data
import torch
from PIL import Image

NAME = "embedded-photos"
LARGE_NAME = "embedded-photos-large"  # ten times the training patches, for scale benchmarks

# One photograph per class, all read from files inside the scikit-image wheel (no network).
# scikit-image ships eight colour photographs of distinct scenes; the last two classes are its
# grayscale photographs repeated over three channels (motorcycle_right shows the same scene as
# motorcycle_left, and colorwheel/logo are not photographs).
PHOTOS: tuple[tuple[str, Callable[[], np.ndarray]], ...] = (
    ("astronaut", skimage.data.astronaut),
    ("cat", skimage.data.chelsea),
    ("coffee", skimage.data.coffee),
    ("rocket", skimage.data.rocket),
    ("galaxies", skimage.data.hubble_deep_field),
    ("tissue", skimage.data.immunohistochemistry),
    ("retina", skimage.data.retina),
    ("motorcycle", lambda: skimage.data.stereo_motorcycle()[0]),
    ("cameraman", skimage.data.camera),
    ("coins", skimage.data.coins),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in PHOTOS)

PATCH = 32
SHORT_SIDE = 128  # photos are downscaled to this shorter side, so a patch shows a quarter of it
PER_CLASS = {"train": 200, "test": 40}
LARGE_TRAIN_PER_CLASS = 2000
SEED = 20240601


def _downscaled(photo: np.ndarray) -> np.ndarray:
    """Return ``photo`` as (H, W, 3) uint8 with its shorter side resized to ``SHORT_SIDE``."""
    if photo.ndim == 2:
        photo = np.stack([photo] * 3, axis=-1)
    height, width = photo.shape[:2]
    scale = SHORT_SIDE / min(height, width)
    size = (round(width * scale), round(height * scale))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))


def _corners(
    shape: tuple[int, ...], split: str, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Return (count, 2) top-left corners of patches of ``split``.

    Test patches lie inside the photo's bottom-right quadrant and train patches never overlap
    it, so the splits share no pixel.
    """
    height, width = shape[:2]
    mid_y, mid_x = height // 2, width // 2
    if split == "test":
        ys = rng.integers(mid_y, height - PATCH + 1, count)
        xs = rng.integers(mid_x, width - PATCH + 1, count)
        return np.stack([ys, xs], axis=1)
    corners = np.empty((0, 2), dtype=np.int64)
    while len(corners) < count:
        ys = rng.integers(0, height - PATCH + 1, 4 * count)
        xs = rng.integers(0, width - PATCH + 1, 4 * count)
        outside = (ys + PATCH <= mid_y) | (xs + PATCH <= mid_x)
        corners = np.concatenate([corners, np.stack([ys, xs], axis=1)[outside]])
    return corners[:count]


def load_embedded(split: str, train_per_class: int = PER_CLASS["train"]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the embedded set's ``split`` from the photographs, deterministically.

    Each photograph is downscaled to a shorter side of 128 pixels, then random 32x32 crops are
    taken with a fixed seed: 200 per class for ``"train"`` and 40 for ``"test"``. Test crops come
    from the photograph's bottom-right quadrant and train crops from outside it, so the splits
    share no pixels. The result is shuffled with a fixed permutation.

    Parameters
    ----------
    split
        ``"train"`` (2000 images) or ``"test"`` (400 images).
    train_per_class
        Training patches per photograph (200; ``embedded-photos-large`` takes 2,000, which
        overlap more: the same photographs, more crops; 17,302 of its 20,000 are distinct).

    Returns
    -------
    images, labels
        uint8 tensor (N, 3, 32, 32) and int64 tensor (N,) of class indices into ``CLASS_NAMES``.
    """
    rng = np.random.default_rng([SEED, 0 if split == "train" else 1])
    count = train_per_class if split == "train" else PER_CLASS[split]
    patches, labels = [], []
    for label, (_, read) in enumerate(PHOTOS):
        photo = _downscaled(read())
        for y, x in _corners(photo.shape, split, count, rng):
            patches.append(photo[y : y + PATCH, x : x + PATCH])
        labels += [label] * count
    order = rng.permutation(len(labels))
    images = torch.from_numpy(np.stack(patches)[order]).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels, dtype=torch.int64)[order]


def load_embedded_large(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``embedded-photos-large``: 20,000 training patches (2,000 per class), the same 400 test patches."""
    return load_embedded(split, LARGE_TRAIN_PER_CLASS)
