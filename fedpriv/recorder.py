"""The run folder's one writer: every file a run leaves, written when the run-folder contract says.

The server claims the folder (:func:`fedpriv.results.claim_folder`) and runs its preflight
(:mod:`fedpriv.run_setup`) without writing; it then hands a :class:`RunRecorder` to the strategy and
the evaluation, which report what happened (the run began, a round's attack rows, a round
finished, the run finished) and never open a file themselves. Image grids are the one exception
in form, not in ownership: the attack harness writes ``reconstructions/`` through
:attr:`RunRecorder.grids`, the recorder's own folder.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from fedpriv.config import RunConfig
from fedpriv.data.specs import DatasetSpec
from fedpriv.results import CHECKPOINT, CONFIG, RunFolder, read_jsonl, save_checkpoint
from fedpriv.run_page import write_index


def resolved_config(config: RunConfig, partitions: Iterable[int], dataset: DatasetSpec,
                    pretraining: dict[str, Any] | None, sizes: list[int],
                    threat_model: dict[str, Any]) -> dict[str, Any]:
    """What ``config.json`` holds: the resolved run config, the clients, the threat model and versions.

    Parameters
    ----------
    config
        The validated run config.
    partitions
        The partition ids the server discovered.
    dataset
        The run's data set (its normalisation constants are recorded).
    pretraining
        What server pretraining on the auxiliary split reported, or ``None``.
    sizes
        The number of training samples of each partition, by partition id.
    threat_model
        The attacks' declared knowledge (:meth:`fedpriv.round_attacks.AttackHarness.threat_model`).
    """
    chosen = sorted(partitions)
    return {
        "server-pretraining": pretraining,
        "threat-model": threat_model,
        "run-config": config.as_run_config(),
        "num-partitions": len(chosen),
        "aux-samples": config.aux_samples,
        "normalization-mean": list(dataset.mean),
        "normalization-std": list(dataset.std),
        "clients": {
            str(pid): {"defense": config.defense_for(pid), "attacks": config.attacks_for(pid), "samples": sizes[pid]}
            for pid in chosen
        },
        "versions": {
            "python": platform.python_version(),
            **{pkg: version(pkg) for pkg in ("fedpriv", "flwr", "torch", "torchvision")},
        },
    }


class RunRecorder:
    """Writes one run folder; the strategy and the evaluation call it, nothing else writes there.

    Every file is written atomically or appended one whole line at a time
    (:class:`fedpriv.results.RunFolder`), so a run killed at any point leaves every finished round
    readable. The calls, in the order a run makes them:

    1. :meth:`begin` once: on resume, drop rows of unfinished rounds and rewrite ``metrics.csv``;
       then ``config.json``.
    2. Per round with attacked clients, :meth:`attack_rows`: the rows appended to
       ``metrics.jsonl``, then ``metrics.csv`` and ``psnr_per_round.png`` rewritten. The
       harness writes the round's ``reconstructions/`` through :attr:`grids` before.
    3. Per evaluated round (0 = the initial model): with membership attacks on that round,
       :meth:`membership_rows` appends their rows to ``membership.jsonl``; then
       :meth:`round_finished`: its row appended to ``rounds.jsonl``, ``checkpoint.pt`` replaced,
       ``index.html`` rewritten.
    4. :meth:`finish` once: ``psnr_per_round.png`` and ``index.html`` rewritten.

    Parameters
    ----------
    path
        The run folder, already claimed (created if missing).
    """

    def __init__(self, path: Path) -> None:
        self._folder = RunFolder(path)

    @property
    def path(self) -> Path:
        """The run folder (absolute)."""
        return self._folder.path

    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl``: one row per (round, partition, attack)."""
        return self._folder.metrics_path

    @property
    def grids(self) -> RunFolder:
        """The folder the attack harness writes ``reconstructions/`` through (``write_grid``)."""
        return self._folder

    def begin(self, resolved: dict[str, Any], resume_after: int | None = None) -> None:
        """Start the folder's records: ``config.json`` (after trimming a resumed run's unfinished rounds).

        Parameters
        ----------
        resolved
            What ``config.json`` holds (:func:`resolved_config`).
        resume_after
            The last finished round of the run being resumed; rows of later rounds are dropped.
        """
        if resume_after is not None:
            self._folder.truncate_after(resume_after)
            self._folder.write_csv()
        self._folder.write_json(CONFIG, resolved)

    def attack_rows(self, rows: list[dict[str, Any]]) -> None:
        """Record one round's attack rows: ``metrics.jsonl``, ``metrics.csv`` and the plot."""
        self._folder.append(self._folder.metrics_path, rows)
        self._folder.write_csv()
        self._folder.write_plot()

    def membership_rows(self, rows: list[dict[str, Any]]) -> None:
        """Record one round's membership attack rows in ``membership.jsonl``."""
        self._folder.append(self._folder.membership_path, rows)

    def round_finished(self, run_round: int, row: dict[str, Any] | None, state: dict[str, torch.Tensor]) -> None:
        """Record an evaluated round: its ``rounds.jsonl`` row, the checkpoint and ``index.html``.

        Parameters
        ----------
        run_round
            The round whose global model was evaluated (0: the initial model).
        row
            The round's row; ``None`` when it is already recorded (a resumed run's first evaluation).
        state
            The global model after the round (saved for ``resume``).
        """
        if row is not None:
            self._folder.append(self._folder.rounds_path, [row])
        save_checkpoint(self._folder.path / CHECKPOINT, run_round, state)
        write_index(self._folder)

    def finish(self) -> int:
        """Rewrite the plot and ``index.html`` at the end of the run; return the number of attack rows."""
        self._folder.write_plot()
        write_index(self._folder)
        return len(read_jsonl(self._folder.metrics_path))
