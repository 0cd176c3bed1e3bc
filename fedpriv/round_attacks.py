"""One round's attacks: route each client's leak to its attacks, score against ground truth.

Attacks see only :class:`~fedpriv.attacks.base.AttackTarget` (the leak, a seed and, for attacks
that declare ``knows_defense``, the client's defense spec). Ground truth stays here and only
reaches :func:`score`. A failing attack (exception, out of memory, non-finite output) becomes
a failed cell with its reason; the other cells and the run go on.
"""

from __future__ import annotations

import time
import traceback
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedpriv.attacks import Attack, AttackTarget, Reconstruction, build_attack
from fedpriv.config import RunConfig
from fedpriv.data.specs import DatasetSpec
from fedpriv.leaks import GroundTruth, Leak
from fedpriv.metrics import mse_per_image, psnr_per_image, ssim_per_image
from fedpriv.results import RunFolder


@dataclass(frozen=True)
class ObservedClient:
    """What the server holds for one attacked client in one round."""

    partition_id: int
    leak: Leak
    truth: GroundTruth
    attacks: tuple[str, ...]


def attack_seed(seed: int, server_round: int, partition_id: int, attack: str) -> int:
    """A seed for one (round, client, attack) cell, stable across processes and runs."""
    return zlib.crc32(f"{seed}/{server_round}/{partition_id}/{attack}".encode())


def score(reconstruction: Reconstruction, truth: GroundTruth) -> dict[str, float]:
    """PSNR, SSIM and MSE of one reconstruction, averaged over its images.

    ``psnr``/``ssim``/``mse`` compare the attack's estimate of x with the original x;
    ``psnr_defended``/``ssim_defended`` compare its estimate of T(x) (``defended`` when the
    attack models the defense, else ``images``) with the defended batch T(x), the reference's
    convention. Images are compared in the order the client sent them.
    """
    images = reconstruction.images.detach().cpu()
    defended = images if reconstruction.defended is None else reconstruction.defended.detach().cpu()
    return {
        "psnr": float(psnr_per_image(images, truth.images).mean()),
        "psnr_defended": float(psnr_per_image(defended, truth.defended).mean()),
        "ssim": float(ssim_per_image(images, truth.images).mean()),
        "ssim_defended": float(ssim_per_image(defended, truth.defended).mean()),
        "mse": float(mse_per_image(images, truth.images).mean()),
    }


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


def run_round_attacks(
    model: nn.Module,
    dataset: DatasetSpec,
    clients: Sequence[ObservedClient],
    config: RunConfig,
    server_round: int,
    folder: RunFolder | None = None,
) -> list[dict[str, Any]]:
    """Run every configured attack on this round's leaks and score each cell.

    Parameters
    ----------
    model
        The broadcast model of this round (what the server sent; the attacks' victim).
    dataset
        Shapes and normalisation the attacks work in.
    clients
        Attacked clients with their leaks, ground truth and attack names.
    config
        The run config (attack settings, seed).
    server_round
        Round number, for records and seeds.
    folder
        Where image grids go (none when ``None``).

    Returns
    -------
    list[dict]
        One row per (client, attack) with the metrics of DESIGN.md's results contract.
    """
    settings = config.attack_settings()
    rows: list[dict[str, Any]] = []
    names = sorted({a for c in clients for a in c.attacks})
    for name in names:
        attack = build_attack(name, settings)
        chosen = [c for c in clients if name in c.attacks]
        targets = [
            AttackTarget(
                leak=c.leak,
                seed=attack_seed(config.seed, server_round, c.partition_id, name),
                defense_spec=c.truth.defense if attack.knows_defense else None,
            )
            for c in chosen
        ]
        start = time.perf_counter()
        results = _reconstruct_isolated(attack, model, dataset, targets)
        seconds = (time.perf_counter() - start) / max(len(chosen), 1)
        for client, result in zip(chosen, results):
            row: dict[str, Any] = {
                "round": server_round,
                "partition_id": client.partition_id,
                "defense": client.truth.defense,
                "attack": name,
                "n_images": len(client.truth.labels),
                "seconds": round(seconds, 3),
            }
            if isinstance(result, Reconstruction) and not torch.isfinite(result.images).all():
                result = "failed: non-finite reconstruction"
            if isinstance(result, str):
                rows.append(row | {"status": result})
                continue
            row |= score(result, client.truth) | {"status": "ok"}
            row |= {k: float(v) for k, v in result.fields.items()}
            rows.append(row)
            if folder is not None:
                grid = [client.truth.images, client.truth.defended, result.images]
                if result.defended is not None:
                    grid.append(result.defended)
                folder.write_grid(f"round{server_round:03d}_client{client.partition_id:04d}_{name}", grid)
    return rows
