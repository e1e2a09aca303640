"""The robaudit exception hierarchy.

Every error a user can cause maps to one exit code, in one place (the CLI):
2 for usage/config errors, 3 when the audit could not run. Messages are one
line, name the file or flag, say what was expected and what was found.
"""

from __future__ import annotations


class RobauditError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 3


class UsageError(RobauditError):
    """Bad flag, bad value, missing file the user named: exit 2."""

    exit_code = 2


class ConfigError(UsageError):
    """Bad YAML config (unknown key, wrong type): exit 2."""


class ModelLoadError(RobauditError):
    """The model file exists but cannot be loaded or adapted: exit 3."""


class DataError(RobauditError):
    """The data cannot be loaded or does not fit the model: exit 3."""


class UnsupportedLayerError(RobauditError):
    """A layer has no rule (bounds) or an op cannot be converted: exit 3."""


class NumericalError(RobauditError):
    """NaN/Inf or a failed numerical method: exit 3."""


class AttackError(RobauditError):
    """An attack raised while it ran (library failure): exit 3, the message names the attack."""
