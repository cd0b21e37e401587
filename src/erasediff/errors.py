"""The one exception type users see.

Every bad input (unknown config key, wrong type, missing file, class out of range, empty data) raises
`ErasediffError` with one line naming the problem and the valid choices. The CLI prints that line and
exits with status 2 before anything is written.
"""


class ErasediffError(Exception):
    """A user-facing error: one line that names the problem and the valid choices."""


class ConfigError(ErasediffError):
    """A config key, value or type is invalid."""


class DataError(ErasediffError):
    """A dataset path, class index or split is invalid."""
