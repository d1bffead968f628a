"""Errors a user can act on.

Every error raised for bad input derives from :class:`ImagegenError`; the CLI prints its message
(which names the file or parameter and what was expected) without a traceback and exits with 2.
"""

from __future__ import annotations


class ImagegenError(Exception):
    """Base class for errors caused by input, configuration or environment, not by a bug."""


class ConfigError(ImagegenError):
    """params.yaml or an override is invalid."""


class DataError(ImagegenError):
    """A raw or processed data file is missing, corrupt or not what was expected."""


class ChecksumError(DataError):
    """A raw file's md5 does not match the published sum."""


class DataNotFoundError(DataError):
    """Raw files could not be found locally nor downloaded."""


class TrainingError(ImagegenError):
    """Training cannot continue (e.g. a non-finite loss)."""


class ExportError(ImagegenError):
    """A model cannot be exported (an op without a TFLite builtin) or an export misses its parity thresholds."""
