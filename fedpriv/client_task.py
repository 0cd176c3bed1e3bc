"""A client's work in one round, without Flower: load its data, run the protocol behind its defense."""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Held:
    """Training-split indices held out of every client's data: membership non-members and audit canaries."""

    non_members: torch.Tensor
    canaries: torch.Tensor


@functools.lru_cache(maxsize=2)
def _split(config: RunConfig, num_partitions: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, Held]:
    """All partitions' indices, the server's auxiliary indices and what is held out, once per process.

    With membership attacks, ``membership-samples`` seeded indices of the clients' data are held
    out of every partition: the non-members, from the members' distribution. With
    ``audit-canaries``, as many more: the canaries' pool (:func:`audit_canaries`).

    Raises
    ------
    ConfigError
        When the clients' data cannot give as many non-members, members and canaries as asked.
    """
    labels = load_run_split(config, "train").labels.numpy()
    parts, aux = split_with_aux(labels, num_partitions, config.partitioner, config.dirichlet_alpha, config.seed,
                                config.aux_samples, config.aux_type, run_dataset_spec(config).num_classes)
    split = tuple(torch.as_tensor(p, dtype=torch.long) for p in parts)
    members = config.membership_samples if config.membership_names() else 0
    wanted = 2 * members + config.audit_canaries
    union = torch.cat(split)
    if wanted > len(union):
        raise ConfigError(f"membership-samples={members if members else 'unused'} and audit-canaries="
                          f"{config.audit_canaries} ask for {wanted} of the clients' {len(union)} samples (each "
                          "non-member held out, as many members, each canary held out); valid: together at most "
                          f"{len(union)}")
    order = torch.randperm(len(union), generator=generator_for(config.seed, "membership-holdout"))
    held = Held(union[order[:members]].sort().values,
                union[order[members : members + config.audit_canaries]].sort().values)
    if members or config.audit_canaries:
        out = torch.cat([held.non_members, held.canaries])
        split = tuple(p[~torch.isin(p, out)] for p in split)
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
    return _split(config, num_partitions)[2].non_members


@dataclass(frozen=True)
class Canaries:
    """The audit's canaries: held-out samples with a wrong label, each in one client's data with probability 1/2.

    Attributes
    ----------
    index
        (m,) training-split indices (held out of every partition).
    labels
        (m,) the wrong label each canary carries (uniform over the other labels).
    included
        (m,) bool: whether the canary is in its client's data (the audit's secret).
    partition
        (m,) the partition whose data it joins when included.
    """

    index: torch.Tensor
    labels: torch.Tensor
    included: torch.Tensor
    partition: torch.Tensor


@functools.lru_cache(maxsize=2)
def audit_canaries(config: RunConfig, num_partitions: int) -> Canaries:
    """The run's ``audit-canaries`` canaries (Steinke et al.'s randomised inclusion), fixed by the seed."""
    index = _split(config, num_partitions)[2].canaries
    generator = generator_for(config.seed, "audit-canaries")
    classes = run_dataset_spec(config).num_classes
    true = load_run_split(config, "train").labels[index]
    wrong = (true + 1 + torch.randint(classes - 1, (len(index),), generator=generator)) % classes
    included = torch.rand(len(index), generator=generator) < 0.5
    partition = torch.randint(num_partitions, (len(index),), generator=generator)
    return Canaries(index, wrong, included, partition)


def _with_canaries(config: RunConfig, partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The client's training-split indices and their labels: its partition, then its included canaries."""
    index = partition_index(config, num_partitions)[0][partition_id]
    labels = load_run_split(config, "train").labels[index]
    if not config.audit_canaries:
        return index, labels
    canaries = audit_canaries(config, num_partitions)
    mine = canaries.included & (canaries.partition == partition_id)
    return torch.cat([index, canaries.index[mine]]), torch.cat([labels, canaries.labels[mine]])


def client_data(config: RunConfig, partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 images and labels of one client's data (its included audit canaries last, mislabelled)."""
    index, labels = _with_canaries(config, partition_id, num_partitions)
    return load_run_split(config, "train").images[index], labels


def client_properties(config: RunConfig, partition_id: int, num_partitions: int) -> torch.Tensor:
    """The private property of each of one client's samples (its labels where the set defines none)."""
    return load_run_split(config, "train").property_of(_with_canaries(config, partition_id, num_partitions)[0])


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
