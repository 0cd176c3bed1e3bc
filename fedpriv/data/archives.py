"""Standard CIFAR and (Fashion-)MNIST archives in torchvision's layout: verify, extract, read."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100, MNIST, FashionMNIST
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.datasets.utils import (
    calculate_md5,
    check_integrity,
    download_and_extract_archive,
    extract_archive,
)

from fedpriv.errors import ConfigError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class CifarArchive:
    """Where one CIFAR set lives under a data folder and how to verify it.

    Attributes
    ----------
    archive, md5, url
        Archive file name (directly in the data folder), its md5 and where it is published.
    folder
        Folder the archive extracts to, inside the data folder.
    files
        Per split, the pickled batches in ``folder`` as (file name, md5), in reading order.
    label_key
        Key of the labels in each pickled batch.
    property_key
        Key of a second label that is the samples' private property (CIFAR-100's fine labels
        when the task is its 20 superclasses), or ``None``.
    """

    archive: str
    md5: str
    url: str
    folder: str
    files: Mapping[str, tuple[tuple[str, str], ...]]
    label_key: bytes
    property_key: bytes | None = None


@dataclass(frozen=True)
class IdxArchive:
    """Where one MNIST-like set lives under a data folder and how to verify it.

    Attributes
    ----------
    folder
        Files live in ``<data folder>/<folder>/raw``, gzipped, decompressed or both.
    mirrors
        URL prefixes the gzipped files are published under, tried in order.
    files
        Per split, (images, labels) as (gzipped file name, md5 of the gzipped file).
    """

    folder: str
    mirrors: tuple[str, ...]
    files: Mapping[str, tuple[tuple[str, str], tuple[str, str]]]


def _cifar(dataset: type[CIFAR10], label_key: bytes, property_key: bytes | None = None) -> CifarArchive:
    files = {
        split: tuple((file, md5) for file, md5 in entries)
        for split, entries in (("train", dataset.train_list), ("test", dataset.test_list))
    }
    return CifarArchive(
        archive=dataset.filename,
        md5=dataset.tgz_md5,
        url=dataset.url,
        folder=dataset.base_folder,
        files=files,
        label_key=label_key,
        property_key=property_key,
    )


def _idx(dataset: type[MNIST]) -> IdxArchive:
    train_images, train_labels, test_images, test_labels = dataset.resources
    files = {"train": (train_images, train_labels), "test": (test_images, test_labels)}
    return IdxArchive(folder=dataset.__name__, mirrors=tuple(dataset.mirrors), files=files)


# File names, URLs and md5 checksums are torchvision's own (read from its data set classes), so
# a folder prepared by torchvision works here and vice versa. Tests point these tables at
# archives they write.
CIFAR_ARCHIVES: dict[str, CifarArchive] = {
    "cifar10": _cifar(CIFAR10, b"labels"),
    "cifar100": _cifar(CIFAR100, b"fine_labels"),
    # The same archive with the 20 superclasses as labels and the 100 fine labels as the property.
    "cifar100-super": _cifar(CIFAR100, b"coarse_labels", b"fine_labels"),
}
IDX_ARCHIVES: dict[str, IdxArchive] = {
    "mnist": _idx(MNIST),
    "fashion-mnist": _idx(FashionMNIST),
}


def _verify(path: Path, md5: str, name: str, fix: str) -> None:
    """Raise ConfigError unless ``path`` exists with checksum ``md5``."""
    if not path.is_file():
        raise ConfigError(f"data set {name!r}: expected file {path.name!r} in {path.parent}; {fix}")
    actual = calculate_md5(path)
    if actual != md5:
        raise ConfigError(
            f"data set {name!r}: {path} is corrupt or not the official file (md5 {actual}, "
            f"expected {md5}); {fix}"
        )


def _download(name: str, url: str, folder: Path, filename: str, md5: str) -> None:
    """Download and extract one archive, turning network failures into ConfigError."""
    try:
        download_and_extract_archive(url, folder, filename=filename, md5=md5)
    except (RuntimeError, OSError) as err:
        raise ConfigError(
            f"data set {name!r}: downloading {url} failed ({err}); put {filename!r} into "
            f"{folder} by hand instead"
        ) from err


def _extract(name: str, archive: Path, folder: Path) -> None:
    """Extract a verified archive into ``folder``, turning file-system failures into ConfigError."""
    try:
        extract_archive(archive, folder)
    except OSError as err:
        raise ConfigError(
            f"data set {name!r}: cannot extract {archive} into {folder} ({err}); extract it "
            f"there by hand or use a writable data folder"
        ) from err


def _ensure_cifar(name: str, root: Path, splits: tuple[str, ...], download: bool, verify: bool = True) -> None:
    layout = CIFAR_ARCHIVES[name]
    folder = root / layout.folder
    needed = [entry for split in splits for entry in layout.files[split]]
    if not verify:
        if not all((folder / file).is_file() for file, _ in needed) and (root / layout.archive).is_file():
            _extract(name, root / layout.archive, root)
        if missing := [file for file, _ in needed if not (folder / file).is_file()]:
            raise ConfigError(f"data set {name!r} (data-verify=false): expected {', '.join(missing)} in {folder} "
                              f"or {layout.archive!r} in {root}")
        return
    broken = [(file, md5) for file, md5 in needed if not check_integrity(folder / file, md5)]
    if not broken:
        return
    archive = root / layout.archive
    fix = (
        f"put the official {layout.archive!r} ({layout.url}) into {root} (it is extracted on "
        f"first use), or set download=True"
    )
    if download:
        _download(name, layout.url, root, layout.archive, layout.md5)
    elif archive.is_file():
        _verify(archive, layout.md5, name, fix)
        _extract(name, archive, root)
    elif not folder.is_dir():
        where = root if root.is_dir() else f"{root} (which does not exist)"
        raise ConfigError(
            f"data set {name!r} not found: expected {layout.archive!r} or its extracted folder "
            f"{layout.folder + '/'!r} in {where}; {fix}"
        )
    for file, md5 in broken:
        _verify(folder / file, md5, name, fix)


def _ensure_idx(name: str, root: Path, splits: tuple[str, ...], download: bool, verify: bool = True) -> None:
    layout = IDX_ARCHIVES[name]
    raw = root / layout.folder / "raw"
    fix = f"put the official files ({layout.mirrors[0]}) into {raw}, or set download=True"
    missing = []
    for gz, md5 in (entry for split in splits for entry in layout.files[split]):
        packed, plain = raw / gz, raw / gz.removesuffix(".gz")
        if packed.is_file() or (download and not plain.is_file()):
            if download and not check_integrity(packed, md5):
                _download_idx(name, layout, gz, md5, raw)
            if verify:
                _verify(packed, md5, name, fix)
            if not plain.is_file():
                _extract(name, packed, raw)
        # A decompressed file alone is accepted unverified: only the gzipped files have
        # published checksums (torchvision checks the decompressed files for presence only).
        elif not plain.is_file():
            missing.append(gz)
    if missing:
        where = raw if raw.is_dir() else f"{raw} (which does not exist)"
        raise ConfigError(
            f"data set {name!r} not found: expected {', '.join(missing)} (gzipped or not) in "
            f"{where}; {fix}"
        )


def _download_idx(name: str, layout: IdxArchive, gz: str, md5: str, raw: Path) -> None:
    """Fetch one gzipped IDX file from the first mirror that serves it."""
    errors = []
    for mirror in layout.mirrors:
        try:
            _download(name, mirror + gz, raw, gz, md5)
            return
        except ConfigError as err:
            errors.append(str(err))
    raise ConfigError("; ".join(errors))


def ensure(
    name: str, root: Path, splits: tuple[str, ...] = SPLITS, download: bool = False, verify: bool = True
) -> None:
    """Make sure the files of ``splits`` are present and intact, without parsing them.

    Checks md5 checksums, extracts an archive that is present but not yet extracted, and
    downloads only when ``download`` is true.

    Parameters
    ----------
    name
        A key of ``CIFAR_ARCHIVES`` or ``IDX_ARCHIVES``.
    root
        The data folder, in torchvision's layout.
    splits
        Which splits must be available.
    download
        Fetch missing or corrupt files from the official URLs.
    verify
        Check the official checksums; ``False`` (``data-verify=false``) accepts a lab's own
        export in the standard format and warns.

    Raises
    ------
    ConfigError
        If a file is missing or corrupt; the message names the file, the folder and the fix.
    """
    if not verify:
        warnings.warn(f"data set {name!r} in {root}: data-verify=false, checksums are not checked; the files "
                      "may not be the official ones", stacklevel=2)
    if name in CIFAR_ARCHIVES:
        _ensure_cifar(name, root, splits, download, verify)
    else:
        _ensure_idx(name, root, splits, download, verify)


def read(
    name: str, root: Path, split: str, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Parse one split that ``ensure`` has made available.

    Parameters
    ----------
    name, root, split, verify
        As for ``ensure``; unverified CIFAR batches are unpickled with :class:`ArrayUnpickler`.

    Returns
    -------
    images, labels, properties
        uint8 tensor (N, C, H, W) at the archive's own size (CIFAR 3x32x32, MNIST-like 1x28x28),
        int64 tensor (N,), in the archive's order, and the int64 private property (N,) where the
        layout defines one (else ``None``).
    """
    if name in CIFAR_ARCHIVES:
        return _read_cifar(CIFAR_ARCHIVES[name], root, split, verify)
    return (*_read_idx(name, IDX_ARCHIVES[name], root, split), None)


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches of unknown origin: plain containers and numpy arrays, nothing else.

    A pickle can name any callable; this one refuses every global except those numpy needs to
    rebuild an array, so a crafted batch cannot run code.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "bytearray"),
    }

    def find_class(self, module: str, name: str) -> object:
        """Resolve only the allowed globals."""
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in an unverified CIFAR batch")
        return super().find_class(module, name)


def _read_cifar(layout: CifarArchive, root: Path, split: str,
                verify: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    # Parsed here rather than through torchvision.datasets.CIFAR10, which verifies both splits
    # against its own checksum table and returns HWC arrays. Unpickling is safe: ``ensure``
    # has matched every batch against its published md5, or (data-verify=false) the restricted
    # ArrayUnpickler reads it.
    images, labels, properties = [], [], []
    for file, _ in layout.files[split]:
        path = root / layout.folder / file
        with open(path, "rb") as handle:
            try:
                batch = (pickle.Unpickler if verify else ArrayUnpickler)(handle, encoding="bytes").load()
                data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as error:
                raise ConfigError(f"{path} is not a CIFAR batch ({error})") from None
        images.append(data)
        labels.extend(batch[layout.label_key])
        if layout.property_key is not None:
            properties.extend(batch[layout.property_key])
    prop = torch.tensor(properties, dtype=torch.int64) if layout.property_key is not None else None
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64), prop


def _read_idx(
    name: str, layout: IdxArchive, root: Path, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    raw = root / layout.folder / "raw"
    (images_gz, _), (labels_gz, _) = layout.files[split]
    images_path, labels_path = (raw / gz.removesuffix(".gz") for gz in (images_gz, labels_gz))
    try:
        images = read_image_file(str(images_path)).unsqueeze(1)
        labels = read_label_file(str(labels_path))
    except (AssertionError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(
            f"data set {name!r}: {images_path} or {labels_path} is not a valid IDX file ({err}); "
            f"replace them with the official files"
        ) from err
    if len(images) != len(labels):
        raise ConfigError(
            f"data set {name!r}: {images_path} holds {len(images)} images but {labels_path} "
            f"{len(labels)} labels; replace them with the official files"
        )
    return images, labels
