"""The PSNR-per-round preset's federation learns: its global model reaches a plateau, so its curve means something."""

from __future__ import annotations

import statistics
import tomllib
from pathlib import Path

import pytest
import torch

from fedpriv.config import RunConfig
from fedpriv.in_process import train_in_process
from fedpriv.launcher import app_defaults, flattened
from fedpriv.validation import validated_config

APP = Path(__file__).resolve().parent.parent / "simulations" / "cifar100_ats"
PRESET = APP / "presets" / "trajectory-embedded-small.toml"
CLIENTS = 32  # the preset's num-supernodes
FLOOR = 0.55  # mean accuracy after rounds 160, 170, ..., 200; 10 classes, chance 0.10 (measured: 0.63)


def test_the_trajectory_presets_model_trains_to_a_plateau() -> None:
    preset = flattened(tomllib.loads(PRESET.read_text()))
    config = validated_config(app_defaults(APP) | preset | {"attack-clients": "none"})
    assert config.num_server_rounds == 200
    late = set(range(160, 201, 10))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray actor runs; one-image gradients gain nothing from more
    try:
        accuracies = train_in_process(config, CLIENTS, {0} | late)
    finally:
        torch.set_num_threads(threads)
    plateau = statistics.fmean(accuracies[r] for r in late)
    assert plateau >= FLOOR, f"mean accuracy after rounds 160-200 {plateau:.3f} < {FLOOR} (initial {accuracies[0]:.3f})"


def test_the_in_process_rounds_refuse_a_config_that_samples_clients() -> None:
    config = RunConfig(dataset="embedded-photos", model="shallow-cnn", clients_per_round=4, num_server_rounds=1)
    with pytest.raises(ValueError, match="clients-per-round=4 samples clients"):
        train_in_process(config, 8, {1})
