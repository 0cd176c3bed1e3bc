"""Prediction inversion through the real ``flwr run``: truncation, alignment, auxiliary type, joint training.

Runs the ``mnist_prediction_inversion`` app on ``embedded-digits`` (5 clients releasing vectors
truncated to m = 1, 3, 5, 10 and full, every round attacked) once per setting: aligned /
unaligned inverters, the three auxiliary types, and an honest against a malicious (joint)
server that pre-trains the classifier on its auxiliary split. Prints one Markdown table (mean
MSE / PSNR / SSIM per m and round, the global accuracy, the grey-image reference) and the inverter's
training throughput on this machine.
Usage: ``python benchmarks/bench_prediction_inversion.py [--rounds 3 --epochs 20]``.
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
from fedpriv.attacks.prediction_inversion import PredictionInverter, adam
from fedpriv.launcher import PrivateSuperLink, run_config_text
from fedpriv.results import read_jsonl

APP = Path(__file__).resolve().parent.parent / "simulations" / "mnist_prediction_inversion"
PRESET = APP / "presets" / "embedded-digits-small.toml"
SETTINGS = {
    "same, aligned": {},
    "same, unaligned": {"align": "false"},
    "generic, aligned": {"aux-type": "generic"},
    "distinct, aligned": {"aux-type": "distinct"},
    "same, aligned, honest pretrain": {"server-pretrain-epochs": 5},
    "same, aligned, joint pretrain": {"server-pretrain-epochs": 5, "joint-training": True},
}
TOPS = (1, 3, 5, 10)  # partitions 0..3 (truncate:M); partition 4 sends full vectors


def throughput(width: int, images: int = 1024, epochs: int = 3) -> float:
    """Inverter training images per second at ``width`` (batch 128, one thread pool as configured)."""
    torch.manual_seed(0)
    inverter = PredictionInverter(10, 1, 10, width=width)
    vectors = torch.softmax(torch.randn(images, 10), 1)
    pixels = torch.rand(images, 1, 32, 32)
    return fit_decoder(inverter, vectors, pixels, epochs, 128, adam(inverter.parameters(), 2e-4), 0.05,
                       torch.Generator().manual_seed(0)).images_per_second


def main() -> None:
    """Run the settings, print the table and the throughput lines."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--only", default="", help="setting names joined by ';' (default: all)")
    args = parser.parse_args()
    for width in (32, 128):
        print(f"inverter training throughput, width {width}: {throughput(width):.0f} images/s "
              f"({torch.get_num_threads()} threads)", flush=True)
    base = tomllib.loads(PRESET.read_text())
    out = Path(tempfile.mkdtemp(prefix="fedpriv-prediction-"))
    chosen = [s for s in SETTINGS if not args.only or s in args.only.split(";")]
    header = ("| setting | round | accuracy | " + " | ".join(f"m={m}" for m in TOPS)
              + " | full | grey | (MSE / PSNR dB / SSIM) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    with PrivateSuperLink(out / "flwr-home") as link:
        for setting in chosen:
            changes = dict(SETTINGS[setting])
            align = changes.pop("align", "true")
            name = setting.replace(", ", "-").replace(" ", "-")
            values = base | changes | {
                "out-dir": str(out), "run-name": name, "num-server-rounds": args.rounds,
                "attack.prediction-inversion.epochs": args.epochs, "attack.prediction-inversion.width": 32,
                "attack.prediction-inversion.align": align == "true",
            }
            start = time.perf_counter()
            outcome = link.run(APP, run_config_text(values), "num-supernodes=5 client-resources-num-cpus=1",
                               echo=False, timeout=3600)
            seconds = time.perf_counter() - start
            if not outcome.ok:
                lines.append(f"| {setting} | - | run failed: {outcome.status} |")
                print(outcome.log[-3000:], flush=True)
                continue
            metrics = read_jsonl(out / name / "metrics.jsonl")
            for row in read_jsonl(out / name / "rounds.jsonl")[1:]:
                cells = {m["partition_id"]: m for m in metrics if m["round"] == row["round"] and m["status"] == "ok"}
                scores = [_cell(cells.get(pid)) for pid in range(5)]
                grey = statistics.fmean(m["psnr_grey"] for m in cells.values()) if cells else float("nan")
                lines.append(f"| {setting} | {row['round']} | {row['accuracy']:.3f} | " + " | ".join(scores)
                             + f" | {grey:.2f} dB | |")
            print("\n".join(lines[-args.rounds:]) + f"\n({setting}: {seconds:.0f} s)", flush=True)
    print(f"\nruns in {out}\n")
    print("\n".join(lines))


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{row['mse']:.4f} / {row['psnr']:.2f} / {row['ssim']:.3f}"


if __name__ == "__main__":
    main()
