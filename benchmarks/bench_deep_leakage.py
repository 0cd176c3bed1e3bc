"""Deep Leakage from Gradients against Inverting Gradients on the same one-image gradients.

For each model (DLG's sigmoid LeNet with the paper's U(-0.5, 0.5) initialisation, the project's
``convnet`` at its seeded initialisation in eval mode) and each of the first ``--images`` embedded
photographs of distinct classes, the client's one-image gradient (labels hidden) is attacked by
``deep-leakage`` (L-BFGS, lr 1, ``--dlg-iterations`` steps, labels optimised jointly) and by
``inverting-gradients`` (signed Adam, lr 0.1, ``--ig-iterations`` steps, labels by iDLG). Prints
one row per (model, image, attack): PSNR against the photograph, the grey-image baseline, whether
the label was recovered, the iterations run, the gradient evaluations (DLG's objective evaluations:
its closure calls and the final one; IG's iterations) and the wall time, then the means per
(model, attack).

    python benchmarks/bench_deep_leakage.py                        # 3 images, 300 DLG / 4800 IG steps
    python benchmarks/bench_deep_leakage.py --images 1 --dlg-iterations 20 --ig-iterations 100
    python benchmarks/bench_deep_leakage.py --attacks deep-leakage --dlg-line-search strong-wolfe
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from fedpriv.attacks import AttackSettings, AttackTarget, build_attack
from fedpriv.attacks import deep_leakage as dlg
from fedpriv.baselines import baseline_fields
from fedpriv.data.loading import load_split
from fedpriv.data.specs import resolve_spec
from fedpriv.leaks import GradientLeak
from fedpriv.metrics import psnr_per_image
from fedpriv.models import build_model
from fedpriv.training import batch_gradient

SPEC = resolve_spec("embedded-photos")


class SigmoidLeNet(nn.Module):
    """DLG's LeNet: three 5x5 convolutions (stride 2, 2, 1) with sigmoids, one linear layer."""

    def __init__(self, num_classes: int = 10, channels: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1), nn.Sigmoid(),
        )
        self.fc = nn.Linear(12 * 8 * 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


def victim(name: str) -> nn.Module:
    """The named victim, seeded, in eval mode."""
    torch.manual_seed(0)
    if name == "lenet":
        model = SigmoidLeNet()
        for p in model.parameters():
            nn.init.uniform_(p, -0.5, 0.5)
        return model.eval()
    return build_model(name, SPEC.num_classes, SPEC.channels).eval()


def distinct_images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` training photographs of distinct classes, in [0,1], and their labels."""
    train = load_split("embedded-photos", "", "train")
    picked: dict[int, int] = {}
    for i, label in enumerate(train.labels.tolist()):
        picked.setdefault(label, i)
        if len(picked) == count:
            break
    index = torch.tensor(list(picked.values()))
    return train.images[index].float() / 255, train.labels[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--models", default="lenet,convnet")
    parser.add_argument("--dlg-iterations", type=int, default=300)
    parser.add_argument("--dlg-line-search", default="none", choices=dlg.LINE_SEARCHES)
    parser.add_argument("--ig-iterations", type=int, default=4800)
    parser.add_argument("--attacks", default="deep-leakage,inverting-gradients")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    xs, ys = distinct_images(args.images)
    builders = {
        "deep-leakage": lambda: build_attack("deep-leakage", AttackSettings(iterations=args.dlg_iterations),
                                             {"line-search": args.dlg_line_search}),
        "inverting-gradients": lambda: build_attack("inverting-gradients",
                                                    AttackSettings(iterations=args.ig_iterations)),
    }
    attacks = {name: builders[name]() for name in args.attacks.split(",")}
    evaluations = [0]
    counted = dlg.gradient_distance

    def counting(*a, **k):  # DLG's closure evaluations
        evaluations[0] += 1
        return counted(*a, **k)

    dlg.gradient_distance = counting
    print(f"torch threads {torch.get_num_threads()}; DLG lr 1, {args.dlg_iterations} L-BFGS steps, line search "
          f"{args.dlg_line_search}; IG lr 0.1, {args.ig_iterations} iterations; labels hidden\n")
    print("| model | image (class) | attack | PSNR dB | grey dB | label | iterations | grad evals | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for model_name in args.models.split(","):
        model = victim(model_name)
        for k in range(len(ys)):
            x, y = xs[k : k + 1], ys[k : k + 1]
            names, grads, _ = batch_gradient(model, SPEC.normalize(x), y, "eval")
            leak = GradientLeak(grads, names, 1, "eval", None)
            for attack_name, attack in attacks.items():
                evaluations[0] = 0
                start = time.perf_counter()
                result = attack.reconstruct(model, SPEC, [AttackTarget(leak, seed=k)])[0]
                seconds = time.perf_counter() - start
                assert result.images is not None and result.labels is not None
                psnr = float(psnr_per_image(result.images.clamp(0, 1), x))
                grey = baseline_fields(psnr, x)["psnr_grey"]
                run = int(result.fields["iterations_run"])
                evals = evaluations[0] if attack_name == "deep-leakage" else run
                label = "ok" if result.labels.tolist() == y.tolist() else f"{result.labels.tolist()[0]}"
                print(f"| {model_name} | {k} ({int(y)}) | {attack_name} | {psnr:.1f} | {grey:.1f} | {label} | {run} "
                      f"| {evals} | {seconds:.1f} |", flush=True)
                summary.setdefault((model_name, attack_name), []).append((psnr, grey, seconds))
    print("\n| model | attack | mean PSNR dB | mean grey dB | mean seconds |")
    print("|---|---|---|---|---|")
    for (model_name, attack_name), rows in summary.items():
        print(f"| {model_name} | {attack_name} | {statistics.mean(r[0] for r in rows):.1f} | "
              f"{statistics.mean(r[1] for r in rows):.1f} | {statistics.mean(r[2] for r in rows):.1f} |")


if __name__ == "__main__":
    main()
