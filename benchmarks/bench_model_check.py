"""The clients' model check (``model-check``): detection rate on malicious models, false alarms on honest ones.

Malicious: every model the malicious behaviours send, over their options and seeds: the imprint
block (``--bins``, thresholds from 400 photographs of a seed) and trap layers (``--rows`` x
``--scales``), each in front of a ConvNet, and every registered model with a final linear layer
fished for one class (the seed's class modulo 10; boost 30). Honest: every registered model freshly initialised
(``--seeds``), the classifiers the product trains (``TRAINED``) after each of ``--epochs`` epochs
of SGD on the embedded photographs (digits for the MNIST models), and any state-dict checkpoints
given with ``--checkpoints``. An honest model counts as flagged when
:func:`fedpriv.model_checks.inspect_model` finds any layer; a malicious one when it finds the
layer that carries the attack (``imprint.measure.weight``: the spreading layer behind it, whose
equal columns the check also flags, is the server's choice and could be disguised; the fished
final layer). The table
prints the rates and, per kind, the range of the trap statistic |t| (each model's largest over
its judged layers) and of sigma2/sigma1 (each model's smallest), so the margins to the
thresholds (|t| > 50; sigma2/sigma1 < 1e-4) show.

    python benchmarks/bench_model_check.py --epochs 5 --checkpoints '/tmp/ats-table2/victims/*.pt'
"""

from __future__ import annotations

import argparse
import glob
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedpriv.data.loading import load_split
from fedpriv.data.specs import resolve_spec
from fedpriv.fishing import final_linear, fish
from fedpriv.imprint import ImprintedModel, thresholds_from
from fedpriv.model_checks import MIN_TRAP_UNITS, MIN_UNITS, inspect_model, rank_one_ratio, shared_offset
from fedpriv.models import MODELS, build_model, wire_state
from fedpriv.trap_weights import arm, trap_rows

PHOTOS, DIGITS = resolve_spec("embedded-photos"), resolve_spec("embedded-digits")
TRAINED = {"convnet": PHOTOS, "convnet-gn": PHOTOS, "shallow-cnn": PHOTOS, "resnet20": PHOTOS,
           "yang-mnist-small": DIGITS}


@dataclass(frozen=True)
class Judged:
    """One model: its kind, whether the check flagged it, its most extreme statistics."""

    kind: str
    flagged: bool
    largest_t: float
    smallest_ratio: float


MEASURE = "imprint.measure.weight"  # the malicious layer of both behaviours


def judge(kind: str, state: dict[str, torch.Tensor], layer: str | None = None) -> Judged:
    """Run the check on ``state`` and judge ``layer`` (every layer when None), with the statistics it uses."""
    weights = [t for n, t in state.items() if (layer is None or n == layer) and n.endswith("weight")
               and t.dim() >= 2 and t.is_floating_point() and len(t) >= MIN_UNITS and bool(t.abs().gt(0).any())]
    offsets = [abs(shared_offset(t)) for t in weights if len(t) >= MIN_TRAP_UNITS]
    ratios = [rank_one_ratio(t) for t in weights]
    flagged = any(layer is None or finding.parameter == layer for finding in inspect_model(state))
    return Judged(kind, flagged, max(offsets, default=0.0), min(ratios, default=1.0))


def malicious(bins: list[int], rows: list[int], scales: list[float], seeds: int) -> Iterator[Judged]:
    """The imprinted and trapped ConvNets."""
    photos = load_split("embedded-photos", "", "train").images.float() / 255
    for seed in range(seeds):
        torch.manual_seed(seed)
        aux = PHOTOS.normalize(photos[torch.randperm(len(photos), generator=torch.Generator().manual_seed(seed))[:400]])
        for count in bins:
            model = ImprintedModel(build_model("convnet", 10), PHOTOS.shape, thresholds_from(aux, count))
            yield judge(f"imprint, {count} bins", wire_state(model), MEASURE)
        for count in rows:
            for scale in scales:
                placeholder = torch.arange(count, dtype=torch.float32)
                model = ImprintedModel(build_model("convnet", 10), PHOTOS.shape, placeholder)
                arm(model.imprint, trap_rows(count, 3 * 32 * 32, 0.5, scale, torch.Generator().manual_seed(seed)),
                    PHOTOS)
                yield judge(f"trap, {count} rows, scale {scale:g}", wire_state(model), MEASURE)
        for name in MODELS.names():
            model = build_model(name, 10, 1 if "mnist" in name else 3)
            try:
                layer_name, layer = final_linear(model)
            except ValueError:
                continue  # no linear layer to fish with: the behaviour refuses such a model
            fish(layer, seed % 10, 30.0)
            yield judge("fishing, every model", wire_state(model), f"{layer_name}.weight")


def fresh(seeds: int) -> Iterator[Judged]:
    """Every registered model as initialised."""
    for name in MODELS.names():
        channels = 1 if "mnist" in name else 3
        for seed in range(seeds):
            torch.manual_seed(seed)
            yield judge("honest, fresh", wire_state(build_model(name, 10, channels)))


def trained(epochs: int) -> Iterator[Judged]:
    """The trainable classifiers after each epoch of SGD (lr 0.05, momentum 0.9, batches of 64)."""
    for name, spec in TRAINED.items():
        data = load_split(spec.name, "", "train")
        images, labels = spec.normalize(data.images.float() / 255), data.labels
        torch.manual_seed(0)
        model = build_model(name, spec.num_classes, spec.channels)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(epochs):
            model.train()
            for batch in torch.randperm(len(labels)).split(64):
                loss = F.cross_entropy(model(images[batch]), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            yield judge("honest, trained", wire_state(model))


def loaded(patterns: list[str]) -> Iterator[Judged]:
    """State dicts saved by the product: run checkpoints (the model under 'model') and pretrained victims."""
    for path in sorted(p for pattern in patterns for p in glob.glob(pattern)):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        state = saved["model"] if "model" in saved and "round" in saved else saved
        if MEASURE in state:
            continue  # a malicious run's global model after aggregation: not what its clients received
        yield judge("honest, checkpoint", {n: t for n, t in state.items() if torch.is_tensor(t)})


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bins", default="4,16,64,128,256", help="comma-separated imprint bin counts")
    parser.add_argument("--rows", default="16,64,256,1024", help="comma-separated trap-layer sizes")
    parser.add_argument("--scales", default="0.9,0.95,0.99", help="comma-separated trap scales")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of every malicious and fresh model")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each trained classifier (one row each)")
    parser.add_argument("--checkpoints", nargs="*", default=[], help="globs of saved state dicts to judge")
    args = parser.parse_args()
    torch.set_num_threads(1)
    judged: dict[str, list[Judged]] = {}
    sources = [malicious([int(b) for b in args.bins.split(",")], [int(r) for r in args.rows.split(",")],
                         [float(s) for s in args.scales.split(",")], args.seeds),
               fresh(args.seeds), trained(args.epochs), loaded(args.checkpoints)]
    for source in sources:
        for one in source:
            judged.setdefault(one.kind, []).append(one)
    print("| models | count | flagged | trap statistic abs(t): min-max | sigma2/sigma1: min-max |")
    print("|---|---|---|---|---|")
    for kind, ones in judged.items():
        flagged = sum(one.flagged for one in ones)
        offsets, ratios = [one.largest_t for one in ones], [one.smallest_ratio for one in ones]
        print(f"| {kind} | {len(ones)} | {flagged} ({flagged / len(ones):.0%}) | {min(offsets):.3g}-{max(offsets):.3g} "
              f"| {min(ratios):.2g}-{max(ratios):.2g} |", flush=True)


if __name__ == "__main__":
    main()
