"""Errors raised on bad user input, before any work starts, and how the ServerApp marks its one-line errors."""


class ConfigError(ValueError):
    """A configuration value or plugin spec is invalid.

    The message names the bad value and what is valid.
    """


SERVER_ERROR_PREFIX = "fedpriv error: "
"""Marks the ServerApp's one-line errors in the run's log; ``fedpriv run`` repeats the last one as its error."""


def join_errors(errors: list[str], where: str) -> str:
    """One line for one error or several: ``"2 errors in the run config: (1) ...; (2) ..."``."""
    if len(errors) == 1:
        return errors[0]
    return f"{len(errors)} errors in {where}: " + "; ".join(f"({i}) {e}" for i, e in enumerate(errors, 1))
