"""Frames to vision tokens: preprocessing, the SigLIP encoder, token merging and the projector."""

from timeviper.vision.preprocess import preprocess_frames
from timeviper.vision.projector import Projector
from timeviper.vision.tome import merge_tokens

__all__ = ["Projector", "VisionEncoder", "merge_tokens", "preprocess_frames"]


def __getattr__(name):
    if name == "VisionEncoder":  # imported on first use: transformers takes seconds to import
        from timeviper.vision.siglip import VisionEncoder

        return VisionEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
