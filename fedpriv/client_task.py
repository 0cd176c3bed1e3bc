"""A client's work in one round, without Flower: load its data, run the protocol behind its defense."""

from __future__ import annotations

import functools
import zlib

import torch

from fedpriv.behaviours import run_model
from fedpriv.config import RunConfig
from fedpriv.data.auxiliary import split_with_aux
from fedpriv.defenses import build_defense
from fedpriv.errors import ConfigError
from fedpriv.models import load_wire_state
from fedpriv.protocols import PROTOCOLS, ClientReply
from fedpriv.run_data import load_run_split, run_dataset_spec


def generator_for(*keys: object) -> torch.Generator:
    """A torch generator seeded from ``keys`` (stable across processes)."""
    return torch.Generator().manual_seed(zlib.crc32("/".join(map(str, keys)).encode()))


@functools.lru_cache(maxsize=2)
def _split(config: RunConfig, num_partitions: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
    """All partitions' indices, the server's auxiliary indices and the membership holdout, once per process.

    With membership attacks, ``membership-samples`` seeded indices of the clients' data are held
    out of every partition: the non-members, from the members' distribution.

    Raises
    ------
    ConfigError
        When the clients' data cannot give as many non-members and members as asked.
    """
    labels = load_run_split(config, "train").labels.numpy()
    parts, aux = split_with_aux(labels, num_partitions, config.partitioner, config.dirichlet_alpha, config.seed,
                                config.aux_samples, config.aux_type, run_dataset_spec(config).num_classes)
    held = torch.zeros(0, dtype=torch.long)
    split = tuple(torch.as_tensor(p, dtype=torch.long) for p in parts)
    if config.membership_names():
        union = torch.cat(split)
        if 2 * config.membership_samples > len(union):
            raise ConfigError(f"membership-samples={config.membership_samples}: the clients' data holds {len(union)} "
                              "samples, of which that many are held out as non-members and as many members drawn "
                              f"from the rest; valid: 1..{len(union) // 2}")
        order = torch.randperm(len(union), generator=generator_for(config.seed, "membership-holdout"))
        held = union[order[: config.membership_samples]].sort().values
        split = tuple(p[~torch.isin(p, held)] for p in split)
    return split, torch.as_tensor(aux, dtype=torch.long), held


def partition_index(config: RunConfig, num_partitions: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Training-split indices of every client's data (capped at ``local-samples``) and of the aux split."""
    parts, aux, _ = _split(config, num_partitions)
    if config.local_samples:
        keep = config.local_samples
        parts = tuple(
            p[torch.randperm(len(p), generator=generator_for(config.seed, "local-samples", pid))[:keep]]
            for pid, p in enumerate(parts)
        )
    return parts, aux


def membership_holdout(config: RunConfig, num_partitions: int) -> torch.Tensor:
    """Training-split indices held out of every client's data as membership non-members (empty without attacks)."""
    return _split(config, num_partitions)[2]


def client_data(config: RunConfig, partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 images and labels of one client's data."""
    train = load_run_split(config, "train")
    index = partition_index(config, num_partitions)[0][partition_id]
    return train.images[index], train.labels[index]


def client_properties(config: RunConfig, partition_id: int, num_partitions: int) -> torch.Tensor:
    """The private property of each of one client's samples (its labels where the set defines none)."""
    return load_run_split(config, "train").property_of(partition_index(config, num_partitions)[0][partition_id])


def run_client_round(
    config: RunConfig,
    partition_id: int,
    num_partitions: int,
    state: dict[str, torch.Tensor],
    server_round: int,
    client_state: dict[str, torch.Tensor] | None = None,
) -> ClientReply:
    """Run one client's round under the run's protocol.

    Parameters
    ----------
    config
        The validated run config.
    partition_id, num_partitions
        Which partition this client holds, out of how many.
    state
        The broadcast global model (floating-point state dict).
    server_round
        The round, for seeds and the attack schedule.
    client_state
        The client's own state across rounds (updated in place; ``None``: none kept).

    Returns
    -------
    ClientReply
        What the client sends; ``truth`` is set in attacked rounds only.
    """
    dataset = run_dataset_spec(config)
    images, labels = client_data(config, partition_id, num_partitions)
    defense = build_defense(config.defense_for(partition_id))
    # Ray sets CUDA_VISIBLE_DEVICES per actor (client-resources-num-gpus); cuda:0 is this actor's GPU.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_wire_state(run_model(config, dataset), state).to(device)
    protocol = PROTOCOLS.get(config.protocol)
    return protocol.client_round(
        config, model, images, labels, defense, dataset,
        generator_for(config.seed, config.protocol, server_round, partition_id),
        config.is_attacked(server_round, partition_id), {} if client_state is None else client_state,
        client_properties(config, partition_id, num_partitions),
    )
