"""Check a fedpriv app's whole run config before ``fedpriv run`` starts any Flower process.

The ServerApp runs the same checks again (:mod:`fedpriv.run_setup`, for users of plain ``flwr run``);
here a bad value is one line on the terminal within seconds, not a Flower traceback after the
SuperLink, the simulation and the ServerApp have started.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from fedpriv.errors import ConfigError


def check_run_config(app: Path, run_config: str) -> None:
    """Validate ``run_config`` merged over the app's defaults, as the ServerApp will, without a federation.

    Values, plugin specs, the attack device, the run folder's out-dir (and checkpoint, to resume),
    the model's fit to the data set's shape and ``initial-checkpoint`` (readable, fitting, finite)
    are checked; the data files are checked (and
    downloaded) by the ServerApp only, once.

    Parameters
    ----------
    app
        The Flower app folder (its ``pyproject.toml`` holds the defaults).
    run_config
        ``key=value`` pairs as :func:`fedpriv.launcher.run_config_string` merges them.

    Raises
    ------
    ConfigError
        The ServerApp's own message: the key, the bad value and what is valid.
    """
    from fedpriv.launcher import _PAIR, app_defaults
    from fedpriv.run_setup import checked_config, fitting_dataset, initial_state

    defaults = app_defaults(app)
    overrides: dict[str, object] = {}
    for key, value in _PAIR.findall(run_config):
        try:
            overrides[key] = tomllib.loads(f"value = {value}")["value"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"run-config {key}={value} is not a TOML value; valid: a number, true/false or a "
                              "quoted string such as 'cifar10'") from None
    config, _ = checked_config(defaults | overrides)
    dataset = fitting_dataset(config)
    if config.initial_checkpoint:
        initial_state(config, dataset)
