"""A client's work in one round, without Flower: load its partition, leak, train behind a defense."""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import torch

from fedpriv.config import RunConfig
from fedpriv.data.loading import load_split
from fedpriv.data.partition import partition_indices
from fedpriv.data.specs import resolve_spec
from fedpriv.defenses import build_defense
from fedpriv.errors import ConfigError
from fedpriv.leaks import GradientLeak, GroundTruth
from fedpriv.models import build_model
from fedpriv.training import TrainSettings, gradient_leak, train_local


def generator_for(*keys: object) -> torch.Generator:
    """A torch generator seeded from ``keys`` (stable across processes)."""
    return torch.Generator().manual_seed(zlib.crc32("/".join(map(str, keys)).encode()))


@functools.lru_cache(maxsize=2)
def _partitions(
    dataset: str, data_dir: str, partitioner: str, alpha: float, seed: int, num_partitions: int
) -> tuple[torch.Tensor, ...]:
    """All partitions' indices, computed once per process (a Ray actor serves many clients)."""
    labels = load_split(dataset, data_dir, "train").labels.numpy()
    parts = partition_indices(labels, num_partitions, partitioner, alpha, seed)
    return tuple(torch.as_tensor(p, dtype=torch.long) for p in parts)


def client_data(
    dataset: str, data_dir: str, partitioner: str, alpha: float, seed: int, partition_id: int, num_partitions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 images and labels of one partition of the training split."""
    train = load_split(dataset, data_dir, "train")
    index = _partitions(dataset, data_dir, partitioner, alpha, seed, num_partitions)[partition_id]
    return train.images[index], train.labels[index]


@dataclass
class TrainResult:
    """What one client produces in one round: update, metrics, and in attacked rounds the leak."""

    state_dict: dict[str, torch.Tensor]
    num_examples: int
    train_loss: float
    leak: GradientLeak | None
    truth: GroundTruth | None


def run_client_round(
    config: RunConfig,
    partition_id: int,
    num_partitions: int,
    state_dict: dict[str, torch.Tensor],
    server_round: int,
) -> TrainResult:
    """Run one client's round: the leak first (at the broadcast model), then local training.

    Parameters
    ----------
    config
        The validated run config.
    partition_id, num_partitions
        Which partition this client holds, out of how many.
    state_dict
        The broadcast global model.
    server_round
        The round, for seeds and the attack schedule.
    """
    dataset = resolve_spec(config.dataset, config.normalization)
    images, labels = client_data(
        config.dataset, str(config.data_path()), config.partitioner, config.dirichlet_alpha,
        config.seed, partition_id, num_partitions,
    )
    spec = config.defense_for(partition_id)
    defense = build_defense(spec)
    # Ray sets CUDA_VISIBLE_DEVICES per actor (client-resources-num-gpus); cuda:0 is this actor's GPU.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(config.model, dataset.num_classes, dataset.channels)
    model.load_state_dict(state_dict)
    model.to(device)
    leak = truth = None
    if config.is_attacked(server_round, partition_id):
        if config.attack_images > len(labels):
            raise ConfigError(
                f"attack-images={config.attack_images} exceeds the {len(labels)} samples of "
                f"partition {partition_id}; valid: 1..{len(labels)}"
            )
        pick = torch.randperm(len(labels), generator=generator_for(config.seed, "leak", server_round, partition_id))
        pick = pick[: config.attack_images]
        leak, truth = gradient_leak(
            model, images[pick], labels[pick], defense, dataset, config.attack_model_mode,
            config.reveal_labels, generator_for(config.seed, "leak-defense", server_round, partition_id), defense.spec,
        )
    settings = TrainSettings(config.local_epochs, config.batch_size, config.lr, config.momentum, config.weight_decay)
    loss = train_local(
        model, images, labels, defense, dataset, settings,
        generator_for(config.seed, "train", server_round, partition_id),
    )
    return TrainResult(
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        num_examples=len(labels), train_loss=loss, leak=leak, truth=truth,
    )
