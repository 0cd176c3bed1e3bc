"""A researcher's own images: torchvision's ImageFolder layout and Hugging Face data sets on disk.

- ``folder:PATH`` reads ``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` with torchvision's
  ``ImageFolder`` (classes sorted by name, the same index in both splits).
- ``hf:PATH`` reads a ``datasets`` folder written by ``save_to_disk`` (a DatasetDict with
  ``train`` and ``test``), or parquet files ``PATH/train*.parquet`` / ``PATH/data/train-*.parquet``
  (and the same for ``test``), offline. The image column is the first ``Image`` feature, the
  label column the first ``ClassLabel`` feature (else a column named ``label``).

Every image is converted to RGB or greyscale (``image-channels``) and resized to a square of
``image-size`` pixels (antialiased bilinear, ignoring the aspect ratio), as uint8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fedpriv.errors import ConfigError

PREFIXES = ("folder:", "hf:")


def is_custom(name: str) -> bool:
    """Whether ``name`` names a researcher's own data set (``folder:PATH`` or ``hf:PATH``)."""
    return name.startswith(PREFIXES)


def custom_path(name: str) -> Path:
    """The absolute folder of a ``folder:``/``hf:`` data set (``~`` expanded)."""
    return Path(name.split(":", 1)[1]).expanduser().resolve()


def _to_uint8(image: Image.Image, size: int, channels: int) -> np.ndarray:
    converted = image.convert("L" if channels == 1 else "RGB")
    if converted.size != (size, size):
        converted = converted.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    array = np.asarray(converted, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def read_folder(root: Path, split: str, size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images, labels and class names of one split of an ImageFolder tree.

    Raises
    ------
    ConfigError
        If the split folder is missing, a class folder has no images, or an image cannot be read
        (the message names the file).
    """
    from torchvision.datasets import ImageFolder

    folder = root / split
    if not folder.is_dir():
        raise ConfigError(f"dataset folder:{root}: {folder} does not exist; the layout is "
                          f"{root}/train/<class>/<image> and {root}/test/<class>/<image>")
    try:
        tree = ImageFolder(str(folder), allow_empty=False)
    except (FileNotFoundError, OSError) as error:
        raise ConfigError(f"dataset folder:{root}: {error}") from None
    images = []
    for path, _ in tree.samples:
        try:
            with Image.open(path) as image:
                images.append(_to_uint8(image, size, channels))
        except OSError as error:
            raise ConfigError(f"dataset folder:{root}: cannot read image {path} ({error})") from None
    labels = torch.tensor([label for _, label in tree.samples], dtype=torch.int64)
    return torch.from_numpy(np.stack(images)), labels, list(tree.classes)


def _hf_split(root: Path, split: str) -> Any:  # a datasets.Dataset (datasets ships no types)
    import datasets

    if (root / "dataset_dict.json").exists():
        saved = datasets.load_from_disk(str(root))
        if split not in saved:
            raise ConfigError(f"dataset hf:{root} has splits {sorted(saved)}; it needs 'train' and 'test'")
        return saved[split]
    files = sorted(root.glob(f"{split}*.parquet")) + sorted(root.glob(f"data/{split}-*.parquet"))
    if not files:
        raise ConfigError(f"dataset hf:{root}: no save_to_disk folder (dataset_dict.json) and no "
                          f"{split}*.parquet or data/{split}-*.parquet files")
    return datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split)


def read_hf(root: Path, split: str, size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images, labels and class names of one split of a Hugging Face data set on disk.

    Raises
    ------
    ConfigError
        If the folder holds no such split, or no image or label column is found.
    """
    import datasets

    table = _hf_split(root, split)
    features = table.features
    image_column = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    label_column = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    label_column = label_column or ("label" if "label" in features else None)
    if image_column is None or label_column is None:
        raise ConfigError(f"dataset hf:{root}: needs an Image column and a ClassLabel (or 'label') column; "
                          f"columns: {', '.join(features)}")
    feature = features[label_column]
    labels = torch.tensor(table[label_column], dtype=torch.int64)
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
    else:
        names = [str(i) for i in range(int(labels.max()) + 1)]
    images = np.stack([_to_uint8(image, size, channels) for image in table[image_column]])
    return torch.from_numpy(images), labels, names


def read_custom(name: str, split: str, size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One split of a ``folder:``/``hf:`` data set (see the module docstring)."""
    root = custom_path(name)
    if not root.is_dir():
        raise ConfigError(f"dataset {name!r}: {root} is not a folder")
    reader = read_folder if name.startswith("folder:") else read_hf
    images, labels, classes = reader(root, split, size, channels)
    if len(labels) == 0:
        raise ConfigError(f"dataset {name!r}: the {split} split has no images")
    return images, labels, classes
