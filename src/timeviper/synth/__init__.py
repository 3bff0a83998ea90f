"""The synthetic video world: seeded videos, their ground-truth items, and a tokenizer for them.

    spec, item = make_item("mcq", seed=3, frames=600)   # no pixels yet: a spec and a dict
    frames = render_frames(spec, 0, 16, size=64)        # uint8 [16, 64, 64, 3], drawn on demand
    render_item("tvg", 3, 600, "out/")                  # out/video.mp4 + out/item.json

Seeds belong to splits by range (split_of, split_range): train < 1,000,000 <= validation
< 1,100,000 <= test. Training uses train seeds only.
"""

from timeviper.synth.render import render_frames, stream_frames, write_mp4
from timeviper.synth.tasks import MCQ_KINDS, TASKS, caption_text, iter_items, make_item, parse_caption, render_item
from timeviper.synth.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer
from timeviper.synth.world import (
    BACKGROUNDS,
    MOTIONS,
    NEEDLE_BACKGROUNDS,
    OBJECTS,
    Actor,
    Scene,
    VideoSpec,
    make_video,
    same_colour_haystack,
    split_of,
    split_range,
)

__all__ = [
    "BACKGROUNDS", "MCQ_KINDS", "MOTIONS", "NEEDLE_BACKGROUNDS", "OBJECTS", "SPECIAL_TOKENS", "TASKS",
    "Actor", "Scene", "VideoSpec", "caption_text", "iter_items", "load_tokenizer", "make_item", "make_video",
    "parse_caption", "render_frames", "render_item", "same_colour_haystack", "split_of", "split_range", "stream_frames",
    "train_tokenizer", "write_mp4",
]
