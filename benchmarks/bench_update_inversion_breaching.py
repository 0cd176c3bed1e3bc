"""Update inversion against breaching's multi-step attack on the same FedAvg updates (issue 26).

breaching (Geiping et al., github.com/JonasGeiping/breaching) attacks a FedAvg client with its
``local_updates`` user: ``--steps`` plain SGD steps of ``--per-step`` images each, taken in order
(``--lr``, no momentum or weight decay), the update theta_S - theta_0 sent to the server with the
step count, lr and per-step labels. This benchmark builds such updates itself (our model in train
mode, as breaching's user without buffers) from real embedded photographs, and attacks each one
twice with the same iterations and true labels:

- ``ours``: fedpriv's ``update-inversion`` at the product's defaults (Adam 0.1, ATS's lr
  schedule, TV 1e-4);
- ``breaching``: breaching's own ``invertinggradients`` attacker (cosine objective, TV 0.2,
  signed Adam 0.1, step-lr, boxed) with ``local_hyperparams``, its multi-step objective.

Both reconstructions are scored by PSNR after the optimal matching to the true images. Nothing
of breaching is copied here: the benchmark imports it from a checkout given by ``--breaching``
(it needs ``hydra-core``, ``omegaconf`` and ``lpips`` importable, e.g. ``pip install --target DIR
hydra-core lpips`` and ``PYTHONPATH=DIR``).

Usage: ``python benchmarks/bench_update_inversion_breaching.py --breaching /path/to/breaching
[--trials 4] [--iterations 2400] [--train-epochs 0]``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import math
import statistics
import sys
import time
from types import ModuleType

import torch
import torch.nn.functional as F
from scipy import stats

from fedpriv.attacks import AttackSettings, AttackTarget, build_attack
from fedpriv.data.loading import load_split
from fedpriv.data.specs import resolve_spec
from fedpriv.leaks import UpdateLeak
from fedpriv.metrics import psnr_per_image
from fedpriv.models import build_model
from fedpriv.scoring import match_order

DATASET = "embedded-photos"


def _victim(model_name: str, epochs: int) -> torch.nn.Module:
    """The broadcast model: fresh, or trained ``epochs`` epochs centrally (SGD 0.01, momentum 0.9, batch 32)."""
    spec = resolve_spec(DATASET)
    torch.manual_seed(0)
    model = build_model(model_name, spec.num_classes, spec.channels)
    train = load_split(DATASET, ".", "train")
    inputs = spec.normalize(train.images.float() / 255)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(1)).split(32):
            optimizer.zero_grad()
            F.cross_entropy(model(inputs[batch]), train.labels[batch]).backward()
            optimizer.step()
    return model


def _update(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, steps: int, per_step: int,
            lr: float) -> tuple[torch.Tensor, ...]:
    """theta_S - theta_0 after breaching's local_updates user: ``steps`` SGD steps on consecutive chunks, train mode."""
    client = copy.deepcopy(model)
    optimizer = torch.optim.SGD(client.parameters(), lr=lr)
    client.train()
    for step in range(steps):
        chunk = torch.arange(step * per_step, (step + 1) * per_step) % len(labels)
        optimizer.zero_grad()
        F.cross_entropy(client(inputs[chunk]), labels[chunk]).backward()
        optimizer.step()
    return tuple((after - before).detach() for after, before in zip(client.parameters(), model.parameters(),
                                                                    strict=True))


def _ours(model: torch.nn.Module, deltas: tuple[torch.Tensor, ...], labels: torch.Tensor, args: argparse.Namespace,
          seed: int) -> torch.Tensor:
    names = tuple(name for name, _ in model.named_parameters())
    leak = UpdateLeak(deltas, names, len(labels), args.per_step, args.steps, args.lr, 0.0, 0.0, labels)
    attack = build_attack("update-inversion", AttackSettings(iterations=args.iterations, tv=args.tv))
    (reconstruction,) = attack.reconstruct(model, resolve_spec(DATASET), [AttackTarget(leak, seed=seed)])
    assert reconstruction.images is not None
    return reconstruction.images


def _breaching(breaching: ModuleType, model: torch.nn.Module, deltas: tuple[torch.Tensor, ...], labels: torch.Tensor,
               args: argparse.Namespace, seed: int) -> torch.Tensor:
    spec = resolve_spec(DATASET)

    class DataConfig:  # the payload's metadata, as breaching's own minimal example declares it
        modality = "vision"
        size = (2_000,)
        classes = spec.num_classes
        shape = (spec.channels, spec.size, spec.size)
        normalize = True
        mean = spec.mean
        std = spec.std

    config = breaching.get_attack_config("invertinggradients")
    config.optim.max_iterations = args.iterations
    config.optim.callback = args.iterations + 1
    setup = {"device": torch.device("cpu"), "dtype": torch.float}
    torch.manual_seed(seed)
    attacker = breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), config, setup)
    payload = [{"parameters": [p.detach() for p in model.parameters()], "buffers": None, "metadata": DataConfig}]
    per_step = [labels[torch.arange(s * args.per_step, (s + 1) * args.per_step) % len(labels)].sort()[0]
                for s in range(args.steps)]
    shared = [{"gradients": list(deltas), "buffers": None,
               "metadata": {"num_data_points": len(labels), "labels": labels,
                            "local_hyperparams": {"lr": args.lr, "steps": args.steps,
                                                  "data_per_step": args.per_step, "labels": per_step}}}]
    model.train()
    reconstructed, _ = attacker.reconstruct(payload, shared, {}, dryrun=False)
    return spec.denormalize(reconstructed["data"].detach()).clamp(0, 1)


def _psnr(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    return float(psnr_per_image(estimate[match_order(estimate, truth)], truth).mean())


def _summary(values: list[float]) -> str:
    mean, std = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
    half = stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{mean:.2f} ± {std:.2f} [{mean - half:.2f}, {mean + half:.2f}]"


def main() -> None:
    """Attack ``--trials`` updates with both and print one row per trial and the summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--breaching", required=True, help="a checkout of JonasGeiping/breaching")
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--train-epochs", type=int, default=0, help="epochs the victim trains first (0: fresh)")
    parser.add_argument("--images", type=int, default=4, help="breaching's local_updates: num_data_points 4")
    parser.add_argument("--steps", type=int, default=4, help="num_local_updates 4")
    parser.add_argument("--per-step", type=int, default=1, help="num_data_per_local_update_step 1")
    parser.add_argument("--lr", type=float, default=0.001, help="local_learning_rate 0.001")
    parser.add_argument("--iterations", type=int, default=2400)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--tv", type=float, default=None,
                        help="our attack's TV weight (attack-tv; default: attack.update-inversion.tv, 0.2)")
    parser.add_argument("--ours-only", action="store_true", help="skip breaching (its column repeats grey)")
    args = parser.parse_args()
    sys.path.insert(0, args.breaching)
    breaching = importlib.import_module("breaching")  # the reference under comparison, never part of fedpriv

    spec = resolve_spec(DATASET)
    model = _victim(args.model, args.train_epochs)
    test = load_split(DATASET, ".", "test")
    grey = torch.full((args.images, spec.channels, spec.size, spec.size), 0.5)
    rows: dict[str, list[float]] = {"ours": [], "breaching": [], "grey": []}
    print("| trial | ours (dB) | breaching (dB) | grey (dB) | seconds ours / breaching |\n|---|---|---|---|---|")
    for trial in range(args.trials):
        index = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(trial))[: args.images]
        truth, labels = test.images[index].float() / 255, test.labels[index]
        deltas = _update(model, spec.normalize(truth), labels, args.steps, args.per_step, args.lr)
        start = time.perf_counter()
        ours = _ours(model, deltas, labels, args, trial)
        middle = time.perf_counter()
        theirs = grey if args.ours_only else _breaching(breaching, model, deltas, labels, args, trial)
        end = time.perf_counter()
        for name, estimate in (("ours", ours), ("breaching", theirs), ("grey", grey)):
            rows[name].append(_psnr(estimate, truth))
        print(f"| {trial} | {rows['ours'][-1]:.2f} | {rows['breaching'][-1]:.2f} | {rows['grey'][-1]:.2f} | "
              f"{middle - start:.0f} / {end - middle:.0f} |", flush=True)
    difference = [a - b for a, b in zip(rows["ours"], rows["breaching"], strict=True)]
    print(f"\n{args.model}, trained {args.train_epochs} epochs; our TV {args.tv:g}; {args.images} images, "
          f"{args.steps} steps of {args.per_step}, lr {args.lr}; {args.iterations} iterations; mean ± std "
          f"[95 % interval] over {args.trials} updates:\nours {_summary(rows['ours'])}; "
          f"breaching {_summary(rows['breaching'])}; grey {_summary(rows['grey'])}; "
          f"ours - breaching {_summary(difference)}")


if __name__ == "__main__":
    main()
