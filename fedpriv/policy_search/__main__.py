"""Command line of ATS's policy search (Gao et al., CVPR 2021): ``python -m fedpriv.policy_search``."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

import torch

from fedpriv.data.loading import load_split
from fedpriv.data.specs import DATASET_SPECS, NORMALIZATIONS, DatasetSpec, resolve_spec
from fedpriv.defenses.ats import MAX_PRIMITIVES
from fedpriv.defenses.ats_primitives import NUM_PRIMITIVES
from fedpriv.errors import ConfigError
from fedpriv.models import MODELS
from fedpriv.policy_search.search import (
    ATS_THRESHOLD,
    DISTINCT_POLICIES,
    RANKINGS,
    Policy,
    PolicyScorer,
    RankedPolicy,
    check_validation_size,
    initial_models,
    load_search_model,
    policy_text,
    random_policies,
    run_search,
    train_search_model,
)

CSV_NAME, PLOT_NAME = "policy_search.csv", "policy_search.png"
CONFIG_NAME, MODEL_NAME = "search_config.json", "search_model.pt"
CSV_FIELDS = (
    "policy", "s_pri", "s_pri_var", "s_acc", "n_per_run", "accepted", "rank", "score",
    "s_acc_runs", "seconds",
)
NO_DATA_DIR = "embedded-photos"


@dataclass(frozen=True)
class SearchSettings:
    """One search run; the fields mirror the command-line options (see ``--help``)."""

    dataset: str
    model: str
    out_dir: Path
    data_dir: Path | None = None
    candidates: int | None = None
    policies: tuple[Policy, ...] = ()
    images: int = 100
    acc_runs: int = 10
    threshold: float = ATS_THRESHOLD
    ranking: str = "mean"
    top: int = 5
    seed: int = 0
    checkpoint: Path | None = None
    train_epochs: int | None = None
    train_fraction: float = 0.1
    normalization: str = "dataset"
    download: bool = False

    def validate(self) -> DatasetSpec:
        """Check every value before any work starts; return the data set spec.

        Raises
        ------
        ConfigError
            Naming the bad value and what is valid.
        """
        spec = resolve_spec(self.dataset, self.normalization)
        MODELS.get(self.model)
        if self.data_dir is None and self.dataset != NO_DATA_DIR:
            raise ConfigError(f"--data-dir is required for data set {self.dataset!r}")
        if self.ranking not in RANKINGS:
            raise ConfigError(f"unknown ranking {self.ranking!r}; valid: {', '.join(RANKINGS)}")
        if self.policies and self.candidates is not None:
            raise ConfigError("give --candidates (random policies) or --policies (given ones), not both")
        if not self.policies and not 0 < self.num_candidates <= DISTINCT_POLICIES:
            raise ConfigError(f"--candidates must be in 1..{DISTINCT_POLICIES}, got {self.candidates}")
        for name, value in (("images", self.images), ("acc-runs", self.acc_runs), ("top", self.top)):
            if value < 1:
                raise ConfigError(f"--{name} must be at least 1, got {value}")
        if not math.isfinite(self.threshold):
            raise ConfigError(f"--threshold must be a finite number, got {self.threshold}")
        if (self.checkpoint is None) == (self.train_epochs is None):
            raise ConfigError(
                "give the S_pri model as --checkpoint PATH or train one here with --train-epochs N "
                "(ATS: 10% of the training data; 100 epochs in its scripts, 50 in the ReScience text)"
            )
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise ConfigError(f"--checkpoint {self.checkpoint} is not a file")
        if self.train_epochs is not None and self.train_epochs < 1:
            raise ConfigError(f"--train-epochs must be at least 1, got {self.train_epochs}")
        if not 0 < self.train_fraction <= 1:
            raise ConfigError(f"--train-fraction must be in (0, 1], got {self.train_fraction}")
        return spec

    @property
    def num_candidates(self) -> int:
        """Random candidates to draw (ATS: 1600) when no policies are given."""
        return 1600 if self.candidates is None else self.candidates


def parse_policies(text: str) -> list[Policy]:
    """Parse comma-separated policies such as ``3-1-7,43-18-18``; repeats are dropped.

    Raises
    ------
    ConfigError
        On an empty entry, a non-integer part, more than three indices or one outside 0..49.
    """
    policies = []
    for part in (part.strip() for part in text.split(",")):
        tokens = part.split("-")
        if not part or not all(t.isascii() and t.isdecimal() for t in tokens):
            raise ConfigError(f"policy {part!r} in {text!r} is not of the form i-j-k (e.g. 3-1-7,43-18-18)")
        indices = tuple(int(t) for t in tokens)
        if len(indices) > MAX_PRIMITIVES or max(indices) >= NUM_PRIMITIVES:
            raise ConfigError(
                f"policy {part!r} in {text!r} needs 1 to {MAX_PRIMITIVES} primitive indices in "
                f"0..{NUM_PRIMITIVES - 1}"
            )
        policies.append(indices)
    return list(dict.fromkeys(policies))


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises ConfigError instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fedpriv search-policies`` (also ``python -m fedpriv.policy_search``)."""
    parser = _Parser(
        prog="fedpriv search-policies",
        description="ATS policy search (Gao et al., CVPR 2021): score random (or given) augmentation "
        "policies by privacy score S_pri (lower = more private) and accuracy score S_acc, reject "
        "S_acc below a threshold, rank the rest by S_pri.",
    )
    add = parser.add_argument
    add("--dataset", required=True, help=f"one of: {', '.join(DATASET_SPECS.names())}")
    add("--data-dir", type=Path, help=f"folder with the archives (not needed for {NO_DATA_DIR})")
    add("--download", action="store_true", help="download missing archives")
    add("--model", default="resnet20", help=f"one of: {', '.join(MODELS.names())} (default resnet20)")
    add("--normalization", default="dataset", help=f"one of: {', '.join(NORMALIZATIONS)} (ATS: cifar10)")
    add("--candidates", type=int, help="number of random 3-slot policies (default 1600, as ATS)")
    add("--policies", help="score these comma-separated policies instead, e.g. 3-1-7,43-18-18")
    add("--images", type=int, default=100, help="S_pri images (validation 200, 205, ...), default 100")
    add("--acc-runs", type=int, default=10, help="S_acc runs (validation 200+100r..299+100r), default 10")
    add(
        "--threshold", type=float, default=ATS_THRESHOLD,
        help="reject policies with mean S_acc below this (default -85, ATS's value). S_acc has no 1/N "
        "factor, so -85 only means something at ATS's sample size, N of about 63 distinct labels per "
        "run on CIFAR-100; on 10-class sets N <= 10. Choose it for your N (the CSV records N per run)",
    )
    add(
        "--ranking", default="mean",
        help="mean: by mean S_pri (ATS 2021, default); head: 0.7 norm(mean) + 0.3 norm(var) (ATS HEAD)",
    )
    add("--top", type=int, default=5, help="how many accepted policies to show (default 5)")
    add("--seed", type=int, default=0, help="seeds candidates, models, augmentation and noise")
    add("--out", type=Path, required=True, help="output folder (CSV, plot, config, trained model)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--checkpoint", type=Path, help="S_pri model state dict (torch.save)")
    group.add_argument("--train-epochs", type=int, help="train the S_pri model here for this many epochs")
    add("--train-fraction", type=float, default=0.1, help="fraction of the training set (default 0.1)")
    return parser


def settings_from_args(argv: Sequence[str] | None = None) -> SearchSettings:
    """Parse and validate command-line arguments.

    Raises
    ------
    ConfigError
        On unknown options, unparsable values or invalid settings.
    """
    args = build_parser().parse_args(argv)
    settings = SearchSettings(
        dataset=args.dataset, model=args.model, out_dir=args.out.expanduser().resolve(),
        data_dir=args.data_dir, candidates=args.candidates,
        policies=tuple(parse_policies(args.policies)) if args.policies is not None else (),
        images=args.images, acc_runs=args.acc_runs, threshold=args.threshold, ranking=args.ranking,
        top=args.top, seed=args.seed, checkpoint=args.checkpoint, train_epochs=args.train_epochs,
        train_fraction=args.train_fraction, normalization=args.normalization, download=args.download,
    )
    settings.validate()
    return settings


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_csv(ranked: Sequence[RankedPolicy], path: Path) -> None:
    """Write the ranked table atomically (a temporary file, then ``os.replace``).

    Columns: ``policy``; ``s_pri``, ``s_pri_var`` (mean and variance over images); ``s_acc``
    (mean over runs); ``n_per_run``, ``s_acc_runs`` (';'-joined per run); ``accepted``;
    ``rank`` (empty when rejected); ``score`` (the ranking key); ``seconds``.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in ranked:
        s = row.scores
        writer.writerow({
            "policy": policy_text(s.policy), "s_pri": f"{s.s_pri:.6f}", "s_pri_var": f"{s.s_pri_var:.6g}",
            "s_acc": f"{s.s_acc:.4f}", "n_per_run": ";".join(map(str, s.n_per_run)),
            "accepted": str(row.accepted).lower(), "rank": row.rank or "", "score": f"{row.score:.6f}",
            "s_acc_runs": ";".join(f"{v:.4f}" for v in s.s_acc_runs), "seconds": f"{s.seconds:.2f}",
        })
    _atomic_write(path, buffer.getvalue().encode())


def write_plot(ranked: Sequence[RankedPolicy], threshold: float, top: int, path: Path) -> None:
    """Scatter mean S_acc against mean S_pri (PNG, Agg), accepted highlighted, the top named."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for accepted, colour, label in ((False, "0.6", "rejected"), (True, "tab:blue", "accepted")):
        rows = [r for r in ranked if r.accepted == accepted]
        xs, ys = [r.scores.s_pri for r in rows], [r.scores.s_acc for r in rows]
        axes.scatter(xs, ys, s=14, c=colour, label=label)
    for row in [r for r in ranked if r.accepted][:top]:
        axes.annotate(policy_text(row.scores.policy), (row.scores.s_pri, row.scores.s_acc), fontsize=7)
    axes.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    axes.set_xlabel("S_pri, mean over images (lower = more private)")
    axes.set_ylabel("S_acc, mean over runs (higher = better)")
    axes.legend(loc="best", fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    _atomic_write(path, buffer.getvalue())


def format_table(ranked: Sequence[RankedPolicy], threshold: float, top: int | None) -> str:
    """A text table: the ``top`` accepted policies by rank, or every candidate when None."""
    accepted = [r for r in ranked if r.accepted]
    shown = list(ranked) if top is None else accepted[:top]
    lines = [f"{'rank':>4}  {'policy':<10} {'S_pri':>8} {'var':>9} {'S_acc':>9} {'N':>7}"]
    for row in shown:
        s = row.scores
        low, high = min(s.n_per_run), max(s.n_per_run)
        n = str(low) if low == high else f"{low}-{high}"
        lines.append(
            f"{row.rank or '-':>4}  {policy_text(s.policy):<10} {s.s_pri:>8.4f} {s.s_pri_var:>9.2e} "
            f"{s.s_acc:>9.2f} {n:>7}"
        )
    lines.append(f"{len(accepted)} of {len(ranked)} candidates accepted (S_acc >= {threshold:g})")
    if top is not None and len(shown) >= 2:
        lines.append(f"hybrid of these: ats:hybrid({','.join(policy_text(r.scores.policy) for r in shown)})")
    return "\n".join(lines)


def search(settings: SearchSettings, log: Callable[[str], None] = print) -> list[RankedPolicy]:
    """Run a whole search: check, load data, prepare models, score, write every output.

    Writes ``search_config.json``, ``search_model.pt`` (when trained here), ``policy_search.csv``
    (rewritten after every candidate) and ``policy_search.png`` into ``settings.out_dir``.
    """
    spec = settings.validate()
    candidates = list(settings.policies) or random_policies(settings.num_candidates, settings.seed)
    data_dir = settings.data_dir or Path(".")
    validation = load_split(settings.dataset, data_dir, "test", settings.download)
    check_validation_size(len(validation), settings.dataset, settings.images, settings.acc_runs)
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    log(f"results folder: {out}")
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()}
    config["policies"] = [policy_text(p) for p in settings.policies]
    config.update(torch=torch.__version__, candidate_policies=[policy_text(p) for p in candidates])
    _atomic_write(out / CONFIG_NAME, json.dumps(config, indent=2).encode())
    privacy_model, accuracy_model = initial_models(settings.model, spec, settings.seed)
    if settings.checkpoint is not None:
        load_search_model(privacy_model, settings.checkpoint)
    else:
        train = load_split(settings.dataset, data_dir, "train", settings.download)
        epochs = settings.train_epochs or 0
        train_search_model(privacy_model, train, spec, epochs, settings.train_fraction, settings.seed, log)
        buffer = io.BytesIO()
        torch.save(privacy_model.state_dict(), buffer)
        _atomic_write(out / MODEL_NAME, buffer.getvalue())
    scorer = PolicyScorer(
        privacy_model, accuracy_model, spec, validation, settings.images, settings.acc_runs, settings.seed
    )
    ranked = run_search(
        scorer, candidates, settings.threshold, settings.ranking, log,
        on_scored=lambda so_far: write_csv(so_far, out / CSV_NAME),
    )
    write_plot(ranked, settings.threshold, settings.top, out / PLOT_NAME)
    return ranked


def main(argv: list[str] | None = None) -> int:
    """Run the policy search from command-line arguments; return the exit code.

    Returns
    -------
    int
        0 on success, 2 on a configuration error (the message goes to stderr).
    """
    try:
        settings = settings_from_args(argv)
        ranked = search(settings)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(ranked, settings.threshold, None if settings.policies else settings.top))
    print(f"results folder: {settings.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
