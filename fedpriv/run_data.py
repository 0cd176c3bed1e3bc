"""A run's data: its data set's spec, its splits and the distinct auxiliary data set, from its config."""

from __future__ import annotations

from fedpriv.config import RunConfig
from fedpriv.data.auxiliary import DISTINCT_DEFAULTS
from fedpriv.data.loading import LabeledImages, dataset_spec, load_split
from fedpriv.data.specs import DatasetSpec
from fedpriv.errors import ConfigError


def run_dataset_spec(config: RunConfig) -> DatasetSpec:
    """Classes, shape and normalisation of the run's data set (own data sets included)."""
    return dataset_spec(config.dataset, config.normalization, config.image_size, config.image_channels)


def load_run_split(config: RunConfig, split: str) -> LabeledImages:
    """One split (``train`` or ``test``) of the run's data set (cached per process)."""
    return load_split(config.dataset, config.data_path(), split, False, config.data_verify,  # type: ignore[arg-type]
                      config.image_size, config.image_channels)


def distinct_dataset(config: RunConfig) -> str:
    """The data set ``aux-type='distinct'`` draws from: ``aux-dataset``, or the default pairing.

    Raises
    ------
    ConfigError
        If the run's data set has no default pairing and ``aux-dataset`` is empty.
    """
    if config.aux_dataset:
        return config.aux_dataset
    if config.dataset not in DISTINCT_DEFAULTS:
        raise ConfigError(f"aux-type='distinct' needs aux-dataset for dataset {config.dataset!r} (defaults exist "
                          f"for {', '.join(sorted(DISTINCT_DEFAULTS))})")
    return DISTINCT_DEFAULTS[config.dataset]
