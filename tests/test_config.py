"""Run-config parsing and validation: clear errors naming the value and what is valid."""

import tomllib
from pathlib import Path

import pytest

from fedpriv.config import RunConfig
from fedpriv.errors import ConfigError

SIMULATIONS = Path(__file__).resolve().parent.parent / "simulations"
APP = SIMULATIONS / "cifar100_ats" / "pyproject.toml"


def test_app_defaults_cover_every_key_and_validate() -> None:
    defaults = tomllib.loads(APP.read_text())["tool"]["flwr"]["app"]["config"]
    assert sorted(defaults) == sorted(RunConfig.keys())
    config = RunConfig.from_run_config(defaults)
    assert config == RunConfig()


@pytest.mark.parametrize(("app", "expected"), [
    ("mnist_prediction_inversion", ("predictions", "yang-mnist", "prediction-inversion")),
    ("cifar10_complex", ("split-inference", "complex-resnet20-alpha", "unet-inversion,angle-unet-inversion,"
                                                                      "property-inference,two-image-decoder")),
])
def test_every_other_app_declares_every_key_and_validates(app: str, expected: tuple[str, str, str]) -> None:
    defaults = tomllib.loads((SIMULATIONS / app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert sorted(defaults) == sorted(RunConfig.keys())
    config = RunConfig.from_run_config(defaults)
    assert (config.protocol, config.model, config.attacks) == expected


def test_selections_and_overrides() -> None:
    config = RunConfig.from_run_config(
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


def test_per_attack_options_reach_only_their_attack() -> None:
    config = RunConfig.from_run_config({
        "attacks": "inverting-gradients,label-inference", "attack-iterations": 100,
        "attack-options": "engine=loop,inverting-gradients.iterations=7,inverting-gradients.max-batch=2",
    })
    ig = config.attack_settings("inverting-gradients")
    assert (ig.iterations, ig.extra) == (7, {"engine": "loop", "max-batch": "2"})
    assert config.attack_settings("label-inference").extra == {}


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"dataset": "imagenet"}, "valid datasets: cifar10, cifar100"),
        ({"model": "vgg"}, "valid models: complex-lenet, complex-resnet110-alpha"),
        ({"attacks": "dlg"}, "valid attacks: "),
        ({"defense": "ats:3-1-99"}, "0..49"),
        ({"defense": "blur"}, "valid forms"),
        ({"num-server-rounds": 0}, "num-server-rounds must be >= 1, got 0"),
        ({"batch-size": 0}, "batch-size must be >= 1"),
        ({"protocol": "fedprox"}, "unknown protocol 'fedprox'; valid protocols: fedavg, fedsgd"),
        ({"protocol": "fedavg"}, "attack 'inverting-gradients' consumes gradient leaks, but protocol 'fedavg' sends "
                                 "update leaks; attacks for it: label-inference, update-inversion"),
        ({"attacks": "update-inversion"}, "protocol 'fedsgd' sends gradient leaks; attacks for it: inverting-gradients"),
        ({"attack-model-mode": "train"}, "models eval-mode batch norm only, but attack-model-mode='train'; attacks "
                                         "that support it: label-inference"),
        ({"dp": "central"}, "dp 'central' is unknown; valid: none, client-fixed, server-fixed, local"),
        ({"dp-noise-multiplier": -0.5}, "dp-noise-multiplier must be >= 0, got -0.5"),
        ({"dp-clipping-norm": 0.0}, "dp-clipping-norm must be > 0, got 0.0"),
        ({"dp": "local", "dp-noise-multiplier": 0.0}, "needs dp-noise-multiplier > 0"),
        ({"aggregator": "bulyan"}, "valid: fedavg, fedmedian, fedtrimmedavg, krum"),
        ({"update-pruning": 1.0}, "update-pruning must lie in [0, 1)"),
        ({"image-size": 64}, "apply to folder: and hf: data sets only"),
        ({"aux-samples": -1}, "aux-samples must be >= 0"),
        ({"attack-options": "update-inversion.max-images=4"}, "names attack 'update-inversion', which this run does not use"),
        ({"attack-options": "inverting-gradients.max-images=4"}, "inverting-gradients.max-images is not an option of "
                                                                 "inverting-gradients; valid: engine, iterations, lr"),
        ({"num-server-rounds": "3"}, "num-server-rounds='3' has the wrong type"),
        ({"attack-rounds": "4"}, "must lie in 1..3"),
        ({"attack-clients": "a"}, "valid: 'all', 'none'"),
        ({"defense-overrides": "x"}, "IDS=SPEC"),
        ({"partitioner": "shards"}, "valid: iid, dirichlet"),
        ({"dirichlet-alpha": 0.0}, "dirichlet-alpha must be > 0"),
        ({"resume": True}, "resume=true needs run-name"),
        ({"attack-device": "tpu9"}, "attack-device 'tpu9' is not a torch device"),
        ({"attack-precision": "fp8"}, "valid: default, strict-fp32, bf16"),
        ({"attack-options": "engine=fast"}, "engine 'fast' is unknown"),
        ({"attacks": "translation-aware", "attack-options": "tx-max=0.5"}, "ty-max is missing"),
        ({"attacks": "policy-aware", "attack-options": "max-hypotheses=0"}, "max-hypotheses"),
        ({"attack-options": "enigne=loop"}, "'enigne' is not an option of this run's attacks"),
        ({"attack-options": "tx-max=0.5,ty-max=0.1"}, "valid: engine, max-batch"),
        ({"attack-options": "engine"}, "NAME=VALUE or ATTACK.NAME=VALUE"),
        ({"attack-options": "engine=loop,engine=vmap"}, "each once"),
    ],
)
def test_bad_values_raise_clear_errors(values: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        RunConfig.from_run_config(values)
    assert fragment in str(error.value)


@pytest.mark.parametrize("preset", sorted(SIMULATIONS.glob("*/presets/*.toml")), ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_presets_use_existing_keys_and_validate(preset: Path) -> None:
    defaults = tomllib.loads(APP.read_text())["tool"]["flwr"]["app"]["config"]
    values = tomllib.loads(preset.read_text())
    assert set(values) <= set(defaults), set(values) - set(defaults)
    RunConfig.from_run_config(defaults | values)
