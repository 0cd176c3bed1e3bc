"""The run configuration: Flower run-config keys parsed into one frozen dataclass, every bad value at once.

The keys are declared in sections (:mod:`fedpriv.config_sections`); an attack's own options are the
keys ``attack.NAME.OPTION``, kept here as given and checked by the attack that declares them
(:mod:`fedpriv.validation` runs every plugin's checks). This module imports no plugin.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpriv.config_sections import (
    OWN_TV,
    AttacksSection,
    DataSection,
    DefensesSection,
    FederationSection,
    OutputsSection,
    PrivacySection,
    RunSection,
)
from fedpriv.config_values import overrides, selection
from fedpriv.errors import ConfigError, join_errors
from fedpriv.options import Declared, coerce, declared

# run-config keys FAMILY.NAME.OPTION hold one plugin's own options
PLUGIN_FAMILIES = ("attack", "behaviour", "membership")
# Keys of earlier versions -> their new form (the README's migration table lists them).
RENAMED = {
    "attack-options": "one key per option, attack.ATTACK.OPTION (e.g. attack.inverting-gradients.engine='loop'); "
                      "an option shared by several attacks is set for each",
}
# Keys of earlier versions the product no longer has -> why (the README's migration table lists them).
REMOVED = dict.fromkeys(
    ("inject-client-failure", "inject-client-hang"),
    "fault injection is test-only now, a ClientApp mod of the tests' own copy of an app (tests/faults/, "
    "docs/how-to/tests.md); a product app neither declares nor reads it",
)


def old_key_error(key: str) -> str | None:
    """The error for a key of an earlier version (renamed or removed), else ``None``."""
    if key in RENAMED:
        return f"{key} was replaced: use {RENAMED[key]}"
    if key in REMOVED:
        return f"{key} was removed: {REMOVED[key]}"
    return None


@dataclass(frozen=True)
class RunConfig(RunSection, OutputsSection, AttacksSection, DefensesSection, PrivacySection, FederationSection,
                DataSection):
    """Every setting of a run, keyed like Flower's run-config (``num-server-rounds`` ...).

    Use :meth:`from_run_config` to build one from Flower's ``context.run_config`` (every value
    is checked there, before any work starts) and :func:`fedpriv.validation.validated_config` to
    check the plugins it names too.

    Attributes
    ----------
    plugin_options
        The ``attack.NAME.OPTION`` keys as given (values in their TOML types).
    """

    plugin_options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @staticmethod
    def declared() -> list[Declared]:
        """The declared keys, section by section."""
        return declared(RunConfig)

    @staticmethod
    def keys() -> list[str]:
        """The run-config keys (kebab-case) this dataclass reads, besides plugins' options."""
        return [d.name for d in RunConfig.declared()]

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build and check a config from Flower run-config values.

        Known keys are type-checked (ints stay ints, floats accept ints, bools must be bools) and
        range-checked; settings that must fit together are checked together.

        Raises
        ------
        ConfigError
            One message naming every bad key, its value and what is valid: an unknown key (with
            the closest known one), a key of an earlier version (with its new form), a bad value.
        """
        keys = {d.name: d for d in cls.declared()}
        values: dict[str, Any] = {}
        plugin_options: dict[str, Any] = {}
        errors: list[str] = []
        for key, value in run_config.items():
            key = str(key)
            if old := old_key_error(key):
                errors.append(old)
            elif key.split(".")[0] in PLUGIN_FAMILIES:
                if key.count(".") != 2 or not all(key.split(".")):
                    errors.append(f"{key}: a plugin option is written FAMILY.NAME.OPTION, e.g. "
                                  "attack.inverting-gradients.engine")
                plugin_options[key] = value
            elif key not in keys:
                close = difflib.get_close_matches(key, list(keys), n=1)
                errors.append(f"{key} is not a run-config key" + (f"; did you mean {close[0]}?" if close else
                              "; the keys are listed in docs/configuration.md"))
            else:
                coerced, bad = coerce(key, value, keys[key].kind)
                bad = bad or keys[key].spec.errors(key, coerced)
                errors += bad
                if not bad:
                    values[keys[key].attribute] = coerced
        config = cls(**values, plugin_options=plugin_options)
        if not errors:
            errors = config.errors()
        if errors:
            raise ConfigError(join_errors(errors, "the run config"))
        return config

    def as_run_config(self) -> dict[str, Any]:
        """Kebab-case dict of all values, plugins' options included (what ``config.json`` records)."""
        return {d.name: getattr(self, d.attribute) for d in self.declared()} | dict(self.plugin_options)

    def errors(self) -> list[str]:
        """Settings that do not fit together (each value alone is valid), plugins aside."""
        errors = []
        if self.dp == "local" and self.dp_noise_multiplier == 0:
            errors.append("dp='local' needs dp-noise-multiplier > 0 (LocalDpMod's epsilon is infinite at 0)")
        if not self.out_dir.strip():
            errors.append("out-dir is empty; give a folder for the run folders")
        if OWN_TV < self.attack_tv < 0:
            errors.append(f"attack-tv={self.attack_tv!r} is out of range; valid: >= 0, or -1 for each attack's own "
                          "weight (attack.NAME.tv)")
        if self.image_channels not in (1, 3):
            errors.append(f"image-channels must be 1 or 3, got {self.image_channels}")
        if not self.data_dir.strip():
            errors.append("data-dir is empty; give the folder that holds (or will receive) the data sets")
        if "/" in self.run_name or self.run_name in (".", ".."):
            errors.append(f"run-name {self.run_name!r} must be a plain folder name (no '/')")
        for check in (self.attacked_rounds, self.attacked_clients, self.membership_partitions,
                      self.defense_overrides_map, self.attack_overrides_map, self.attack_names):
            try:
                check()
            except ConfigError as error:
                errors.append(str(error))
        without = self.membership_attacks.strip().lower() == "none"
        if without and self.membership_clients.strip().lower() not in ("", "none"):
            errors.append(f"membership-clients={self.membership_clients!r} asks for rows per client of the membership "
                          "attacks, and membership-attacks is 'none'; name the attacks, or set "
                          "membership-clients='none'")
        if self.resume and not self.run_name:
            errors.append("resume=true needs run-name: the folder of the run to continue")
        if self.aux_type != "same" and self.aux_samples == 0:
            errors.append(f"aux-type={self.aux_type!r} needs aux-samples >= 1 (the server's auxiliary split)")
        if self.aux_type == "distinct" and self.aux_dataset == self.dataset:
            errors.append(f"aux-dataset={self.aux_dataset!r} is the run's own data set; aux-type='distinct' "
                          "needs another one")
        if self.server_pretrain_epochs and self.aux_samples == 0:
            errors.append("server-pretrain-epochs > 0 trains the initial model on the server's auxiliary split: "
                          "set aux-samples >= 1")
        errors += self._secagg_errors()
        if self.joint_training:
            if not self.server_pretrain_epochs:
                errors.append("joint-training=true trains the initial classifier jointly with an inverter: "
                              "set server-pretrain-epochs >= 1")
            if self.aux_type != "same":
                errors.append(f"joint-training=true trains the task classifier on the auxiliary split, which "
                              f"needs aux-type='same' (its labels are the task's), got {self.aux_type!r}")
            if self.resume:
                errors.append("resume=true with joint-training=true: the jointly trained inverter lives only in "
                              "the server's memory (not in the checkpoint); start a new run-name")
        return errors

    def _secagg_errors(self) -> list[str]:
        """What protocol 'secagg' rules out: the server holds one aggregate per round, not single replies."""
        if self.protocol != "secagg":
            return []
        errors = []
        if self.aggregator != "fedavg":
            errors.append(f"aggregator={self.aggregator!r} with protocol 'secagg': SecAgg+ reveals only the weighted "
                          "mean of the replies; valid: 'fedavg'")
        if self.dp == "server-fixed":
            errors.append("dp='server-fixed' with protocol 'secagg': the server would clip each client's reply, "
                          "which SecAgg+ hides from it; valid: 'none', 'client-fixed' (clients clip, the server "
                          "noises the aggregate) or 'local'")
        if self.clients_per_round == 1:
            errors.append("clients-per-round=1 with protocol 'secagg': SecAgg+ aggregates at least 2 clients; "
                          "valid: 0 (all) or >= 2")
        if self.attack_overrides:
            errors.append(f"attack-overrides={self.attack_overrides!r} with protocol 'secagg': the server attacks "
                          "the one aggregate per round, not single clients; set the attacks with 'attacks'")
        if self.attack_clients.strip().lower() not in ("all", "none", ""):
            errors.append(f"attack-clients={self.attack_clients!r} with protocol 'secagg': the aggregate holds every "
                          "sampled client; valid: 'all' or 'none'")
        if self.secagg_reconstruction_threshold > self.secagg_num_shares:
            errors.append(f"secagg-reconstruction-threshold={self.secagg_reconstruction_threshold:g} exceeds "
                          f"secagg-num-shares={self.secagg_num_shares:g}: a secret needs at most as many shares as "
                          "were made")
        return errors

    def plugin_values(self, family: str, name: str) -> dict[str, Any]:
        """The options given for one plugin (``attack``, ``inverting-gradients``), by option name."""
        prefix = f"{family}.{name}."
        return {key[len(prefix):]: value for key, value in self.plugin_options.items() if key.startswith(prefix)}

    def attack_names(self) -> list[str]:
        """Every attack some client of this run is attacked with (none if no round or client is)."""
        if self.attacked_rounds() == () or self.attacked_clients() == ():
            return []
        texts = {self.attacks, *self.attack_overrides_map().values()}
        return sorted({n for text in texts for n in self._attack_list(text)})

    def check_partitions(self, num_partitions: int) -> None:
        """Fail if a selection or override names a partition the federation does not have.

        Raises
        ------
        ConfigError
            Naming the key, the absent id and the valid range.
        """
        chosen = {
            "attack-clients": self.attacked_clients() or (),
            "membership-clients": self.membership_partitions() or (),
            "defense-overrides": tuple(self.defense_overrides_map()),
            "attack-overrides": tuple(self.attack_overrides_map()),
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

    def membership_names(self) -> list[str]:
        """The membership attacks (empty: ``none``)."""
        if self.membership_attacks.strip().lower() == "none":
            return []
        return self._attack_list(self.membership_attacks)

    def membership_scored_rounds(self) -> tuple[int, ...] | None:
        """Rounds whose released model the membership attacks score (None: all)."""
        rounds = selection(self.membership_rounds, "membership-rounds")
        if rounds and (rounds[0] < 0 or rounds[-1] > self.num_server_rounds):
            raise ConfigError(f"membership-rounds={self.membership_rounds!r} must lie in 0..{self.num_server_rounds} "
                              "(num-server-rounds; 0: the initial model), or be 'all' or 'none'")
        return rounds

    def membership_partitions(self) -> tuple[int, ...] | None:
        """Partition ids with their own membership rows (None: all)."""
        return selection(self.membership_clients, "membership-clients")

    def attacked_clients(self) -> tuple[int, ...] | None:
        """Partition ids whose leaks are attacked (None: all)."""
        return selection(self.attack_clients, "attack-clients")

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

    def out_path(self) -> Path:
        """Absolute folder that holds run folders (``~`` expanded)."""
        return Path(self.out_dir).expanduser().resolve()

    def data_path(self) -> Path:
        """Absolute data folder (``~`` expanded)."""
        return Path(self.data_dir).expanduser().resolve()
