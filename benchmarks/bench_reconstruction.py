"""Gradient-inversion speed: the loop against the batched engines, and the GPU target job.

Speed mode (default) prints, per model and number of problems B, the median wall time of one
iteration (the ATS "inversed" step: objective, double backward, signed Adam, box clamp) for
the one-at-a-time loop (B consecutive problems), each batched engine and ``auto``, the
reconstructions per second that implies for a job of ``--job-iterations`` iterations, and the
rate relative to the loop measured in the same run. Engines are interleaved within each repeat
so that load from other processes hits them alike. Victims are untrained, in eval mode, with
known labels; targets are gradients of 32x32 patches of scikit-image photographs.

    python benchmarks/bench_reconstruction.py --models resnet20,resnet20-4 --batch-sizes 1,4,16,64
    python benchmarks/bench_reconstruction.py --job --device cuda   # 100 x 4800, ResNet20-4
    python benchmarks/bench_reconstruction.py --job --precisions default,strict-fp32,bf16 \
        --images 16 --job-iterations 300 --target-model resnet20     # precision effect on a CPU

Job mode runs the whole job once per precision on the same images, starts and seeds, and prints
wall time and mean PSNR (against the photographs) side by side.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data as photos

from fedpriv.attacks import gradient_matching as gm
from fedpriv.attacks.inverting_gradients import box_bounds
from fedpriv.data.specs import DATASET_SPECS, DatasetSpec
from fedpriv.metrics import psnr_per_image
from fedpriv.models import build_model

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def photo_patches(count: int, seed: int = 0) -> torch.Tensor:
    """``count`` 32x32 RGB patches in [0,1] from scikit-image photographs (downscaled 4x)."""
    rng = np.random.default_rng(seed)
    images = [torch.from_numpy(getattr(photos, n)()).permute(2, 0, 1).float() / 255 for n in PHOTOS]
    images = [F.avg_pool2d(im[None], 4)[0] for im in images]
    out = []
    for i in range(count):
        im = images[i % len(images)]
        top = int(rng.integers(0, im.shape[1] - 32 + 1))
        left = int(rng.integers(0, im.shape[2] - 32 + 1))
        out.append(im[:, top:top + 32, left:left + 32])
    return torch.stack(out)


def make_problems(model: torch.nn.Module, spec: DatasetSpec, truth: torch.Tensor,
                  device: torch.device, seed: int = 0) -> list[gm.MatchingProblem]:
    """One single-image problem per ground-truth image, label i mod classes, randn start."""
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    problems = []
    for i, image in enumerate(truth):
        label = torch.tensor([i % spec.num_classes], device=device)
        loss = F.cross_entropy(model(spec.normalize(image[None].to(device))), label)
        target = tuple(g.detach() for g in torch.autograd.grad(loss, params))
        init = torch.randn((1, *spec.shape), generator=generator).to(device)
        problems.append(gm.MatchingProblem(init, label, target))
    return problems


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_engine(engine: str, model: torch.nn.Module, problems: list[gm.MatchingProblem],
                low: torch.Tensor, high: torch.Tensor, iterations: int, clock: str = "wall") -> float:
    """Seconds per iteration for all problems: a loop engine times one problem and multiplies.

    A run of ``iterations`` minus a run of none (set-up and the final objective) over
    ``iterations``. ``clock`` is ``wall`` or ``cpu`` (this process's CPU time: with one thread,
    a measure that other processes competing for the cores barely move).
    """
    device = problems[0].init.device
    sub = problems[:1] if engine in gm.LOOPS else problems
    now = time.perf_counter if clock == "wall" else time.process_time
    spans = []
    for count in (0, iterations):
        _sync(device)
        start = now()
        gm.solve(model, sub, low, high, iterations=count, lr=0.1, tv=1e-4, engine=engine, max_batch=len(sub))
        _sync(device)
        spans.append(now() - start)
    return (spans[1] - spans[0]) / iterations * (len(problems) if engine in gm.LOOPS else 1)


def speed(args: argparse.Namespace) -> None:
    """Print the speed table."""
    device = torch.device(args.device)
    spec = DATASET_SPECS.get("cifar10")
    engines = ["loop", *[e for e in args.engines.split(",") if e != "loop"]]
    print(f"# torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, {args.clock} clock, load {os.getloadavg()[0]:.2f}, iterations {args.iterations} "
          f"x {args.repeats} repeats (median), job {args.job_iterations} iterations")
    print(f"{'model':<11} {'B':>3} {'engine':<18} {'ms/it':>9} {'rec/s':>8} {'x loop':>7}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, spec.num_classes).to(device).eval()
        for b in [int(v) for v in args.batch_sizes.split(",")]:
            problems = make_problems(model, spec, photo_patches(b), device)
            low, high = box_bounds(spec, problems[0].init)
            for engine in engines:  # warm-up (and auto's probe, cached from here on)
                time_engine(engine, model, problems, low, high, 1)
            runs: dict[str, list[float]] = {e: [] for e in engines}
            for _ in range(args.repeats):
                for engine in engines:
                    runs[engine].append(
                        time_engine(engine, model, problems, low, high, args.iterations, args.clock))
            loop = statistics.median(runs["loop"])
            for engine in engines:
                sec = statistics.median(runs[engine])
                rate = b / (sec * args.job_iterations)
                print(f"{name:<11} {b:>3} {engine:<18} {sec * 1e3:>9.1f} {rate:>8.5f} {loop / sec:>7.2f}",
                      flush=True)
    chosen = {f"{k[0]}({sum(math.prod(s) for s in k[1])} parameters) B={k[2]}": v for k, v in gm._PROBE_CACHE.items()}
    print(f"# auto chose: {chosen}")
    print(f"# load at end {os.getloadavg()[0]:.2f}")


def job(args: argparse.Namespace) -> None:
    """Run ``--images`` reconstructions x ``--job-iterations`` for real, once per precision."""
    device = torch.device(args.device)
    spec = DATASET_SPECS.get("cifar10")
    torch.manual_seed(0)
    model = build_model(args.target_model, spec.num_classes).to(device).eval()
    truth = photo_patches(args.images)
    problems = make_problems(model, spec, truth, device)
    low, high = box_bounds(spec, problems[0].init)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# torch {torch.__version__}, {name}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}; "
          f"{args.images} x {args.job_iterations} iterations, {args.target_model}, engine {args.engine}")
    print(f"{'precision':<12} {'seconds':>8} {'ms/it':>7} {'PSNR':>6} {'std':>5}  engine")
    for precision in args.precisions.split(","):
        _sync(device)
        start = time.perf_counter()
        result = gm.solve(model, problems, low, high, iterations=args.job_iterations, lr=0.1, tv=1e-4,
                          engine=args.engine, max_batch=args.max_batch, precision=precision, progress=args.progress)
        _sync(device)
        seconds = time.perf_counter() - start
        psnr = psnr_per_image(spec.denormalize(result.images[:, 0]).cpu(), truth)
        print(f"{precision:<12} {seconds:>8.1f} {seconds / args.job_iterations * 1e3:>7.1f} {psnr.mean():>6.2f} "
              f"{psnr.std():>5.2f}  {result.engine}", flush=True)


def main() -> None:
    """Parse the command line and run the chosen mode."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20,resnet20-4")
    parser.add_argument("--batch-sizes", default="1,4,16,64")
    parser.add_argument("--engines", default="loop,loop-channels-last,grouped,vmap,auto")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--job-iterations", type=int, default=4800)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--job", action="store_true", help="run the whole job (default 100 x 4800) instead")
    parser.add_argument("--precisions", default="default", help="job mode: comma-separated attack precisions")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--target-model", default="resnet20-4")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--max-batch", type=int, default=100)
    parser.add_argument("--progress", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    (job if args.job else speed)(args)


if __name__ == "__main__":
    main()
