"""``fedpriv demo``: a trained victim, two attacked clients (one behind an ATS policy), and the verdicts.

The demo shows the phenomenon the product measures, in about a minute on two CPU cores:

1. it trains the victim the way ATS trains its models (:mod:`fedpriv.pretrain`: SGD, crop and
   flip) on the embedded photographs, a :class:`~fedpriv.models.ShallowCNN` to about 60 % test
   accuracy in seconds;
2. it runs the ``cifar100_ats`` app from that checkpoint through the real ``flwr run``: four
   clients, FedSGD with one-image gradients (ATS's setting), three rounds, clients 0 (no
   defense) and 1 (behind ``ats:3-1-7``) attacked by Inverting Gradients in every round;
3. it prints one line per attacked cell (PSNR, its baseline, the verdict) and the path of the
   run's ``index.html``.

The undefended client's image is recovered (well above its grey baseline); the defended
client's reconstruction is of T(x), which the 3-1-7 policy shifts by 14.5 pixels, so against x
it stays near its baseline.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from fedpriv.baselines import BASELINE_MARGIN_DB, verdict, verdict_summary
from fedpriv.launcher import run_config_text
from fedpriv.results import read_jsonl

MODEL = "shallow-cnn"
DATASET = "embedded-photos"
PRETRAIN_EPOCHS = 8
PRETRAIN_LR = 0.01
FEDERATION = "num-supernodes=4 client-resources-num-cpus=1"
DEFENDED = "ats:3-1-7"


def train_victim(seed: int, out: Path) -> dict[str, Any]:
    """Train the demo's victim with ``fedpriv pretrain``'s recipe; returns what its ``.json`` records."""
    from fedpriv.pretrain import pretrain

    args = argparse.Namespace(
        dataset=DATASET, data_dir="~/.cache/fedpriv/data", download=False, no_verify=False, image_size=32,
        image_channels=3, normalization="dataset", model=MODEL, epochs=PRETRAIN_EPOCHS, batch_size=128,
        lr=PRETRAIN_LR, policy="", seed=seed, out=str(out), progress=False,
    )
    return pretrain(args)


def run_config(seed: int, checkpoint: Path, out_dir: Path, run_name: str, attack_iterations: int = 500) -> str:
    """The demo's ``--run-config`` text."""
    return run_config_text({
        "dataset": DATASET, "model": MODEL, "initial-checkpoint": str(checkpoint), "seed": seed,
        "protocol": "fedsgd", "batch-size": 1, "server-lr": 0.001, "num-server-rounds": 3,
        "attack-rounds": "all", "attack-clients": "0,1", "attacks": "inverting-gradients",
        "attack-iterations": attack_iterations, "attack-restarts": 2, "attack-progress": 0, "eval-samples": 400,
        "defense": "none", "defense-overrides": f"1={DEFENDED}", "out-dir": str(out_dir), "run-name": run_name,
    })


def prepare(seed: int, out_dir: Path, attack_iterations: int = 500) -> tuple[str, Path]:
    """Train the victim and name the run; returns the run config text and the run folder to be.

    The victim's checkpoint (and its ``.json``: accuracy and recipe) goes beside the run folder,
    as ``<run name>-victim.pt``.
    """
    start = time.perf_counter()
    name = f"demo-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = out_dir.expanduser().resolve()
    checkpoint = out / f"{name}-victim.pt"
    record = train_victim(seed, checkpoint)
    print(f"fedpriv demo: trained the victim ({MODEL}, {PRETRAIN_EPOCHS} epochs on {DATASET}): test accuracy "
          f"{float(record['test_accuracy']):.3f} in {time.perf_counter() - start:.0f} s", flush=True)
    return run_config(seed, checkpoint, out, name, attack_iterations), out / name


def table(folder: Path) -> str:
    """The demo's closing table: one line per attacked cell, then where the page is."""
    rows = sorted(read_jsonl(folder / "metrics.jsonl"), key=lambda r: (r["partition_id"], r["round"]))
    rounds = read_jsonl(folder / "rounds.jsonl")
    lines = [f"{'client':>6}  {'defense':<10} {'attack':<20} {'round':>5} {'PSNR dB':>8} {'baseline':>8}  verdict"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"{r['partition_id']:>6}  {r['defense']:<10} {r['attack']:<20} {r['round']:>5}  {r['status']}")
            continue
        lines.append(f"{r['partition_id']:>6}  {r['defense'].split(';')[0]:<10} {r['attack']:<20} {r['round']:>5} "
                     f"{r['psnr']:>8.2f} {r['psnr_baseline']:>8.2f}  {verdict(r)}")
    for client in sorted({r["partition_id"] for r in rows}):
        own = [r for r in rows if r["partition_id"] == client]
        if (summary := verdict_summary(own)) is not None:
            psnr, baseline, _, cells = summary
            lines.append(f"client {client} ({own[0]['defense'].split(';')[0]}): mean PSNR {psnr:.2f} dB, baseline "
                         f"{baseline:.2f} dB ({psnr - baseline:+.2f} dB) over {cells} rounds")
    accuracy = ", ".join(f"{r['accuracy']:.3f}" for r in rounds)
    lines += [f"verdict: PSNR at least {BASELINE_MARGIN_DB:g} dB above the baseline (a grey image on the same "
              f"images); global accuracy per round (0 = the trained start): {accuracy}",
              f"open {folder / 'index.html'}"]
    return "\n".join(lines)
