"""The server of protocol ``secagg``: Flower's SecAgg+ workflow around a strategy that attacks the aggregate.

Flower 1.41 runs SecAgg+ only in its legacy server path: ``DefaultWorkflow(fit_workflow=
SecAggPlusWorkflow(...))`` called with a ``LegacyContext`` around a ``flwr.server.strategy``
strategy (Flower's ``flower-secure-aggregation`` example). :class:`SecureAggregationStrategy` is
that strategy. It samples each round's partitions from the seed, as every fedpriv run does, and
sends the (possibly malicious) broadcast; in ``aggregate_fit`` it receives what the workflow
unmasked, the weighted mean of the replies (written into every ``FitRes``), beside each client's
plaintext ``num_examples`` and metrics. It attacks that aggregate, records the rows and returns it
as the new global model. :class:`TruthTap` is the grid the workflow talks through: it takes the
evaluation-only truth off each reply before the workflow reads it, for the scorer only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from logging import INFO, WARNING
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat import LegacyContext
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid
from torch import nn

from fedpriv.config import RunConfig
from fedpriv.leaks import GroundTruth, descent_direction
from fedpriv.membership_rounds import MembershipRounds
from fedpriv.protocols.secagg import SecAgg
from fedpriv.recorder import RunRecorder
from fedpriv.round_attacks import AGGREGATE, AttackHarness, ObservedClient
from fedpriv.strategies.attacking_strategy import failure_reason, record_rows, sample_partitions, strip_reply
from fedpriv.wire import NAMES_KEY, NAMES_SEPARATOR, ROUND_KEY


class TruthTap:
    """The grid SecAgg+'s workflow talks through: replies lose fedpriv's records before the workflow reads them.

    ``truths`` (node id -> the reply's ground truth) reaches the scorer only; ``errors`` keeps the
    reason of each node's failed reply. Every other attribute is the real grid's.
    """

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.truths: dict[int, GroundTruth] = {}
        self.errors: dict[int, str] = {}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """The real grid's ``send_and_receive``, with the truth of each reply set aside."""
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.errors[node] = failure_reason(str(reply.error.reason or ""))
                continue
            truth, _ = strip_reply(reply.content, SecAgg.Sent)  # SecAgg's Sent is empty
            if truth is not None:
                self.truths[node] = truth
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def union(truths: Sequence[GroundTruth]) -> GroundTruth:
    """The truth of an aggregate: every client's images in partition order, their defenses named together."""
    specs = sorted({t.defense for t in truths})
    kinds = set.intersection(*(set(t.targets) for t in truths))
    return GroundTruth(
        images=torch.cat([t.images for t in truths]), defended=torch.cat([t.defended for t in truths]),
        labels=torch.cat([t.labels for t in truths]), defense=specs[0] if len(specs) == 1 else " + ".join(specs),
        targets={kind: torch.cat([t.targets[kind] for t in truths]) for kind in sorted(kinds)},
    )


class SecureAggregationStrategy(Strategy):
    """The legacy strategy of a ``secagg`` run: configures rounds, attacks the unmasked aggregate.

    Parameters
    ----------
    config
        The validated run config.
    recorder
        The run folder's writer.
    nodes
        Partition id -> Flower node id (from the discovery query).
    harness
        The run's attacks.
    membership
        The run's membership attacks: the server's rows of a round (from the aggregate) wait in
        ``round_summary`` (``"membership"``) for the round's evaluation, which records them.
    start
        The initial global model (wire state); its names order the legacy Parameters' arrays.
    tap
        The grid the workflow uses (its truths and errors).
    model_from
        Builds the broadcast model (eval mode) from an ArrayRecord, for the attacks.
    round_offset
        Rounds already finished (when resuming).
    before_broadcast
        What a malicious server does to the global model before it sends it, else ``None``.
    """

    def __init__(
        self, config: RunConfig, recorder: RunRecorder, nodes: dict[int, int], harness: AttackHarness,
        membership: MembershipRounds, start: dict[str, torch.Tensor], tap: TruthTap,
        model_from: Callable[[ArrayRecord], nn.Module], round_offset: int = 0,
        before_broadcast: Callable[[ArrayRecord], ArrayRecord] | None = None,
    ) -> None:
        self.config, self.recorder, self.nodes, self.harness = config, recorder, nodes, harness
        self.membership = membership
        self.partition_of = {node: pid for pid, node in nodes.items()}
        self.names, self.start, self.tap, self.model_from = list(start), start, tap, model_from
        self.round_offset, self.before_broadcast = round_offset, before_broadcast
        self.evaluate_fn: Callable[[int, ArrayRecord], MetricRecord] | None = None
        self.broadcast: ArrayRecord | None = None
        self.round_summary: dict[int, dict[str, Any]] = {}
        self.diverged_after: int | None = None

    def _parameters(self, arrays: ArrayRecord) -> Parameters:
        state = arrays.to_numpy_ndarrays()
        named = dict(zip(arrays.keys(), state, strict=True))
        return ndarrays_to_parameters([named[n] for n in self.names])

    def _arrays(self, parameters: Parameters) -> ArrayRecord:
        values = parameters_to_ndarrays(parameters)
        return ArrayRecord({n: torch.from_numpy(v.copy()) for n, v in zip(self.names, values, strict=True)})

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The run's initial model (seeded, pre-trained or resumed)."""
        return self._parameters(ArrayRecord(self.start))

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """This round's partitions (sampled from the seed) receive the broadcast and the round number."""
        run_round = server_round + self.round_offset
        arrays = self._arrays(parameters)
        if self.before_broadcast is not None:
            arrays = self.before_broadcast(arrays)
        self.broadcast = arrays
        chosen = sample_partitions(self.config, run_round, list(self.nodes))
        log(INFO, "configure_fit: round %d, partitions %s through SecAgg+", run_round, chosen)
        self.round_summary[run_round] = {"sampled": chosen, "start": time.perf_counter(), "aggregated": []}
        proxies = client_manager.all()
        fit_config: dict[str, Scalar] = {ROUND_KEY: run_round, NAMES_KEY: NAMES_SEPARATOR.join(self.names)}
        broadcast = self._parameters(arrays)
        return [(proxies[str(self.nodes[p])], FitIns(broadcast, fit_config)) for p in chosen]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Attack the unmasked aggregate (every FitRes carries it), then make it the global model."""
        run_round = server_round + self.round_offset
        if not results:
            return None, {}
        examples = {self.partition_of[int(proxy.node_id)]: int(cast(int, fitres.metrics["num-examples"]))
                    for proxy, fitres in results}  # plaintext; the FitRes weighs 1 each under dp
        self.round_summary[run_round]["aggregated"] = sorted(examples)
        aggregate = results[0][1].parameters
        truths = [self.tap.truths.pop(self.nodes[p], None) for p in sorted(examples)]
        assert self.broadcast is not None
        model = self.model_from(self.broadcast)
        names = [n for n, _ in model.named_parameters()]
        leak = SecAgg().observe_aggregate(
            self.config, self.broadcast.to_torch_state_dict(), self._arrays(aggregate).to_torch_state_dict(),
            names, [examples[p] for p in sorted(examples)],
        )
        if self.membership.scores(run_round):
            direction = descent_direction(leak)
            self.round_summary[run_round]["membership"] = self.membership.server_rows(
                model, dict.fromkeys(examples, direction), run_round)
        if all(t is not None for t in truths) and truths:
            specs = sorted({self.config.defense_for(p) for p in examples})  # what the server knows of the defenses
            observed = ObservedClient(AGGREGATE, leak, union(cast(list[GroundTruth], truths)),
                                      tuple(self.config.attacks_for(AGGREGATE)), " + ".join(specs))
            rows = self.harness.run_round(model, [observed], run_round, self.recorder.grids)
            rows = [row | {"aggregate_of": sorted(examples)} for row in rows]
            self.round_summary[run_round]["rows"] = record_rows(self.recorder, rows, run_round, self.diverged_after)
        return aggregate, {}

    def _close_round(self, run_round: int) -> None:
        """Name the sampled partitions that are not in the aggregate, with their reasons."""
        summary = self.round_summary.get(run_round)
        if summary is None or "failed" in summary:
            return
        summary["failed"] = [
            {"partition_id": p, "reason": self.tap.errors.pop(self.nodes[p], "dropped out before SecAgg+ unmasked")}
            for p in summary["sampled"] if p not in summary["aggregated"]
        ]
        for failure in summary["failed"]:
            log(WARNING, "round %d: client of partition %d is not in the aggregate: %s", run_round,
                failure["partition_id"], failure["reason"])
        if summary["failed"] and self.config.fail_fast:
            raise RuntimeError(f"fail-fast: round {run_round} had failed clients: {summary['failed']}")

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """No federated evaluation: the server evaluates centrally (:meth:`evaluate`)."""
        return []

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Nothing to aggregate (no federated evaluation)."""
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """Close the round (its failures), then the central evaluation of the global model."""
        self._close_round(server_round + self.round_offset)
        assert self.evaluate_fn is not None
        metrics = self.evaluate_fn(server_round, self._arrays(parameters))
        return float(cast(float, metrics["loss"])), {"accuracy": cast(float, metrics["accuracy"])}


def run_secure_aggregation(context: Any, strategy: SecureAggregationStrategy, rounds: int, max_weight: int) -> None:
    """Run ``rounds`` rounds of Flower's SecAgg+ workflow around ``strategy``, through its tap.

    Under ``dp='client-fixed'`` the strategy runs inside Flower's legacy
    ``DifferentialPrivacyClientSideFixedClipping`` (as Flower's ``fl-dp-sa`` example combines
    them): the clients clip their updates before masking, the wrapper adds the Gaussian noise to
    the unmasked aggregate after ``strategy.aggregate_fit`` has attacked it (the server sees the
    aggregate before it noises it; the released model is noised). Under ``dp`` every reply weighs
    1, so ``max_weight`` is 1.

    Parameters
    ----------
    context
        The ServerApp's context (Flower's legacy context is built around it).
    strategy
        The run's strategy, with its ``evaluate_fn`` set.
    rounds
        Rounds to run (the run's rounds less those already finished).
    max_weight
        The largest ``num_examples`` a client can report (its partition's size): SecAgg+ scales
        each reply by num_examples / max_weight before quantising, so a tight bound keeps the
        quantisation error of small clients small.
    """
    config = strategy.config
    workflow = SecAggPlusWorkflow(
        num_shares=config.secagg_num_shares, reconstruction_threshold=config.secagg_reconstruction_threshold,
        max_weight=max_weight if config.dp == "none" else 1, clipping_range=config.secagg_clipping_range,
        timeout=config.round_timeout,
    )
    outer: Strategy = strategy
    if config.dp == "client-fixed":
        sampled = config.clients_each_round(len(strategy.nodes))
        outer = DifferentialPrivacyClientSideFixedClipping(strategy, config.dp_noise_multiplier,
                                                           config.dp_clipping_norm, sampled)
    log(INFO, "fedpriv: aggregation %s through SecAgg+ (dp=%s)", outer, config.dp)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=outer)
    DefaultWorkflow(fit_workflow=workflow)(strategy.tap, legacy)  # type: ignore[arg-type]  # a Grid by duck typing
