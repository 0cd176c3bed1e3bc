"""The run configuration: Flower run-config keys parsed into a validated dataclass."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpriv.config_checks import check_auxiliary
from fedpriv.config_values import coerce, overrides, parse_attack_options, selection
from fedpriv.errors import ConfigError
from fedpriv.spec_numbers import spec_float, spec_int

if TYPE_CHECKING:
    from fedpriv.attacks import AttackSettings
    from fedpriv.data.loading import LabeledImages
    from fedpriv.data.specs import DatasetSpec

DEFAULT_OUT_DIR = "~/fedpriv-runs"
DEFAULT_DATA_DIR = "~/.cache/fedpriv/data"
PARTITIONERS = ("iid", "dirichlet")
MODEL_MODES = ("eval", "train")
DP_MODES = ("none", "client-fixed", "server-fixed", "local")
AGGREGATORS = ("fedavg", "fedmedian", "fedtrimmedavg", "krum")
OPTIMISATION_KEYS = ("iterations", "restarts", "lr", "tv")  # per-attack overrides of attack-*
MAX_ITERATIONS, MAX_RESTARTS, MAX_WEIGHT = 10_000_000, 1000, 1000.0  # ranges of those overrides


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run, keyed like Flower's run-config (``num-server-rounds`` ...).

    Use :meth:`from_run_config` to build one from Flower's ``context.run_config``; every value
    is validated there, before any work starts.
    """

    num_server_rounds: int = 3
    seed: int = 0
    dataset: str = "cifar100"
    normalization: str = "dataset"
    data_dir: str = DEFAULT_DATA_DIR
    data_download: bool = True
    data_verify: bool = True
    image_size: int = 32
    image_channels: int = 3
    out_dir: str = DEFAULT_OUT_DIR
    run_name: str = ""
    model: str = "resnet20"
    initial_checkpoint: str = ""
    partitioner: str = "dirichlet"
    dirichlet_alpha: float = 0.5
    clients_per_round: int = 0
    protocol: str = "fedsgd"
    server_lr: float = 0.1
    local_epochs: int = 1
    local_steps: int = 0
    local_samples: int = 0
    aux_samples: int = 0
    aux_type: str = "same"
    aux_dataset: str = ""
    prediction_samples: int = 16
    feature_samples: int = 8
    split_training: bool = False
    server_pretrain_epochs: int = 0
    joint_training: bool = False
    joint_weight: float = 1.0
    batch_size: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eval_samples: int = 1000
    defense: str = "none"
    defense_overrides: str = ""
    attacks: str = "inverting-gradients"
    attack_overrides: str = ""
    attack_rounds: str = "1"
    attack_clients: str = "all"
    attack_iterations: int = 4800
    attack_restarts: int = 1
    attack_lr: float = 0.1
    attack_tv: float = 1e-4
    attack_device: str = "cpu"
    attack_progress: int = 500
    attack_model_mode: str = "eval"
    attack_precision: str = "default"
    attack_options: str = ""
    reveal_labels: bool = True
    aggregator: str = "fedavg"
    dp: str = "none"
    dp_noise_multiplier: float = 1.0
    dp_clipping_norm: float = 1.0
    dp_delta: float = 1e-5
    update_pruning: float = 0.0
    round_timeout: float = 3600.0
    fail_fast: bool = False
    resume: bool = False
    inject_client_failure: str = "none"
    inject_client_hang: str = "none"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @staticmethod
    def keys() -> list[str]:
        """The run-config keys (kebab-case) this dataclass reads."""
        return [f.name.replace("_", "-") for f in dataclasses.fields(RunConfig) if f.name != "extra"]

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> "RunConfig":
        """Build and validate a config from Flower run-config values.

        Unknown keys are kept in ``extra`` (apps may add their own); known keys are type-checked
        (ints stay ints, floats accept ints, bools must be bools) and range-checked.

        Raises
        ------
        ConfigError
            Naming the key, the bad value and what is valid.
        """
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for key, value in run_config.items():
            name = str(key).replace("-", "_")
            if name not in types or name == "extra":
                extra[str(key)] = value
                continue
            values[name] = coerce(key, value, types[name])
        config = cls(**values, extra=extra)
        config.validate()
        return config

    def as_run_config(self) -> dict[str, Any]:
        """Kebab-case dict of all values (what ``config.json`` records)."""
        return {
            f.name.replace("_", "-"): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "extra"
        } | dict(self.extra)

    def validate(self) -> None:
        """Check ranges and plugin specs (imports plugins lazily); raise ConfigError."""
        positive: dict[str, float] = {
            "num-server-rounds": self.num_server_rounds,
            "local-epochs": self.local_epochs,
            "batch-size": self.batch_size,
            "image-size": self.image_size,
            "attack-iterations": self.attack_iterations,
            "attack-restarts": self.attack_restarts,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        non_negative: dict[str, float] = {
            "clients-per-round": self.clients_per_round,
            "eval-samples": self.eval_samples,
            "attack-progress": self.attack_progress,
            "seed": self.seed,
            "momentum": self.momentum,
            "weight-decay": self.weight_decay,
            "attack-tv": self.attack_tv,
            "local-steps": self.local_steps,
            "local-samples": self.local_samples,
            "aux-samples": self.aux_samples,
            "dp-noise-multiplier": self.dp_noise_multiplier,
            "server-pretrain-epochs": self.server_pretrain_epochs,
            "joint-weight": self.joint_weight,
        }
        for key, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{key} must be >= 0, got {value}")
        for key, value in {
            "lr": self.lr, "attack-lr": self.attack_lr, "dirichlet-alpha": self.dirichlet_alpha,
            "server-lr": self.server_lr, "dp-clipping-norm": self.dp_clipping_norm, "round-timeout": self.round_timeout,
        }.items():
            if not value > 0:
                raise ConfigError(f"{key} must be > 0, got {value}")
        if not 0 < self.dp_delta < 1:
            raise ConfigError(f"dp-delta must lie in (0, 1), got {self.dp_delta}")
        if not 0 <= self.update_pruning < 1:
            raise ConfigError(f"update-pruning must lie in [0, 1) (the fraction of entries zeroed), got {self.update_pruning}")
        if self.dp == "local" and self.dp_noise_multiplier == 0:
            raise ConfigError("dp='local' needs dp-noise-multiplier > 0 (LocalDpMod's epsilon is infinite at 0)")
        for key, value, valid in (("dp", self.dp, DP_MODES), ("aggregator", self.aggregator, AGGREGATORS)):
            if value not in valid:
                raise ConfigError(f"{key} {value!r} is unknown; valid: {', '.join(valid)}")
        if self.partitioner not in PARTITIONERS:
            raise ConfigError(f"partitioner {self.partitioner!r} is unknown; valid: {', '.join(PARTITIONERS)}")
        if self.attack_model_mode not in MODEL_MODES:
            raise ConfigError(f"attack-model-mode {self.attack_model_mode!r}; valid: {', '.join(MODEL_MODES)}")
        if not self.out_dir.strip():
            raise ConfigError("out-dir is empty; give a folder for the run folders")
        if self.image_channels not in (1, 3):
            raise ConfigError(f"image-channels must be 1 or 3, got {self.image_channels}")
        if not self.data_dir.strip():
            raise ConfigError("data-dir is empty; give the folder that holds (or will receive) the data sets")
        if "/" in self.run_name or self.run_name in (".", ".."):
            raise ConfigError(f"run-name {self.run_name!r} must be a plain folder name (no '/')")
        self.attacked_rounds()
        self.attacked_clients()
        self.failing_partitions()
        self.hanging_partitions()
        if self.resume and not self.run_name:
            raise ConfigError("resume=true needs run-name: the folder of the run to continue")
        if self.prediction_samples < 1:
            raise ConfigError(f"prediction-samples must be >= 1, got {self.prediction_samples}")
        if self.feature_samples < 1:
            raise ConfigError(f"feature-samples must be >= 1, got {self.feature_samples}")
        check_auxiliary(self)
        self._check_plugins()

    def distinct_dataset(self) -> str:
        """The data set ``aux-type='distinct'`` draws from: ``aux-dataset``, or the default pairing."""
        from fedpriv.data.auxiliary import DISTINCT_DEFAULTS

        if self.aux_dataset:
            return self.aux_dataset
        if self.dataset not in DISTINCT_DEFAULTS:
            raise ConfigError(f"aux-type='distinct' needs aux-dataset for dataset {self.dataset!r} (defaults exist "
                              f"for {', '.join(sorted(DISTINCT_DEFAULTS))})")
        return DISTINCT_DEFAULTS[self.dataset]

    def _check_plugins(self) -> None:
        from fedpriv.config_checks import check_attacks, check_protocol_fit, check_split_model
        from fedpriv.data.custom import custom_path, is_custom
        from fedpriv.data.specs import resolve_spec
        from fedpriv.models import check_model_name
        from fedpriv.protocols import PROTOCOLS

        if is_custom(self.dataset):
            if not custom_path(self.dataset).is_dir():
                raise ConfigError(f"dataset {self.dataset!r}: {custom_path(self.dataset)} is not a folder")
        else:
            resolve_spec(self.dataset, self.normalization)
            if (self.image_size, self.image_channels) != (32, 3):
                raise ConfigError(f"image-size={self.image_size} / image-channels={self.image_channels} apply to "
                                  f"folder: and hf: data sets only; {self.dataset!r} has a fixed shape")
        check_model_name(self.model)
        check_split_model(self)
        protocol = PROTOCOLS.get(self.protocol)
        check_protocol_fit(self, protocol)
        check_attacks(self, protocol)

    def attack_names(self) -> list[str]:
        """Every attack some client of this run is attacked with (none if no round or client is)."""
        if self.attacked_rounds() == () or self.attacked_clients() == ():
            return []
        texts = {self.attacks, *self.attack_overrides_map().values()}
        return sorted({n for text in texts for n in self._attack_list(text)})

    def attack_settings(self, name: str) -> AttackSettings:
        """The settings attack ``name`` runs with.

        The ``attack-*`` optimisation keys, overridden by ``attack-options`` entries
        ``NAME.iterations``, ``NAME.lr``, ``NAME.tv``, ``NAME.restarts``; ``extra`` holds the
        run's plain ``OPTION=VALUE`` entries that this attack declares, then its own
        ``NAME.OPTION`` entries (which win).
        """
        from fedpriv.attacks import ATTACKS, AttackSettings

        declared = set(ATTACKS.get(name).options)
        options = parse_attack_options(self.attack_options)
        extra = {key: value for (owner, key), value in options.items() if owner == "" and key in declared}
        extra |= {key: value for (owner, key), value in options.items() if owner == name and key in declared}
        own = {key: value for (owner, key), value in options.items() if owner == name and key in OPTIMISATION_KEYS}
        where = f"attack-options for {name}"
        return AttackSettings(
            iterations=spec_int(where, f"{name}.iterations", own["iterations"], 1, MAX_ITERATIONS)
            if "iterations" in own else self.attack_iterations,
            restarts=spec_int(where, f"{name}.restarts", own["restarts"], 1, MAX_RESTARTS)
            if "restarts" in own else self.attack_restarts,
            lr=spec_float(where, f"{name}.lr", own["lr"], 0.0, MAX_WEIGHT) if "lr" in own else self.attack_lr,
            tv=spec_float(where, f"{name}.tv", own["tv"], 0.0, MAX_WEIGHT) if "tv" in own else self.attack_tv,
            device=self.attack_device,
            progress=self.attack_progress,
            precision=self.attack_precision,
            extra=extra,
        )

    def check_partitions(self, num_partitions: int) -> None:
        """Fail if a selection or override names a partition the federation does not have.

        Raises
        ------
        ConfigError
            Naming the key, the absent id and the valid range.
        """
        chosen = {
            "attack-clients": self.attacked_clients() or (),
            "defense-overrides": tuple(self.defense_overrides_map()),
            "attack-overrides": tuple(self.attack_overrides_map()),
            "inject-client-failure": self.failing_partitions() or (),
            "inject-client-hang": self.hanging_partitions() or (),
        }
        for key, ids in chosen.items():
            if absent := sorted(i for i in ids if i >= num_partitions):
                raise ConfigError(f"{key} names partition {absent[0]}, but the federation has {num_partitions} "
                                  f"clients; valid partition ids: 0..{num_partitions - 1}")
        if self.clients_per_round > num_partitions:
            raise ConfigError(f"clients-per-round={self.clients_per_round} exceeds the {num_partitions} clients")

    @staticmethod
    def _attack_list(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if len(names) != len(set(names)):
            raise ConfigError(f"attacks {text!r} lists a name twice")
        return names

    def attacked_rounds(self) -> tuple[int, ...] | None:
        """Rounds whose leaks are attacked (None: all)."""
        rounds = selection(self.attack_rounds, "attack-rounds")
        if rounds and (rounds[0] < 1 or rounds[-1] > self.num_server_rounds):
            raise ConfigError(
                f"attack-rounds={self.attack_rounds!r} must lie in 1..{self.num_server_rounds} "
                "(num-server-rounds), or be 'all' or 'none'"
            )
        return rounds

    def attacked_clients(self) -> tuple[int, ...] | None:
        """Partition ids whose leaks are attacked (None: all)."""
        return selection(self.attack_clients, "attack-clients")

    def failing_partitions(self) -> tuple[int, ...] | None:
        """Partitions told to raise in training (test-only fault injection; None: all)."""
        return selection(self.inject_client_failure, "inject-client-failure")

    def hanging_partitions(self) -> tuple[int, ...] | None:
        """Partitions told to hang in training, past ``round-timeout`` (test-only; None: all)."""
        return selection(self.inject_client_hang, "inject-client-hang")

    def defense_overrides_map(self) -> dict[int, str]:
        """Per-partition defense specs that replace ``defense``."""
        return overrides(self.defense_overrides, "defense-overrides")

    def attack_overrides_map(self) -> dict[int, str]:
        """Per-partition attack lists that replace ``attacks``."""
        return overrides(self.attack_overrides, "attack-overrides")

    def defense_for(self, partition_id: int) -> str:
        """The defense spec of one client."""
        return self.defense_overrides_map().get(partition_id, self.defense)

    def attacks_for(self, partition_id: int) -> list[str]:
        """The attack names run on one client's leaks."""
        return self._attack_list(self.attack_overrides_map().get(partition_id, self.attacks))

    def is_attacked(self, server_round: int, partition_id: int) -> bool:
        """Whether this client's leak is produced and attacked in this round."""
        rounds, clients = self.attacked_rounds(), self.attacked_clients()
        return (rounds is None or server_round in rounds) and (clients is None or partition_id in clients) and bool(
            self.attacks_for(partition_id)
        )

    def clients_each_round(self, num_partitions: int) -> int:
        """How many clients train in each round."""
        if self.clients_per_round == 0 or self.clients_per_round >= num_partitions:
            return num_partitions
        return self.clients_per_round

    def dataset_spec(self) -> DatasetSpec:
        """Classes, shape and normalisation of this run's data set (own data sets included)."""
        from fedpriv.data.loading import dataset_spec

        return dataset_spec(self.dataset, self.normalization, self.image_size, self.image_channels)

    def load(self, split: str) -> LabeledImages:
        """One split of this run's data set (cached per process)."""
        from fedpriv.data.loading import load_split

        return load_split(self.dataset, self.data_path(), split, False, self.data_verify,  # type: ignore[arg-type]
                          self.image_size, self.image_channels)

    def out_path(self) -> Path:
        """Absolute folder that holds run folders (``~`` expanded)."""
        return Path(self.out_dir).expanduser().resolve()

    def data_path(self) -> Path:
        """Absolute data folder (``~`` expanded)."""
        return Path(self.data_dir).expanduser().resolve()


@functools.lru_cache(maxsize=8)
def _parsed(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    return RunConfig.from_run_config(dict(items))


def parse_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """:meth:`RunConfig.from_run_config`, parsed and validated once per distinct config in a process.

    A ClientApp and its mods see the same run config for every message of a run; validation
    imports plugins (and a user's model module), so it is not repeated per message.
    """
    return _parsed(tuple(sorted(run_config.items())))
