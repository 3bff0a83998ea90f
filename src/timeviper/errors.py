"""Errors that TimeViper raises on bad input. Each names the thing that is wrong."""


class TimeViperError(Exception):
    """Base class of every error TimeViper raises on purpose."""


class ConfigError(TimeViperError, ValueError):
    """A configuration value (file, spec string or argument) is invalid."""


class CheckpointError(TimeViperError):
    """A checkpoint directory is missing, of an unknown kind, or its weights do not fit the model."""


class VideoDecodeError(TimeViperError):
    """A video or image could not be decoded."""
