"""The server's checks of the clients' data after discovery: partitions, per-client requests, the aux split."""

from __future__ import annotations

from logging import INFO, WARNING

from flwr.common.logger import log

from fedpriv.attacks import AuxiliaryData
from fedpriv.client_task import partition_index
from fedpriv.config import RunConfig
from fedpriv.data.auxiliary import distinct_images
from fedpriv.data.loading import load_split
from fedpriv.data.specs import DatasetSpec
from fedpriv.errors import ConfigError, join_errors
from fedpriv.membership_rounds import membership_errors
from fedpriv.run_data import distinct_dataset, load_run_split


def check_partitions(
    config: RunConfig, num_partitions: int, dataset: DatasetSpec
) -> tuple[AuxiliaryData | None, list[int]]:
    """Fail before training on selections of absent partitions or an impossible aux split.

    Returns the server's auxiliary split (None when ``aux-samples`` is 0: samples of the
    training set (``aux-type`` same or generic) or of the distinct data set, at the victim's
    shape) and the number of samples each client trains on. Clients whose partition holds fewer
    than ``local-samples`` train on all of it, with a warning naming them.
    """
    config.check_partitions(num_partitions)
    parts, index = partition_index(config, num_partitions)
    sizes = [len(p) for p in parts]
    _check_per_client_requests(config, sizes)
    if errors := membership_errors(config, sizes):
        raise ConfigError(join_errors(errors, "the membership attacks' samples"))
    if short := [pid for pid, size in enumerate(sizes) if size < config.local_samples]:
        log(WARNING, "fedpriv: local-samples=%d but partitions %s hold fewer (%s samples): they train on all they "
            "hold (config.json records each client's samples)", config.local_samples,
            ",".join(map(str, short[:10])) + ("..." if len(short) > 10 else ""),
            ",".join(str(sizes[pid]) for pid in short[:10]))
    if config.aux_type == "distinct":
        other = load_split(distinct_dataset(config), config.data_path(), "train", False, config.data_verify,
                           config.image_size, config.image_channels)
        aux = distinct_images(other, config.aux_samples, config.seed, dataset.channels, dataset.size)
    else:
        aux = load_run_split(config, "train").subset(index)
    log(INFO, "fedpriv: %d clients hold %d..%d samples; auxiliary split (%s): %d samples",
        num_partitions, min(map(len, parts)), max(map(len, parts)), config.aux_type, len(aux))
    if not len(aux):
        return None, sizes
    return AuxiliaryData(aux.images, aux.labels, properties=aux.properties), sizes


def _check_per_client_requests(config: RunConfig, sizes: list[int]) -> None:
    """Fail when each client is asked for more samples than the smallest partition holds (never capped).

    Parameters
    ----------
    config
        The run's configuration (its protocol says which request applies).
    sizes
        The number of training samples of each partition, by partition id.

    Raises
    ------
    ConfigError
        Naming the key, its value, the smallest partition and its size.
    """
    key, value = {"predictions": ("prediction-samples", config.prediction_samples),
                  "split-inference": ("feature-samples", config.feature_samples)}.get(config.protocol, ("", 0))
    smallest = min(range(len(sizes)), key=sizes.__getitem__)
    if value > sizes[smallest]:
        raise ConfigError(f"{key}={value} exceeds the {sizes[smallest]} samples of partition {smallest} (the "
                          f"smallest of {len(sizes)}); valid: {key} 1..{sizes[smallest]}, or fewer clients")
