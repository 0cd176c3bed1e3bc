"""Data layer: standard-archive loaders on archives written here, embedded set, partitioning."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedpriv.data import archives, loading
from fedpriv.data.embedded import CLASS_NAMES, load_embedded
from fedpriv.data.loading import check_available, load_split
from fedpriv.data.partition import partition_indices
from fedpriv.errors import ConfigError


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(count: int, channels: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, channels, size, size), np.uint8)


def _write_cifar_batch(path: Path, images: np.ndarray, labels: list[int], key: bytes) -> None:
    """Write a batch in the official layout (a dict with bytes keys, rows of 3072 CHW pixels)."""
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        key: labels,
        b"data": images.reshape(len(images), -1),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    if key == b"fine_labels":
        batch[b"coarse_labels"] = [label // 5 for label in labels]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=2))


@pytest.fixture
def cifar100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A CIFAR-100 archive (train 6, test 4 images) in tmp_path/data, tables pointed at it."""
    source = tmp_path / "src" / "cifar-100-python"
    split_data = {}
    for split, count in (("train", 6), ("test", 4)):
        images, labels = _images(count, 3, 32, count), [7 * i + count for i in range(count)]
        _write_cifar_batch(source / split, images, labels, b"fine_labels")
        split_data[split] = (images, labels)
    (source / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"x"] * 100}, protocol=2))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    archive = data_dir / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="cifar-100-python")
    layout = dataclasses.replace(
        archives.CIFAR_ARCHIVES["cifar100"],
        md5=_md5(archive),
        files={split: ((split, _md5(source / split)),) for split in ("train", "test")},
    )
    monkeypatch.setitem(archives.CIFAR_ARCHIVES, "cifar100", layout)
    return {"dir": data_dir, "archive": archive, "splits": split_data}


@pytest.fixture
def cifar10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """An extracted CIFAR-10 folder (five train batches of 2, a test batch of 3)."""
    folder = tmp_path / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {}
    for seed, name in enumerate(names):
        count = 3 if name == "test_batch" else 2
        batches[name] = (_images(count, 3, 32, seed), [(seed + i) % 10 for i in range(count)])
        _write_cifar_batch(folder / name, *batches[name], b"labels")
    table = {name: (name, _md5(folder / name)) for name in names}
    layout = dataclasses.replace(
        archives.CIFAR_ARCHIVES["cifar10"],
        files={"train": tuple(table[name] for name in names[:5]), "test": (table["test_batch"],)},
    )
    monkeypatch.setitem(archives.CIFAR_ARCHIVES, "cifar10", layout)
    return {"dir": tmp_path, "folder": folder, "batches": batches}


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x800 + array.ndim  # unsigned bytes, ndim dimensions, big-endian sizes
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


@pytest.fixture
def mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Gzipped MNIST IDX files in tmp_path/MNIST/raw (train 5, test 3 digits)."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    files, data = {}, {}
    for split, prefix, count in (("train", "train", 5), ("test", "t10k", 3)):
        images = _images(count, 1, 28, count)[:, 0]
        labels = np.arange(count, dtype=np.uint8)[::-1].copy()
        data[split] = (images, labels)
        entries = []
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            path = raw / f"{prefix}-{kind}.gz"
            path.write_bytes(gzip.compress(_idx_bytes(array)))
            entries.append((path.name, _md5(path)))
        files[split] = tuple(entries)
    layout = dataclasses.replace(archives.IDX_ARCHIVES["mnist"], files=files)
    monkeypatch.setitem(archives.IDX_ARCHIVES, "mnist", layout)
    return {"dir": tmp_path, "raw": raw, "data": data}


def test_cifar100_archive_is_extracted_and_read(cifar100: dict) -> None:
    check_available("cifar100", cifar100["dir"])
    assert (cifar100["dir"] / "cifar-100-python" / "train").is_file()
    for split in ("train", "test"):
        loaded = load_split("cifar100", cifar100["dir"], split)
        images, labels = cifar100["splits"][split]
        assert loaded.images.dtype == torch.uint8 and loaded.labels.dtype == torch.int64
        assert torch.equal(loaded.images, torch.from_numpy(images))
        assert loaded.labels.tolist() == labels


def test_cifar10_folder_batches_are_concatenated_in_order(cifar10: dict) -> None:
    train = load_split("cifar10", str(cifar10["dir"]), "train")
    batches = cifar10["batches"]
    expected = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert train.images.shape == (10, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(expected))
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    test = load_split("cifar10", cifar10["dir"], "test")
    assert test.labels.tolist() == batches["test_batch"][1]
    assert load_split("cifar10", cifar10["dir"], "test") is test  # cached per process


def test_mnist_gz_is_decompressed_and_resized_like_pil(mnist: dict) -> None:
    loaded = load_split("mnist", mnist["dir"], "train")
    images, labels = mnist["data"]["train"]
    assert loaded.images.shape == (5, 1, 32, 32) and loaded.images.dtype == torch.uint8
    assert loaded.labels.tolist() == labels.tolist()
    assert (mnist["raw"] / "train-images-idx3-ubyte").is_file()
    pil = np.asarray(Image.fromarray(images[0]).resize((32, 32), Image.Resampling.BILINEAR))
    assert np.abs(loaded.images[0, 0].numpy().astype(int) - pil).max() <= 1


def test_decompressed_idx_files_alone_are_accepted(mnist: dict) -> None:
    for path in mnist["raw"].glob("*.gz"):
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    loaded = load_split("mnist", mnist["dir"], "test")
    assert loaded.labels.tolist() == mnist["data"]["test"][1].tolist()


def test_missing_archive_names_file_folder_and_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        check_available("cifar100", tmp_path / "nowhere")
    message = str(caught.value)
    for part in ("'cifar100'", "cifar-100-python.tar.gz", str(tmp_path / "nowhere"), "download"):
        assert part in message


def test_missing_mnist_names_files_and_raw_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte.gz") as caught:
        load_split("fashion-mnist", tmp_path, "train")
    assert str(tmp_path / "FashionMNIST" / "raw") in str(caught.value)


def test_corrupt_archive_is_rejected(cifar100: dict) -> None:
    with open(cifar100["archive"], "r+b") as handle:
        handle.seek(100)
        handle.write(b"\0\1\2\3")
    with pytest.raises(ConfigError, match="corrupt") as caught:
        check_available("cifar100", cifar100["dir"])
    assert "cifar-100-python.tar.gz" in str(caught.value)


def test_corrupt_batch_file_is_named(cifar10: dict) -> None:
    batch = cifar10["folder"] / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-1] + b"?")
    with pytest.raises(ConfigError, match="data_batch_3.*corrupt"):
        load_split("cifar10", cifar10["dir"], "train")


def test_missing_batch_file_is_named(cifar10: dict) -> None:
    (cifar10["folder"] / "test_batch").unlink()
    with pytest.raises(ConfigError, match="'test_batch'"):
        check_available("cifar10", cifar10["dir"])
    load_split("cifar10", cifar10["dir"], "train")  # the other split is still usable


def test_corrupt_idx_gz_is_rejected(mnist: dict) -> None:
    (mnist["raw"] / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(ConfigError, match="t10k-labels-idx1-ubyte.gz.*corrupt"):
        check_available("mnist", mnist["dir"])


def test_check_available_does_not_parse(cifar10: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "read", lambda *args: pytest.fail("parsed"))
    check_available("cifar10", cifar10["dir"])


def test_download_only_when_asked(cifar100: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    archive_bytes = cifar100["archive"].read_bytes()
    cifar100["archive"].unlink()
    calls = []

    def fake_download(url: str, root: Path, filename: str, md5: str) -> None:
        calls.append((url, filename, md5))
        (Path(root) / filename).write_bytes(archive_bytes)
        archives.extract_archive(Path(root) / filename, root)

    monkeypatch.setattr(archives, "download_and_extract_archive", fake_download)
    with pytest.raises(ConfigError):
        check_available("cifar100", cifar100["dir"])
    assert not calls
    check_available("cifar100", cifar100["dir"], download=True)
    layout = archives.CIFAR_ARCHIVES["cifar100"]
    assert calls == [(layout.url, layout.archive, layout.md5)]
    assert len(load_split("cifar100", cifar100["dir"], "test")) == 4


def test_failed_download_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(archives, "download_and_extract_archive", offline)
    with pytest.raises(ConfigError, match="network unreachable") as caught:
        check_available("mnist", tmp_path, download=True)
    assert all(mirror in str(caught.value) for mirror in archives.IDX_ARCHIVES["mnist"].mirrors)


def test_unknown_names_list_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cifar10.*embedded-photos"):
        load_split("imagenet", tmp_path, "train")
    with pytest.raises(ConfigError, match="'valid'.*train, test"):
        load_split("embedded-photos", tmp_path, "valid")  # type: ignore[arg-type]


def test_embedded_photos_shapes_labels_and_determinism() -> None:
    train = load_split("embedded-photos", "unused", "train")
    test = load_split("embedded-photos", "unused", "test")
    assert train.images.shape == (2000, 3, 32, 32) and test.images.shape == (400, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert len(CLASS_NAMES) == 10
    assert torch.bincount(train.labels).tolist() == [200] * 10
    assert torch.bincount(test.labels).tolist() == [40] * 10
    assert train.labels[:20].unique().numel() > 1  # shuffled, not sorted by class
    assert train.images.float().std(dim=(1, 2, 3)).median() > 10  # photo content, not flat
    images, labels = load_embedded("test")
    assert torch.equal(images, test.images) and torch.equal(labels, test.labels)
    check_available("embedded-photos", "unused")


def test_subset_selects_images_and_labels() -> None:
    data = loading.LabeledImages(torch.arange(5).view(5, 1, 1, 1), torch.arange(5) * 10)
    part = data.subset([3, 1])
    assert part.labels.tolist() == [30, 10] and part.images.flatten().tolist() == [3, 1]


LABELS = np.repeat(np.arange(10), 200)


def test_iid_partitions_are_disjoint_balanced_and_seeded() -> None:
    parts = partition_indices(LABELS, 7, "iid", 1.0, seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(LABELS)))
    assert {len(part) for part in parts} <= {len(LABELS) // 7, len(LABELS) // 7 + 1}
    again = partition_indices(LABELS, 7, "iid", 1.0, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(LABELS, 7, "iid", 1.0, seed=4)
    assert not np.array_equal(parts[0], other[0])


def _max_class_share(parts: list[np.ndarray]) -> float:
    return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]))


def test_dirichlet_small_alpha_is_skewed_and_seeded() -> None:
    parts = partition_indices(LABELS, 10, "dirichlet", 0.05, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(LABELS)))
    assert min(len(part) for part in parts) >= 10
    assert _max_class_share(parts) > 0.6
    assert _max_class_share(partition_indices(LABELS, 10, "iid", 1.0, seed=0)) < 0.3
    again = partition_indices(LABELS, 10, "dirichlet", 0.05, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_dirichlet_minimum_is_capped_for_small_sets() -> None:
    parts = partition_indices(LABELS[::40], 10, "dirichlet", 1.0, seed=0)  # 50 samples
    assert len(parts) == 10 and min(len(part) for part in parts) >= 1


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ((3, "pathological", 0.5), "'pathological'"),
        ((0, "iid", 0.5), "got 0"),
        ((2001, "iid", 0.5), "got 2001"),
        ((3, "dirichlet", 0.0), "got 0.0"),
        ((3, "dirichlet", -1.0), "got -1.0"),
    ],
)
def test_bad_partition_inputs_name_the_value(args: tuple, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        partition_indices(LABELS, *args, seed=0)


def test_impossible_dirichlet_split_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="dirichlet-alpha=0.01") as error:
        partition_indices(LABELS, 1000, "dirichlet", 0.01, seed=0, min_partition_size=2)
    assert "raise dirichlet-alpha, use fewer clients (num-supernodes)" in str(error.value)
    assert "min_partition_size" not in str(error.value)  # not a run-config key


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion-mnist"])
def test_official_archives_when_present(name: str) -> None:
    data_dir = os.environ.get("FEDPRIV_DATA_DIR")
    if not data_dir:
        pytest.skip("set FEDPRIV_DATA_DIR to a folder with the official archives to test them")
    try:
        check_available(name, data_dir)
    except ConfigError as err:
        pytest.skip(f"official {name} archive not available: {err}")
    test = load_split(name, data_dir, "test")
    assert len(test) == 10000 and test.images.shape[-2:] == (32, 32)


def test_embedded_photos_large_has_ten_times_the_training_patches_and_the_same_test_split() -> None:
    large = load_split("embedded-photos-large", "unused", "train")
    assert large.images.shape == (20000, 3, 32, 32) and torch.bincount(large.labels).tolist() == [2000] * 10
    assert torch.equal(load_split("embedded-photos-large", "unused", "test").images,
                       load_split("embedded-photos", "unused", "test").images)
    assert torch.unique(large.images.flatten(1), dim=0).shape[0] > 15000  # overlapping crops, 17,302 distinct
