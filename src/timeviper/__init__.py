"""TimeViper: efficient long-video understanding with a hybrid Mamba-Transformer VLM.

    from timeviper import TimeViper
    model = TimeViper.from_pretrained()          # the embedded model; or a directory
    model.chat("video.mp4", "What happens after the red circle leaves?")
"""

from timeviper.errors import CheckpointError, ConfigError, TimeViperError, VideoDecodeError

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "TimeViper", "TimeViperConfig", "TimeViperError", "VideoDecodeError",
           "__version__"]


def __getattr__(name):
    if name in ("TimeViper", "TimeViperConfig"):  # imported on first use: transformers is slow to import
        from timeviper import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
