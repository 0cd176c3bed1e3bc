"""Why the PSNR-per-round curve looks as it does: what the attacked gradients are like as the federation trains.

Replays ``simulations/cifar100_ats/presets/trajectory-embedded-small.toml`` in one process
(:mod:`fedpriv.in_process`: the same client rounds, FedAvg and evaluation as ``flwr run``, whose
accuracies it equals) and records, in each attacked round, for each attacked client: the
cross-entropy of its one image at the broadcast model, the norm of its gradient, the share of
that norm in the last linear layer, and how far the linear layer's gradient is from rank one.

For the ShallowCNN (Conv3x3 -> ReLU -> MaxPool -> Linear) a one-image gradient of the linear
layer is the outer product (p - y) h^T of the softmax error and the pooled feature map h: any
row divided by its bias gradient gives h exactly, whatever the training stage, as long as
p != y. Training shrinks (p - y), i.e. the gradient's norm, not its direction, and Inverting
Gradients' cosine objective does not see the norm. ``rank-1 residual`` measures the first
claim (0: exactly rank one); the loss and norm columns the second.

    python benchmarks/bench_trajectory_anatomy.py             # seeds 0 1 2, a few minutes
    python benchmarks/bench_trajectory_anatomy.py --seeds 0
"""

from __future__ import annotations

import argparse
import statistics
import tomllib
from collections import defaultdict

import torch
from flower_app import APP, app_config

from fedpriv.config import RunConfig
from fedpriv.in_process import train_in_process
from fedpriv.protocols import ClientReply

PRESET = APP / "presets" / "trajectory-embedded-small.toml"
CLIENTS = 32


def preset_config(seed: int) -> RunConfig:
    """The preset fused with the app's defaults, as ``flwr run`` sees it."""
    return app_config(tomllib.loads(PRESET.read_text()) | {"seed": seed})


def rank_one_residual(weight_grad: torch.Tensor) -> float:
    """1 - s1^2 / sum(s^2) of the singular values: the share of the matrix that is not rank one."""
    singular = torch.linalg.svdvals(weight_grad.double())
    return float(1 - singular[0] ** 2 / (singular**2).sum())


def measure(config: RunConfig) -> dict[tuple[int, str], list[dict[str, float]]]:
    """Per (attacked round, defense), one record per attacked client."""
    rows: dict[tuple[int, str], list[dict[str, float]]] = defaultdict(list)
    attacked_rounds = {r for r in range(1, config.num_server_rounds + 1) if config.is_attacked(r, 0)}

    def observe(server_round: int, sent: dict[str, torch.Tensor], replies: list[ClientReply]) -> None:
        if server_round not in attacked_rounds:
            return
        for pid, reply in enumerate(replies):
            if not config.is_attacked(server_round, pid):
                continue
            grads = {k: (sent[k] - reply.state[k]) / config.server_lr for k in sent if sent[k].is_floating_point()}
            total = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))
            linear = torch.sqrt((grads["fc.weight"].double() ** 2).sum() + (grads["fc.bias"].double() ** 2).sum())
            rows[(server_round, config.defense_for(pid))].append({
                "loss": reply.train_loss, "norm": float(total), "linear_share": float(linear / total),
                "rank1_residual": rank_one_residual(grads["fc.weight"]),
            })

    accuracy = train_in_process(config, CLIENTS, {r - 1 for r in attacked_rounds}, observe)
    for (server_round, _), records in rows.items():
        for record in records:
            record["accuracy"] = accuracy[server_round - 1]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    merged: dict[tuple[int, str], list[dict[str, float]]] = defaultdict(list)
    for seed in args.seeds:
        for key, records in measure(preset_config(seed)).items():
            merged[key] += records
    print(f"# preset {PRESET.name}, seeds {args.seeds}, {CLIENTS} clients; medians over the attacked clients of "
          "every seed (the gradient the client computes; Flower's DP mods act after it)")
    print(f"{'round':>5}  {'defense':<12} {'n':>3} {'acc. of model':>13} {'image loss':>10} {'grad norm':>10} "
          f"{'linear share':>12} {'rank-1 residual':>15}")
    for (server_round, defense), records in sorted(merged.items()):
        median = {field: statistics.median(r[field] for r in records)
                  for field in ("accuracy", "loss", "norm", "linear_share", "rank1_residual")}
        print(f"{server_round:>5}  {defense:<12} {len(records):>3} {median['accuracy']:>13.3f} {median['loss']:>10.3f} "
              f"{median['norm']:>10.3f} {median['linear_share']:>12.3f} {median['rank1_residual']:>15.2e}")


if __name__ == "__main__":
    main()
