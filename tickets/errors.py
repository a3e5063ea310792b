"""How the CLIs report what went wrong: bad input (`UsageError`, `DataError`, like `config.SpecError`:
one line, exit 2) and the one-line form of an error that a table row or a summary shows (the
traceback stays in its file).
"""

from __future__ import annotations

from pathlib import Path

MAX_LINE = 300  # a one-line error longer than this is cut: it shares its line with a trial's coordinates


class UsageError(ValueError):
    """Bad input found after parsing the spec or arguments (paths, cluster fit). Exit 2, like a SpecError."""


class DataError(ValueError):
    """The data named by the spec cannot be found, read or selected from; the message says where and what."""


def one_line(text: str) -> str:
    """The last non-empty line of `text` (a traceback ends with the exception that was raised),
    cut to `MAX_LINE` characters; "" when there is none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:MAX_LINE] if lines else ""


def last_line(error: BaseException) -> str:
    """`error` in one line. A remote (Ray) error's text is the remote traceback, which already ends
    with the original exception's type and message; a local one gets its type in front."""
    import ray

    line = one_line(str(error))
    if isinstance(error, ray.exceptions.RayError):
        return line or type(error).__name__
    return f"{type(error).__name__}: {line}"


def trial_error(trial) -> str:
    """A failed Tune trial's error in one line: the last line of the traceback Tune wrote to its
    `error_file`."""
    try:
        return one_line(Path(trial.error_file).read_text()) or "see its error.txt"
    except (OSError, TypeError):
        return "see its error.txt"
