"""``fedpriv pretrain``: train a model centrally, as ATS trains its victims, and save a checkpoint.

Published gradient-inversion numbers attack trained models (ATS: 200 epochs), not fresh ones.
This trains a model on a data set's training split with SGD (momentum 0.9, weight decay 5e-4,
cosine learning-rate decay), augmenting each image with RandomCrop(padding=4) and a horizontal
flip, optionally behind an ATS policy (``--policy 3-1-7``: the policy's own crop-flip and
primitives, as ATS trains its defended models), then writes the state dict (``--out``, loadable
with ``weights_only=True``, for ``initial-checkpoint``) and ``<out>.json`` with the test accuracy
and the settings.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from tqdm import tqdm

from fedpriv.data.loading import check_available, dataset_spec, load_split
from fedpriv.defenses import build_defense, defended_inputs
from fedpriv.errors import ConfigError
from fedpriv.models import build_model, check_model_fits
from fedpriv.results import atomic_write
from fedpriv.training import evaluate, to_pixels


def _augmenter(policy: str, size: int, generator: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    if policy:
        defense = build_defense(f"ats:{policy}")
        return lambda pixels: defended_inputs(defense, pixels, generator)
    crop_flip = v2.Compose([v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()])
    # torchvision's v2 transforms draw from the global RNG (seeded in main); one draw per image.
    return lambda pixels: torch.stack([crop_flip(image) for image in pixels])


def pretrain(args: argparse.Namespace) -> dict[str, Any]:
    """Train and save; returns what ``<out>.json`` records."""
    torch.manual_seed(args.seed)
    verify, size, channels = not args.no_verify, args.image_size, args.image_channels
    check_available(args.dataset, args.data_dir, args.download, verify, size, channels)
    spec = dataset_spec(args.dataset, args.normalization, args.image_size, args.image_channels)
    check_model_fits(args.model, spec.num_classes, spec.channels, spec.size)
    train = load_split(args.dataset, args.data_dir, "train", False, verify, size, channels)
    test = load_split(args.dataset, args.data_dir, "test", False, verify, size, channels)
    model = build_model(args.model, spec.num_classes, spec.channels)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    steps = args.epochs * -(-len(train) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    augment = _augmenter(args.policy, spec.size, torch.Generator().manual_seed(args.seed))
    with tqdm(total=steps, desc=f"pretrain {args.model} on {args.dataset}", disable=not args.progress) as bar:
        for epoch in range(args.epochs):
            model.train()
            for index in torch.randperm(len(train)).split(args.batch_size):
                inputs = spec.normalize(augment(to_pixels(train.images[index])))
                loss = F.cross_entropy(model(inputs), train.labels[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}")
                bar.update()
    test_loss, accuracy = evaluate(model, test.images, test.labels, spec)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    out = Path(args.out).expanduser().resolve()
    atomic_write(out, buffer.getvalue())
    record: dict[str, Any] = {
        "checkpoint": str(out), "test_accuracy": accuracy, "test_loss": test_loss,
        "dataset": args.dataset, "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "policy": args.policy or "none (crop + flip)", "seed": args.seed,
        "normalization_mean": list(spec.mean), "normalization_std": list(spec.std),
    }
    atomic_write(out.with_suffix(out.suffix + ".json"), (json.dumps(record, indent=2) + "\n").encode())
    return record


def main(argv: list[str]) -> int:
    """``fedpriv pretrain ...``; returns the exit code (2 on bad input)."""
    parser = argparse.ArgumentParser(prog="fedpriv pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="embedded-photos", help="a data set name (default embedded-photos)")
    parser.add_argument("--data-dir", default="~/.cache/fedpriv/data", help="folder with the standard archives")
    parser.add_argument("--download", action="store_true", help="fetch missing standard archives")
    parser.add_argument("--no-verify", action="store_true", help="do not check the archives' checksums")
    parser.add_argument("--image-size", type=int, default=32, help="image side for folder:/hf: data sets (default 32)")
    parser.add_argument("--image-channels", type=int, default=3, help="3 or 1, for folder:/hf: data sets (default 3)")
    parser.add_argument("--normalization", default="dataset", help="as the run-config key (default dataset)")
    parser.add_argument("--model", default="resnet20", help="a model name or package.module:factory (default resnet20)")
    parser.add_argument("--epochs", type=int, default=5, help="default 5")
    parser.add_argument("--batch-size", type=int, default=128, help="default 128")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate, cosine-decayed (default 0.1)")
    parser.add_argument("--policy", default="", help="train behind an ATS policy, e.g. 3-1-7 or hybrid(3-1-7,43-18-18)")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--out", required=True, help="where the state dict goes (a .json with the accuracy beside)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or not args.lr > 0:
        parser.error(
            f"--epochs and --batch-size must be >= 1 and --lr > 0, got {args.epochs}, {args.batch_size}, {args.lr}"
        )
    try:
        record = pretrain(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"fedpriv pretrain: test accuracy {record['test_accuracy']:.4f}; checkpoint {record['checkpoint']}")
    return 0
