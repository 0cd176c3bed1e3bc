"""Imprint readout ("Robbing the Fed"): recovered images vs the expected count, over bins and batch sizes.

For each (bins, images) cell: ``--trials`` batches of the embedded photographs (disjoint from the
400 images the server's thresholds come from), the one-step gradient of an imprinted ConvNet
(FedSGD's leak), the ``imprint-readout`` attack, and the scorer's ``images_recovered`` (matched
images at 30 dB or more). Printed beside Fowl et al.'s expected count (as breaching computes it)
and the expectation for independent draws into equal-mass bins.

    python benchmarks/bench_imprint.py --bins 16,64,128,256 --images 5,8,16,32,64 --trials 20
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
from fedpriv.imprint import ImprintedModel, expected_singletons, fowl_expected_recovered, thresholds_from
from fedpriv.leaks import GradientLeak, GroundTruth
from fedpriv.models import build_model
from fedpriv.scoring import score

PHOTOS = resolve_spec("embedded-photos")
AUX = 400


@functools.cache
def _train() -> LabeledImages:
    return load_split("embedded-photos", "", "train")


def recovered(bins: int, images: int, trial: int) -> tuple[int, float]:
    """Images recovered from one batch, and the batch's mean PSNR."""
    train = _train()
    pick = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(trial))
    batch = pick[AUX : AUX + images]
    thresholds = thresholds_from(PHOTOS.normalize(train.images[pick[:AUX]].float() / 255), bins)
    torch.manual_seed(trial)
    model = ImprintedModel(build_model("convnet", 10), (3, 32, 32), thresholds)
    pixels = train.images[batch].float() / 255
    loss = F.cross_entropy(model(PHOTOS.normalize(pixels)), train.labels[batch])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    leak = GradientLeak(tuple(grads), tuple(n for n, _ in model.named_parameters()), images, "eval")
    result = build_attack("imprint-readout", AttackSettings()).reconstruct(model, PHOTOS, [AttackTarget(leak, 0)])[0]
    row = score(result, GroundTruth(pixels, pixels, train.labels[batch], "none"))
    return int(row["images_recovered"]), float(row["psnr"])


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bins", default="16,64,128,256", help="comma-separated bin counts")
    parser.add_argument("--images", default="5,8,16,32,64", help="comma-separated batch sizes")
    parser.add_argument("--trials", type=int, default=20, help="batches per cell (seeds 0..trials-1)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| bins | images | recovered: mean ± std (min-max) | Fowl et al. expected | independent draws | "
          "mean PSNR of the batch (dB) | seconds |")
    print("|---|---|---|---|---|---|---|")
    for bins in map(int, args.bins.split(",")):
        for images in map(int, args.images.split(",")):
            start = time.perf_counter()
            counts, psnrs = zip(*(recovered(bins, images, t) for t in range(args.trials)), strict=True)
            spread = statistics.stdev(counts) if len(counts) > 1 else 0.0
            print(f"| {bins} | {images} | {statistics.mean(counts):.2f} ± {spread:.2f} ({min(counts)}-{max(counts)}) | "
                  f"{fowl_expected_recovered(bins, images):.2f} | {expected_singletons(bins, images):.2f} | "
                  f"{statistics.mean(psnrs):.1f} | {time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
