"""Leakage against K under Flower's SecAgg+: what an honest and a malicious server read off the aggregate.

Issue 28's measurement, through the product's own commands. The victim is trained by the server
on its auxiliary split before round 1 (``server-pretrain-epochs`` on ``aux-samples`` images,
disjoint from every client: a model trained on the clients' own images fits them and leaves
their gradients near zero, where no attack works); then, for each K of ``--clients``, one real
``fedpriv run simulations/cifar100_ats`` with ``protocol='secagg'`` and K clients of ``--batch``
images each (one local SGD step, no momentum or weight decay), where the server attacks the
unmasked aggregate of the K updates:

- honest-but-curious: ``label-inference`` (the label multiset of the union of the K batches) and
  ``update-inversion`` (the aggregate read as one update over the union, images matched optimally);
- malicious (``server-behaviour='imprint'``, ``--bins`` bins): ``imprint-readout``, whose recovered
  count (images at 30 dB or more) is printed beside the independent-draw expectation and Fowl et
  al.'s formula for K x batch images.

Reference runs with ``protocol='fedavg'`` and the largest K attack clients' own updates (K = 1
per leak; clients 0 and 1 for the honest attacks, every client for the imprint), with the same
attacks and settings. Each row prints the mean over the run's
cells with the grey baseline beside it and whether the attack beat it.

Default run (about 25 minutes on the 2-core development VM)::

    python benchmarks/bench_secagg.py --out /tmp/bench-secagg

Smoke run (about 4 minutes)::

    python benchmarks/bench_secagg.py --clients 2 --iterations 20 --pretrain-epochs 1 --out /tmp/bench-secagg-smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from flower_app import APP, REPO, execute

from fedpriv.imprint import expected_singletons, fowl_expected_recovered
from fedpriv.launcher import run_config_text
from fedpriv.results import read_jsonl


def run(args: argparse.Namespace, name: str, clients: int, values: dict[str, object],
        log: Path) -> list[dict[str, Any]]:
    """One ``fedpriv run`` of the app (kept when its rows exist); its attack rows."""
    folder = args.out / "runs" / name
    if not (folder / "rounds.jsonl").exists() or len(read_jsonl(folder / "rounds.jsonl")) < 2:
        common: dict[str, object] = {
            "dataset": args.dataset, "model": args.model, "batch-size": args.batch, "local-steps": 1, "lr": args.lr,
            "momentum": 0.0, "weight-decay": 0.0, "num-server-rounds": 1, "attack-rounds": "1",
            "attack-iterations": args.iterations, "attack-progress": 0, "eval-samples": 200, "seed": args.seed,
            "aux-samples": args.aux_samples if args.pretrain_epochs else 0,
            "server-pretrain-epochs": args.pretrain_epochs,
            "out-dir": str(args.out / "runs"), "run-name": name,
        }
        execute([sys.executable, "-m", "fedpriv", "run", str(APP.relative_to(REPO)), "--run-config",
                 run_config_text(common | values), "--federation-config",
                 f"num-supernodes={clients} client-resources-num-cpus=1"], log)
    return read_jsonl(folder / "metrics.jsonl")


def mean(rows: list[dict[str, Any]], key: str) -> float:
    """The mean of ``key`` over the rows that have it (nan if none)."""
    values = [float(r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return statistics.fmean(values) if values else float("nan")


def line(setting: str, clients: int, images: int, rows: list[dict[str, Any]]) -> str:
    """One table row: label accuracy, update inversion's PSNR beside its baseline, how many cells beat it."""
    labels = [r for r in rows if r["attack"] == "label-inference"]
    inverted = [r for r in rows if r["attack"] == "update-inversion"]
    beat = sum(bool(r.get("beats_baseline")) for r in inverted)
    return (f"| {setting} | {clients} | {images} | {mean(labels, 'label_accuracy'):.2f} | "
            f"{mean(inverted, 'psnr'):.2f} | {mean(inverted, 'psnr_baseline'):.2f} | {beat} of {len(inverted)} | "
            f"{mean(inverted, 'ssim'):.3f} |")


def main() -> None:
    """Run every setting and print the two tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the victim, the runs and the log")
    parser.add_argument("--clients", default="2,4,8", help="K values, comma-separated (each >= 2)")
    parser.add_argument("--batch", type=int, default=2, help="images per client")
    parser.add_argument("--iterations", type=int, default=1000, help="update inversion's iterations")
    parser.add_argument("--bins", type=int, default=64, help="imprint bins")
    parser.add_argument("--lr", type=float, default=0.05, help="clients' SGD learning rate")
    parser.add_argument("--dataset", default="embedded-photos")
    parser.add_argument("--model", default="convnet-gn", help="no batch-norm statistics: SecAgg+ clips weights to ±8")
    parser.add_argument("--aux-samples", type=int, default=1000, help="the server's auxiliary split (victim data)")
    parser.add_argument("--pretrain-epochs", type=int, default=60,
                        help="the server's pre-training epochs on it (0: a fresh, seeded model)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out = args.out.expanduser().resolve()
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    log = args.out / "bench_secagg.log"
    ks = [int(k) for k in args.clients.split(",")]
    honest = {"attacks": "label-inference,update-inversion"}
    rows = {k: run(args, f"secagg-k{k}", k, honest | {"protocol": "secagg"}, log) for k in ks}
    single = run(args, f"fedavg-k{max(ks)}", max(ks), honest | {"protocol": "fedavg", "reveal-labels": False,
                                                              "attack-clients": "0,1"}, log)
    imprint = {"attacks": "imprint-readout", "server-behaviour": "imprint",
                        "behaviour.imprint.bins": args.bins, "secagg-clipping-range": 16.0,
                        "aux-samples": max(args.aux_samples if args.pretrain_epochs else 0, 4 * args.bins)}
    imprinted = {k: run(args, f"secagg-imprint-k{k}", k, imprint | {"protocol": "secagg"}, log) for k in ks}
    imprinted_single = run(args, f"fedavg-imprint-k{max(ks)}", max(ks), imprint | {"protocol": "fedavg"}, log)
    accuracy = read_jsonl(args.out / "runs" / f"secagg-k{ks[0]}" / "rounds.jsonl")[0]["accuracy"]
    trained = (f"trained by the server for {args.pretrain_epochs} epochs on {args.aux_samples} auxiliary images"
               if args.pretrain_epochs else "fresh (seeded)")
    print(f"\nVictim: {args.model} on {args.dataset}, {trained}, test accuracy {accuracy:.3f}; "
          f"{args.batch} images per client, one SGD step (lr {args.lr:g}); update inversion {args.iterations} "
          "iterations; labels inferred.\n")
    print("| leak | K | images | label accuracy | update inversion PSNR (dB) | baseline (dB) | beat baseline | SSIM |")
    print("|---|---|---|---|---|---|---|---|")
    print(line("one client's update (fedavg)", 1, args.batch, single))
    for k in ks:
        print(line("SecAgg+ aggregate", k, k * args.batch, rows[k]))
    print(f"\n| imprint, {args.bins} bins | K | images | recovered (>= 30 dB) | independent draws | Fowl et al. | "
          "PSNR (dB) | baseline (dB) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in imprinted_single:
        print(f"| one client's update (fedavg), client {row['partition_id']} | 1 | {args.batch} | "
              f"{row['images_recovered']} | {expected_singletons(args.bins, args.batch):.2f} | "
              f"{fowl_expected_recovered(args.bins, args.batch):.2f} | {row['psnr']:.2f} | "
              f"{row['psnr_baseline']:.2f} |")
    for k in ks:
        (row,) = imprinted[k]
        n = k * args.batch
        print(f"| SecAgg+ aggregate | {k} | {n} | {row['images_recovered']} | "
              f"{expected_singletons(args.bins, n):.2f} | {fowl_expected_recovered(args.bins, n):.2f} | "
              f"{row['psnr']:.2f} | {row['psnr_baseline']:.2f} |")


if __name__ == "__main__":
    main()
