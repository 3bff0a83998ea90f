"""Conversation records (LLaVA-Video / LLaVA-OneVision layout) and the samples made from them.

A record file is a JSON list or a JSONL file of objects such as::

    {"id": "v_123", "video": "clips/v_123.mp4", "start": 12.0, "end": 40.5,
     "conversations": [{"from": "human", "value": "<video>\\nWhat happens?"},
                       {"from": "gpt", "value": "A dog fetches a ball."}]}

``video`` or ``image`` (at most one; neither for text-only records) is relative to the dataset's
root; ``start``/``end`` (seconds, videos only) select a clip; ``evidence`` (videos only, optional) lists
the ``[start, end]`` seconds of the video where the answer is to be seen, for evidence attention
(:mod:`timeviper.evidence`; a grounding record's own timestamps, say); turns alternate ``human``/``gpt``,
starting with ``human``. The file is indexed once (byte offsets of its records) and each record is
parsed and validated only when it is drawn. A record that cannot be used becomes a
:class:`Skipped` with one of :data:`SKIP_REASONS`; :class:`SkipStats` counts them by reason so a run
can report them and stop (:meth:`SkipStats.check`) when a dataset is mostly unusable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from timeviper.errors import TimeViperError, VideoDecodeError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
ROLES = ("human", "gpt")

SKIP_REASONS = (
    "bad_json",  # the line is not JSON
    "bad_fields",  # not an object, or a field is missing or of the wrong type or value
    "bad_roles",  # a role other than human/gpt, or turns that do not alternate from human
    "no_assistant_turn",  # nothing to learn from
    "media_missing",  # the video or image file does not exist
    "media_decode",  # the loader raised VideoDecodeError
    "too_long",  # more tokens than the micro-batch budget
    "no_loss_tokens",  # the tokenised conversation has no assistant token
)

VISION_SLOT_ID = 0  # token id at the vision slots; the model puts the vision tokens' embeddings there


class Tokenized(Protocol):
    """What ``tokenize(conversations)`` returns (:class:`timeviper.prompts.Encoded` is one).

    ``ids`` and ``labels`` (aligned, not shifted; -100 off assistant turns) are the text alone; the
    vision tokens go before ``ids[vision_at]``; the instruction is ``ids[vision_at:instruction_end]``.
    """

    ids: list[int]
    labels: list[int]
    vision_at: int
    instruction_end: int


Tokenize = Callable[[list[dict]], Tokenized]


@dataclass(frozen=True)
class Record:
    id: str
    conversations: list[dict]
    media: Path | None = None
    clip: tuple[float, float] | None = None
    evidence: tuple[tuple[float, float], ...] = ()  # seconds of the video


@dataclass
class Sample:
    """One tokenised conversation and its frames, ready for packing."""

    id: str
    input_ids: torch.Tensor  # int64 [L]
    labels: torch.Tensor  # int64 [L], aligned with input_ids, IGNORE_INDEX off assistant turns
    vision_span: tuple[int, int]  # [start, end) of the vision slots; start == end without media
    instruction_end: int  # the instruction is input_ids[vision_span[1]:instruction_end]
    frames: torch.Tensor | None  # uint8 [F, H, W, 3]
    frame_times: torch.Tensor | None = None  # float [F], seconds into the video (None: 0, 1, 2, ...)
    evidence: tuple[tuple[float, float], ...] = ()  # [start, end) seconds holding the answer (timeviper.evidence)

    def __len__(self) -> int:
        return self.input_ids.numel()


@dataclass(frozen=True)
class Skipped:
    reason: str  # one of SKIP_REASONS
    detail: str


class MalformedRecord(TimeViperError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class RecordFile:
    """The records of one ``.json`` (a list) or ``.jsonl`` file, each read and parsed on demand.

    JSONL files are indexed by the byte offsets of their non-empty lines and read from disk per
    record. A JSON list has to be parsed whole once; its records are kept as compact JSON bytes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise TimeViperError(f"record file not found: {self.path}")
        if self.path.suffix == ".jsonl":
            self._blob = None
            self._spans = _line_spans(self.path)
        else:
            try:
                items = json.loads(self.path.read_bytes())
            except ValueError as e:
                raise TimeViperError(f"{self.path}: not valid JSON ({e})") from None
            if not isinstance(items, list):
                raise TimeViperError(f"{self.path}: expected a JSON list of records")
            encoded = [json.dumps(item, ensure_ascii=False).encode() for item in items]
            lengths = np.array([len(e) for e in encoded], dtype=np.int64)
            ends = np.cumsum(lengths)
            self._blob = b"".join(encoded)
            self._spans = np.stack([ends - lengths, ends], axis=1)

    def __len__(self) -> int:
        return len(self._spans)

    def raw(self, index: int) -> bytes:
        start, end = (int(x) for x in self._spans[index])
        if self._blob is not None:
            return self._blob[start:end]
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start)


def _line_spans(path: Path, chunk_size: int = 1 << 24) -> np.ndarray:
    """``[n, 2]`` byte offsets (start, end) of the non-empty lines of a file."""
    newlines, size = [], 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            newlines.append(np.flatnonzero(np.frombuffer(chunk, np.uint8) == ord("\n")) + size)
            size += len(chunk)
    ends = np.concatenate([*newlines, [size]]).astype(np.int64)
    starts = np.concatenate([[0], ends[:-1] + 1])
    spans = np.stack([starts, ends], axis=1)
    return spans[ends > starts]


def parse_record(obj: object, root: Path, default_id: str) -> Record:
    """Validate one decoded record; raise :class:`MalformedRecord` naming what is wrong."""
    if not isinstance(obj, dict):
        raise MalformedRecord("bad_fields", f"expected an object, got {type(obj).__name__}")
    turns = obj.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise MalformedRecord("bad_fields", "'conversations' is missing or empty")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise MalformedRecord("bad_fields", f"turn {i} has no string 'value'")
        if turn.get("from") != ROLES[i % 2]:
            raise MalformedRecord("bad_roles", f"turn {i} is from {turn.get('from')!r}, expected {ROLES[i % 2]!r}")
    if len(turns) < 2:
        raise MalformedRecord("no_assistant_turn", "no 'gpt' turn")

    media_keys = [k for k in ("video", "image") if k in obj]
    if len(media_keys) > 1:
        raise MalformedRecord("bad_fields", "both 'video' and 'image'")
    media = None
    if media_keys:
        rel = obj[media_keys[0]]
        if not isinstance(rel, str) or not rel:
            raise MalformedRecord("bad_fields", f"'{media_keys[0]}' is not a path")
        media = root / rel

    clip = None
    if "start" in obj or "end" in obj:
        start, end = obj.get("start"), obj.get("end")
        if media_keys != ["video"] or not _seconds(start, end):
            raise MalformedRecord(
                "bad_fields", f"bad clip start={start!r} end={end!r} (needs a video, 0 <= start < end)"
            )
        clip = (float(start), float(end))

    evidence = obj.get("evidence", [])
    intervals = isinstance(evidence, list) and all(isinstance(pair, list) and len(pair) == 2 and _seconds(*pair)
                                                   for pair in evidence)
    if not intervals or (evidence and media_keys != ["video"]):
        raise MalformedRecord("bad_fields", f"bad evidence {evidence!r} (needs a video, [[start, end], ...] with "
                                            "0 <= start < end)")
    record_id = obj.get("id", default_id)
    return Record(id=str(record_id), conversations=turns, media=media, clip=clip,
                  evidence=tuple((float(a), float(b)) for a, b in evidence))


def _seconds(start, end) -> bool:
    """Whether (start, end) are numbers with 0 <= start < end."""
    numbers = all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in (start, end))
    return numbers and 0 <= start < end


def encode_turns(tokenize: Tokenize, conversations: list[dict], where: str) -> Tokenized | Skipped:
    """Tokenise a conversation; :class:`Skipped` (``no_loss_tokens``) when it has nothing to learn."""
    text = tokenize(conversations)
    if len(text.ids) != len(text.labels) or not 0 <= text.vision_at <= text.instruction_end <= len(text.ids):
        raise TimeViperError(
            f"tokenize returned {len(text.ids)} ids, {len(text.labels)} labels, vision_at {text.vision_at} "
            f"and instruction_end {text.instruction_end}, which do not fit together ({where})"
        )
    if all(label == IGNORE_INDEX for label in text.labels):
        return Skipped("no_loss_tokens", f"{where}: no assistant token")
    return text


def make_sample(
    sample_id: str, text: Tokenized, frames: torch.Tensor | None, tokens_per_frame: int, max_tokens: int, where: str,
    frame_times: torch.Tensor | None = None, evidence: tuple[tuple[float, float], ...] = (),
) -> Sample | Skipped:
    """Splice ``tokens_per_frame`` vision slots per frame into ``text``; ``too_long`` past ``max_tokens``."""
    n = 0 if frames is None else frames.shape[0] * tokens_per_frame
    if len(text.ids) + n > max_tokens:
        return Skipped("too_long", f"{where}: {len(text.ids) + n} tokens > budget {max_tokens}")
    at = text.vision_at
    return Sample(
        id=sample_id,
        input_ids=torch.tensor(text.ids[:at] + [VISION_SLOT_ID] * n + text.ids[at:], dtype=torch.long),
        labels=torch.tensor(text.labels[:at] + [IGNORE_INDEX] * n + text.labels[at:], dtype=torch.long),
        vision_span=(at, at + n),
        instruction_end=text.instruction_end + n,
        frames=frames,
        frame_times=frame_times,
        evidence=evidence,
    )


class ConversationDataset:
    """A record file made into samples: ``dataset[i]`` is a :class:`Sample` or a :class:`Skipped`.

    Videos are sampled at ``fps``; longer ones are spread uniformly over ``max_frames`` frames
    (images give one frame). Each frame becomes ``tokens_per_frame`` vision tokens. A sample of
    more than ``max_tokens`` tokens is skipped (``too_long``) rather than truncated: a cut would drop
    the answer or split the vision block.
    """

    def __init__(
        self,
        name: str,
        path: str | Path,
        root: str | Path,
        *,
        tokenize: Tokenize,
        tokens_per_frame: int,
        max_tokens: int,
        max_frames: int = 256,
        fps: float = 1.0,
        load_video: Callable | None = None,
    ):
        self.name = name
        self.records = RecordFile(path)
        self.root = Path(root)
        self.tokenize = tokenize
        self.tokens_per_frame = tokens_per_frame
        self.max_tokens = max_tokens
        self.max_frames = max_frames
        self.fps = fps
        self._load_video = load_video

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample | Skipped:
        where = f"{self.records.path.name}#{index}"
        try:
            record = parse_record(json.loads(self.records.raw(index)), self.root, where)
        except ValueError as e:
            return Skipped("bad_json", f"{where}: {e}")
        except MalformedRecord as e:
            return Skipped(e.reason, f"{where}: {e}")

        text = encode_turns(self.tokenize, record.conversations, where)
        if isinstance(text, Skipped):
            return text
        frames = times = None
        if record.media is not None:
            if not record.media.is_file():
                return Skipped("media_missing", f"{where}: {record.media} not found")
            try:
                frames, times = self._frames(record)
            except VideoDecodeError as e:
                return Skipped("media_decode", f"{where}: {e}")
        shift = record.clip[0] if record.clip else 0.0  # frame times count from the clip's start
        evidence = tuple((start - shift, end - shift) for start, end in record.evidence)
        return make_sample(record.id, text, frames, self.tokens_per_frame, self.max_tokens, where, times, evidence)

    def _frames(self, record: Record) -> tuple[torch.Tensor, torch.Tensor]:
        """The record's frames and their times (seconds from the start of its clip, or of its video)."""
        load = self._load_video
        if load is None:
            from timeviper.video import load_video as load
        if record.clip is None:
            video = load(record.media, fps=self.fps, max_frames=self.max_frames, sampling="uniform")
            return video.frames, torch.as_tensor(video.timestamps)
        # load_video has no time window: decode at fps, keep the clip, spread max_frames over it.
        video = load(record.media, fps=self.fps, max_frames=None, sampling="uniform")
        start, end = record.clip
        times = torch.as_tensor(video.timestamps)
        keep = torch.nonzero((times >= start) & (times <= end)).flatten()
        if keep.numel() == 0:
            raise VideoDecodeError(f"{record.media}: no frame between {start}s and {end}s")
        if keep.numel() > self.max_frames:
            keep = keep[torch.linspace(0, keep.numel() - 1, self.max_frames).round().long()]
        return video.frames[keep], times[keep] - start


class SkipStats:
    """Samples drawn and skipped, per dataset and reason: ``counts[d] = [seen, *per reason]``."""

    def __init__(self, names: Sequence[str], counts: torch.Tensor | None = None):
        self.names = list(names)
        self.counts = torch.zeros(len(names), 1 + len(SKIP_REASONS), dtype=torch.int64) if counts is None else counts

    def add(self, dataset: int, item: Sample | Skipped, *, new: bool = True) -> None:
        """Count one drawn item (``new=False``: an item drawn before, loaded again on resume)."""
        self.counts[dataset, 0] += int(new)
        if isinstance(item, Skipped):
            self.counts[dataset, 1 + SKIP_REASONS.index(item.reason)] += 1
            if self.counts[dataset, 1:].sum() <= 10:
                log.warning("skipped a sample of %s (%s): %s", self.names[dataset], item.reason, item.detail)

    def summary(self) -> dict:
        """``{"samples", "skipped", "skipped_by_reason": {reason: n}}`` over all datasets."""
        total = self.counts.sum(0).tolist()
        by_reason = {r: n for r, n in zip(SKIP_REASONS, total[1:]) if n}
        return {"samples": total[0], "skipped": sum(total[1:]), "skipped_by_reason": by_reason}

    def check(self, max_fraction: float, min_samples: int) -> None:
        """Raise when a dataset with at least ``min_samples`` drawn skipped more than ``max_fraction``."""
        for name, (seen, *skipped) in zip(self.names, self.counts.tolist()):
            if seen >= min_samples and sum(skipped) > max_fraction * seen:
                reasons = ", ".join(f"{r}: {n}" for r, n in zip(SKIP_REASONS, skipped) if n)
                raise TimeViperError(
                    f"dataset {name!r}: {sum(skipped)} of {seen} samples skipped ({reasons}), more than "
                    f"max_skip_fraction {max_fraction}; fix the data or raise data.max_skip_fraction"
                )
