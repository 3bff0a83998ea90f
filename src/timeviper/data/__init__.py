"""Training data: conversation records, a resumable dataset mixture, and packed micro-batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from timeviper.data.mixture import Mixture
from timeviper.data.packing import PackedStream, RankShare, collate
from timeviper.data.prefetch import Prefetcher
from timeviper.data.records import (
    IGNORE_INDEX,
    SKIP_REASONS,
    VISION_SLOT_ID,
    ConversationDataset,
    RecordFile,
    Sample,
    Skipped,
    SkipStats,
    Tokenize,
    Tokenized,
)
from timeviper.data.synth_source import SynthDataset

if TYPE_CHECKING:
    from timeviper.train.config import Config

__all__ = [
    "IGNORE_INDEX",
    "SKIP_REASONS",
    "VISION_SLOT_ID",
    "ConversationDataset",
    "Mixture",
    "PackedStream",
    "Prefetcher",
    "RankShare",
    "RecordFile",
    "Sample",
    "SkipStats",
    "Skipped",
    "SynthDataset",
    "Tokenize",
    "Tokenized",
    "build_train_data",
    "collate",
]


def build_train_data(
    config: Config,
    *,
    tokenize: Tokenize,
    tokens_per_frame: int,
    rank: int = 0,
    world_size: int = 1,
    load_video: Callable | None = None,
) -> Prefetcher:
    """The packed micro-batch stream of ``rank`` for a training config, made one micro-batch ahead in a
    background thread (``close()`` it when done).

    ``tokenize`` and ``tokens_per_frame`` come from the model (chat template, vision tokens per
    frame after merging), e.g. ``functools.partial(timeviper.prompts.encode_conversation, tokenizer)``;
    ``load_video`` defaults to :func:`timeviper.video.load_video`. Entries with ``synth`` become
    :class:`SynthDataset` (rendered on the fly), the others :class:`ConversationDataset`.
    """
    data = config.data
    common = dict(
        tokenize=tokenize,
        tokens_per_frame=tokens_per_frame,
        max_tokens=config.train.micro_batch_tokens,
        max_frames=data.max_frames,
        fps=data.fps,
    )
    datasets = [
        SynthDataset(spec.name, spec.synth, **common)
        if spec.synth is not None
        else ConversationDataset(spec.name, spec.path, spec.root, load_video=load_video, **common)
        for spec in data.datasets
    ]
    shared = data.same_batches_any_world_size  # every rank reads the one stream of a single process
    mixture = Mixture(
        [len(d) for d in datasets],
        [spec.weight for spec in data.datasets],
        seed=config.train.seed,
        rank=0 if shared else rank,
        world_size=1 if shared else world_size,
    )
    stream = PackedStream(
        datasets,
        mixture,
        budget=config.train.micro_batch_tokens,
        lookahead=data.lookahead,
        pad_to_multiple_of=data.pad_to_multiple_of,
        num_workers=data.num_workers,
        max_skip_fraction=data.max_skip_fraction,
        min_samples=data.skip_check_min_samples,
    )
    return Prefetcher(RankShare(stream, rank, world_size) if shared else stream)
