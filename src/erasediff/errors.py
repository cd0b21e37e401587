"""The one exception type users see.

Every bad input (unknown config key, wrong type, missing file, class out of range, empty data) raises
`ErasediffError` with one line naming the problem and the valid choices. The CLI prints that line and
exits with status 2 before anything is written. A run that stops later (non-finite loss: 3; SIGINT /
SIGTERM: 130 / 143) also ends with one line, and its last good checkpoint stays.
"""


class ErasediffError(Exception):
    """A user-facing error: one line that names the problem and the valid choices."""

    exit_code = 2  # bad input; subclasses for runs that fail later use their own status


class ConfigError(ErasediffError):
    """A config key, value or type is invalid."""


class DataError(ErasediffError):
    """A dataset path, class index or split is invalid."""


class RunStopped(ErasediffError):
    """A run stopped itself (a non-finite loss or gradient under train.nonfinite: stop). Exit status 3."""

    exit_code = 3


class Interrupted(ErasediffError):
    """SIGINT / SIGTERM: the run saved a checkpoint at a step boundary and stopped (exit 128 + signal)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class NonFiniteStep(Exception):
    """Raised inside a step, before the optimiser applies it, when a loss or the gradient norm is not
    finite; the loop turns it into RunStopped or a skipped step (train.nonfinite). Not user-facing."""

    def __init__(self, parts: dict[str, float]):
        super().__init__(", ".join(f"{k}={v:.4g}" for k, v in parts.items()))
        self.parts = parts


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
