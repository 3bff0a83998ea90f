"""TimeViper: efficient long-video understanding with a hybrid Mamba-Transformer VLM."""

from timeviper.errors import CheckpointError, ConfigError, TimeViperError, VideoDecodeError

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "TimeViperError", "VideoDecodeError", "__version__"]
