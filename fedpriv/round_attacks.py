"""The server's attack harness: attacks built once per run, fed each round's leaks, scored by kind.

Attacks see only what their :class:`~fedpriv.attacks.base.Knowledge` declares: an
:class:`~fedpriv.attacks.base.AttackTarget` (the leak, a seed and, for attacks that know the
defense, the client's defense spec *from the run config*), their own copy of the broadcast model
(or a fresh model of its architecture), and in :meth:`~fedpriv.attacks.base.Attack.prepare` the
server's auxiliary split. Ground truth stays here and only reaches the scorers. A failing attack
(exception, out of memory, non-finite output) becomes a failed cell with its reason; the other
cells and the run go on.
"""

from __future__ import annotations

import copy
import time
import traceback
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedpriv.attacks import Attack, AttackTarget, AuxiliaryData, Reconstruction, build_attack
from fedpriv.attacks.base import settings_for
from fedpriv.baselines import prior_image
from fedpriv.behaviours import build_behaviour, run_model
from fedpriv.config import RunConfig
from fedpriv.data.specs import DatasetSpec
from fedpriv.leaks import GroundTruth, Leak
from fedpriv.metrics import psnr_per_image
from fedpriv.results import RunFolder
from fedpriv.scoring import match_order, match_targets, score


@dataclass(frozen=True)
class ObservedClient:
    """What the server holds for one attacked client (or one secure aggregate) in one round.

    ``defense_spec`` is the defense the run config declares for this client (what the server
    knows); ``truth`` is for the scorers only. A secure aggregate has ``partition_id``
    :data:`AGGREGATE` and the union of its clients' truths.
    """

    partition_id: int
    leak: Leak
    truth: GroundTruth
    attacks: tuple[str, ...]
    defense_spec: str


AGGREGATE = -1  # the partition id of a secure aggregate's rows (``aggregate_of`` lists its partitions)


def cell_name(server_round: int, partition_id: int, attack: str) -> str:
    """The file stem of one cell's image grid: round, client (or ``aggregate``) and attack."""
    who = "aggregate" if partition_id == AGGREGATE else f"client{partition_id:04d}"
    return f"round{server_round:03d}_{who}_{attack}"


def attack_seed(seed: int, server_round: int, partition_id: int, attack: str) -> int:
    """A seed for one (round, client, attack) cell, stable across processes and runs."""
    return zlib.crc32(f"{seed}/{server_round}/{partition_id}/{attack}".encode())


def _reconstruct_isolated(
    attack: Attack, model: nn.Module, dataset: DatasetSpec, targets: Sequence[AttackTarget]
) -> list[Reconstruction | str]:
    """All targets in one batch; if the batch fails, each target alone, so one bad cell stays one."""
    try:
        return list(attack.reconstruct(model, dataset, targets))
    except Exception as error:  # noqa: BLE001 - any attack failure becomes a recorded cell
        if len(targets) == 1:
            return [f"failed: {type(error).__name__}: {error}".splitlines()[0]]
        traceback.print_exc()
    results: list[Reconstruction | str] = []
    for target in targets:
        results += _reconstruct_isolated(attack, model, dataset, [target])
    return results


def _finite(result: Reconstruction) -> bool:
    return all(t is None or bool(torch.isfinite(t.float()).all()) for t in (result.images, result.defended))


def _grid(result: Reconstruction, truth: GroundTruth, matched: bool) -> tuple[list[torch.Tensor], list[str]]:
    """The cell's grid rows (x, T(x), the estimates under the images they match) and per-column PSNR captions.

    A targeted reconstruction (fewer images than the batch) stands under the images it matches,
    the other columns blank.
    """
    assert result.images is not None
    if len(result.images) < len(truth.images):
        chosen = match_targets(result.images, truth.images)
        placed = torch.zeros_like(truth.images)
        placed[chosen] = result.images.to(placed.dtype)
        captions = [""] * len(truth.images)
        for column, value in zip(chosen.tolist(), psnr_per_image(result.images, truth.images[chosen]), strict=True):
            captions[column] = f"{float(value):.1f} dB"
        return [truth.images, truth.defended, placed], captions
    order = match_order(result.images, truth.images) if matched else slice(None)
    grid = [truth.images, truth.defended, result.images[order]]
    for extra in (result.defended, result.alternatives):
        if extra is not None:
            grid.append(extra[order])
    return grid, [f"{float(v):.1f} dB" for v in psnr_per_image(result.images[order], truth.images)]


class AttackHarness:
    """The run's attacks, built and prepared once, then run on every attacked round.

    Parameters
    ----------
    config
        The run config (which attacks, their settings, seed, model architecture).
    dataset
        Shapes and normalisation the attacks work in.
    aux
        The server's auxiliary split, handed to attacks that declare ``aux="server"``; its mean
        image is those attacks' prior baseline (``psnr_prior``).
    """

    def __init__(self, config: RunConfig, dataset: DatasetSpec, aux: AuxiliaryData | None = None) -> None:
        self.config, self.dataset = config, dataset
        self.prior = prior_image(aux.images) if aux is not None and len(aux.images) else None
        self.attacks = {name: build_attack(name, settings_for(config, name)) for name in config.attack_names()}
        for attack in self.attacks.values():
            attack.prepare(dataset, aux if attack.knowledge.aux == "server" else None)

    def threat_model(self) -> dict[str, Any]:
        """What the server does and what each attack is handed, as data (logged, and in ``config.json``).

        Returns
        -------
        dict
            ``server``: its behaviour; ``attacks``: per attack, its ``model`` (``weights`` or
            ``architecture``), ``defense`` (whether it is told the client's defense spec:
            it models one and ``attacker-knows-defense`` does not withhold it),
            ``aux`` (``none`` or ``server``: the auxiliary split) and ``labels`` (``from the leak``
            when the protocol reveals them, else ``inferred``).
        """
        labels = "from the leak" if self.config.reveal_labels and self.config.protocol != "secagg" else "inferred"
        return {
            "server": build_behaviour(self.config).describe(),
            "attacks": {name: {"model": attack.knowledge.model, "defense": self.knows_defense(attack),
                               "aux": attack.knowledge.aux, "labels": labels}
                        for name, attack in self.attacks.items()},
        }

    def knows_defense(self, attack: Attack) -> bool:
        """Whether ``attack`` is told the clients' defense specs: it models them and the run does not withhold them."""
        return attack.knowledge.defense and self.config.attacker_knows_defense

    def describe_threat_model(self) -> str:
        """One line: the server's behaviour and each attack's knowledge."""
        model = self.threat_model()
        parts = []
        for name, knows in model["attacks"].items():
            defense = "the client's defense" if knows["defense"] else "not the client's defense"
            aux = "the server's auxiliary split" if knows["aux"] == "server" else "no auxiliary data"
            parts.append(f"{name} knows the model's {knows['model']}, {defense}, {aux}, labels {knows['labels']}")
        return f"server {model['server'].split(':')[0]}; " + ("; ".join(parts) or "no attacks")

    def _victim(self, attack: Attack, model: nn.Module, seed: int) -> nn.Module:
        """The attack's own model: a copy of the broadcast one, or a fresh one of its architecture."""
        if attack.knowledge.model == "architecture":
            torch.manual_seed(seed)
            return run_model(self.config, self.dataset).eval()
        return copy.deepcopy(model)

    def run_round(
        self, model: nn.Module, clients: Sequence[ObservedClient], server_round: int, folder: RunFolder | None = None
    ) -> list[dict[str, Any]]:
        """Run every configured attack on this round's leaks and score each cell.

        Parameters
        ----------
        model
            The broadcast model of this round (what the server sent; the attacks' victim).
        clients
            Attacked clients with their leaks, ground truth and attack names.
        server_round
            Round number, for records and seeds.
        folder
            Where image grids go (none when ``None``).

        Returns
        -------
        list[dict]
            One row per (client, attack) with the metrics of DESIGN.md's results contract;
            rows of attacks without image outputs have no image metrics.
        """
        rows: list[dict[str, Any]] = []
        for name in sorted({a for c in clients for a in c.attacks}):
            attack = self.attacks[name]
            chosen = [c for c in clients if name in c.attacks]
            targets = [
                AttackTarget(
                    leak=c.leak,
                    seed=attack_seed(self.config.seed, server_round, c.partition_id, name),
                    defense_spec=c.defense_spec if self.knows_defense(attack) else None,
                )
                for c in chosen
            ]
            victim = self._victim(attack, model, attack_seed(self.config.seed, server_round, -1, name))
            start = time.perf_counter()
            results = _reconstruct_isolated(attack, victim, self.dataset, targets)
            seconds = (time.perf_counter() - start) / max(len(chosen), 1)
            for client, result in zip(chosen, results, strict=True):
                rows.append(self._row(name, client, result, server_round, seconds, folder))
        return rows

    def _row(self, name: str, client: ObservedClient, result: Reconstruction | str, server_round: int,
             seconds: float, folder: RunFolder | None) -> dict[str, Any]:
        row: dict[str, Any] = {
            "round": server_round,
            "partition_id": client.partition_id,
            "defense": client.truth.defense,
            "attack": name,
            "protocol": client.leak.protocol,
            "n_images": len(client.truth.labels),
            "seconds": round(seconds, 3),
        }
        if isinstance(result, Reconstruction) and not _finite(result):
            result = "failed: non-finite reconstruction"
        if isinstance(result, str):
            return row | {"status": result}
        prior = self.prior if self.attacks[name].knowledge.aux == "server" else None
        row |= score(result, client.truth, prior) | {"status": "ok"}
        row |= {k: float(v) for k, v in result.fields.items()}
        if result.engine is not None:
            row["engine"] = result.engine
        who = "aggregate" if client.partition_id == AGGREGATE else f"client {client.partition_id}"
        title = f"round {server_round} {who} | {client.truth.defense} | {name}"
        if folder is not None and result.images is not None:
            grid, captions = _grid(result, client.truth, row["matched"])
            folder.write_grid(cell_name(server_round, client.partition_id, name), grid, title, captions)
        if folder is not None and result.gallery is not None:
            folder.write_grid(f"{cell_name(server_round, client.partition_id, name)}_classes",
                              [result.gallery], f"{title} | one image per class",
                              [f"class {k}" for k in range(len(result.gallery))])
        return row
