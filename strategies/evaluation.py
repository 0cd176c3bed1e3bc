"""The server's central evaluation (Flower's ``evaluate_fn``): the global model on the test split, every round.

After each round (and for the initial model, round 0) it measures the global model, composes the
privacy accountant of local DP, assembles the round's ``rounds.jsonl`` row from what the strategy
saw, hands it to the recorder with the model, and warns once the model's test loss is no longer
finite (later attack rows are then marked ``diverged``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from logging import INFO, WARNING
from typing import Any, Protocol

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import RdpAccountant
from torch import nn

from fedpriv.baselines import psnr_summary
from fedpriv.behaviours import run_model
from fedpriv.client_task import generator_for
from fedpriv.config import RunConfig
from fedpriv.data.auxiliary import client_classes
from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses import build_defense
from fedpriv.defenses.features import FeatureDefense, feature_codec
from fedpriv.membership.statistics import AUDIT
from fedpriv.membership_rounds import MembershipRounds, describe
from fedpriv.models import load_wire_state
from fedpriv.recorder import RunRecorder
from fedpriv.rotation.networks import SplitNetwork
from fedpriv.run_data import load_run_split
from fedpriv.run_setup import RunPlan
from fedpriv.strategies.inner import round_event
from fedpriv.training import evaluate


def model_builder(config: RunConfig, dataset: DatasetSpec) -> Callable[[ArrayRecord], nn.Module]:
    """Builds the global model (eval mode) from an ArrayRecord of its wire state."""

    def model_from(arrays: ArrayRecord) -> nn.Module:
        return load_wire_state(run_model(config, dataset), arrays.to_torch_state_dict()).eval()

    return model_from


def divergence_warning(config: RunConfig, run_round: int, loss: float) -> str | None:
    """What to tell the user when the global model's test loss is not finite, else ``None``.

    Parameters
    ----------
    config
        The run's configuration (its protocol and the step size that drives training).
    run_round
        The round just evaluated.
    loss
        The global model's test loss after that round.
    """
    if math.isfinite(loss):
        return None
    key, value = ("server-lr", config.server_lr) if config.protocol == "fedsgd" else ("lr", config.lr)
    return (f"fedpriv round {run_round}: the global model's test loss is {loss}: training diverged "
            f"(protocol {config.protocol}, {key} {value:g}), and later rounds attack a diverged model; "
            f"a smaller {key} or an initial-checkpoint of a trained model keeps it finite")


class ObservingStrategy(Protocol):
    """What the central evaluation reads from a run's strategy (attacking or secure-aggregation)."""

    round_summary: dict[int, dict[str, Any]]  # per run round: sampled, failed, rows, start
    diverged_after: int | None  # the first round whose global model's test loss was not finite


class CentralEvaluation:
    """Flower's ``evaluate_fn`` for one run: call it with (Flower's round, the global model's arrays).

    Parameters
    ----------
    plan
        The run (config, data set, rounds already finished).
    recorder
        Where the round's row and the global model go.
    strategy
        The run's strategy: its round summaries fill the row; its ``diverged_after`` is set here.
    num_partitions
        The number of clients (local DP's accountant composes one event per round).
    accountant
        The run's RDP accountant (None without DP).
    membership
        The run's membership attacks on the released model (scored after the evaluation).
    """

    def __init__(self, plan: RunPlan, recorder: RunRecorder, strategy: ObservingStrategy, num_partitions: int,
                 accountant: RdpAccountant | None, membership: MembershipRounds) -> None:
        config, dataset = plan.config, plan.dataset
        self.config, self.dataset, self.offset = config, dataset, plan.offset
        self.recorder, self.strategy, self.num_partitions = recorder, strategy, num_partitions
        self.membership = membership
        self.test = load_run_split(config, "test")
        pick = torch.randperm(len(self.test.labels), generator=torch.Generator().manual_seed(config.seed))
        pick = pick[self.test.labels[pick] < client_classes(config.aux_type, dataset.num_classes)]  # the clients' task
        self.pick = pick[: config.eval_samples] if config.eval_samples else pick
        # epsilon is reported where rounds are composed: by Flower's DP wrapper of FedAvg; here for local DP
        # and under secagg, whose legacy DP wrapper has no accountant
        self.composes = config.dp == "local" or config.protocol == "secagg"
        self.reported = accountant if self.composes or config.aggregator == "fedavg" else None
        self.run_defense = build_defense(config.defense)
        self.model_from = model_builder(config, dataset)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate the global model after Flower's round ``server_round``; record and log the round."""
        config, run_round = self.config, server_round + self.offset
        images, labels = self.test.images[self.pick], self.test.labels[self.pick]
        model = self.model_from(arrays)
        extra: dict[str, float] = {}
        if isinstance(model, SplitNetwork) and isinstance(self.run_defense, FeatureDefense):  # behind the defense
            extra["accuracy_plain"] = evaluate(model, images, labels, self.dataset)[1]
            generator = generator_for(config.seed, "evaluate", run_round)
            model.codec = feature_codec(self.run_defense, model.is_complex, generator)
        loss, accuracy = evaluate(model, images, labels, self.dataset)
        summary = self.strategy.round_summary.get(run_round, {})
        if server_round > 0 and self.composes and self.reported is not None:
            self.reported.compose(round_event(config, self.num_partitions))
        epsilon = None
        if self.reported is not None:
            epsilon = self.reported.get_epsilon(config.dp_delta) if run_round else 0.0
        membership = [row | {"dp_epsilon": epsilon} if row["attack"] == AUDIT else row
                      for row in summary.get("membership", [])]  # the server's, from the round's replies
        if self.membership.scores(run_round) and (server_round > 0 or not config.resume):
            membership += self.membership.rows(model, run_round, epsilon)
        if membership:
            self.recorder.membership_rows(membership)
            for line in map(describe, membership):
                log(INFO, "%s", line)
        row = {
            "round": run_round, "accuracy": accuracy, "loss": loss, **extra,
            "sampled": summary.get("sampled", []),
            "failed": summary.get("failed", []),
            "attacked": sorted({r["partition_id"] for r in summary.get("rows", [])}),
            "seconds": round(time.perf_counter() - summary["start"], 3) if "start" in summary else 0.0,
        }
        if epsilon is not None:
            row |= {"dp_epsilon": epsilon, "dp_delta": config.dp_delta}
        recorded = row if server_round > 0 or not config.resume else None  # a resumed run's round 0 is recorded
        self.recorder.round_finished(run_round, recorded, arrays.to_torch_state_dict())
        if warning := divergence_warning(config, run_round, loss):
            log(WARNING, "%s", warning)
            if self.strategy.diverged_after is None:
                self.strategy.diverged_after = run_round  # later rounds' attack rows are no results
        log(INFO, "fedpriv round %d: accuracy %.4f, %s, failed clients %d",
            run_round, accuracy, psnr_summary(summary.get("rows", [])), len(row["failed"]))
        return MetricRecord({"accuracy": accuracy, "loss": loss})
