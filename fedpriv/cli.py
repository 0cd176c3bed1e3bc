"""The ``fedpriv`` command: run a Flower app on a private SuperLink, the demo, policy search, reports."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from fedpriv.errors import SERVER_ERROR_PREFIX
from fedpriv.launcher import PrivateSuperLink, check_federation_config, check_run_config_keys, run_config_string
from fedpriv.preflight import check_run_config

REPO = Path(__file__).resolve().parent.parent


def _run(app: Path, run_config: list[str], federation_config: str, home: Path, port: int | None) -> int:
    if not (app / "pyproject.toml").exists():
        print(f"error: {app} is not a Flower app folder (no pyproject.toml)", file=sys.stderr)
        return 2
    try:
        check_run_config_keys(app, run_config_string(run_config))
        check_federation_config(federation_config)
        check_run_config(app, run_config_string(run_config))  # the ServerApp's checks, before Flower starts
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        with PrivateSuperLink(home, port) as link:
            outcome = link.run(app.resolve(), run_config, federation_config)
    except RuntimeError as error:  # the SuperLink did not start (a port in use, ...)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the SuperLink, the simulation and Ray were stopped on the way out
        print("\nfedpriv: interrupted; the run and its processes were stopped. Every finished round is in the run "
              "folder printed above ('results go to ...'); continue it with the same command and --run-config "
              "\"resume=true run-name='FOLDER NAME'\"", file=sys.stderr)
        return 130
    print(f"\nfedpriv: run {outcome.run_id or '-'} status: {outcome.status}")
    for line in outcome.log.splitlines():
        if "results go to" in line or "finished; results in" in line:
            print(line.split("fedpriv:", 1)[-1].strip())
    errors = [line.split(SERVER_ERROR_PREFIX, 1)[1].strip() for line in outcome.log.splitlines()
              if SERVER_ERROR_PREFIX in line]
    if errors and not outcome.ok:
        print(f"error: {errors[-1]}", file=sys.stderr)
    return 0 if outcome.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 only when the run completed)."""
    parser = argparse.ArgumentParser(prog="fedpriv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="flwr run APP --stream on a private SuperLink; exit 1 if the run failed")
    run.add_argument("app", type=Path, help="the Flower app folder, e.g. simulations/cifar100_ats")
    run.add_argument(
        "--run-config", action="append", default=[], help="key=value string or TOML file; repeatable"
    )
    run.add_argument("--federation-config", default="",
                     help="e.g. \"num-supernodes=10 client-resources-num-cpus=1 client-resources-num-gpus=0\"")
    run.add_argument("--flwr-home", type=Path, default=Path(tempfile.gettempdir()) / f"fedpriv-flwr-{os.getuid()}",
                     help="the private SuperLink's FLWR_HOME (default: fedpriv-flwr-UID in the temporary folder)")
    run.add_argument("--port", type=int, default=None, help="SuperLink port (and port+2); default: a free pair")
    demo = sub.add_parser("demo", help="a trained victim, one undefended and one ATS-defended client attacked, "
                          "with the verdicts (fedpriv/demo.py)")
    demo.add_argument("--seed", type=int, default=0, help="seeds the victim's training and the run")
    demo.add_argument("--out-dir", type=Path, default=Path("~/fedpriv-runs"), help="where the run folder goes")
    demo.add_argument("--flwr-home", type=Path, default=Path(tempfile.gettempdir()) / f"fedpriv-flwr-{os.getuid()}",
                      help="the private SuperLink's FLWR_HOME (default: fedpriv-flwr-UID in the temporary folder)")
    demo.add_argument("--port", type=int, default=None, help="SuperLink port (and port+2); default: a free pair")
    sub.add_parser("search-policies", help="ATS policy search (see: fedpriv search-policies --help)", add_help=False)
    sub.add_parser("pretrain", help="train a model centrally and save a checkpoint (see: fedpriv pretrain --help)",
                   add_help=False)
    sub.add_parser("report", help="tables beside the sources, plots and gallery from run folders "
                   "(see: fedpriv report --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "report":
        from fedpriv.reports.command import main as report_main

        return report_main(rest)
    if args.command == "search-policies":
        from fedpriv.policy_search.__main__ import main as search_main

        return search_main(rest)
    if args.command == "pretrain":
        from fedpriv.pretrain import main as pretrain_main

        return pretrain_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        from fedpriv import demo as demo_run

        run_config, folder = demo_run.prepare(args.seed, args.out_dir)
        code = _run(REPO / "simulations" / "cifar100_ats", [run_config], demo_run.FEDERATION, args.flwr_home, args.port)
        if (folder / "metrics.jsonl").exists():
            print(demo_run.table(folder))
        return code
    return _run(args.app, args.run_config, args.federation_config, args.flwr_home, args.port)
