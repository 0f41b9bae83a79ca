"""Errors that mean "the user asked for something wrong": the CLI prints them as one line and exits 2."""

USAGE_EXIT_CODE = 2


class UsageError(Exception):
    """A configuration, input-data or command-line error; the message names the field, file or line."""


def located(path: str, line: int | None, message: str) -> UsageError:
    """A UsageError whose message starts with `path:line:` the way compilers report errors."""
    where = f"{path}:{line}" if line is not None else str(path)
    return UsageError(f"{where}: {message}")
