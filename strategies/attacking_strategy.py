"""The server's strategy: samples partitions, derives and attacks leaks, then hands replies to the inner strategy.

:class:`AttackingStrategy` wraps any Flower strategy (FedAvg, FedMedian, Krum, or Flower's DP
wrappers around one). It is the outermost layer, so it sees each reply exactly as the client
sent it, after every client mod: it pops the evaluation-only truth and the leak metadata
(:mod:`fedpriv.wire`), derives the leak from the reply's one ArrayRecord with the protocol,
runs the attacks, and only then passes the replies (one ArrayRecord, one MetricRecord each) on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedpriv.baselines import verdict
from fedpriv.config import RunConfig
from fedpriv.leaks import PARAMETER_LEAK_KINDS, GroundTruth, descent_direction
from fedpriv.membership_rounds import MembershipRounds
from fedpriv.protocols import PROTOCOLS
from fedpriv.recorder import RunRecorder
from fedpriv.round_attacks import AGGREGATE, AttackHarness, ObservedClient
from fedpriv.wire import LEAK_KEY, ROUND_KEY, TRUTH_KEY, Sent, decode_fields, decode_truth, scalar


def sample_partitions(config: RunConfig, server_round: int, partitions: list[int]) -> list[int]:
    """The partition ids trained in a round: all, or ``clients-per-round`` drawn from the seed."""
    if config.clients_per_round == 0 or config.clients_per_round >= len(partitions):
        return sorted(partitions)
    rng = np.random.default_rng([config.seed, server_round])
    return sorted(int(p) for p in rng.choice(sorted(partitions), config.clients_per_round, replace=False))


class ChosenNodes:
    """A Grid seen through this round's sample: ``get_node_ids`` lists only the chosen nodes.

    The inner strategy then addresses exactly the partitions :func:`sample_partitions` chose
    (seeded by partition id, not by Flower's random node ids) and adds its own configuration
    (a DP wrapper's clipping norm) as Flower documents it.
    """

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid, self._node_ids = grid, node_ids

    def get_node_ids(self) -> list[int]:
        """The chosen nodes."""
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def failure_reason(text: str) -> str:
    """The last line of a client's error, without the ``'>`` Flower's exception repr leaves."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return re.sub(r"'?>+$", "", lines[-1]).strip() if lines else "unknown"


def strip_reply(content: RecordDict, sent: type[Sent]) -> tuple[GroundTruth | None, Sent]:
    """Remove fedpriv's records from a reply; return (truth or None, what was sent beside the arrays).

    ``sent`` is the protocol's ``Sent`` dataclass; a reply without the record decodes to its defaults.
    """
    truth = decode_truth(dict(cast(ConfigRecord, content.pop(TRUTH_KEY)))) if TRUTH_KEY in content else None
    values = dict(cast(ConfigRecord, content.pop(LEAK_KEY))) if LEAK_KEY in content else {}
    return truth, decode_fields(sent, values)


class AttackingStrategy(Strategy):
    """Samples partitions, attacks their leaks, then delegates aggregation to ``inner``.

    Parameters
    ----------
    inner
        The Flower strategy that configures and aggregates (e.g. a DP wrapper around FedAvg).
    config
        The validated run config.
    recorder
        The run folder's writer: the attack rows (and, through the harness, the image grids) go there.
    nodes
        Partition id -> Flower node id (from the discovery query).
    harness
        The run's attacks (built and prepared once).
    membership
        The run's membership attacks: the server's rows of a round wait in ``round_summary``
        (``"membership"``) for the round's evaluation, which records them.
    model_from
        Builds the broadcast model (eval mode) from an ArrayRecord, for the attacks.
    round_offset
        Rounds already finished (when resuming); Flower's round r is run round r + offset.
    before_broadcast
        What the server does to the global model before it sends it (a malicious server
        behaviour), else ``None``: the attacks' victim and the leaks' reference are what was sent.
    """

    def __init__(
        self,
        inner: Strategy,
        config: RunConfig,
        recorder: RunRecorder,
        nodes: dict[int, int],
        harness: AttackHarness,
        membership: MembershipRounds,
        model_from: Callable[[ArrayRecord], nn.Module],
        round_offset: int = 0,
        before_broadcast: Callable[[ArrayRecord], ArrayRecord] | None = None,
    ) -> None:
        self.inner, self.config, self.recorder, self.nodes = inner, config, recorder, nodes
        self.partition_of = {node: pid for pid, node in nodes.items()}
        self.harness, self.model_from, self.round_offset = harness, model_from, round_offset
        self.membership = membership
        self.before_broadcast = before_broadcast
        self.protocol = PROTOCOLS.get(config.protocol)
        self.broadcast: ArrayRecord | None = None
        self.round_summary: dict[int, dict[str, Any]] = {}
        self.diverged_after: int | None = None  # the first round whose global model's test loss was not finite

    def summary(self) -> None:
        """Log the protocol and the inner strategy's summary."""
        log(INFO, "\t├── fedpriv: protocol %s, inner strategy %s", self.config.protocol, self.inner)
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Let the inner strategy configure this round's partitions (sampled from the seed)."""
        run_round = server_round + self.round_offset
        if self.before_broadcast is not None:
            arrays = self.before_broadcast(arrays)
        self.broadcast = arrays
        chosen = sample_partitions(self.config, run_round, list(self.nodes))
        log(INFO, "configure_train: round %d, partitions %s", run_round, chosen)
        self.round_summary[run_round] = {"sampled": chosen, "start": time.perf_counter()}
        chosen_nodes = ChosenNodes(grid, [self.nodes[p] for p in chosen])
        # ChosenNodes is a Grid by duck typing (it forwards every other attribute to the real one)
        configured = self.inner.configure_train(run_round, arrays, config, chosen_nodes)  # type: ignore[arg-type]
        messages = list(configured)
        for message in messages:  # the inner strategy's round is the run's
            cast(ConfigRecord, message.content["config"])[ROUND_KEY] = run_round
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Strip and attack the leaks, record failures, then let the inner strategy aggregate."""
        run_round = server_round + self.round_offset
        # Replies arrive in completion order, which load changes. FedAvg's sum in that order
        # differs in the last bits, and training amplifies it (measured: round-2 accuracy
        # 0.52 to 0.66 for three orders of the same four updates), so fix the order.
        replies = sorted(replies, key=lambda msg: self.partition_of.get(msg.metadata.src_node_id, -1))
        failed, observed = [], []
        directions: dict[int, dict[str, torch.Tensor]] = {}  # each reply's, for the server's membership attacks
        server_membership = self.protocol.leak_kind in PARAMETER_LEAK_KINDS and self.membership.scores(run_round)
        assert self.broadcast is not None
        broadcast = self.broadcast.to_torch_state_dict()
        model = self.model_from(self.broadcast)
        names = [n for n, _ in model.named_parameters()]
        replied = {self.partition_of.get(msg.metadata.src_node_id, -1) for msg in replies}
        for pid in sorted(set(self.round_summary[run_round]["sampled"]) - replied):
            reason = f"no reply within round-timeout={self.config.round_timeout:g} s"
            failed.append({"partition_id": pid, "reason": reason})
            log(WARNING, "round %d: client of partition %d did not reply in time", run_round, pid)
        for msg in replies:
            pid = self.partition_of.get(msg.metadata.src_node_id, -1)
            if msg.has_error():
                reason = failure_reason(str(msg.error.reason or ""))
                failed.append({"partition_id": pid, "reason": reason})
                log(WARNING, "round %d: client of partition %d failed: %s", run_round, pid, reason)
                continue
            truth, sent = strip_reply(msg.content, self.protocol.Sent)
            if truth is None and not server_membership:
                continue
            leak = self.protocol.observe(
                self.config, broadcast, cast(ArrayRecord, msg.content["arrays"]).to_torch_state_dict(), names,
                int(scalar(msg.content["metrics"]["num-examples"])), sent,
            )
            if server_membership:
                directions[pid] = descent_direction(leak)
            if truth is not None:  # the client was attacked this round
                attacks = tuple(self.config.attacks_for(pid))
                observed.append(ObservedClient(pid, leak, truth, attacks, self.config.defense_for(pid)))
        if failed and self.config.fail_fast:
            raise RuntimeError(f"fail-fast: round {run_round} had failed clients: {failed}")
        rows: list[dict[str, Any]] = []
        if observed:
            rows = self.harness.run_round(model, observed, run_round, self.recorder.grids)
            rows = record_rows(self.recorder, rows, run_round, self.diverged_after)
        self.round_summary[run_round].update(failed=failed, rows=rows)
        if directions:
            self.round_summary[run_round]["membership"] = self.membership.server_rows(
                model, directions, run_round)
        return self.inner.aggregate_train(run_round, [m for m in replies if not m.has_error()])

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the server evaluates centrally (``evaluate_fn``)."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Nothing to aggregate (no federated evaluation)."""
        return None


def record_rows(recorder: RunRecorder, rows: list[dict[str, Any]], run_round: int,
                diverged_after: int | None) -> list[dict[str, Any]]:
    """Mark the rows of a diverged run, write them and log one line each; return what was written."""
    if diverged_after is not None:
        reason = f"diverged: the global model's test loss was not finite after round {diverged_after}"
        rows = [row | {"status": reason} for row in rows]
    recorder.attack_rows(rows)
    for row in rows:
        who = f"client {row['partition_id']}" if row["partition_id"] != AGGREGATE else (
            f"aggregate of {row.get('aggregate_of', [])}")
        log(INFO, "round %d %s %s: %s [%s]", run_round, who, row["attack"], _describe(row), row["status"])
    return rows


def _describe(row: dict[str, Any]) -> str:
    parts = []
    if isinstance(row.get("psnr"), float):
        parts.append(f"PSNR {row['psnr']:.2f} dB, baseline {row['psnr_baseline']:.2f} dB: {verdict(row)} "
                     f"(vs T(x) {row['psnr_defended']:.2f} dB)")
    if isinstance(row.get("label_accuracy"), float):
        parts.append(f"label accuracy {row['label_accuracy']:.2f}")
    return ", ".join(parts) or "-"
