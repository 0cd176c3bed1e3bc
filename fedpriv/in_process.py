"""The federation's training rounds without Flower or Ray: the same client rounds, FedAvg and evaluation.

``flwr run`` is the product's engine; this module computes the same arithmetic in one process
for checks that must be fast or must isolate Flower's share: that a preset's model trains (its
accuracy after the preset's rounds), and Flower's overhead per round (``benchmarks/
bench_flower_overhead.py``). Every client trains in every round (a run config that samples
clients is refused) and nothing is attacked or written.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fedpriv.client_task import run_client_round
from fedpriv.config import RunConfig
from fedpriv.models import build_model, load_wire_state, wire_state
from fedpriv.protocols import ClientReply
from fedpriv.run_data import load_run_split, run_dataset_spec
from fedpriv.training import evaluate


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    """Flower's FedAvg arithmetic: numpy, weights normalised first, accumulated in the given order.

    The strategy sorts replies by partition id, so the order is the partitions'.
    """
    total = sum(weights)
    out: dict[str, np.ndarray] = {}
    for state, weight in zip(states, weights, strict=True):
        for key, value in state.items():
            scaled = value.numpy() * (weight / total)
            out[key] = scaled if key not in out else out[key] + scaled
    return {k: torch.from_numpy(np.asarray(v)) for k, v in out.items()}


def initial_state(config: RunConfig) -> dict[str, torch.Tensor]:
    """The initial global model as the ServerApp builds it (``seed`` set first; no checkpoint)."""
    dataset = run_dataset_spec(config)
    torch.manual_seed(config.seed)
    return wire_state(build_model(config.model, dataset.num_classes, dataset.channels))


class Evaluator:
    """The server's evaluation: accuracy on ``eval-samples`` test images drawn from the seed.

    Parameters
    ----------
    config
        The run config.
    """

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.dataset = run_dataset_spec(config)
        test = load_run_split(config, "test")
        pick = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(config.seed))
        pick = pick[: config.eval_samples] if config.eval_samples else pick
        self.images, self.labels = test.images[pick], test.labels[pick]

    def accuracy(self, state: dict[str, torch.Tensor]) -> float:
        """Test accuracy of the global model ``state``."""
        model = load_wire_state(build_model(self.config.model, self.dataset.num_classes, self.dataset.channels), state)
        return evaluate(model.eval(), self.images, self.labels, self.dataset)[1]


RoundObserver = Callable[[int, dict[str, torch.Tensor], list[ClientReply]], None]


def train_in_process(config: RunConfig, num_clients: int, evaluate_after: set[int],
                     observe: RoundObserver | None = None) -> dict[int, float]:
    """Run ``num-server-rounds`` rounds of every client; returns the accuracy after the chosen rounds.

    Parameters
    ----------
    config
        The fused run config (the app's defaults with the preset and overrides).
    num_clients
        The partitions (``num-supernodes``).
    evaluate_after
        Rounds after which the global model is evaluated (0: the initial model), as
        ``rounds.jsonl`` numbers them; evaluation costs more than a round of one-image clients.
    observe
        Called after each round's clients with the round, the broadcast state and every
        client's reply (in partition order), before aggregation.

    Returns
    -------
    dict[int, float]
        Test accuracy per round of ``evaluate_after``.

    Raises
    ------
    ValueError
        When ``clients-per-round`` samples fewer clients than there are (not modelled here).
    """
    if 0 < config.clients_per_round < num_clients:
        raise ValueError(f"clients-per-round={config.clients_per_round} samples clients; the in-process rounds "
                         f"train all {num_clients} every round (set clients-per-round=0)")
    evaluator = Evaluator(config)
    state = initial_state(config)
    accuracies = {0: evaluator.accuracy(state)} if 0 in evaluate_after else {}
    for server_round in range(1, config.num_server_rounds + 1):
        replies = [run_client_round(config, pid, num_clients, state, server_round) for pid in range(num_clients)]
        if observe is not None:
            observe(server_round, state, replies)
        state = fedavg([r.state for r in replies], [r.num_examples for r in replies])
        if server_round in evaluate_after:
            accuracies[server_round] = evaluator.accuracy(state)
    return accuracies
