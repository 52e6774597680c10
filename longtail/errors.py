"""User-facing errors.

Anything raised as a :class:`LongtailError` is printed by the CLI as one line
(``longtail: error: ...``) with a non-zero exit, never as a traceback. Raise one
whenever the cause is the user's input (data, config, checkpoint), and name the
culprit: the file, the line, or the config key.
"""


class LongtailError(Exception):
    """Base class for errors caused by user input."""


class ConfigError(LongtailError):
    """A recipe or override is invalid (unknown key, bad type, bad value)."""


class DataError(LongtailError):
    """A dataset is missing, corrupt or malformed."""


class CheckpointError(LongtailError):
    """A checkpoint is missing, truncated or incompatible."""


class TrainingError(LongtailError):
    """Training cannot go on (the loss diverged); the checkpoints written so far are kept."""
