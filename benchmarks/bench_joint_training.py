"""Yang et al. (CCS 2019) Table II: does joint training by a malicious developer ease inversion?

The paper's scenario, with the product's own parts (``fedpriv.server_pretraining.pretrain_on_aux``
trains the classifier F, honestly or jointly with an inverter G; the ``prediction-inversion``
attack trains the black-box G): F is trained on half of the training set (the paper's 50 %
split), which is also the black-box attacker's auxiliary set ("G trained on F's own training
data"); the victims are the test set. Per setting and seed it prints:

- F's test accuracy, honest and joint (the paper: 99.4 % vs 99.2 % on MNIST);
- how confident F is on its members (the auxiliary set): the mean top probability and the share of
  vectors with an entry that underflows to exactly 0 in
  float32 (whose floored log then carries nothing);
- the victims' reconstruction MSE on [0,1] pixels (mean, std and 95 % interval over images) of
  the black-box G trained on F's members, of a black-box G trained on as many non-members (the
  other half of the training set: the paper's "generic auxiliary set" column with the same
  distribution), and of the jointly trained G; the ratio black-box / joint (the paper: 16x on
  MNIST, 0.3120 -> 0.0197, in a unit it does not state);
- the attacker's priors without the vector's detail: the class-mean image (the best an inverter
  that reads only the predicted class can do), the members' mean image and grey;
- one row per ``--joint-weights`` value: how the reconstruction gain and the accuracy cost move
  with the weight of the inverter's loss (a large weight approaches a pure autoencoder through
  the K-entry prediction vector, the lowest MSE joint training can reach at this scale);
- a what-if column: the black-box attack on the honest F with its logits multiplied by
  ``--sharpen`` (same ranking, far more confident: entries underflow to 0 in float32 as they
  would for a classifier trained much longer than this CPU allows).

Usage: ``python benchmarks/bench_joint_training.py --epochs 40 --seeds 0,1,2 --joint-weights 1,30,1000``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from fedpriv.attacks import AttackTarget, AuxiliaryData, build_attack
from fedpriv.attacks.base import settings_for
from fedpriv.attacks.prediction_inversion import predict
from fedpriv.config import RunConfig
from fedpriv.data.loading import dataset_spec, load_split
from fedpriv.data.specs import DatasetSpec
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


@dataclass
class Setting:
    """One (data set, classifier epochs, seed) setting: the split, the victims and the run config."""

    dataset: str
    epochs: int
    seed: int
    model: str
    spec: DatasetSpec
    aux: AuxiliaryData
    non_members: AuxiliaryData
    victims: torch.Tensor
    test: Any
    options: dict[str, object]

    def config(self, joint: bool, weight: float = 1.0) -> RunConfig:
        """The run config of the honest (``joint=False``) or jointly trained classifier."""
        return validated_config({
            "dataset": self.dataset, "model": self.model, "seed": self.seed, "server-pretrain-epochs": self.epochs,
            "aux-samples": len(self.aux.labels), "joint-training": joint, "joint-weight": weight,
            "protocol": "predictions", "attacks": "prediction-inversion",
        } | self.options)

    def classifier(self, joint: bool, weight: float = 1.0) -> tuple[torch.nn.Module, AuxiliaryData, float]:
        """F trained on the members (honestly or jointly), the aux with its inverter, and the seconds it took."""
        torch.manual_seed(self.seed)
        start = wire_state(build_model(self.model, self.spec.num_classes, self.spec.channels))
        clock = time.perf_counter()
        state, trained_aux, _ = pretrain_on_aux(self.config(joint, weight), self.spec, self.aux, start)
        classifier = load_wire_state(build_model(self.model, self.spec.num_classes, self.spec.channels), state)
        return classifier.eval(), trained_aux, time.perf_counter() - clock


def setting(dataset: str, data_dir: str, epochs: int, seed: int, inverter_epochs: int, width: int,
            model: str) -> Setting:
    """F's members (half the training set, the seed's split), the other half, and the test digits as victims."""
    spec = dataset_spec(dataset)
    train, test = load_split(dataset, data_dir, "train"), load_split(dataset, data_dir, "test")
    order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))
    members, others = order[: len(order) // 2], order[len(order) // 2:]
    options = {"attack.prediction-inversion.align": False, "attack.prediction-inversion.epochs": inverter_epochs,
               "attack.prediction-inversion.width": width}
    return Setting(dataset, epochs, seed, model, spec, AuxiliaryData(train.images[members], train.labels[members]),
                   AuxiliaryData(train.images[others], train.labels[others]), to_pixels(test.images), test, options)


def priors(s: Setting) -> dict[str, list[float]]:
    """The attacker's best images without the vector's detail: grey, the members' mean, their class means.

    The class mean is what an inverter that reads only the predicted class can reach (scored with
    the victims' true classes, its best case).
    """
    members = to_pixels(s.aux.images)
    means = torch.stack([members[s.aux.labels == k].mean(0) for k in range(s.spec.num_classes)])
    return {
        "grey": mse_per_image(torch.full_like(s.victims, 0.5), s.victims).tolist(),
        "mean image": mse_per_image(members.mean(0, keepdim=True).expand_as(s.victims), s.victims).tolist(),
        "class mean": mse_per_image(means[s.test.labels], s.victims).tolist(),
    }


def honest_row(s: Setting, sharpen: float) -> dict[str, object]:
    """The honest F's accuracy and confidence, and the black-box inverters trained against it."""
    classifier, _, seconds = s.classifier(joint=False)
    config = s.config(joint=False)
    sharpened = Sharpened(classifier, sharpen)
    return {
        "accuracy": 100 * evaluate(classifier, s.test.images, s.test.labels, s.spec)[1], "seconds": seconds,
        "members": confidence(predict(classifier, to_pixels(s.aux.images), s.spec)),
        "black-box": black_box_mse(config, classifier, s.aux, s.victims, s.spec, s.seed),
        "black-box, non-member aux": black_box_mse(config, classifier, s.non_members, s.victims, s.spec, s.seed),
        "members sharpened": confidence(predict(sharpened, to_pixels(s.aux.images), s.spec)),
        "black-box, sharpened": black_box_mse(config, sharpened, s.aux, s.victims, s.spec, s.seed),
    } | priors(s)


def joint_row(s: Setting, weight: float) -> dict[str, object]:
    """The jointly trained F's accuracy and confidence, and its inverter's MSE on the victims."""
    classifier, trained_aux, seconds = s.classifier(joint=True, weight=weight)
    inverter = trained_aux.inverter
    assert inverter is not None
    with torch.no_grad():
        mse = mse_per_image(inverter(predict(classifier, s.victims, s.spec)), s.victims).tolist()
    return {"accuracy": 100 * evaluate(classifier, s.test.images, s.test.labels, s.spec)[1], "seconds": seconds,
            "members": confidence(predict(classifier, to_pixels(s.aux.images), s.spec)), "joint": mse}


def main() -> None:
    """Run every (epochs, seed, joint weight) setting and print one Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="embedded-digits", help="embedded-digits (no download) or mnist")
    parser.add_argument("--data-dir", default="~/.cache/fedpriv/data")
    parser.add_argument("--epochs", default="20,100", help="classifier (pre-)training epochs, comma-separated")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--joint-weights", default="1", help="joint-weight values, comma-separated (a row each)")
    parser.add_argument("--inverter-epochs", type=int, default=50, help="black-box inverter epochs (reference: 100)")
    parser.add_argument("--width", type=int, default=32, help="inverter width (reference: 128)")
    parser.add_argument("--model", default="yang-mnist-small", help="classifier (reference: yang-mnist)")
    parser.add_argument("--sharpen", type=float, default=10.0,
                        help="logit factor of the what-if column: the honest F made this much more confident")
    args = parser.parse_args()
    print(f"| F epochs | seed | joint weight | acc. honest / joint (%) | members: top p, share with a 0 entry "
          f"(honest / joint) | MSE black-box | MSE black-box, non-member aux | MSE joint | ratio black-box / joint | "
          f"MSE class mean / mean image / grey | F training s (honest / joint) | what-if: logits x {args.sharpen:g}: "
          f"members' share with a 0 entry, MSE black-box |\n|" + "---|" * 12, flush=True)
    print(f"| source (MNIST) | - | - | {SOURCE['accuracy honest']} / {SOURCE['accuracy joint']} | - | "
          f"{SOURCE['black-box']} | - | {SOURCE['joint']} | {SOURCE['ratio']:.1f}x | - | - | - |", flush=True)
    for epochs in map(int, args.epochs.split(",")):
        for seed in map(int, args.seeds.split(",")):
            s = setting(args.dataset, args.data_dir, epochs, seed, args.inverter_epochs, args.width, args.model)
            h = honest_row(s, args.sharpen)
            for weight in map(float, args.joint_weights.split(",")):
                j = joint_row(s, weight)
                mh, mj = h["members"], j["members"]
                ratio = statistics.fmean(h["black-box"]) / statistics.fmean(j["joint"])
                floors = " / ".join(f"{statistics.fmean(h[k]):.4f}" for k in ("class mean", "mean image", "grey"))
                print(f"| {epochs} | {seed} | {weight:g} | {h['accuracy']:.1f} / {j['accuracy']:.1f} | "
                      f"{mh[0]:.4f}, {mh[1]:.2f} / {mj[0]:.4f}, {mj[1]:.2f} | {interval(h['black-box'])} | "
                      f"{interval(h['black-box, non-member aux'])} | {interval(j['joint'])} | {ratio:.2f}x | "
                      f"{floors} | {h['seconds']:.0f} / {j['seconds']:.0f} | "
                      f"{h['members sharpened'][1]:.2f}, {interval(h['black-box, sharpened'])} |", flush=True)


if __name__ == "__main__":
    main()
