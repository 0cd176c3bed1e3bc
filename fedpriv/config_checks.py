"""Run-config checks that span several settings: auxiliary data, split models, defenses against protocols."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedpriv.errors import ConfigError

REFERENCE_GEOMETRY_SETS = ("mnist", "fashion-mnist", "embedded-digits")  # 1-channel, 28x28 in their archives

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.protocols import FederatedProtocol


def check_auxiliary(config: RunConfig) -> None:
    """``aux-type``, ``aux-dataset``, server pretraining and joint training fit together.

    Raises
    ------
    ConfigError
        Naming the setting and what it needs.
    """
    from fedpriv.data.auxiliary import AUX_TYPES

    if config.aux_type not in AUX_TYPES:
        raise ConfigError(f"aux-type {config.aux_type!r} is unknown; valid: {', '.join(AUX_TYPES)}")
    if config.aux_type != "same" and config.aux_samples == 0:
        raise ConfigError(f"aux-type={config.aux_type!r} needs aux-samples >= 1 (the server's auxiliary split)")
    if config.aux_type == "distinct" and config.distinct_dataset() == config.dataset:
        raise ConfigError(f"aux-dataset={config.aux_dataset!r} is the run's own data set; aux-type='distinct' "
                          "needs another one")
    if config.server_pretrain_epochs and config.aux_samples == 0:
        raise ConfigError("server-pretrain-epochs > 0 trains the initial model on the server's auxiliary split: "
                          "set aux-samples >= 1")
    if config.joint_training:
        if not config.server_pretrain_epochs:
            raise ConfigError("joint-training=true trains the initial classifier jointly with an inverter: "
                              "set server-pretrain-epochs >= 1")
        if config.aux_type != "same":
            raise ConfigError(f"joint-training=true trains the task classifier on the auxiliary split, which "
                              f"needs aux-type='same' (its labels are the task's), got {config.aux_type!r}")
        if config.resume:
            raise ConfigError("resume=true with joint-training=true: the jointly trained inverter lives only in "
                              "the server's memory (not in the checkpoint); start a new run-name")
        if "prediction-inversion" not in config.attack_names():
            raise ConfigError("joint-training=true hands its inverter to the 'prediction-inversion' attack, "
                              f"which this run does not use (attacks: {', '.join(config.attack_names()) or 'none'})")


def check_split_model(config: RunConfig) -> None:
    """Split networks (``complex-*``, ``original-*``) and the ``split-inference`` protocol come together."""
    from fedpriv.data.custom import is_custom
    from fedpriv.data.specs import resolve_spec

    split_model = config.model.startswith(("complex-", "original-"))
    if split_model != (config.protocol == "split-inference"):
        raise ConfigError(f"protocol {config.protocol!r} with model {config.model!r}: the split networks "
                          "(complex-*, original-*) run under protocol 'split-inference', and it needs one")
    if config.aux_type == "distinct" and not is_custom(config.distinct_dataset()):
        try:
            resolve_spec(config.distinct_dataset())
        except ConfigError as error:
            raise ConfigError(f"aux-dataset={config.distinct_dataset()!r}: {error}") from None


def check_protocol_fit(config: RunConfig, protocol: FederatedProtocol) -> None:
    """Every client's defense acts on what the protocol sends and fits the model and data set.

    Raises
    ------
    ConfigError
        A defense of another kind than the protocol defends, a rotation on a real network or on
        batches of one, a truncation to more entries than classes, the ATS reference geometry on a
        data set that is not 1-channel 28x28 or with the policy-aware attack.
    """
    from fedpriv.defenses import build_defense

    for spec in sorted({config.defense, *config.defense_overrides_map().values()}):
        defense = build_defense(spec)
        if defense.acts_on not in protocol.defends:
            raise ConfigError(f"defense {spec!r} acts on {defense.acts_on}, but protocol {config.protocol!r} "
                              f"defends {' or '.join(k for k in protocol.defends if k != 'nothing')}; "
                              f"choose a defense for it or another protocol")
        if getattr(defense, "needs_complex", False) and not config.model.startswith("complex-"):
            raise ConfigError(f"defense {spec!r} rotates features and needs a complex network; model "
                              f"{config.model!r} is not one (valid: complex-resnet20-alpha, ..., complex-lenet)")
        if getattr(defense, "needs_complex", False) and min(config.batch_size, config.feature_samples) < 2:
            raise ConfigError(f"defense {spec!r} takes b from another sample of the batch: batch-size and "
                              f"feature-samples must be >= 2, got {config.batch_size} and {config.feature_samples}")
        if getattr(getattr(defense, "policy", None), "geometry", "resized") == "reference":
            if config.dataset not in REFERENCE_GEOMETRY_SETS:
                raise ConfigError(f"defense {spec!r}: geometry=reference reproduces the ATS reference's pipeline for "
                                  f"1-channel 28x28 sets ({', '.join(REFERENCE_GEOMETRY_SETS)}); dataset "
                                  f"{config.dataset!r} is not one: drop the option")
            if "policy-aware" in config.attack_names():
                raise ConfigError(f"defense {spec!r}: attack 'policy-aware' models the resized geometry only; "
                                  "use inverting-gradients or translation-aware with geometry=reference")
        top = getattr(defense, "top", None)
        if top is not None and top > (classes := config.dataset_spec().num_classes):
            raise ConfigError(f"defense {spec!r} keeps {top} entries, but {config.dataset!r} has {classes} classes; "
                              f"valid: truncate:1..truncate:{classes}")


def check_attacks(config: RunConfig, protocol: FederatedProtocol) -> None:
    """Every attack consumes the protocol's leaks in its batch-norm mode, with options it declares.

    Raises
    ------
    ConfigError
        Listing the attacks that fit, or the valid options.
    """
    from fedpriv.attacks import ATTACKS
    from fedpriv.attacks.base import check_settings
    from fedpriv.config import OPTIMISATION_KEYS
    from fedpriv.config_values import parse_attack_options

    names = config.attack_names()
    options = parse_attack_options(config.attack_options)
    if stray := sorted({n for n, _ in options} - {""} - set(names)):
        name = stray[0]
        raise ConfigError(f"attack-options names attack {name!r}, which this run does not use; "
                          f"its attacks: {', '.join(names) or 'none'}")
    if "gradient-phase" in names and not config.split_training:
        raise ConfigError("attack 'gradient-phase' reads the gradient dL/dh that U-shaped split training sends "
                          "back: set split-training=true")
    known: set[str] = set()
    for name in names:
        factory = ATTACKS.get(name)
        if protocol.leak_kind not in factory.leak_kinds:
            fitting = [n for n in ATTACKS.names() if protocol.leak_kind in ATTACKS.get(n).leak_kinds]
            raise ConfigError(f"attack {name!r} consumes {'/'.join(factory.leak_kinds)} leaks, but protocol "
                              f"{config.protocol!r} sends {protocol.leak_kind} leaks; attacks for it: {', '.join(fitting)}")
        if config.attack_model_mode not in factory.model_modes and protocol.leak_kind == "gradient":
            fitting = [n for n in ATTACKS.names() if config.attack_model_mode in ATTACKS.get(n).model_modes]
            raise ConfigError(f"attack {name!r} models {'/'.join(factory.model_modes)}-mode batch norm only, but "
                              f"attack-model-mode={config.attack_model_mode!r}; attacks that support it: "
                              f"{', '.join(fitting)}")
        declared = set(factory.options) | (set(OPTIMISATION_KEYS) if factory.optimises else set())
        if unknown := sorted({key for owner, key in options if owner == name} - declared):
            raise ConfigError(f"attack-options: {name}.{unknown[0]} is not an option of {name}; "
                              f"valid: {', '.join(sorted(declared)) or 'none'}")
        known |= set(factory.options)
        settings = config.attack_settings(name)
        check_settings(settings)
        factory(settings)  # attacks check their own options' values
    if unknown := sorted({key for owner, key in options if owner == ""} - known):
        raise ConfigError(f"attack-options: {unknown[0]!r} is not an option of this run's attacks "
                          f"({', '.join(names)}); valid: {', '.join(sorted(known)) or 'none'} "
                          "(or ATTACK.OPTION for one attack)")
