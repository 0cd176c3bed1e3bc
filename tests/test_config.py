"""Run-config parsing and validation: clear errors naming the value and what is valid."""

import dataclasses
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedpriv.app_tables import regenerated, scenario_protocols
from fedpriv.attacks import ATTACKS
from fedpriv.attacks.base import settings_for, tv_weight
from fedpriv.behaviours import BEHAVIOURS
from fedpriv.config import PLUGIN_FAMILIES, RunConfig
from fedpriv.errors import ConfigError
from fedpriv.launcher import app_defaults, check_run_config_keys, flattened
from fedpriv.options import declared, option
from fedpriv.reference import rewritten
from fedpriv.validation import validated_config

SIMULATIONS = Path(__file__).resolve().parent.parent / "simulations"
APPS = ("cifar100_ats", "cifar10_complex", "mnist_prediction_inversion")


@pytest.mark.parametrize("app", APPS)
def test_every_app_table_is_its_generated_form(app: str) -> None:
    """The apps' keys are declared once (config_sections, each attack's Options): a table that drifts fails."""
    text = (SIMULATIONS / app / "pyproject.toml").read_text()
    assert text == regenerated(SIMULATIONS / app), f"run: python -m fedpriv.app_tables simulations/{app}"


@pytest.mark.parametrize(("app", "expected"), [
    ("cifar100_ats", ("fedsgd", "resnet20", "inverting-gradients")),
    ("mnist_prediction_inversion", ("predictions", "yang-mnist", "prediction-inversion")),
    ("cifar10_complex", ("split-inference", "complex-resnet20-alpha", "unet-inversion,angle-unet-inversion,"
                                                                      "property-inference,two-image-decoder")),
])
def test_every_app_declares_its_scenario_keys_and_validates(app: str, expected: tuple[str, str, str]) -> None:
    defaults = app_defaults(SIMULATIONS / app)
    protocols = scenario_protocols(SIMULATIONS / app)
    read = {d.name for d in RunConfig.declared() if not d.spec.protocols or set(d.spec.protocols) & set(protocols)}
    assert {k for k in defaults if not k.startswith(tuple(f"{f}." for f in PLUGIN_FAMILIES))} == read
    assert {k.split(".")[1] for k in defaults if k.startswith("attack.")} <= set(ATTACKS.names())
    assert {k.split(".")[1] for k in defaults if k.startswith("behaviour.")} <= set(BEHAVIOURS.names())
    config = validated_config(defaults)
    assert (config.protocol, config.model, config.attacks) == expected


def test_the_main_app_defaults_are_the_declared_defaults() -> None:
    config = validated_config(app_defaults(SIMULATIONS / "cifar100_ats"))
    assert dataclasses.replace(config, plugin_options={}) == RunConfig()


def test_a_key_of_another_scenario_is_refused_before_the_run() -> None:
    with pytest.raises(ValueError, match="'feature-samples' is not one of app mnist_prediction_inversion's: only "
                                         "protocol split-inference reads it"):
        check_run_config_keys(SIMULATIONS / "mnist_prediction_inversion", "feature-samples=4")
    with pytest.raises(ValueError, match="attack-options was replaced: use one key per option, attack.ATTACK.OPTION"):
        check_run_config_keys(SIMULATIONS / "cifar100_ats", "attack-options='engine=loop'")
    with pytest.raises(ValueError, match="inject-client-hang was removed: fault injection is test-only now"):
        check_run_config_keys(SIMULATIONS / "cifar100_ats", "inject-client-hang='1'")


def test_the_configuration_reference_is_current() -> None:
    page = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    assert page.read_text() == rewritten(page), "run: python -m fedpriv.reference docs/configuration.md"


def test_a_setting_without_help_is_refused() -> None:
    with pytest.raises(ValueError, match="a setting needs one line of help"):
        option(1, " ")
    with pytest.raises(ValueError, match="a setting needs one line of help"):
        option(1, "two\nlines")


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_option_is_declared(name: str) -> None:
    options = ATTACKS.get(name).Options
    assert [d.attribute for d in declared(options)] == [f.name for f in dataclasses.fields(options)]


def test_selections_and_overrides() -> None:
    config = validated_config(
        {
            "num-server-rounds": 5,
            "attack-rounds": "1,3-4",
            "attack-clients": "0,2",
            "defense-overrides": "0,1=ats:3-1-7|2=ats:hybrid(3-1-7,43-18-18)",
            "attack-overrides": "2=inverting-gradients",
        }
    )
    assert config.attacked_rounds() == (1, 3, 4)
    assert config.defense_for(1) == "ats:3-1-7"
    assert config.defense_for(5) == "none"
    assert config.is_attacked(3, 2) and not config.is_attacked(2, 2) and not config.is_attacked(1, 1)


def test_each_attack_gets_only_its_own_options() -> None:
    config = validated_config({
        "attacks": "inverting-gradients,label-inference", "attack-iterations": 100,
        "attack.inverting-gradients.engine": "loop", "attack.inverting-gradients.max-batch": 2,
    })
    ig = settings_for(config, "inverting-gradients")
    assert (ig.iterations, ig.options) == (100, {"engine": "loop", "max-batch": 2})
    assert settings_for(config, "label-inference").options == {}


def _tv(values: dict[str, Any], name: str) -> float:
    """The TV weight attack ``name`` runs with under the run config ``values``."""
    config = validated_config(values)
    attack: Any = ATTACKS.get(name)(settings_for(config, name))
    return tv_weight(attack.settings, attack.options) if hasattr(attack, "options") else attack.tv


def test_each_optimising_attack_has_its_own_tv_weight_and_attack_tv_replaces_all() -> None:
    fedsgd = {"protocol": "fedsgd", "attacks": "inverting-gradients"}
    fedavg = {"protocol": "fedavg", "attacks": "update-inversion"}
    assert _tv(fedsgd, "inverting-gradients") == 1e-4  # ATS's inversed setting
    assert _tv(fedavg, "update-inversion") == 0.2  # breaching's local_updates setting
    assert _tv(fedsgd | {"attack.inverting-gradients.tv": 0.01}, "inverting-gradients") == 0.01
    assert _tv(fedsgd | {"attack-tv": 0.05}, "inverting-gradients") == 0.05
    assert _tv(fedavg | {"attack-tv": 0.0}, "update-inversion") == 0.0


@pytest.mark.parametrize(("values", "message"), [
    ({"protocol": "fedavg", "attacks": "update-inversion", "attack-tv": 0.05, "attack.update-inversion.tv": 0.3},
     "attack-tv=0.05 and attack.update-inversion.tv=0.3 both set update-inversion's total-variation weight; set "
     "one (attack-tv=-1 leaves each attack its own weight)"),
    ({"attack-tv": -0.5}, "attack-tv=-0.5 is out of range; valid: >= 0, or -1 for each attack's own weight"),
    ({"attack-tv": -2.0}, "attack-tv=-2.0 is out of range; valid: >= -1"),
    ({"membership-clients": "0,2"}, "membership-clients='0,2' asks for rows per client of the membership attacks, and "
                                    "membership-attacks is 'none'"),
    ({"membership-attacks": "loss", "membership-clients": "1-x"}, "membership-clients='1-x': '1-x' is not a number"),
])
def test_conflicting_or_bad_attack_settings_are_one_line_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        validated_config(values)


def test_every_error_is_reported_at_once_on_one_line() -> None:
    with pytest.raises(ConfigError) as error:
        validated_config({"num-server-rounds": 0, "batch-size": "8", "attack-options": "engine=loop"})
    message = str(error.value)
    assert message.startswith("3 errors in the run config: (1) num-server-rounds=0 is out of range")
    assert "batch-size='8' has the wrong type; expected an int" in message
    assert "attack-options was replaced: use one key per option, attack.ATTACK.OPTION" in message
    assert "\n" not in message
    with pytest.raises(ConfigError) as error:
        validated_config({"attacks": "translation-aware", "attack.translation-aware.engine": "fast",
                          "attack.translation-aware.max-batch": 0})
    assert str(error.value).startswith("2 errors in the run config: (1) attack.translation-aware.engine='fast' "
                                       "is unknown; valid: auto, loop")
    assert "(2) attack.translation-aware.max-batch=0 is out of range; valid: >= 1" in str(error.value)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"dataset": "imagenet"}, "valid datasets: cifar10, cifar100"),
        ({"model": "vgg"}, "valid models: complex-lenet, complex-resnet110-alpha"),
        ({"attacks": "no-such-attack"}, "unknown attack 'no-such-attack'; valid attacks: "),
        ({"defense": "ats:3-1-99"}, "0..49"),
        ({"defense": "blur"}, "valid forms"),
        ({"num-server-rounds": 0}, "num-server-rounds=0 is out of range; valid: >= 1"),
        ({"batch-size": 0}, "batch-size=0 is out of range; valid: >= 1"),
        ({"protocol": "fedprox"}, "unknown protocol 'fedprox'; valid protocols: fedavg, fedsgd"),
        ({"protocol": "fedavg"}, "attack 'inverting-gradients' consumes gradient leaks, but protocol 'fedavg' sends "
                                 "update leaks; attacks for it: "),
        ({"attacks": "update-inversion"}, "protocol 'fedsgd' sends gradient leaks; attacks for it: "),
        ({"attack-model-mode": "train"}, "models eval-mode batch norm only, but attack-model-mode='train'; attacks "
                                         "that support it: "),
        ({"dp": "central"}, "dp='central' is unknown; valid: none, client-fixed, server-fixed, local"),
        ({"dp-noise-multiplier": -0.5}, "dp-noise-multiplier=-0.5 is out of range; valid: >= 0"),
        ({"dp-clipping-norm": 0.0}, "dp-clipping-norm=0.0 is out of range; valid: > 0"),
        ({"dp": "local", "dp-noise-multiplier": 0.0}, "needs dp-noise-multiplier > 0"),
        ({"aggregator": "bulyan"}, "valid: fedavg, fedmedian, fedtrimmedavg, krum"),
        ({"update-pruning": 1.0}, "update-pruning=1.0 is out of range; valid: >= 0 and <= 0.999999"),
        ({"image-size": 64}, "apply to folder: and hf: data sets only"),
        ({"aux-samples": -1}, "aux-samples=-1 is out of range; valid: >= 0"),
        ({"attack.update-inversion.max-images": 4},
         "attack.update-inversion.max-images=4 is set, but this run does not use attack 'update-inversion' "
         "(its attacks: inverting-gradients)"),
        ({"attack.inverting-gradients.max-images": 4}, "attack.inverting-gradients.max-images is not an option; "
                                                       "valid: patience, tolerance, engine, max-batch"),
        ({"attack.update-inversion.no-such": 4},
         "attack.update-inversion.no-such is not an option of update-inversion"),
        ({"attack.dlg.steps": 4}, "attack.dlg.steps names no attack; valid attacks: "),
        ({"attack.engine": "loop"}, "a plugin option is written FAMILY.NAME.OPTION"),
        ({"num-server-rounds": "3"}, "num-server-rounds='3' has the wrong type"),
        ({"num-server-round": 3}, "num-server-round is not a run-config key; did you mean num-server-rounds?"),
        ({"attack-rounds": "4"}, "must lie in 1..3"),
        ({"attack-clients": "a"}, "valid: 'all', 'none'"),
        ({"defense-overrides": "x"}, "IDS=SPEC"),
        ({"partitioner": "shards"}, "valid: iid, dirichlet"),
        ({"dirichlet-alpha": 0.0}, "dirichlet-alpha=0.0 is out of range; valid: > 0"),
        ({"resume": True}, "resume=true needs run-name"),
        ({"attack-device": "tpu9"}, "attack-device 'tpu9' is not a torch device"),
        ({"attack-precision": "fp8"}, "valid: default, strict-fp32, bf16"),
        ({"attack.inverting-gradients.engine": "fast"}, "attack.inverting-gradients.engine='fast' is unknown"),
        ({"attacks": "translation-aware", "attack.translation-aware.tx-max": 0.5}, "ty-max is missing"),
        ({"attacks": "policy-aware", "attack.policy-aware.max-hypotheses": 0}, "max-hypotheses=0 is out of range"),
        ({"attack.inverting-gradients.engine": "vmap", "attack-precision": "bf16"}, "'vmap' does not run"),
        ({"attacks": "policy-aware", "dataset": "embedded-photos", "defense": "ats:3-1-7;geometry=reference"},
         "geometry=reference reproduces the ATS reference's pipeline"),
    ],
)
def test_bad_values_raise_clear_errors(values: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        validated_config(values)
    assert fragment in str(error.value)


@pytest.mark.parametrize(("values", "fits", "known"), [
    ({"protocol": "fedavg"}, lambda a: "update" in a.leak_kinds, {"label-inference", "update-inversion"}),
    ({"attacks": "update-inversion"}, lambda a: "gradient" in a.leak_kinds, {"inverting-gradients", "label-inference"}),
    ({"attack-model-mode": "train"}, lambda a: "train" in a.model_modes, {"label-inference", "update-inversion"}),
])
def test_a_misfit_attack_lists_every_registered_attack_that_fits(
    values: dict, fits: Callable[[Any], bool], known: set[str]
) -> None:
    """The lists come from the registry, so a new attack module needs no edit here."""
    with pytest.raises(ConfigError) as error:
        validated_config(values)
    listed = str(error.value).split("it: ")[1].split(";")[0].split(", ")
    assert listed == [n for n in ATTACKS.names() if fits(ATTACKS.get(n))] and known <= set(listed)


@pytest.mark.parametrize("preset", sorted(SIMULATIONS.glob("*/presets/*.toml")),
                         ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_presets_use_their_apps_keys_and_validate(preset: Path) -> None:
    app = preset.parent.parent
    defaults = app_defaults(app)
    values = flattened(tomllib.loads(preset.read_text()))
    assert set(values) <= set(defaults), set(values) - set(defaults)
    validated_config(defaults | values)
