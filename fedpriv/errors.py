"""Errors raised on bad user input, before any work starts."""


class ConfigError(ValueError):
    """A configuration value or plugin spec is invalid.

    The message names the bad value and what is valid.
    """
