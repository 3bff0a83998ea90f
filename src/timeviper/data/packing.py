"""Packing samples into fixed token budgets, and the resumable stream of packed micro-batches.

A micro-batch is one row of at most ``budget`` tokens holding several samples back to back, laid out
for variable-length kernels (``cu_seqlens``) and for per-sample vision-token dropping (TransV):

====================  ===================  =====================================================
key                   type, shape          meaning
====================  ===================  =====================================================
``input_ids``         int64 ``[1, T]``     the samples' tokens, then padding; 0 at vision slots
``labels``            int64 ``[1, T]``     **already shifted**: ``labels[0, t]`` is the token to
                                           predict at position ``t``; -100 off assistant turns,
                                           at the last token of every sample (nothing of the
                                           next sample is predicted) and on padding
``position_ids``      int64 ``[1, T]``     0, 1, ... restarting at every segment
``cu_seqlens``        int32 ``[S + 1]``    segment boundaries: the samples, then the padding
                                           segment if there is one
``max_seqlen``        int                  the longest segment
``vision_spans``      int64 ``[N, 2]``     per sample, [start, end) of its vision tokens in the
                                           row (start == end without media)
``instruction_ends``  int64 ``[N]``        per sample, the end of its instruction, which runs
                                           from the end of its vision tokens
``frames``            list of N            per sample, uint8 ``[F, H, W, 3]`` or None;
                                           ``F * tokens_per_frame == end - start``
``frame_times``       list of N            per sample, float ``[F]`` seconds into its video, or
                                           None without frames (0, 1, 2, ... when the sample
                                           gave none)
``evidence``          list of N            per sample, bool ``[F]``: which frames show what the
                                           answer names (none: all False; see
                                           :mod:`timeviper.evidence`), or None without frames
``sample_ids``        list of N str        record ids, for error messages
====================  ===================  =====================================================

``N`` is the number of samples; ``S`` is ``N`` or ``N + 1`` with padding. Padding (to a multiple of
``pad_to_multiple_of``) is a segment of its own with ids 0 and labels -100, so it attends to
nothing else and never reaches the loss.

Packing is first-fit over a small lookahead buffer in arrival order: the oldest buffered sample
always goes first, later ones fill the room it leaves. Samples longer than the budget never get
here (the dataset skips them as ``too_long``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from timeviper.data.mixture import Mixture
from timeviper.data.records import IGNORE_INDEX, ConversationDataset, Sample, SkipStats
from timeviper.errors import CheckpointError
from timeviper.sampling import frames_within

PAD_ID = 0
LOAD_BATCH = 16  # samples a loader process hands over at once: the main process pays per hand-over, not per sample


def collate(samples: Sequence[Sample], pad_to_multiple_of: int = 1) -> dict:
    """Pack ``samples`` into one micro-batch (layout in the module docstring)."""
    ids, labels, positions, spans, instruction_ends, bounds = [], [], [], [], [], [0]
    frame_times = [None if s.frames is None else torch.arange(len(s.frames), dtype=torch.float64)
                   if s.frame_times is None else s.frame_times for s in samples]
    for s in samples:
        offset, n = bounds[-1], len(s)
        ids.append(s.input_ids)
        labels.append(torch.cat([s.labels[1:], torch.tensor([IGNORE_INDEX])]))
        positions.append(torch.arange(n))
        spans.append((offset + s.vision_span[0], offset + s.vision_span[1]))
        instruction_ends.append(offset + s.instruction_end)
        bounds.append(offset + n)
    pad = -bounds[-1] % pad_to_multiple_of
    if pad:
        ids.append(torch.full((pad,), PAD_ID))
        labels.append(torch.full((pad,), IGNORE_INDEX))
        positions.append(torch.arange(pad))
        bounds.append(bounds[-1] + pad)
    cu_seqlens = torch.tensor(bounds, dtype=torch.int32)
    return {
        "input_ids": torch.cat(ids)[None],
        "labels": torch.cat(labels)[None],
        "position_ids": torch.cat(positions)[None],
        "cu_seqlens": cu_seqlens,
        "max_seqlen": int(cu_seqlens.diff().max()),
        "vision_spans": torch.tensor(spans, dtype=torch.long).view(-1, 2),
        "instruction_ends": torch.tensor(instruction_ends, dtype=torch.long),
        "frames": [s.frames for s in samples],
        "frame_times": frame_times,
        "evidence": [None if times is None else frames_within(times, s.evidence)
                     for s, times in zip(samples, frame_times)],
        "sample_ids": [s.id for s in samples],
    }


def _share_by_file_name(worker_id: int) -> None:
    """Loader processes hand tensors over by shared-memory file name, not by passing a file descriptor over
    a socket for each tensor: half the main process's cost per sample (a few tensors each, ~100 a step)."""
    torch.multiprocessing.set_sharing_strategy("file_system")


class _Keyed:
    """Map-style view of several datasets for DataLoader: ``[(d, i)] -> ((d, i), item)``."""

    def __init__(self, datasets: Sequence[ConversationDataset]):
        self.datasets = datasets

    def __getitem__(self, key: tuple[int, int]):
        return key, self.datasets[key[0]][key[1]]


class _Keys:
    """The mixture's key stream from given counts, as a DataLoader sampler."""

    def __init__(self, mixture: Mixture, drawn: Sequence[int]):
        self.mixture, self.drawn = mixture, list(drawn)

    def __iter__(self):
        return self.mixture.keys(self.drawn)


class PackedStream:
    """Endless packed micro-batches for one rank, loaded by ``num_workers`` processes.

    ``state_dict()`` is small (counts drawn per dataset, keys of the buffered samples, skip
    counts); a stream given it back continues with exactly the micro-batches the original would
    have produced next. ``skips`` counts what this rank drew and skipped; once a dataset has given
    ``min_samples`` samples, skipping more than ``max_skip_fraction`` of them raises.
    """

    def __init__(
        self,
        datasets: Sequence[ConversationDataset],
        mixture: Mixture,
        *,
        budget: int,
        lookahead: int = 8,
        pad_to_multiple_of: int = 1,
        num_workers: int = 0,
        max_skip_fraction: float = 0.05,
        min_samples: int = 1000,
    ):
        self.datasets, self.mixture = list(datasets), mixture
        self.budget, self.lookahead, self.pad_to_multiple_of = budget, lookahead, pad_to_multiple_of
        self.num_workers = num_workers
        self.max_skip_fraction, self.min_samples = max_skip_fraction, min_samples
        self.skips = SkipStats([d.name for d in self.datasets])
        self._drawn = [0] * len(self.datasets)
        self._buffer: list[tuple[tuple[int, int], Sample]] = []
        self._items = None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        self._fill()
        packed, rest, used = [], [], 0
        for key, sample in self._buffer:
            if used + len(sample) <= self.budget:
                packed.append(sample)
                used += len(sample)
            else:
                rest.append((key, sample))
        self._buffer = rest
        return collate(packed, self.pad_to_multiple_of)

    def start_loading(self) -> None:
        """Start the loader processes (the first next() does it otherwise)."""
        if self._items is None:
            loader = DataLoader(
                _Keyed(self.datasets),
                sampler=_Keys(self.mixture, self._drawn),
                batch_size=LOAD_BATCH,
                collate_fn=list,
                num_workers=self.num_workers,
                worker_init_fn=_share_by_file_name,
                # its own generator: starting an iterator must not draw from the global RNG
                generator=torch.Generator(),
            )
            self._items = itertools.chain.from_iterable(iter(loader))  # iter(): the processes start here

    def close(self) -> None:
        """Stop the loader processes; a later next() starts them again where the stream is (it resumes from
        the counts of samples received, so what the processes had made ahead is made again)."""
        self._items = None  # the loader's iterator goes with it, and shuts its processes down

    def _fill(self) -> None:
        self.start_loading()
        while len(self._buffer) < self.lookahead:
            key, item = next(self._items)
            self._drawn[key[0]] += 1
            self.skips.add(key[0], item)
            if isinstance(item, Sample):
                self._buffer.append((key, item))
            else:
                self.skips.check(self.max_skip_fraction, self.min_samples)

    def state_dict(self) -> dict:
        return {
            "datasets": self.skips.names,
            "sizes": self.mixture.sizes,
            "drawn": list(self._drawn),
            "buffer": [list(key) for key, _ in self._buffer],
            "skips": self.skips.counts.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["datasets"] != self.skips.names or state["sizes"] != self.mixture.sizes:
            raise CheckpointError(
                f"the data mixture changed since the checkpoint: it had datasets {state['datasets']} of "
                f"{state['sizes']} records, now {self.skips.names} of {self.mixture.sizes}"
            )
        self._drawn = list(state["drawn"])
        self.skips.counts = torch.tensor(state["skips"], dtype=torch.int64)
        self._items = None
        self._buffer = []
        for d, i in state["buffer"]:
            item = self.datasets[d][i]
            self.skips.add(d, item, new=False)
            if isinstance(item, Sample):
                self._buffer.append(((d, i), item))


class RankShare:
    """Micro-batches ``rank``, ``rank + W``, ``rank + 2W``, ... of a stream that every one of the ``W`` ranks
    reads whole: together the ranks train on the very micro-batches one process would, in the same steps.

    Only rank 0 reports the stream's skip counts (the others report none), so sums over ranks count
    each sample once.
    """

    def __init__(self, stream: PackedStream, rank: int, world_size: int):
        self.stream, self.rank, self.world_size = stream, rank, world_size
        self.skips = stream.skips if rank == 0 else SkipStats(stream.skips.names)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        group = [next(self.stream) for _ in range(self.world_size)]  # collated whole: cheap next to loading
        return group[self.rank]

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def start_loading(self) -> None:
        self.stream.start_loading()

    def close(self) -> None:
        self.stream.close()
