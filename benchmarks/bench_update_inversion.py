"""Update inversion over a round's clients: one at a time (loop) against batched (vmap), ms per iteration.

Each client holds ``--images`` images and sends the update of ``--steps`` local SGD steps (batch 2,
lr 0.01, momentum 0.9, weight decay 5e-4) on the chosen model in train mode; the benchmark
times ``--iterations`` attack iterations for ``--clients`` clients with each engine (median of
``--repeats``) and prints the ratio loop / vmap from the same run.
Usage: ``python benchmarks/bench_update_inversion.py [--model convnet] [--clients 8]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from fedpriv.attacks import AttackSettings, AttackTarget, build_attack
from fedpriv.data.specs import resolve_spec
from fedpriv.leaks import UpdateLeak
from fedpriv.models import build_model


def _targets(model_name: str, clients: int, images: int, steps: int) -> tuple[torch.nn.Module, list[AttackTarget]]:
    spec = resolve_spec("embedded-photos")
    torch.manual_seed(0)
    model = build_model(model_name, 10)
    names = tuple(n for n, _ in model.named_parameters())
    targets = []
    for t in range(clients):
        x, y = torch.randn(images, *spec.shape), torch.randint(0, 10, (images,))
        trained = build_model(model_name, 10)
        trained.load_state_dict(model.state_dict())
        optimizer = torch.optim.SGD(trained.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        batches = torch.arange(images).split(2)
        for step in range(steps):
            index = batches[step % len(batches)]
            optimizer.zero_grad()
            F.cross_entropy(trained(x[index]), y[index]).backward()
            optimizer.step()
        deltas = tuple(dict(trained.named_parameters())[n].detach() - p.detach() for n, p in model.named_parameters())
        targets.append(AttackTarget(UpdateLeak(deltas, names, images, 2, steps, 0.01, 0.9, 5e-4, y), seed=t))
    return model, targets


def main() -> None:
    """Time both engines and print a Markdown row."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, targets = _targets(args.model, args.clients, args.images, args.steps)
    spec = resolve_spec("embedded-photos")
    timings = {}
    for engine in ("loop", "vmap"):
        settings = AttackSettings(iterations=args.iterations, options={"engine": engine})
        attack = build_attack("update-inversion", settings)
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            attack.reconstruct(model, spec, targets)
            runs.append((time.perf_counter() - start) * 1000 / args.iterations)
        timings[engine] = statistics.median(runs)
    print(f"| {args.model} | {args.clients} x {args.images} images, {args.steps} steps | {timings['loop']:.0f} | "
          f"{timings['vmap']:.0f} | {timings['loop'] / timings['vmap']:.2f}x | "
          f"torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f} |")


if __name__ == "__main__":
    main()
