"""The Flower strategy that aggregates: an aggregator, optionally inside Flower's own DP wrapper.

``aggregator`` picks FedAvg, FedMedian, FedTrimmedAvg or Krum; ``dp`` wraps it in
``DifferentialPrivacyClientSideFixedClipping`` (clients clip with ``fixedclipping_mod``),
``DifferentialPrivacyServerSideFixedClipping``, or leaves it bare (``none``; ``local``: clients
noise their own replies with ``LocalDpMod``). Under DP, FedAvg weighs clients uniformly (the
Gaussian mechanism's sensitivity assumes it) and Flower's RDP accountant reports epsilon.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO
from typing import Any

from flwr.app import MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from fedpriv.config import RunConfig
from fedpriv.wire import scalar


def aggregate_train_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Sum of examples and example-weighted mean training loss (partition ids are not averaged)."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    total = sum(int(scalar(m["num-examples"])) for m in metrics)
    loss = sum(float(scalar(m["train-loss"])) * int(scalar(m["num-examples"])) for m in metrics) / max(total, 1)
    return MetricRecord({"num-examples": total, "train-loss": loss})


def aggregator(config: RunConfig) -> Strategy:
    """The bare aggregation strategy (every given node trains; no federated evaluation)."""
    common: dict[str, Any] = {
        "fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": 1, "min_available_nodes": 1,
        "weighted_by_key": "uniform-weight" if config.dp != "none" else "num-examples",
        "train_metrics_aggr_fn": aggregate_train_metrics,
    }
    factories: dict[str, Callable[[], Strategy]] = {
        "fedavg": lambda: FedAvg(**common),
        "fedmedian": lambda: FedMedian(**common),
        "fedtrimmedavg": lambda: FedTrimmedAvg(**common, beta=0.2),
        "krum": lambda: Krum(**common, num_malicious_nodes=0),
    }
    return factories[config.aggregator]()


def privacy_accountant(config: RunConfig, num_partitions: int, rounds_done: int = 0) -> RdpAccountant | None:
    """Flower's RDP accountant for the run's DP mode (None without DP), with finished rounds composed.

    Central DP: one Gaussian release of the aggregate per round (noise multiplier, sample size
    = clients per round, population = all clients, no amplification by sampling claimed).
    Local DP: each client's reply is its own release; epsilon is reported for a client that
    took part in every round (population 1).
    """
    if config.dp == "none" or config.dp_noise_multiplier == 0:
        return None
    population = 1 if config.dp == "local" else num_partitions
    accountant = RdpAccountant(PrivacyConfig(
        target_delta=config.dp_delta, population_size=population,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE, sampling_method=SamplingMethod.NO_AMPLIFICATION,
    ))
    if rounds_done:
        accountant.compose(round_event(config, num_partitions), count=rounds_done)
    return accountant


def round_event(config: RunConfig, num_partitions: int) -> GaussianPrivacyEvent:
    """The privacy event of one round (see :func:`privacy_accountant`)."""
    if config.dp == "local":
        return GaussianPrivacyEvent(noise_multiplier=config.dp_noise_multiplier, sample_size=1, population_size=1)
    return GaussianPrivacyEvent(
        noise_multiplier=config.dp_noise_multiplier, sample_size=config.clients_each_round(num_partitions),
        population_size=num_partitions,
    )


def inner_strategy(config: RunConfig, num_partitions: int, accountant: RdpAccountant | None) -> Strategy:
    """The aggregator, wrapped in Flower's DP wrapper for central DP modes.

    The wrapper gets the accountant only for FedAvg (Flower's accounted path requires it);
    other aggregators are wrapped without accounting and epsilon is not reported for them.
    """
    inner = aggregator(config)
    sampled = config.clients_each_round(num_partitions)
    accounted = accountant if config.aggregator == "fedavg" else None
    if config.dp == "client-fixed":
        inner = DifferentialPrivacyClientSideFixedClipping(
            inner, config.dp_noise_multiplier, config.dp_clipping_norm, sampled, accountant=accounted
        )
    elif config.dp == "server-fixed":
        inner = DifferentialPrivacyServerSideFixedClipping(
            inner, config.dp_noise_multiplier, config.dp_clipping_norm, sampled, accountant=accounted
        )
    log(INFO, "fedpriv: aggregation %s (dp=%s)", inner, config.dp)
    return inner
