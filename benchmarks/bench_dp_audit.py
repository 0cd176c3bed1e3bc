"""Flower's DP modes on a federation that learns under them: accountant epsilon against audited bounds, per observer.

Issue 31's table. Runs one real ``flwr run`` per (DP mode, noise multiplier) on the embedded
MNIST digits: ``--clients`` clients (all of them every round, as DP-FedAvg is used: the noise
on the mean falls as 1 / clients), ``shallow-cnn`` (no batch norm), an initial model the server
pretrains on its auxiliary digits, ``--rounds`` FedAvg rounds of ``--local-epochs``, mislabelled
audit canaries in the clients' data, and membership attacks for both observers: ``loss`` on the
released model, ``update-alignment`` on the server's view of the replies. Prints one Markdown
row per run (the last round, each observer's largest audited bound over the rounds, and the rounds
where the server's bound exceeds the accountant's epsilon after that round) and writes every run
folder under ``--out``.

The expected shape (Steinke et al.; issue 31): central DP (``client-fixed``, ``server-fixed``)
bounds what the released model leaks, not what the server sees in each clipped reply; ``local``
noises the replies themselves.

CPU scale (about 25 min on the 2-core development VM)::

    python benchmarks/bench_dp_audit.py --out /tmp/dp-audit

Larger scale (more clients per round lowers the noise on the mean; more canaries let the audit
prove more)::

    python benchmarks/bench_dp_audit.py --clients 1000 --canaries 1000 --rounds 20 --out ~/dp-audit-large
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from flower_app import APP

from fedpriv.launcher import PrivateSuperLink, run_config_text
from fedpriv.results import read_jsonl

# (label, dp, noise multiplier); "none" runs without DP
GRID = "none:0,client-fixed:0.3,client-fixed:1,client-fixed:3,server-fixed:1,local:0.03,local:0.3"


def run_values(args: argparse.Namespace, name: str, dp: str, noise: float) -> dict[str, Any]:
    """The run config of one grid cell."""
    values: dict[str, Any] = {
        "dataset": "embedded-digits", "model": "shallow-cnn", "protocol": "fedavg", "partitioner": "iid",
        "local-epochs": args.local_epochs, "batch-size": 8, "lr": args.lr, "momentum": 0.0, "weight-decay": 0.0,
        "num-server-rounds": args.rounds, "attack-rounds": "none", "attacks": "label-inference",
        "aux-samples": args.aux, "server-pretrain-epochs": args.pretrain_epochs, "eval-samples": 500,
        "membership-attacks": "loss,update-alignment", "membership-samples": args.members,
        "audit-canaries": args.canaries, "dp": dp, "seed": args.seed,
        "out-dir": str(args.out / "runs"), "run-name": name,
    }
    if dp != "none":
        values |= {"dp-noise-multiplier": noise, "dp-clipping-norm": args.clip, "dp-delta": args.delta}
    return values


def summary_row(label: str, run_dir: Path) -> str:
    """The table row of one run: the last round's figures and each observer's largest bound."""
    rounds = read_jsonl(run_dir / "rounds.jsonl")
    membership = read_jsonl(run_dir / "membership.jsonl")
    last = rounds[-1]["round"]

    def bound(observer: str) -> str:
        rows = [r for r in membership if r["attack"] == "canary-audit" and r["observer"] == observer]
        if not rows:
            return "-"
        best = max(rows, key=lambda r: r["epsilon_lower_bound"])
        at_last = next((r for r in rows if r["round"] == last), None)
        final = "-" if at_last is None else f"{at_last['epsilon_lower_bound']:.2f}"
        return f"{final} (max {best['epsilon_lower_bound']:.2f}, round {best['round']})"

    def auc(attack: str) -> str:
        row = next((r for r in membership if r["attack"] == attack and r["round"] == last
                    and r.get("partition_id") is None), None)
        if row is None:
            return "-"
        return (f"{row['auc']:.3f} [{row['auc_low']:.3f}, {row['auc_high']:.3f}], "
                f"{100 * row['tpr_at_fpr_0.01']:.0f} %")

    def above_accountant() -> str:
        """Rounds whose server bound exceeds the accountant's epsilon after that round: ``round: bound > epsilon``."""
        accountant = {r["round"]: r.get("dp_epsilon") for r in rounds}
        found = [f"{r['round']}: {r['epsilon_lower_bound']:.2f} > {accountant[r['round']]:.2f}" for r in membership
                 if r["attack"] == "canary-audit" and r["observer"] == "server"
                 and accountant.get(r["round"]) is not None and r["epsilon_lower_bound"] > accountant[r["round"]]]
        return "; ".join(found) or "none"

    epsilon = rounds[-1].get("dp_epsilon")
    accuracy = " / ".join(f"{r['accuracy']:.3f}" for r in rounds)
    return (f"| {label} | {'-' if epsilon is None else f'{epsilon:.3g}'} | {bound('server')} | "
            f"{'-' if epsilon is None else above_accountant()} | "
            f"{bound('released model')} | {auc('update-alignment')} | {auc('loss')} | {accuracy} |")


def main() -> None:
    """Run the grid and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--grid", default=GRID, help="comma-separated DP:NOISE cells (none:0 without DP)")
    parser.add_argument("--clients", type=int, default=100, help="supernodes, all of them in every round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=1, help="the clients' epochs per round")
    parser.add_argument("--lr", type=float, default=0.05, help="the clients' SGD step")
    parser.add_argument("--clip", type=float, default=1.0, help="dp-clipping-norm")
    parser.add_argument("--delta", type=float, default=1e-5, help="dp-delta (also the audit's)")
    parser.add_argument("--canaries", type=int, default=200, help="audit-canaries")
    parser.add_argument("--members", type=int, default=100, help="membership-samples (non-members held out)")
    parser.add_argument("--aux", type=int, default=400, help="the server's auxiliary digits")
    parser.add_argument("--pretrain-epochs", type=int, default=20, help="server-pretrain-epochs of the initial model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="output folder (None: a new temporary folder)")
    args = parser.parse_args()
    cells = []
    for cell in args.grid.split(","):
        dp, _, noise = cell.partition(":")
        try:
            cells.append((dp, float(noise or 0)))
        except ValueError:
            parser.error(f"--grid: {cell!r} is not DP:NOISE (e.g. client-fixed:1)")
    args.out = args.out or Path(tempfile.mkdtemp(prefix="fedpriv-dp-audit-"))
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [f"{args.clients} clients per round, {args.rounds} rounds of {args.local_epochs} local epochs, "
             f"clip {args.clip}, delta {args.delta:g}, "
             f"{args.canaries} canaries, {args.members} members, pretrain {args.pretrain_epochs} epochs, "
             f"seed {args.seed}",
             "| dp | accountant's epsilon | server audit: last round (max) | server audit above the accountant's "
             "epsilon (round: bound > epsilon) | released model audit: last round (max) | "
             "server update-alignment: AUC [95 %], TPR at 1 % FPR | released loss: AUC [95 %], TPR at 1 % FPR | "
             "accuracy per round (0 = initial) |",
             "|---|---|---|---|---|---|---|---|"]
    with PrivateSuperLink(args.out / "flwr-home") as link:
        for dp, noise in cells:
            label = "none" if dp == "none" else f"{dp} nm={noise:g}"
            name = label.replace(" ", "-").replace("=", "")
            run_dir = args.out / "runs" / name
            if not (run_dir / "rounds.jsonl").exists() or len(read_jsonl(run_dir / "rounds.jsonl")) <= args.rounds:
                outcome = link.run(APP, run_config_text(run_values(args, name, dp, noise)),
                                   f"num-supernodes={args.clients} client-resources-num-cpus=1", echo=False,
                                   timeout=7200)
                if not outcome.ok:
                    lines.append(f"| {label} | run failed: {outcome.status} | | | | | | |")
                    print(lines[-1], flush=True)
                    continue
            lines.append(summary_row(label, run_dir))
            print(lines[-1], flush=True)
    print(f"\nruns in {args.out / 'runs'}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
