"""FedAvg that samples clients by partition id, attacks their leaks, and records every round."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedpriv.clients.records import pop_leak
from fedpriv.config import RunConfig
from fedpriv.data.specs import DatasetSpec
from fedpriv.results import RunFolder
from fedpriv.round_attacks import ObservedClient, run_round_attacks


def sample_partitions(config: RunConfig, server_round: int, partitions: list[int]) -> list[int]:
    """The partition ids trained in a round: all, or ``clients-per-round`` drawn from the seed."""
    if config.clients_per_round == 0 or config.clients_per_round >= len(partitions):
        return sorted(partitions)
    rng = np.random.default_rng([config.seed, server_round])
    return sorted(int(p) for p in rng.choice(sorted(partitions), config.clients_per_round, replace=False))


def _aggregate_train_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Sum of examples and example-weighted mean training loss (partition ids are not averaged)."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    total = sum(int(m[weighting_key]) for m in metrics)
    loss = sum(float(m["train-loss"]) * int(m[weighting_key]) for m in metrics) / max(total, 1)
    return MetricRecord({weighting_key: total, "train-loss": loss})


class AttackingFedAvg(FedAvg):
    """FedAvg over the sampled partitions; leaks are attacked and stripped before aggregation.

    Parameters
    ----------
    config
        The validated run config.
    folder
        The run folder records are written to.
    nodes
        Partition id -> Flower node id (from the discovery query).
    dataset
        Shapes and normalisation.
    model_from
        Builds the broadcast model (eval mode) from an ArrayRecord, for the attacks.
    round_offset
        Rounds already finished (when resuming); Flower's round r is run round r + offset.
    """

    def __init__(
        self,
        config: RunConfig,
        folder: RunFolder,
        nodes: dict[int, int],
        dataset: DatasetSpec,
        model_from: Callable[[ArrayRecord], nn.Module],
        round_offset: int = 0,
    ) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=len(nodes),
            min_available_nodes=len(nodes),
            train_metrics_aggr_fn=_aggregate_train_metrics,
        )
        self.config, self.folder, self.nodes = config, folder, nodes
        self.partition_of = {node: pid for pid, node in nodes.items()}
        self.dataset, self.model_from, self.round_offset = dataset, model_from, round_offset
        self.broadcast: ArrayRecord | None = None
        self.round_summary: dict[int, dict[str, Any]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the model to this round's partitions (sampled from the seed, not Flower's RNG)."""
        run_round = server_round + self.round_offset
        self.broadcast = arrays
        chosen = sample_partitions(self.config, run_round, list(self.nodes))
        config["server-round"] = run_round
        log(INFO, "configure_train: round %d, partitions %s", run_round, chosen)
        self.round_summary[run_round] = {"sampled": chosen, "start": time.perf_counter()}
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=self.nodes[p]) for p in chosen]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Attack and score the leaks, strip them, record failures, then aggregate with FedAvg."""
        run_round = server_round + self.round_offset
        # Replies arrive in completion order, which load changes. FedAvg's sum in that order
        # differs in the last bits, and training amplifies it (measured: round-2 accuracy
        # 0.52 to 0.66 for three orders of the same four updates), so fix the order.
        replies = sorted(replies, key=lambda msg: self.partition_of.get(msg.metadata.src_node_id, -1))
        failed, observed = [], []
        for msg in replies:
            pid = self.partition_of.get(msg.metadata.src_node_id, -1)
            if msg.has_error():
                reason = str(msg.error.reason).strip().splitlines()[-1] if msg.error.reason else "unknown"
                failed.append({"partition_id": pid, "reason": reason})
                log(WARNING, "round %d: client of partition %d failed: %s", run_round, pid, reason)
                continue
            popped = pop_leak(msg.content)
            if popped is not None:
                leak, truth = popped
                observed.append(ObservedClient(pid, leak, truth, tuple(self.config.attacks_for(pid))))
        if failed and self.config.fail_fast:
            raise RuntimeError(f"fail-fast: round {run_round} had failed clients: {failed}")
        rows: list[dict[str, Any]] = []
        if observed and self.broadcast is not None:
            model = self.model_from(self.broadcast)
            rows = run_round_attacks(model, self.dataset, observed, self.config, run_round, self.folder)
            self.folder.append(self.folder.metrics_path, rows)
            self.folder.write_csv()
            self.folder.write_plot()
            for row in rows:
                log(
                    INFO,
                    "round %d client %d %s: PSNR %s dB (vs T(x) %s) [%s]",
                    run_round, row["partition_id"], row["attack"], _fmt(row.get("psnr")),
                    _fmt(row.get("psnr_defended")), row["status"],
                )
        self.round_summary[run_round].update(failed=failed, rows=rows)
        return super().aggregate_train(server_round, [m for m in replies if not m.has_error()])


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "-"
