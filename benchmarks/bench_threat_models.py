"""Privacy against utility under declared protocols and Flower's DP, through the real ``flwr run``.

Runs a grid of small federations on ``embedded-photos`` (4 clients, ConvNet with GroupNorm,
clients 0 and 1 attacked): ``fedsgd`` (2-image gradients, labels hidden; Inverting Gradients
with inferred labels, label inference) and ``fedavg`` (4 local samples, 2 steps of batch 2;
update inversion, label inference), each without DP, with Flower's client-side fixed clipping
and central noise at two noise multipliers, with server-side clipping, with ``LocalDpMod``, and
with 90 % update pruning.
Prints one Markdown table: per (protocol, dp, round) the mean PSNR of the reconstruction attack
beside its baseline (``psnr_baseline``) and how many of its images beat that baseline
(``beats_baseline``), label accuracy, global accuracy and epsilon. Usage:
``python benchmarks/bench_threat_models.py [--rounds 3] [--protocols fedavg]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from flower_app import APP

from fedpriv.launcher import PrivateSuperLink, run_config_text
from fedpriv.results import read_jsonl

PROTOCOLS = {
    "fedsgd": {"protocol": "fedsgd", "batch-size": 2, "reveal-labels": False, "server-lr": 0.1,
               "attacks": "inverting-gradients,label-inference"},
    "fedavg": {"protocol": "fedavg", "local-samples": 4, "local-steps": 2, "batch-size": 2, "lr": 0.01,
               "attacks": "update-inversion,label-inference", "reveal-labels": False},
}
DP = {
    "none": {"dp": "none"},
    "client-fixed nm=0.5": {"dp": "client-fixed", "dp-noise-multiplier": 0.5},
    "client-fixed nm=2": {"dp": "client-fixed", "dp-noise-multiplier": 2.0},
    "server-fixed nm=0.5": {"dp": "server-fixed", "dp-noise-multiplier": 0.5},
    "local nm=0.5": {"dp": "local", "dp-noise-multiplier": 0.5},
    "pruning 90%": {"dp": "none", "update-pruning": 0.9},
}


def main() -> None:
    """Run the grid and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--clip", type=float, default=0.1)
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help=f"of {', '.join(PROTOCOLS)}")
    args = parser.parse_args()
    protocols = args.protocols.split(",")
    if unknown := [p for p in protocols if p not in PROTOCOLS]:
        parser.error(f"--protocols: unknown {', '.join(unknown)}; valid: {', '.join(PROTOCOLS)}")
    out = Path(tempfile.mkdtemp(prefix="fedpriv-threat-"))
    lines = ["| protocol | dp | round | IG / update-inv. PSNR (dB) | baseline (dB) | beat it | label acc. | "
             "global acc. | epsilon |", "|---|---|---|---|---|---|---|---|---|"]
    with PrivateSuperLink(out / "flwr-home") as link:
        for protocol in protocols:
            settings = PROTOCOLS[protocol]
            for dp, dp_settings in DP.items():
                name = f"{protocol}-{dp.replace(' ', '-').replace('=', '')}"
                values = {
                    "dataset": "embedded-photos", "model": "convnet-gn", "out-dir": str(out), "run-name": name,
                    "num-server-rounds": args.rounds, "attack-rounds": "all", "attack-clients": "0,1",
                    "attack-iterations": args.iterations, "attack-progress": 0, "eval-samples": 400,
                    "dp-clipping-norm": args.clip, "seed": 0, **settings, **dp_settings,
                }
                outcome = link.run(APP, run_config_text(values), "num-supernodes=4 client-resources-num-cpus=1",
                                   echo=False, timeout=1800)
                if not outcome.ok:
                    lines.append(f"| {protocol} | {dp} | - | run failed: {outcome.status} | | | | | |")
                    continue
                metrics = read_jsonl(out / name / "metrics.jsonl")
                for row in read_jsonl(out / name / "rounds.jsonl")[1:]:
                    cells = [m for m in metrics if m["round"] == row["round"] and m["status"] == "ok"]
                    images = [m for m in cells if "psnr" in m]
                    psnr = [m["psnr"] for m in images]
                    baseline = [m["psnr_baseline"] for m in images]
                    beat = f"{sum(bool(m['beats_baseline']) for m in images)} of {len(images)}" if images else "-"
                    labels = [m["label_accuracy"] for m in cells if m["attack"] == "label-inference"]
                    epsilon = f"{row['dp_epsilon']:.2f}" if "dp_epsilon" in row else "-"
                    lines.append(
                        f"| {protocol} | {dp} | {row['round']} | {_mean(psnr, 2)} | {_mean(baseline, 2)} | {beat} | "
                        f"{_mean(labels, 2)} | "
                        f"{row['accuracy']:.3f} | {epsilon} |"
                    )
                print("\n".join(lines[-args.rounds:]), flush=True)
    print(f"\nruns in {out}\n")
    print("\n".join(lines))


def _mean(values: list[float], digits: int) -> str:
    return f"{statistics.fmean(values):.{digits}f}" if values else "-"


if __name__ == "__main__":
    main()
