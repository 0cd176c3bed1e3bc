"""Read run folders into measured samples: one value per (run, round, client, attack, metric)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpriv.errors import ConfigError
from fedpriv.results import read_jsonl_checked

# Per-(round, client, attack) fields of metrics.jsonl that reports aggregate.
# ``beats_baseline`` (a bool in the row) becomes 1.0 or 0.0: its mean is the share of cells that beat it.
ATTACK_METRICS = ("psnr", "psnr_defended", "ssim", "ssim_defended", "mse", "mae", "psnr_grey", "psnr_prior",
                  "psnr_baseline", "beats_baseline", "label_accuracy", "angle_error", "angle_error_mod_pi",
                  "property_error", "class_accuracy")
# Per-round fields of rounds.jsonl: the global model's accuracy, as a fraction and in percent.
ROUND_METRICS = ("accuracy", "accuracy_pct", "error_pct", "accuracy_plain")
METRICS = ATTACK_METRICS + ROUND_METRICS
# Data sets that stand in for a source's data set in a table (same channels, same classes per image).
FAMILY = {"cifar10": "cifar10", "embedded-photos": "cifar10", "embedded-photos-large": "cifar10",
          "cifar100": "cifar100", "cifar100-super": "cifar100",
          "mnist": "mnist", "embedded-digits": "mnist", "fashion-mnist": "fashion-mnist"}
MODEL_PREFIXES = ("complex-", "original-")


def canonical_defense(spec: str) -> str:
    """A defense spec in the registry's canonical form, without the default option ``;crop-flip=true``.

    ``ats:3-1-7+43-18-18`` and ``ats:hybrid(3-1-7,43-18-18)`` become the same string; a spec the
    installed registry does not know is returned unchanged (reports read old runs too).
    """
    from fedpriv.defenses import build_defense

    try:
        spec = build_defense(spec).spec
    except ValueError:
        pass
    return spec.replace(";crop-flip=true", "")


@dataclass(frozen=True)
class Sample:
    """One measured value and what it was measured on (the fields tables filter and group by)."""

    run: str
    dataset: str
    model: str
    protocol: str
    dp: str
    aux_type: str
    defense: str
    run_defense: str
    attack: str
    partition: int
    round: int
    metric: str
    value: float

    @property
    def family(self) -> str:
        """The data set family (``embedded-photos`` is a CIFAR-10 stand-in, ...)."""
        return FAMILY.get(self.dataset, self.dataset)

    @property
    def architecture(self) -> str:
        """The model without a ``complex-``/``original-`` prefix (the row of the complex tables)."""
        for prefix in MODEL_PREFIXES:
            if self.model.startswith(prefix):
                return self.model.removeprefix(prefix)
        return self.model

    @property
    def label(self) -> str:
        """``defense`` plus the run's DP mode where there is one: one line of a plot."""
        return self.defense if self.dp in ("", "none") else f"{self.defense} + dp={self.dp}"

    def value_of(self, name: str) -> Any:
        """The value of a filter field (``dataset``, ``family``, ``architecture``, ``defense``, ...)."""
        if name not in FILTER_FIELDS:
            raise ConfigError(f"unknown filter field {name!r}; valid: {', '.join(FILTER_FIELDS)}")
        return getattr(self, name)


FILTER_FIELDS = ("run", "dataset", "family", "model", "architecture", "protocol", "dp", "aux_type", "defense",
                 "run_defense", "attack", "metric")


@dataclass
class Run:
    """One run folder: its resolved configuration and its rows."""

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    rounds: list[dict[str, Any]]
    samples: list[Sample] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # damaged lines skipped on request, as "file line n"
    membership: list[dict[str, Any]] = field(default_factory=list)  # membership.jsonl's rows

    @property
    def name(self) -> str:
        """The folder's name."""
        return self.path.name

    @property
    def run_config(self) -> dict[str, Any]:
        """The resolved run config (``config.json``'s ``run-config``)."""
        return self.config.get("run-config", {})

    @property
    def dataset(self) -> str:
        """The run's data set."""
        return str(self.run_config.get("dataset", "?"))

    @property
    def finished_rounds(self) -> int:
        """The last round ``rounds.jsonl`` records (0: none finished)."""
        return max((int(r["round"]) for r in self.rounds if isinstance(r.get("round"), int)), default=0)

    @property
    def configured_rounds(self) -> int:
        """``num-server-rounds`` of the run's config (0 if absent)."""
        value = self.run_config.get("num-server-rounds", 0)
        return value if isinstance(value, int) else 0

    @property
    def incomplete(self) -> bool:
        """Whether fewer rounds finished than were configured (killed, or still running)."""
        return self.finished_rounds < self.configured_rounds

    @property
    def diverged_after(self) -> int | None:
        """The first round whose global model's test loss is recorded as not finite, else None."""
        return min((int(r["round"]) for r in self.rounds if _diverged(r)), default=None)

    def client_defenses(self) -> dict[int, str]:
        """Each client's canonical defense spec."""
        return {int(pid): canonical_defense(str(c.get("defense", "none")))
                for pid, c in self.config.get("clients", {}).items()}

    def run_defense(self) -> str:
        """The defense the run's accuracy is measured behind: its clients' common defense, else ``mixed``.

        Split networks are evaluated behind the run's ``defense`` codec, whatever the clients use.
        """
        if self.run_config.get("protocol") == "split-inference":
            return canonical_defense(str(self.run_config.get("defense", "none")))
        defenses = set(self.client_defenses().values())
        return defenses.pop() if len(defenses) == 1 else "mixed"


def load_run(path: Path, skip_damaged: bool = False, allow_incomplete: bool = False) -> Run:
    """Read one run folder.

    Parameters
    ----------
    path
        The run folder.
    skip_damaged
        Leave damaged lines of ``metrics.jsonl``, ``rounds.jsonl`` and ``membership.jsonl`` out
        (listed in ``left_out``) instead of refusing the folder.
    allow_incomplete
        Accept a run that finished fewer rounds than ``num-server-rounds``.

    Raises
    ------
    ConfigError
        Naming the folder when it is not a fedpriv run folder (no readable ``config.json`` with a
        run config, or no ``rounds.jsonl``), naming the file and line of a damaged line, or the
        rounds finished of an unfinished run.
    """
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"{path} is not a folder; give fedpriv run folders (each holds config.json, "
                          "rounds.jsonl and metrics.jsonl)")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} is not a fedpriv run folder: config.json cannot be read ({error})") from None
    if not isinstance(config, dict) or not isinstance(config.get("run-config"), dict):
        raise ConfigError(f"{path} is not a fedpriv run folder: config.json has no 'run-config'")
    if not (path / "rounds.jsonl").exists():
        raise ConfigError(f"{path} is not a fedpriv run folder (or no round finished): rounds.jsonl is missing")
    (metrics, bad_metrics), (rounds, bad_rounds), (membership, bad_membership) = (
        read_jsonl_checked(path / n) for n in ("metrics.jsonl", "rounds.jsonl", "membership.jsonl")
    )
    left_out = [f"{path / name} line {n}"
                for name, bad in (("metrics.jsonl", bad_metrics), ("rounds.jsonl", bad_rounds),
                                  ("membership.jsonl", bad_membership)) for n in bad]
    if left_out and not skip_damaged:
        more = f" (and {len(left_out) - 1} more)" if len(left_out) > 1 else ""
        raise ConfigError(f"{left_out[0]} is damaged (not a JSON object){more}; repair or delete it, or pass "
                          "--skip-damaged to leave damaged lines out (the report then lists them)")
    run = Run(path, config, metrics, rounds, left_out=left_out, membership=membership)
    if run.incomplete and not allow_incomplete:
        raise ConfigError(f"{path} finished {run.finished_rounds} of {run.configured_rounds} rounds "
                          "(num-server-rounds); "
                          "its last values are not final: resume it, or pass --allow-incomplete to report the "
                          "finished rounds (marked incomplete)")
    run.samples = _samples(run)
    return run


def load_runs(paths: list[Path], skip_damaged: bool = False, allow_incomplete: bool = False) -> list[Run]:
    """Read every folder (all are checked before any is used, as :func:`load_run`); a folder given twice is an error."""
    if not paths:
        raise ConfigError("no run folder given; usage: fedpriv report RUN_DIR [RUN_DIR ...]")
    runs = [load_run(p, skip_damaged, allow_incomplete) for p in paths]
    seen: dict[Path, int] = {}
    for run in runs:
        seen[run.path] = seen.get(run.path, 0) + 1
    twice = [str(p) for p, count in seen.items() if count > 1]
    if twice:
        raise ConfigError(f"run folder(s) given more than once (their values would count twice): {', '.join(twice)}")
    return runs


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _verdict_number(value: Any) -> float | None:
    return float(value) if isinstance(value, bool) else None


def _diverged(row: dict[str, Any]) -> bool:
    """Whether a ``rounds.jsonl`` row records a test loss that is not finite (written as "nan", "inf")."""
    return "loss" in row and _number(row["loss"]) is None


def _samples(run: Run) -> list[Sample]:
    rc = run.run_config
    common = {"run": run.name, "dataset": run.dataset, "model": str(rc.get("model", "?")),
              "protocol": str(rc.get("protocol", "?")), "dp": str(rc.get("dp", "none")),
              "aux_type": str(rc.get("aux-type", "same"))}
    run_defense = run.run_defense()
    diverged = run.diverged_after
    samples = []
    for row in run.metrics:  # a round after a divergence attacks a diverged model: no result
        if row.get("status") != "ok" or (diverged is not None and int(row["round"]) > diverged):
            continue
        defense = canonical_defense(str(row.get("defense", "none")))
        for metric in ATTACK_METRICS:
            value = _number(row.get(metric)) if metric != "beats_baseline" else _verdict_number(row.get(metric))
            if value is not None:
                samples.append(Sample(**common, defense=defense, run_defense=run_defense, attack=str(row["attack"]),
                                      partition=int(row["partition_id"]), round=int(row["round"]), metric=metric,
                                      value=value))
    for row in run.rounds:
        if diverged is not None and int(row["round"]) >= diverged:  # no result (the report says so)
            continue
        accuracy = _number(row.get("accuracy"))
        values = {"accuracy_plain": _number(row.get("accuracy_plain"))}
        if accuracy is not None:
            values.update(accuracy=accuracy, accuracy_pct=100 * accuracy, error_pct=100 * (1 - accuracy))
        for metric, value in values.items():
            if value is not None:
                samples.append(Sample(**common, defense=run_defense, run_defense=run_defense, attack="",
                                      partition=-1, round=int(row["round"]), metric=metric, value=value))
    return samples


def select_round(samples: list[Sample], which: str) -> list[Sample]:
    """Keep one round per (run, client, attack, metric): ``last`` (the latest), ``all`` or a number.

    Raises
    ------
    ConfigError
        When ``which`` is none of these.
    """
    if which == "all":
        return list(samples)
    if which != "last":
        try:
            number = int(which)
        except ValueError:
            raise ConfigError(f"--round {which!r}: valid: 'last', 'all' or a round number") from None
        return [s for s in samples if s.round == number]
    last: dict[tuple[str, int, str, str], int] = {}
    for s in samples:
        key = (s.run, s.partition, s.attack, s.metric)
        last[key] = max(last.get(key, s.round), s.round)
    return [s for s in samples if s.round == last[(s.run, s.partition, s.attack, s.metric)]]
