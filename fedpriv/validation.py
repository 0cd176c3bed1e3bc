"""One pass over a run config and every plugin it names; every error reported at once.

:meth:`fedpriv.config.RunConfig.from_run_config` checks each key's value and the keys that must fit
together; this module then checks what only the plugins know: the data set and model names, the
protocol, each client's defense (its spec and :meth:`~fedpriv.defenses.base.Defense.fit_errors`),
each attack (the leaks it consumes, the batch-norm mode it models, its own options and
:meth:`~fedpriv.attacks.base.Attack.fit_errors`) and the options given for attacks the run does
not use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from fedpriv.attacks import ATTACKS
from fedpriv.attacks.base import JointlyTrainable, check_device
from fedpriv.behaviours import BEHAVIOURS
from fedpriv.config import RunConfig
from fedpriv.data.auxiliary import DISTINCT_DEFAULTS
from fedpriv.data.custom import custom_path, is_custom
from fedpriv.data.loading import dataset_spec
from fedpriv.data.specs import DatasetSpec, resolve_spec
from fedpriv.defenses import build_defense
from fedpriv.errors import ConfigError, join_errors
from fedpriv.leaks import PARAMETER_LEAK_KINDS
from fedpriv.membership import MEMBERSHIP_ATTACKS
from fedpriv.membership.base import SERVER
from fedpriv.models import check_model_name
from fedpriv.options import declared, parse_options
from fedpriv.protocols import PROTOCOLS, FederatedProtocol
from fedpriv.registry import Registry

SPLIT_MODEL_PREFIXES = ("complex-", "original-")  # the split networks of fedpriv.rotation.networks


def validated_config(run_config: Mapping[str, Any]) -> RunConfig:
    """The run config, with every key and every plugin it names checked.

    Raises
    ------
    ConfigError
        One line naming every error found: the key, the bad value and what is valid.
    """
    config = RunConfig.from_run_config(run_config)
    if errors := plugin_errors(config):
        raise ConfigError(join_errors(errors, "the run config"))
    return config


@functools.lru_cache(maxsize=8)
def _parsed(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    return validated_config(dict(items))


def parse_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """:func:`validated_config`, parsed and validated once per distinct config in a process.

    A ClientApp and its mods see the same run config for every message of a run; validation
    imports plugins (and a user's model module), so it is not repeated per message.
    """
    return _parsed(tuple(sorted(run_config.items())))


def plugin_errors(config: RunConfig) -> list[str]:
    """Every error of the plugins the run names, in the order data, model, protocol, defenses, attacks."""
    errors = _data_errors(config)
    dataset = None
    if not errors:
        try:
            dataset = _dataset_spec(config)
        except ConfigError as error:  # an own folder's files are checked when the server loads them
            if not is_custom(config.dataset):
                errors.append(str(error))
    errors += _caught(lambda: check_model_name(config.model))
    split_model = config.model.startswith(SPLIT_MODEL_PREFIXES)
    if split_model != (config.protocol == "split-inference"):
        errors.append(f"protocol {config.protocol!r} with model {config.model!r}: the split networks "
                      "(complex-*, original-*) run under protocol 'split-inference', and it needs one")
    try:
        protocol = PROTOCOLS.get(config.protocol)
    except ConfigError as error:
        return errors + [str(error)]
    defense_errors = _defense_errors(config, protocol, dataset)
    errors += defense_errors + _attack_errors(config, protocol, check_fit=not defense_errors)
    return errors + _behaviour_errors(config, dataset) + _membership_errors(config)


def _membership_errors(config: RunConfig) -> list[str]:
    """The membership attacks exist, score existing rounds, and have valid options that fit the run."""
    try:
        names = config.membership_names()
        config.membership_scored_rounds()
    except ConfigError as error:
        return [str(error)]
    errors = []
    for name in names:
        if name not in MEMBERSHIP_ATTACKS:
            errors.append(f"unknown membership attack {name!r}; valid membership attacks: "
                          f"{', '.join(MEMBERSHIP_ATTACKS.names())}, or none")
            continue
        factory = MEMBERSHIP_ATTACKS.get(name)
        options: Any
        options, bad = parse_options(factory.Options, config.plugin_values("membership", name), f"membership.{name}.")
        errors += bad or factory.fit_errors(config, options)
        if factory.observer == SERVER and PROTOCOLS.get(config.protocol).leak_kind not in PARAMETER_LEAK_KINDS:
            valid = [p for p in PROTOCOLS.names() if PROTOCOLS.get(p).leak_kind in PARAMETER_LEAK_KINDS]
            errors.append(f"membership attack {name!r} reads the replies' parameters, which protocol="
                          f"{config.protocol!r} does not send; valid protocols: {', '.join(valid)}")
    return errors


def _behaviour_errors(config: RunConfig, dataset: DatasetSpec | None) -> list[str]:
    """The server behaviour exists, its options are valid and it fits the run."""
    if config.server_behaviour not in BEHAVIOURS:
        return [f"server-behaviour={config.server_behaviour!r} is unknown; valid: {', '.join(BEHAVIOURS.names())}"]
    factory = BEHAVIOURS.get(config.server_behaviour)
    options: Any
    options, errors = parse_options(factory.Options, config.plugin_values("behaviour", factory.name),
                                    f"behaviour.{factory.name}.")
    if not errors and dataset is not None:
        errors += factory.fit_errors(config, options, dataset)
    return errors


def _caught_names(names: Callable[[], list[str]]) -> list[str]:
    """The names, or none when they do not parse (that error is reported once, elsewhere)."""
    try:
        return names()
    except ConfigError:
        return []


def _caught(check: Any) -> list[str]:
    try:
        check()
    except ConfigError as error:
        return [str(error)]
    return []


def _dataset_spec(config: RunConfig) -> DatasetSpec:
    return dataset_spec(config.dataset, config.normalization, config.image_size, config.image_channels)


def _data_errors(config: RunConfig) -> list[str]:
    """The data set (and the auxiliary one) exist and have the shapes the keys say."""
    errors = []
    if is_custom(config.dataset):
        if not custom_path(config.dataset).is_dir():
            errors.append(f"dataset {config.dataset!r}: {custom_path(config.dataset)} is not a folder")
    else:
        errors += _caught(lambda: resolve_spec(config.dataset, config.normalization))
        if (config.image_size, config.image_channels) != (32, 3):
            errors.append(f"image-size={config.image_size} / image-channels={config.image_channels} apply to "
                          f"folder: and hf: data sets only; {config.dataset!r} has a fixed shape")
    if config.aux_type == "distinct":
        if not config.aux_dataset and config.dataset not in DISTINCT_DEFAULTS:
            errors.append(f"aux-type='distinct' needs aux-dataset for dataset {config.dataset!r} (defaults exist "
                          f"for {', '.join(sorted(DISTINCT_DEFAULTS))})")
        elif not is_custom(distinct := config.aux_dataset or DISTINCT_DEFAULTS[config.dataset]):
            errors += [f"aux-dataset={distinct!r}: {e}" for e in _caught(lambda: resolve_spec(distinct))]
    return errors


def _defense_errors(config: RunConfig, protocol: FederatedProtocol, dataset: DatasetSpec | None) -> list[str]:
    """Every client's defense is a valid spec that acts on what the protocol sends and fits the run."""
    errors: list[str] = []
    for spec in sorted({config.defense, *config.defense_overrides_map().values()}):
        try:
            defense = build_defense(spec)
        except ConfigError as error:
            errors.append(str(error))
            continue
        if defense.acts_on not in protocol.defends:
            errors.append(f"defense {spec!r} acts on {defense.acts_on}, but protocol {config.protocol!r} defends "
                          f"{' or '.join(k for k in protocol.defends if k != 'nothing')}; choose a defense for it "
                          "or another protocol")
        elif dataset is not None:
            errors += defense.fit_errors(config, dataset)
    return errors


def _attack_errors(config: RunConfig, protocol: FederatedProtocol, check_fit: bool) -> list[str]:
    """Each attack consumes the protocol's leaks in its batch-norm mode with valid options of its own.

    Options given for an attack the run does not use are errors unless they equal its defaults
    (an app's ``pyproject.toml`` declares every option of its scenario's attacks).
    """
    try:
        names = config.attack_names()
    except ConfigError as error:
        return [str(error)]
    errors = []
    for name in names:
        if name not in ATTACKS:
            errors.append(f"unknown attack {name!r}; valid attacks: {', '.join(ATTACKS.names())}")
            continue
        factory = ATTACKS.get(name)
        if protocol.leak_kind not in factory.leak_kinds:
            fitting = [n for n in ATTACKS.names() if protocol.leak_kind in ATTACKS.get(n).leak_kinds]
            errors.append(f"attack {name!r} consumes {'/'.join(factory.leak_kinds)} leaks, but protocol "
                          f"{config.protocol!r} sends {protocol.leak_kind} leaks; attacks for it: {', '.join(fitting)}")
            continue
        if config.attack_model_mode not in factory.model_modes and protocol.leak_kind == "gradient":
            fitting = [n for n in ATTACKS.names() if config.attack_model_mode in ATTACKS.get(n).model_modes]
            errors.append(f"attack {name!r} models {'/'.join(factory.model_modes)}-mode batch norm only, but "
                          f"attack-model-mode={config.attack_model_mode!r}; attacks that support it: "
                          f"{', '.join(fitting)}")
        options: Any
        options, bad = parse_options(factory.Options, config.plugin_values("attack", name), f"attack.{name}.")
        errors += bad
        if not bad and check_fit:
            errors += factory.fit_errors(config, options)
    errors += _caught(lambda: check_device(config.attack_device))  # the ranges are the attacks section's
    errors += _unused_options(config, names)
    needing = [n for n in names if ATTACKS.get(n).knowledge.defense_required]
    if not config.attacker_knows_defense and needing:
        errors.append(f"attacker-knows-defense=false withholds the clients' defense specs, which {', '.join(needing)} "
                      "cannot run without; valid: true, or attacks that do not need the spec")
    trainable = [n for n in ATTACKS.names() if issubclass(ATTACKS.get(n), JointlyTrainable)]
    if config.joint_training and not set(trainable) & set(names):
        errors.append(f"joint-training=true hands its inverter to an attack that trains one ({', '.join(trainable)}), "
                      f"which this run does not use (attacks: {', '.join(names) or 'none'})")
    return errors


def _unused_options(config: RunConfig, names: list[str]) -> list[str]:
    """Options set (away from their defaults) for plugins this run does not use, or for no plugin."""
    registries: dict[str, tuple[Registry[Any], list[str]]] = {
        "attack": (ATTACKS, names), "behaviour": (BEHAVIOURS, [config.server_behaviour]),
        "membership": (MEMBERSHIP_ATTACKS, _caught_names(config.membership_names))}
    errors = []
    for key, value in sorted(config.plugin_options.items()):
        family, name, option_name = key.split(".")
        registry, used = registries[family]
        if name not in registry:
            errors.append(f"{key} names no {registry.kind}; valid {registry.kind}s: {', '.join(registry.names())}")
        elif name not in used:
            defaults = {d.name: d.default for d in declared(registry.get(name).Options)}
            if option_name not in defaults:
                errors.append(f"{key} is not an option of {name}; valid: {', '.join(defaults) or 'none'}")
            elif value != defaults[option_name]:
                errors.append(f"{key}={value!r} is set, but this run does not use {registry.kind} {name!r} "
                              f"(its {registry.kind}s: {', '.join(used) or 'none'})")
    return errors
