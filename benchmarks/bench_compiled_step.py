"""Direction of the second performance pass: the whole IG step as one ``torch.compile`` graph.

The objective of B problems (1 - global cosine of each problem's parameter gradient with its
target, + TV) is written with ``torch.func`` (``vmap`` over ``grad``), and its gradient with
respect to the images (``grad_and_value``, i.e. the double backward) is compiled by inductor as
one graph: fused batch-norm/ReLU backward, no per-op Python. Model weights, labels and targets
are arguments, so a new round's model reuses the compiled graph. Printed per model and B: the
compile time, ms per objective-and-gradient evaluation (median) for the loop (B consecutive
one-problem autograd steps, the sources' method), the grouped engine (fedpriv's batched
engine) and the compiled step, ratios against the loop measured in the same run, and the
largest gradient difference against the loop (float32).

    python benchmarks/bench_compiled_step.py --models resnet20 --batch-sizes 1,16
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_reconstruction import make_problems, photo_patches
from torch.func import functional_call, vmap

from fedpriv.attacks import gradient_matching as gm
from fedpriv.data.specs import DATASET_SPECS
from fedpriv.models import build_model

TV = 1e-4


def compiled_step(model: torch.nn.Module, problems: list[gm.MatchingProblem]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The gradient of the B-problem objective with respect to x (B, 1, C, H, W), compiled."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    fixed = dict(model.named_buffers())
    labels = torch.stack([p.labels for p in problems])
    flat, norm = gm._flat_targets(problems)

    def objective(x, params, fixed, labels, flat, norm):  # type: ignore[no-untyped-def]
        def one(inp, label, flat_p, norm_p):  # type: ignore[no-untyped-def]
            def ce(p):  # type: ignore[no-untyped-def]
                return F.cross_entropy(functional_call(model, (p, fixed), (inp,)), label)

            grads = torch.func.grad(ce)(params)
            return gm._cosine_loss(torch.cat([grads[n].reshape(-1) for n in params]), flat_p, norm_p)

        losses = vmap(one)(x, labels, flat, norm) + TV * gm.total_variation(x)
        return losses.sum(), losses.detach()

    step = torch.compile(torch.func.grad_and_value(objective, has_aux=True), dynamic=False)
    return lambda x: step(x, params, fixed, labels, flat, norm)[0]


def autograd_step(match: gm.Matcher) -> Callable[[torch.Tensor], torch.Tensor]:
    """The gradient of a matcher's objective with respect to x, by autograd."""
    def step(x: torch.Tensor) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        return torch.autograd.grad((match(x) + TV * gm.total_variation(x)).sum(), [x])[0]

    return step


def loop_step(model: torch.nn.Module, problems: list[gm.MatchingProblem]) -> Callable[[torch.Tensor], torch.Tensor]:
    """B consecutive one-problem autograd steps."""
    steps = [autograd_step(gm.loop_matcher(model, [p])) for p in problems]
    return lambda x: torch.cat([s(x[i:i + 1]) for i, s in enumerate(steps)])


def median_ms(step: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> float:
    """Median wall time of one call in ms, after two warm-up calls."""
    for _ in range(2):
        step(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="resnet20")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    spec = DATASET_SPECS.get("cifar10")
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.2f}, median of {args.repeats}")
    print(f"{'model':<11} {'B':>3} {'compile s':>9} {'loop ms':>9} {'grouped ms':>10} {'compiled ms':>11} "
          f"{'grouped x':>9} {'compiled x':>10} {'max |dg|':>9}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, spec.num_classes).eval()
        for b in [int(v) for v in args.batch_sizes.split(",")]:
            problems = make_problems(model, spec, photo_patches(b), torch.device("cpu"))
            x = torch.stack([p.init for p in problems])
            loop = loop_step(model, problems)
            grouped_match = gm.grouped_matcher(model, problems)
            grouped = autograd_step(grouped_match) if grouped_match is not None else None
            compiled = compiled_step(model, problems)
            reference = loop(x)
            start = time.perf_counter()
            fused = compiled(x)  # the first call compiles
            compile_seconds = time.perf_counter() - start
            difference = float((reference - fused).abs().max())
            loop_ms = median_ms(loop, x, args.repeats)
            grouped_ms = median_ms(grouped, x, args.repeats) if grouped else float("nan")
            compiled_ms = median_ms(compiled, x, args.repeats)
            print(f"{name:<11} {b:>3} {compile_seconds:>9.1f} {loop_ms:>9.1f} {grouped_ms:>10.1f} {compiled_ms:>11.1f} "
                  f"{loop_ms / grouped_ms:>9.2f} {loop_ms / compiled_ms:>10.2f} {difference:>9.1e}", flush=True)
    print(f"# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
