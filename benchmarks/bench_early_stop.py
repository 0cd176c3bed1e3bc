"""The stopping rule's saving: iterations and seconds it saves, and what it costs in PSNR.

Trains the demo's victim (:func:`fedpriv.demo.train_victim`: ``shallow-cnn`` on
``embedded-photos``, ``fedpriv pretrain``'s recipe) or keeps it untrained, leaks one-image
eval-mode FedSGD gradients of the first ``--images`` test images (labels revealed), and runs
Inverting Gradients on them once per setting: the fixed ATS schedule (``patience=0``) and each
``--patience`` value. The engine is the loop (one problem at a time, as ``auto`` runs a single
image), so every problem's stop saves its own iterations. Prints per setting the mean and range
of ``iterations_run``, the wall time, the mean PSNR against the true images and the largest
per-image PSNR drop against the fixed schedule.

    python benchmarks/bench_early_stop.py --images 8 --iterations 4800 --patience 50,100,200
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fedpriv.attacks import AttackSettings, AttackTarget, build_attack
from fedpriv.data.loading import dataset_spec, load_split
from fedpriv.demo import DATASET, MODEL, train_victim
from fedpriv.leaks import GradientLeak
from fedpriv.metrics import psnr_per_image
from fedpriv.models import build_model


def victim(trained: bool, seed: int) -> torch.nn.Module:
    """The demo's victim in eval mode: trained by its recipe, or as initialised from ``seed``."""
    torch.manual_seed(seed)
    model = build_model(MODEL, 10, 3)
    if trained:
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = Path(folder) / "victim.pt"
            record = train_victim(seed, checkpoint)
            model.load_state_dict(torch.load(checkpoint))
        print(f"victim: {MODEL} trained on {DATASET}, test accuracy {float(record['test_accuracy']):.3f}")
    return model.eval()


def targets(model: torch.nn.Module, count: int) -> tuple[list[AttackTarget], torch.Tensor]:
    """One-image gradient leaks of the first ``count`` test images, and those images in [0,1]."""
    spec = dataset_spec(DATASET)
    test = load_split(DATASET, Path("~/.cache/fedpriv/data").expanduser(), "test", False, True, 32, 3)
    truth = test.images[:count].float() / 255
    out = []
    for i in range(count):
        labels = test.labels[i : i + 1]
        loss = F.cross_entropy(model(spec.normalize(truth[i : i + 1])), labels)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        leak = GradientLeak(tuple(grads), tuple(n for n, _ in model.named_parameters()), 1, "eval", labels)
        out.append(AttackTarget(leak, seed=i))
    return out, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=4800)
    parser.add_argument("--patience", default="50,100,200", help="comma-separated patience values to compare")
    parser.add_argument("--tolerance", default="1e-3")
    parser.add_argument("--untrained", action="store_true", help="attack the initialised model, not a trained one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = victim(not args.untrained, args.seed)
    leaks, truth = targets(model, args.images)
    spec = dataset_spec(DATASET)
    fixed = None
    print(f"{'patience':>8} {'tolerance':>9} {'iters mean':>10} {'min':>5} {'max':>5} {'seconds':>8} "
          f"{'PSNR dB':>8} {'worst drop dB':>13}")
    for patience in ["0", *args.patience.split(",")]:
        extra = {"engine": "loop", "patience": int(patience), "tolerance": float(args.tolerance)}
        attack = build_attack("inverting-gradients", AttackSettings(iterations=args.iterations, options=extra))
        start = time.perf_counter()
        results = attack.reconstruct(model, spec, leaks)
        seconds = time.perf_counter() - start
        psnr = torch.cat([psnr_per_image(r.images, truth[i : i + 1]) for i, r in enumerate(results)])
        runs = [r.fields["iterations_run"] for r in results]
        fixed = psnr if fixed is None else fixed
        print(f"{patience:>8} {args.tolerance:>9} {sum(runs) / len(runs):>10.0f} {min(runs):>5.0f} {max(runs):>5.0f} "
              f"{seconds:>8.1f} {psnr.mean().item():>8.2f} {(fixed - psnr).max().item():>13.2f}", flush=True)


if __name__ == "__main__":
    main()
