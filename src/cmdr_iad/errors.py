"""Exception types. User errors (bad input, missing files) map to exit status 2 in the CLI."""

from __future__ import annotations


class CmdrIadError(Exception):
    """Base class of every error raised on purpose by cmdr-iad."""

    exit_code: int = 1


class UserInputError(CmdrIadError, ValueError):
    """The caller gave something we cannot use: bad shapes, values, paths or options."""

    exit_code = 2


class ConfigError(UserInputError):
    """An invalid or inconsistent configuration."""


class DatasetError(UserInputError):
    """A dataset folder or file is missing, malformed or inconsistent (names the file)."""


class WeightsError(UserInputError):
    """Pretrained weights are missing, corrupt, fail their checksum or do not fit the network."""


class ArtifactError(UserInputError):
    """A saved model is unreadable, truncated, too new, or does not fit its stored config."""


class EvaluationError(UserInputError):
    """A metric is undefined for the given data (no anomalous region, no normal pixel, ...)."""
