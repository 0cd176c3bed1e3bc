"""ATS Table 2 (and Table 1's direction) on trained victims, through the product's own commands.

The ATS reproduction (Taboada Warmerdam et al., ReScience C 2022, Table 2) attacks one-image
gradients of a *trained* ResNet20-4 behind each ATS policy and finds that the translation-aware
enhanced attack beats Inverting Gradients measured against T(x). For each policy this script

1. trains the victim centrally behind that policy with ``fedpriv pretrain`` (``--epochs E``),
2. attacks it through the real Flower run, ``fedpriv run simulations/cifar100_ats``: FedSGD, one
   image per client, every client behind the policy, one round, both attacks on every leak;

then, after all policies, trains a second victim per policy for ``--check-epochs`` (default 2E;
E/2 is the cheaper check), whose accuracy only shows whether E sits on the plateau (it is not
attacked), and feeds the run folders to ``fedpriv report``.

It prints, per policy, the victim's accuracy, Inverting Gradients and translation-aware PSNR
against T(x) (``psnr_defended``, the sources' convention) and against x (``psnr``), the paired
difference of the two attacks on the same leaks, the grey/prior baseline (``psnr_baseline``) and
the sources' values (``fedpriv/reports/sources.toml``, tables ``ats-table2`` and
``ats-table1-cifar100``), each as mean ± sample std [Student-t 95 % interval of the mean].

Full run (about 1-1.5 h on the 2-core development VM; ATS's own 4800 iterations: ``--iterations 4800``)::

    python benchmarks/bench_ats_table2.py --out /tmp/ats-table2

Full settings on a GPU machine (CIFAR-100 archives, ResNet20-4, 200 epochs, 4800 iterations, 100 images)::

    python benchmarks/bench_ats_table2.py --dataset cifar100 --download --model resnet20-4 --normalization cifar10 \\
        --epochs 200 --check-epochs 0 --iterations 4800 --clients 100 --eval-samples 10000 \\
        --attack-device cuda --out ~/fedpriv-runs/ats-table2-full

(``fedpriv pretrain`` has no device option: the 200-epoch victims train on the CPU.)

Smoke run (under 2 minutes on an idle 2-core VM)::

    python benchmarks/bench_ats_table2.py --epochs 1 --check-epochs 0 --iterations 20 --clients 2 \\
        --policies none,3-1-7 --out /tmp/ats-table2-smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flower_app import APP, REPO, execute

from fedpriv.launcher import run_config_text
from fedpriv.reports.statistics import Summary, summarise
from fedpriv.results import read_jsonl

SOURCES = REPO / "fedpriv" / "reports" / "sources.toml"
POLICIES = "none,3-1-7,43-18-18,hybrid(3-1-7,43-18-18)"
ATTACKS = "inverting-gradients,translation-aware"
SHORT = {"inverting-gradients": "IG", "translation-aware": "TA", "policy-aware": "PA"}


@dataclass
class PolicyResult:
    """What one policy's victim and run gave.

    Attributes
    ----------
    policy : str
        The ATS policy (``none``, ``3-1-7``, ``hybrid(3-1-7,43-18-18)`` ...).
    run_dir : Path
        The run folder of ``fedpriv run``.
    accuracy : float
        Test accuracy of the attacked victim (``fedpriv pretrain``'s ``.json``).
    check_accuracy : float
        Test accuracy of the victim trained ``check_epochs`` (NaN when not trained).
    rows : list of dict
        The run's ``metrics.jsonl`` rows with status ``ok``.
    seconds : dict of str to float
        Wall seconds of ``pretrain`` (the attacked victim), ``check`` and ``run``.
    """

    policy: str
    run_dir: Path
    accuracy: float
    check_accuracy: float
    rows: list[dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)

    def values(self, attack: str, metric: str) -> list[float]:
        """One attack's per-image values of ``metric``, in client order."""
        rows = sorted((r for r in self.rows if r["attack"] == attack), key=lambda r: r["partition_id"])
        return [float(r[metric]) for r in rows]

    def paired(self, attack: str, reference: str, metric: str) -> list[float]:
        """Per-leak ``attack - reference`` of ``metric`` (the same client's image, both attacks)."""
        mine = {r["partition_id"]: float(r[metric]) for r in self.rows if r["attack"] == attack}
        theirs = {r["partition_id"]: float(r[metric]) for r in self.rows if r["attack"] == reference}
        return [mine[k] - theirs[k] for k in sorted(mine.keys() & theirs.keys())]


def slug(policy: str) -> str:
    """A folder-safe name for a policy: ``hybrid(3-1-7,43-18-18)`` -> ``hybrid-3-1-7-43-18-18``."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", policy).strip("-")


def defense_spec(policy: str) -> str:
    """The run-config ``defense`` of a policy (``none`` or ``ats:POLICY``)."""
    return "none" if policy == "none" else f"ats:{policy}"


def pretrain(args: argparse.Namespace, policy: str, epochs: int, out: Path, log: Path) -> tuple[float, float]:
    """Train one victim with ``fedpriv pretrain`` (kept if ``--resume`` and present); (accuracy, seconds)."""
    record = out.with_suffix(out.suffix + ".json")
    seconds = math.nan
    if not (args.resume and record.exists()):
        command = [sys.executable, "-m", "fedpriv", "pretrain", "--dataset", args.dataset, "--model", args.model,
                   "--normalization", args.normalization, "--epochs", str(epochs), "--seed", str(args.seed),
                   "--out", str(out), "--no-progress"]
        if policy != "none":
            command += ["--policy", policy]
        if args.download:
            command += ["--download"]
        seconds = execute(command, log)
    return float(json.loads(record.read_text())["test_accuracy"]), seconds


def attack_run(args: argparse.Namespace, policy: str, checkpoint: Path, log: Path) -> tuple[Path, float]:
    """Attack the victim through ``fedpriv run simulations/cifar100_ats``; (run folder, seconds)."""
    name = f"ats-table2-{slug(policy)}"
    run_dir = args.out / "runs" / name
    if args.resume and (run_dir / "rounds.jsonl").exists() and len(read_jsonl(run_dir / "rounds.jsonl")) > 1:
        return run_dir, math.nan
    values: dict[str, object] = {
        "dataset": args.dataset, "model": args.model, "normalization": args.normalization,
        "initial-checkpoint": str(checkpoint), "attack-device": args.attack_device,
        "protocol": "fedsgd", "batch-size": 1, "server-lr": 0.01, "defense": defense_spec(policy),
        "attacks": run_attacks(args, policy), "num-server-rounds": 1, "attack-rounds": "1", "attack-clients": "all",
        "attack-iterations": args.iterations, "attack-progress": args.progress, "eval-samples": args.eval_samples,
        "seed": args.seed, "out-dir": str(args.out / "runs"), "run-name": name,
    }
    command = [sys.executable, "-m", "fedpriv", "run", str(APP.relative_to(REPO)), "--run-config",
               run_config_text(values), "--federation-config",
               f"num-supernodes={args.clients} client-resources-num-cpus=1"]
    return run_dir, execute(command, log)


def run_attacks(args: argparse.Namespace, policy: str) -> str:
    """The run's attacks: on ``none`` without translation-aware, unless ``--all-attacks-on-none``.

    Without a policy the translation-aware attack's clamps are 0: it is Inverting Gradients with
    another start, which costs the run's time and says nothing about Table 2 (no source value).
    """
    attacks = args.attacks.split(",")
    if policy == "none" and not args.all_attacks_on_none:
        attacks = [a for a in attacks if a != "translation-aware"] or attacks
    return ",".join(attacks)


def sources() -> dict[str, dict[str, dict[str, Any]]]:
    """The sources' rows of ``ats-table2`` and ``ats-table1-cifar100``, keyed by table id, then defense."""
    tables = tomllib.loads(SOURCES.read_text())["table"]
    wanted = ("ats-table2", "ats-table1-cifar100")
    return {t["id"]: {row["match"]["defense"]: row for row in t["rows"]} for t in tables if t["id"] in wanted}


def cell(values: list[float]) -> str:
    """``mean ± std [low, high]`` of the values (``-`` for none)."""
    if not values:
        return "-"
    summary: Summary = summarise(values)
    return summary.text() if summary.n < 2 else f"{summary.text()} {summary.ci_text()}"


def table(results: list[PolicyResult], args: argparse.Namespace, check_epochs: int = 0) -> str:
    """The Markdown table: ours beside the sources' values."""
    known = sources()
    attacks = args.attacks.split(",")
    extra = [a for a in attacks if a not in ("inverting-gradients", "translation-aware")]
    check = f" / {check_epochs} ep." if check_epochs else ""
    head = ["policy", f"victim acc. % ({args.epochs} ep.{check})", "IG vs T(x)", "TA vs T(x)",
            "TA - IG vs T(x), paired"]
    head += [f"{SHORT.get(a, a)}{what}" for a in extra for what in (" vs T(x)", " - IG vs T(x), paired")]
    head += ["IG vs x", "TA vs x", *[f"{SHORT.get(a, a)} vs x" for a in extra], "baseline",
             "source: default / enhanced vs T(x)", "source acc. (repro)", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for result in results:
        spec = defense_spec(result.policy)
        source2 = known.get("ats-table2", {}).get(spec, {})
        source1 = known.get("ats-table1-cifar100", {}).get(spec, {})
        checked = "" if math.isnan(result.check_accuracy) else f" / {100 * result.check_accuracy:.2f}"
        ig = "inverting-gradients"
        ta = "translation-aware"
        cells = [
            result.policy, f"{100 * result.accuracy:.2f}{checked}",
            cell(result.values(ig, "psnr_defended")), cell(result.values(ta, "psnr_defended")),
            cell(result.paired(ta, ig, "psnr_defended")),
            *[cell(values) for a in extra
              for values in (result.values(a, "psnr_defended"), result.paired(a, ig, "psnr_defended"))],
            cell(result.values(ig, "psnr")), cell(result.values(ta, "psnr")),
            *[cell(result.values(a, "psnr")) for a in extra],
            cell(result.values(ig, "psnr_baseline")),
            f"{source2.get('default', '-')} / {source2.get('enhanced', '-')}",
            str(source1.get("acc_repro", "-")),
            str(len(result.values(ig, "psnr_defended"))),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Train, attack and report every policy, then print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--policies", default=POLICIES,
                        help="ATS policies, comma-separated at the top level ('none': no policy)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the attacked victims (fedpriv pretrain)")
    parser.add_argument("--check-epochs", type=int, default=-1,
                        help="epochs of a second victim per policy (same recipe, not attacked) whose "
                             "accuracy beside --epochs' shows the plateau; -1: twice --epochs, 0: none")
    parser.add_argument("--iterations", type=int, default=2400,
                        help="attack-iterations (ATS: 4800; 2400, the issue's floor, fits the 2-core VM)")
    parser.add_argument("--clients", type=int, default=8, help="supernodes = one-image leaks per policy")
    parser.add_argument("--attacks", default=ATTACKS, help="the run's attacks")
    parser.add_argument("--all-attacks-on-none", action="store_true",
                        help="run every attack on the 'none' victim too (translation-aware is IG there)")
    parser.add_argument("--dataset", default="embedded-photos", help="data set of victims and runs")
    parser.add_argument("--model", default="resnet20", help="victim model (ATS: resnet20-4)")
    parser.add_argument("--download", action="store_true", help="fetch missing standard archives (pretrain)")
    parser.add_argument("--normalization", default="dataset",
                        help="normalization of victims and runs (ATS on CIFAR-100: cifar10)")
    parser.add_argument("--attack-device", default="cpu", help="attack-device of the runs (cuda on a GPU)")
    parser.add_argument("--eval-samples", type=int, default=400, help="test images the server evaluates on")
    parser.add_argument("--seed", type=int, default=0, help="seed of pretrain and run")
    parser.add_argument("--progress", type=int, default=600, help="attack-progress of the runs")
    parser.add_argument("--out", type=Path, default=None, help="output folder (None: a new temporary folder)")
    parser.add_argument("--resume", action="store_true",
                        help="keep victims and finished runs already in --out")
    args = parser.parse_args()
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="fedpriv-ats-table2-"))).expanduser().resolve()
    (args.out / "victims").mkdir(parents=True, exist_ok=True)
    check_epochs = 2 * args.epochs if args.check_epochs < 0 else args.check_epochs
    policies = re.split(r",(?![^(]*\))", args.policies)
    log = args.out / "commands.log"
    print(f"out: {args.out} (command output in {log}); load {os.getloadavg()[0]:.2f}", flush=True)
    results: list[PolicyResult] = []
    start = time.perf_counter()
    for policy in policies:  # the attacked victims and their runs first: a cut-short run keeps whole rows
        seconds: dict[str, float] = {}
        checkpoint = args.out / "victims" / f"{slug(policy)}-e{args.epochs}.pt"
        accuracy, seconds["pretrain"] = pretrain(args, policy, args.epochs, checkpoint, log)
        run_dir, seconds["run"] = attack_run(args, policy, checkpoint, log)
        rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("status") == "ok"]
        result = PolicyResult(policy, run_dir, accuracy, math.nan, rows, seconds)
        results.append(result)
        timing = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if not math.isnan(v))
        print(f"{policy}: accuracy {accuracy:.4f} (E={args.epochs}); {len(rows)} ok rows; {timing}; "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
        print(table([result], args), flush=True)
    for result in results if check_epochs else []:  # then the plateau check: the same recipe, other epochs
        check = args.out / "victims" / f"{slug(result.policy)}-e{check_epochs}.pt"
        result.check_accuracy, result.seconds["check"] = pretrain(args, result.policy, check_epochs, check, log)
        print(f"{result.policy}: accuracy {result.accuracy:.4f} at {args.epochs} epochs, "
              f"{result.check_accuracy:.4f} at {check_epochs}", flush=True)
    report = args.out / "report"
    execute([sys.executable, "-m", "fedpriv", "report", *[str(r.run_dir) for r in results], "--out", str(report)],
            log)
    text = table(results, args, check_epochs)
    summary = {
        "settings": {k: str(v) for k, v in vars(args).items()} | {"check_epochs": check_epochs},
        "policies": [
            {"policy": r.policy, "run_dir": str(r.run_dir), "accuracy": r.accuracy, "check_accuracy": r.check_accuracy,
             "seconds": r.seconds,
             "attack_seconds": {a: sum(float(x["seconds"]) for x in r.rows if x["attack"] == a)
                                for a in args.attacks.split(",")},
             "rows": r.rows}
            for r in results
        ],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (args.out / "table.md").write_text(text + "\n")
    print(f"\nATS Table 2 on trained victims: {args.dataset}, {args.model}, E={args.epochs} "
          f"(check {check_epochs}), {args.iterations} iterations, {args.clients} one-image leaks per policy, "
          f"seed {args.seed}; PSNR dB, mean ± std [95 % t-interval]; total {time.perf_counter() - start:.0f} s")
    print(text)
    print(f"\nreport: {report}; runs: {args.out / 'runs'}")


if __name__ == "__main__":
    main()
