"""Yang et al. (CCS 2019) Table II: does joint training by a malicious developer ease inversion?

The paper's scenario, with the product's own parts (``fedpriv.server_pretraining.pretrain_on_aux``
trains the classifier F, honestly or jointly with an inverter G; the ``prediction-inversion``
attack trains the black-box G): F is trained on half of the training set (the paper's 50 %
split), which is also the black-box attacker's auxiliary set ("G trained on F's own training
data"); the victims are the test set. Per setting and seed it prints:

- F's test accuracy, honest and joint (the paper: 99.4 % vs 99.2 % on MNIST);
- how confident F is on its members (the auxiliary set) and on non-members (the victims): the
  mean top probability and the share of vectors with an entry that underflows to exactly 0 in
  float32 (whose floored log then carries nothing);
- the victims' reconstruction MSE on [0,1] pixels (mean, std and 95 % interval over images) of
  the black-box G trained on F's members, of a black-box G trained on as many non-members (the
  other half of the training set: the paper's "generic auxiliary set" column with the same
  distribution), and of the jointly trained G; the ratio black-box / joint (the paper: 16x on
  MNIST, 0.3120 -> 0.0197, in a unit it does not state); the grey image's MSE as the floor;
- a what-if column: the black-box attack on the honest F with its logits multiplied by
  ``--sharpen`` (same ranking, far more confident: entries underflow to 0 in float32 as they
  would for a classifier trained much longer than this CPU allows).

Usage: ``python benchmarks/bench_joint_training.py --epochs 20,100 --seeds 0,1,2``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from fedpriv.attacks import AttackTarget, AuxiliaryData, build_attack
from fedpriv.attacks.base import settings_for
from fedpriv.attacks.prediction_inversion import predict
from fedpriv.config import RunConfig
from fedpriv.data.loading import dataset_spec, load_split
from fedpriv.leaks import PredictionLeak
from fedpriv.metrics import mse_per_image
from fedpriv.models import build_model, load_wire_state, wire_state
from fedpriv.server_pretraining import pretrain_on_aux
from fedpriv.training import evaluate, to_pixels
from fedpriv.validation import validated_config

SOURCE = {
    "accuracy honest": 99.4, "accuracy joint": 99.2, "black-box": 0.3120, "joint": 0.0197, "ratio": 0.3120 / 0.0197,
}


def interval(values: list[float]) -> str:
    """mean ± std [95 % interval of the mean] (normal approximation over the values)."""
    mean, std = statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
    half = 1.96 * std / math.sqrt(len(values))
    return f"{mean:.4f} ± {std:.4f} [{mean - half:.4f}, {mean + half:.4f}]"


def confidence(vectors: torch.Tensor) -> tuple[float, float]:
    """Mean top probability and the share of vectors with an entry that is exactly 0."""
    return float(vectors.max(1).values.mean()), float((vectors == 0).any(1).float().mean())


class Sharpened(torch.nn.Module):
    """A classifier whose logits are multiplied by ``factor``: the same ranking, more confident vectors."""

    def __init__(self, classifier: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.classifier, self.factor = classifier, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * self.classifier(x)


def black_box_mse(config: RunConfig, classifier: torch.nn.Module, aux: AuxiliaryData, victims: torch.Tensor,
                  spec, seed: int) -> list[float]:
    """Per-victim MSE of the prediction-inversion attack trained on ``aux`` against ``classifier``."""
    attack = build_attack("prediction-inversion", settings_for(config, "prediction-inversion"))
    attack.prepare(spec, aux)
    leak = PredictionLeak(predict(classifier, victims, spec), "predictions")
    (result,) = attack.reconstruct(classifier, spec, [AttackTarget(leak, seed=seed)])
    return mse_per_image(result.images, victims).tolist()


def run(dataset: str, data_dir: str, epochs: int, seed: int, inverter_epochs: int, width: int, model: str,
        sharpen: float) -> dict[str, object]:
    """One setting: honest and joint F, four inverters, every number of the table's row."""
    spec = dataset_spec(dataset)
    train, test = load_split(dataset, data_dir, "train"), load_split(dataset, data_dir, "test")
    order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))
    members, others = order[: len(order) // 2], order[len(order) // 2:]
    aux = AuxiliaryData(train.images[members], train.labels[members])
    non_members = AuxiliaryData(train.images[others], train.labels[others])
    victims = to_pixels(test.images)
    options = {"attack.prediction-inversion.align": False, "attack.prediction-inversion.epochs": inverter_epochs,
               "attack.prediction-inversion.width": width}
    row: dict[str, object] = {"epochs": epochs, "seed": seed}
    for joint in (False, True):
        config = validated_config({
            "dataset": dataset, "model": model, "seed": seed, "server-pretrain-epochs": epochs,
            "aux-samples": len(members), "joint-training": joint, "protocol": "predictions",
            "attacks": "prediction-inversion",
        } | options)
        torch.manual_seed(seed)
        start = wire_state(build_model(model, spec.num_classes, spec.channels))
        clock = time.perf_counter()
        state, trained_aux, _ = pretrain_on_aux(config, spec, aux, start)
        classifier = load_wire_state(build_model(model, spec.num_classes, spec.channels), state).eval()
        name = "joint" if joint else "honest"
        row[f"accuracy {name}"] = 100 * evaluate(classifier, test.images, test.labels, spec)[1]
        row[f"train seconds {name}"] = time.perf_counter() - clock
        row[f"members {name}"] = confidence(predict(classifier, to_pixels(aux.images), spec))
        row[f"victims {name}"] = confidence(predict(classifier, victims, spec))
        if joint:
            inverter = trained_aux.inverter
            assert inverter is not None
            with torch.no_grad():
                row["joint"] = mse_per_image(inverter(predict(classifier, victims, spec)), victims).tolist()
        else:
            row["black-box"] = black_box_mse(config, classifier, aux, victims, spec, seed)
            row["black-box, non-member aux"] = black_box_mse(config, classifier, non_members, victims, spec, seed)
            sharpened = Sharpened(classifier, sharpen)
            row["members sharpened"] = confidence(predict(sharpened, to_pixels(aux.images), spec))
            row["black-box, sharpened"] = black_box_mse(config, sharpened, aux, victims, spec, seed)
    row["grey"] = mse_per_image(torch.full_like(victims, 0.5), victims).tolist()
    return row


def main() -> None:
    """Run every (epochs, seed) setting and print one Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="embedded-digits", help="embedded-digits (no download) or mnist")
    parser.add_argument("--data-dir", default="~/.cache/fedpriv/data")
    parser.add_argument("--epochs", default="20,100", help="classifier (pre-)training epochs, comma-separated")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--inverter-epochs", type=int, default=50, help="black-box inverter epochs (reference: 100)")
    parser.add_argument("--width", type=int, default=32, help="inverter width (reference: 128)")
    parser.add_argument("--model", default="yang-mnist-small", help="classifier (reference: yang-mnist)")
    parser.add_argument("--sharpen", type=float, default=10.0,
                        help="logit factor of the what-if column: the honest F made this much more confident")
    args = parser.parse_args()
    print(f"| F epochs | seed | acc. honest / joint (%) | members: top p, share with a 0 entry (honest / joint) | "
          f"victims: same | MSE black-box | MSE black-box, non-member aux | MSE joint | ratio black-box / joint | "
          f"MSE grey | F training s (honest / joint) | what-if: logits x {args.sharpen:g}: members' share with a 0 "
          f"entry, MSE black-box |\n|" + "---|" * 12, flush=True)
    print(f"| source (MNIST) | - | {SOURCE['accuracy honest']} / {SOURCE['accuracy joint']} | - | - | "
          f"{SOURCE['black-box']} | - | {SOURCE['joint']} | {SOURCE['ratio']:.1f}x | - | - | - |", flush=True)
    for epochs in map(int, args.epochs.split(",")):
        for seed in map(int, args.seeds.split(",")):
            r = run(args.dataset, args.data_dir, epochs, seed, args.inverter_epochs, args.width, args.model,
                    args.sharpen)
            mh, mj, vh, vj = r["members honest"], r["members joint"], r["victims honest"], r["victims joint"]
            ratio = statistics.fmean(r["black-box"]) / statistics.fmean(r["joint"])
            print(f"| {epochs} | {seed} | {r['accuracy honest']:.1f} / {r['accuracy joint']:.1f} | "
                  f"{mh[0]:.4f}, {mh[1]:.2f} / {mj[0]:.4f}, {mj[1]:.2f} | {vh[0]:.4f}, {vh[1]:.2f} / {vj[0]:.4f}, "
                  f"{vj[1]:.2f} | {interval(r['black-box'])} | {interval(r['black-box, non-member aux'])} | "
                  f"{interval(r['joint'])} | {ratio:.2f}x | {statistics.fmean(r['grey']):.4f} | "
                  f"{r['train seconds honest']:.0f} / {r['train seconds joint']:.0f} | "
                  f"{r['members sharpened'][1]:.2f}, {interval(r['black-box, sharpened'])} |", flush=True)


if __name__ == "__main__":
    main()
