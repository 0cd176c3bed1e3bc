"""Speed of the complex-rotation defense, and its attacks through the real ``flwr run``.

1. Training time per epoch of each complex network over the original network of the same split,
   measured in one run on the same images: the network alone (``complex:adv=0``) and with the
   WGAN-GP critic (``complex:k=8``, 5 critic steps per task step).
2. The U-Net attack's training throughput (images/s) at the paper's size (width 64, 6 convs per
   block) and at the small preset's size, on ``--device``.
3. With ``--federation``: the ``cifar10_complex`` app's small preset (complex, plain and noisy
   clients in one federation, every attack on the same leaks), one table row per round and
   attack.
Usage: ``python benchmarks/bench_complex_rotation.py [--models complex-lenet,complex-resnet20-alpha]
[--images 512] [--device cpu] [--federation]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

import torch

from fedpriv.attacks.decoder_training import fit_decoder
from fedpriv.attacks.unet import UNet
from fedpriv.data.loading import load_split
from fedpriv.data.specs import resolve_spec
from fedpriv.defenses import build_defense
from fedpriv.models import build_model
from fedpriv.rotation.adversarial import FeatureCritic
from fedpriv.split_training import train_split_local
from fedpriv.training import TrainSettings, train_local

APP = Path(__file__).resolve().parent.parent / "simulations" / "cifar10_complex"
PRESET = APP / "presets" / "embedded-lenet-small.toml"
PHOTOS = resolve_spec("embedded-photos")


def epoch_seconds(model_name: str, defense: str, images: torch.Tensor, labels: torch.Tensor, device: str,
                  repeats: int) -> float:
    """Median seconds of one local epoch (batch 64, SGD) of ``model_name`` behind ``defense``."""
    times = []
    for repeat in range(repeats + 1):  # the first epoch warms up and is not counted
        torch.manual_seed(0)
        model = build_model(model_name, 10, 3).to(device)
        settings = TrainSettings(1, 64, 0.05, 0.9, 5e-4)
        generator = torch.Generator().manual_seed(repeat)
        start = time.perf_counter()
        if defense.startswith("complex"):
            critic = FeatureCritic(model.feature_channels)
            train_split_local(model, images, labels, build_defense(defense), PHOTOS, settings, generator, critic)
        else:
            train_local(model, images, labels, build_defense("none"), PHOTOS, settings, generator)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if repeat:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def unet_throughput(width: int, convs: int, device: str, images: int = 256) -> float:
    """U-Net training images/s on LeNet-shaped complex features ([Re; Im] = 12 channels at 14x14)."""
    torch.manual_seed(0)
    unet = UNet(12, 3, 32, width, convs).to(device)
    inputs, targets = torch.randn(images, 12, 14, 14), torch.rand(images, 3, 32, 32)
    return fit_decoder(unet, inputs, targets, 1, 64, torch.optim.Adam(unet.parameters(), 1e-4), 0.05,
                       torch.Generator().manual_seed(0)).images_per_second


def federation(rounds: int) -> None:
    """Run the small preset and print a row per (round, client, attack)."""
    from fedpriv.launcher import PrivateSuperLink, run_config_text
    from fedpriv.results import read_jsonl

    out = Path(tempfile.mkdtemp(prefix="fedpriv-complex-"))
    values = tomllib.loads(PRESET.read_text()) | {"out-dir": str(out), "run-name": "small", "num-server-rounds": rounds}
    with PrivateSuperLink(out / "flwr-home") as link:
        start = time.perf_counter()
        outcome = link.run(APP, run_config_text(values), "num-supernodes=3 client-resources-num-cpus=1", echo=False,
                           timeout=3600)
        print(f"federation: {outcome.status} in {time.perf_counter() - start:.0f} s ({out / 'small'})")
    if not outcome.ok:
        print(outcome.log[-3000:])
        return
    for row in read_jsonl(out / "small" / "rounds.jsonl")[1:]:
        print(f"round {row['round']}: accuracy {row['accuracy']:.3f} (complex clients' defense), "
              f"plain {row.get('accuracy_plain', float('nan')):.3f}")
    print("| round | defense | attack | MAE | MSE | PSNR dB | SSIM | grey PSNR | angle err. | mod pi | property err. |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = read_jsonl(out / "small" / "metrics.jsonl")
    for r in sorted(rows, key=lambda r: (r["round"], r["partition_id"], r["attack"])):
        cells = [f"{r[k]:.4f}" if isinstance(r.get(k), float) else "-" for k in ("mae", "mse")]
        cells += [f"{r[k]:.2f}" if isinstance(r.get(k), float) else "-" for k in ("psnr",)]
        cells += [f"{r[k]:.3f}" if isinstance(r.get(k), float) else "-" for k in ("ssim",)]
        cells += [f"{r[k]:.2f}" if isinstance(r.get(k), float) else "-"
                  for k in ("psnr_grey", "angle_error", "angle_error_mod_pi", "property_error")]
        print(f"| {r['round']} | {r['defense']} | {r['attack']} | " + " | ".join(cells) + " |")


def main() -> None:
    """Print the speed figures (and the federation's table with ``--federation``)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="complex-lenet,complex-resnet20-alpha,complex-resnet20-beta")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--federation", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    train = load_split("embedded-photos", "", "train")
    images, labels = train.images[: args.images], train.labels[: args.images]
    print(f"{torch.get_num_threads()} threads, {args.images} images per epoch, batch 64, device {args.device}")
    print("| model | original s/epoch | complex s/epoch (adv=0) | ratio | complex + critic k=8 s/epoch | ratio |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        original_name = name.replace("complex-", "original-")
        original = epoch_seconds(original_name, "plain", images, labels, args.device, args.repeats)
        bare = epoch_seconds(name, "complex:adv=0", images, labels, args.device, args.repeats)
        full = epoch_seconds(name, "complex:k=8", images, labels, args.device, args.repeats)
        print(f"| {name} | {original:.2f} | {bare:.2f} | {bare / original:.2f}x "
              f"| {full:.2f} | {full / original:.2f}x |", flush=True)
    for width, convs in ((64, 6), (16, 2)):
        print(f"U-Net width {width}, {convs} convs per block: {unet_throughput(width, convs, args.device):.0f} "
              f"training images/s on {args.device}", flush=True)
    if args.federation:
        federation(args.rounds)


if __name__ == "__main__":
    main()
