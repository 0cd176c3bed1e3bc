"""Trap weights ("When the Curious Abandon Honesty"): recovered images over trap rows and batch sizes.

For each (rows, images) cell: ``--trials`` batches of the embedded photographs, the FedSGD reply
of a ConvNet behind the trap layer as the server sees it ((w - reply) / server-lr through float32
weights, eval mode, server-lr 0.1), the ``trap-readout`` attack and the scorer's
``images_recovered`` (matched images at 30 dB or more). Printed beside the images that fire some
row by themselves, the most any readout of the rows can recover, and the rows' firing rate.

    python benchmarks/bench_trap.py --rows 64,256,1024 --images 8,16,32,64 --trials 10
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
import torch.nn.functional as F

from fedpriv.attacks import AttackSettings, AttackTarget, build_attack
from fedpriv.data.loading import LabeledImages, load_split
from fedpriv.data.specs import resolve_spec
from fedpriv.imprint import ImprintedModel
from fedpriv.leaks import GradientLeak, GroundTruth
from fedpriv.models import build_model
from fedpriv.scoring import score
from fedpriv.trap_weights import arm, trap_rows

PHOTOS = resolve_spec("embedded-photos")
SERVER_LR = 0.1


@functools.cache
def _train() -> LabeledImages:
    return load_split("embedded-photos", "", "train")


def recovered(rows: int, images: int, scale: float, trial: int) -> tuple[int, int, float, float]:
    """Images recovered from one batch, images alone in some row, the firing rate, the batch's mean PSNR."""
    train = _train()
    batch = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(trial))[:images]
    torch.manual_seed(trial)
    model = ImprintedModel(build_model("convnet", 10), PHOTOS.shape, torch.arange(rows, dtype=torch.float32))
    arm(model.imprint, trap_rows(rows, 3 * 32 * 32, 0.5, scale, torch.Generator().manual_seed(trial)), PHOTOS)
    model.eval()
    pixels = train.images[batch].float() / 255
    inputs = PHOTOS.normalize(pixels)
    grads = torch.autograd.grad(F.cross_entropy(model(inputs), train.labels[batch]), list(model.parameters()))
    seen = tuple((w.detach() - (w.detach() - SERVER_LR * g)) / SERVER_LR
                 for w, g in zip(model.parameters(), grads, strict=True))
    leak = GradientLeak(seen, tuple(n for n, _ in model.named_parameters()), images, "eval")
    result = build_attack("trap-readout", AttackSettings()).reconstruct(model, PHOTOS, [AttackTarget(leak, 0)])[0]
    row = score(result, GroundTruth(pixels, pixels, train.labels[batch], "none"))
    with torch.no_grad():
        fired = model.imprint.measure(inputs.flatten(1)) > 0
    alone = int((fired & (fired.sum(0, keepdim=True) == 1)).any(1).sum())
    return int(row["images_recovered"]), alone, float(fired.float().mean()), float(row["psnr"])


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="64,256,1024", help="comma-separated trap-layer sizes")
    parser.add_argument("--images", default="8,16,32,64", help="comma-separated batch sizes")
    parser.add_argument("--scale", type=float, default=0.95, help="the trap's scale (behaviour.trap-weights.scale)")
    parser.add_argument("--trials", type=int, default=10, help="batches per cell (seeds 0..trials-1)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"scale {args.scale:g}, sigma 0.5, server-lr {SERVER_LR:g}, {args.trials} batches per cell")
    print("| rows | images | recovered: mean ± std (min-max) | alone in some row (ceiling) | firing rate | "
          "mean PSNR of the batch (dB) | seconds |")
    print("|---|---|---|---|---|---|---|")
    for rows in map(int, args.rows.split(",")):
        for images in map(int, args.images.split(",")):
            start = time.perf_counter()
            counts, alone, rates, psnrs = zip(*(recovered(rows, images, args.scale, t) for t in range(args.trials)),
                                              strict=True)
            spread = statistics.stdev(counts) if len(counts) > 1 else 0.0
            print(f"| {rows} | {images} | {statistics.mean(counts):.2f} ± {spread:.2f} ({min(counts)}-{max(counts)}) | "
                  f"{statistics.mean(alone):.2f} | {statistics.mean(rates):.3f} | {statistics.mean(psnrs):.1f} | "
                  f"{time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
