"""The ServerApp's main: preflight, find the clients, then run the attacking strategy round by round.

:func:`run_server` is the whole ServerApp of every fedpriv app: the Flower-free preflight
(:mod:`fedpriv.run_setup`) checks every value that needs no federation and claims the run folder
without writing into it; the server then discovers the clients and checks their partitions and
the auxiliary split (still writing nothing), prepares the attacks and hands the strategy and the
central evaluation a :class:`~fedpriv.recorder.RunRecorder`, the one writer of the run folder.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from logging import ERROR, INFO
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, RdpAccountant
from torch import nn

from fedpriv.attacks import AuxiliaryData
from fedpriv.behaviours import build_behaviour
from fedpriv.config import RunConfig
from fedpriv.data.loading import LabeledImages
from fedpriv.data.specs import DatasetSpec
from fedpriv.errors import SERVER_ERROR_PREFIX, ConfigError
from fedpriv.membership_rounds import MembershipRounds
from fedpriv.models import wire_state
from fedpriv.recorder import RunRecorder, resolved_config
from fedpriv.results import claim_folder
from fedpriv.round_attacks import AttackHarness
from fedpriv.run_setup import RunPlan, check_secagg_range, checked_config, plan_run
from fedpriv.server_pretraining import pretrain_on_aux
from fedpriv.strategies.attacking_strategy import AttackingStrategy
from fedpriv.strategies.evaluation import CentralEvaluation, model_builder
from fedpriv.strategies.inner import inner_strategy, privacy_accountant
from fedpriv.strategies.partition_checks import check_partitions
from fedpriv.strategies.secure_aggregation import SecureAggregationStrategy, TruthTap, run_secure_aggregation
from fedpriv.training import to_pixels
from fedpriv.wire import scalar


def discover_partitions(grid: Grid, timeout: float = 1800.0) -> dict[int, int]:
    """Ask every node once for its partition id and wait until all ``num-partitions`` answered.

    Flower's node ids are random per run and nodes register while the ServerApp starts, so the
    server learns partition id -> node id here; round 1 then sees every client. Each query is
    pushed once and pulled until answered: an abandoned query would stay in the simulation
    engine's store, which it scans for every node on every poll (slow with 1,000 nodes).
    """
    nodes: dict[int, int] = {}
    expected: int | None = None
    asked: set[int] = set()
    pending: set[str] = set()
    deadline = time.monotonic() + timeout
    while expected is None or len(nodes) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {expected} clients answered within {timeout:.0f} s")
        new = [n for n in grid.get_node_ids() if n not in asked]
        asked.update(new)
        if new:
            pending.update(grid.push_messages(
                [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in new]
            ))
        for reply in grid.pull_messages(pending) if pending else []:
            pending.discard(reply.metadata.reply_to_message_id)
            if reply.has_error():
                asked.discard(reply.metadata.src_node_id)  # ask that node again
                continue
            metrics = reply.content["metrics"]
            nodes[int(scalar(metrics["partition-id"]))] = reply.metadata.src_node_id
            expected = int(scalar(metrics["num-partitions"]))
        if expected is None or len(nodes) < expected:
            time.sleep(0.2)
    return nodes


def run_server(grid: Grid, context: Context) -> None:
    """Run a whole fedpriv simulation from the ServerApp (validation first, then rounds).

    The run folder is claimed (:func:`claim_folder`) before any other work, and held until the
    run ends: a second run with the same ``out-dir`` and ``run-name`` is refused. A bad value, and
    a full disk, are logged as one line marked ``SERVER_ERROR_PREFIX`` (saying how to resume), which
    ``fedpriv run`` repeats as its error.
    """
    try:
        config, path = checked_config(context.run_config)
        with claim_folder(path, config.resume):
            log(INFO, "fedpriv: results go to %s", path)
            _run(grid, context, plan_run(config, path))
    except ConfigError as error:
        log(ERROR, "%s%s", SERVER_ERROR_PREFIX, error)
        raise
    except OSError as error:
        if error.errno == errno.ENOSPC:
            log(ERROR, "%sno space left on the device while writing %s; every finished round is in the run folder: "
                "free space, then run again with resume=true and the same run-name to continue",
                SERVER_ERROR_PREFIX, error.filename or "the run folder")
        raise


def malicious_broadcast(
    config: RunConfig, dataset: DatasetSpec, aux: AuxiliaryData | None, model_from: Callable[[ArrayRecord], nn.Module]
) -> Callable[[ArrayRecord], ArrayRecord] | None:
    """What a malicious ``server-behaviour`` does to each broadcast (``None`` for an honest server)."""
    behaviour = build_behaviour(config)
    if not behaviour.malicious:
        return None
    images = None if aux is None else dataset.normalize(to_pixels(aux.images))

    def changed(arrays: ArrayRecord) -> ArrayRecord:
        model = model_from(arrays)
        behaviour.before_broadcast(model, images, dataset)
        return ArrayRecord(wire_state(model))

    return changed


def _run(grid: Grid, context: Context, plan: RunPlan) -> None:
    """Discover and check the clients, prepare the attacks, then record the rounds the strategy runs."""
    config, dataset, offset, start = plan.config, plan.dataset, plan.offset, plan.start
    nodes = discover_partitions(grid)
    aux, sizes = check_partitions(config, len(nodes), dataset)
    pretraining = None
    if config.server_pretrain_epochs and not config.resume:
        assert aux is not None  # the config requires aux-samples for server pretraining
        log(INFO, "fedpriv: training the initial model on the auxiliary split for %d epochs%s",
            config.server_pretrain_epochs, " jointly with an inverter" if config.joint_training else "")
        start, aux, pretraining = pretrain_on_aux(config, dataset, aux, start)
    model_from = model_builder(config, dataset)
    broadcast = malicious_broadcast(config, dataset, aux, model_from)
    if config.protocol == "secagg":  # what round 1 sends, behind a malicious server's changes
        check_secagg_range(config, start if broadcast is None else broadcast(ArrayRecord(start)).to_torch_state_dict())
    harness = AttackHarness(config, dataset, aux)
    log(INFO, "fedpriv: threat model: %s", harness.describe_threat_model())
    for pid in sorted(nodes):
        log(INFO, "fedpriv: partition %d: defense %s, attacks %s", pid, config.defense_for(pid),
            config.attacks_for(pid))
    # Every check passed: only now is anything written to the run folder (config.json last).
    recorder = RunRecorder(plan.path)
    recorder.begin(resolved_config(config, nodes, dataset, pretraining, sizes, harness.threat_model()),
                   offset if config.resume else None)
    if config.resume:
        log(INFO, "fedpriv: resuming after round %d", offset)
    accountant = privacy_accountant(config, len(nodes), offset)
    if names := config.membership_names():
        log(INFO, "fedpriv: membership attacks %s (%d members, %d non-members)",
            ",".join(names), config.membership_samples, config.membership_samples)
    server_data = None if aux is None else LabeledImages(aux.images, aux.labels)
    membership = MembershipRounds(config, dataset, len(nodes), server_data)
    if config.protocol == "secagg":
        secure = SecureAggregationStrategy(config, recorder, nodes, harness, membership, start, TruthTap(grid),
                                           model_from, offset, broadcast)
        secure.evaluate_fn = CentralEvaluation(plan, recorder, secure, len(nodes), accountant, membership)
        run_secure_aggregation(context, secure, config.num_server_rounds - offset, max(sizes))
    else:
        _run_attacking_strategy(grid, plan, recorder, nodes, harness, model_from, broadcast, start, accountant,
                                membership)
    records = recorder.finish()
    log(INFO, "fedpriv: finished; results in %s (open index.html)", recorder.path)
    log(INFO, "fedpriv: %d attack records in %s", records, recorder.metrics_path)


def _run_attacking_strategy(
    grid: Grid, plan: RunPlan, recorder: RunRecorder, nodes: dict[int, int], harness: AttackHarness,
    model_from: Callable[[ArrayRecord], nn.Module], broadcast: Callable[[ArrayRecord], ArrayRecord] | None,
    start: dict[str, Any], accountant: RdpAccountant | None, membership: MembershipRounds,
) -> None:
    """Every protocol but ``secagg``: Flower's strategy API, the run's inner strategy wrapped by the attacks."""
    config = plan.config
    inner = inner_strategy(config, len(nodes), accountant)
    strategy = AttackingStrategy(inner, config, recorder, nodes, harness, membership, model_from, plan.offset,
                                 broadcast)
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(start),
        num_rounds=config.num_server_rounds - plan.offset,
        evaluate_fn=CentralEvaluation(plan, recorder, strategy, len(nodes), accountant, membership),
        timeout=config.round_timeout,
    )
