"""Coarse-to-fine temporal grounding: the whole video says roughly where an event is, short windows say exactly.

A model trained on videos of many lengths grounds short ones far better than long ones (the embedded model:
mIoU 0.99 on 16 s test videos, 0.32 at 64 s). `search` spends more compute to ground as in a short video:

1. the whole video is asked for the event `samples` times (sampling at temperature 1): a prior, where the model
   thinks it may be;
2. so is every window of `window` seconds (by default a quarter of the video, at least 16 s), `stride` apart (a
   quarter of a window), each read alone as a video of its own (its frames' times counted from its start). A
   window's answer is the sampled span that agrees most with the others (the minimum-Bayes-risk choice under
   IoU); its consensus, that span's mean IoU with them;
3. the answer is the window span of highest consensus + prior_weight * support, its mean IoU with the prior.
With `scales` > 1, windows of half the length (then a quarter, ...; none shorter than MIN_WINDOW) join the search,
and with `agreement_weight` a span also scores by its agreement, its mean IoU with every other window's span:
an event several windows of both lengths place alike outscores one that a single window finds.

Consensus alone does not tell the windows apart: a model that was only ever asked about events its video holds
finds one in every window, often every time. Support alone is the whole video's blurred guess. Together they
pick the window whose sharp answer lies where the whole video points.

    found = search(model, "video.mp4", "the red circle moves left")
    found.start, found.end  # seconds; found.candidates: every window's answer and scores

The frames are encoded once, and each window re-times its frames' vision tokens (add_frame_times); a pass costs
one prefill of its frames and one batched decode of `samples` answers.

`ground_by_shots` asks shot by shot instead, as timeviper.captioning captions: the video is cut at its shots
(timeviper.shots), each shot is asked about the event as a video of its own, and the answer comes from the shot in
which the model most believes the event happens: the one where its first answer token is least likely to begin
NO_EVENT ("It does not happen in the video."). It needs a model trained to say so (`synth.shot_frames` on
grounding data); one never asked about an absent event finds an event in every shot.

    found = ground_by_shots(model, "video.mp4", "the red circle moves left")
    found.start, found.end  # seconds; found.shots: each shot's span and its belief that the event happens there
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from timeviper.clips import encode
from timeviper.errors import ConfigError
from timeviper.eval.metrics import parse_time_span, temporal_iou
from timeviper.prompts import NO_EVENT, grounding_prompt
from timeviper.shots import ShotConfig, ShotCuts
from timeviper.synth.world import check_int

TimeSpan = tuple[float, float]


MIN_WINDOW = 16.0  # seconds: the embedded model grounds 16 s videos best
WINDOW_SHARE = 0.25  # of the video, a window's default length when longer than MIN_WINDOW; and of a window, the stride


@dataclass(frozen=True)
class SearchConfig:
    window: float | None = None  # seconds a window reads; None: a quarter of the video, at least MIN_WINDOW
    stride: float | None = None  # seconds between windows' starts; None: a quarter of the window
    samples: int = 16  # answers sampled per pass
    prior_weight: float = 1.0  # weight of the whole video's support against a window's consensus
    seed: int = 0  # of the sampling (the pass's index is added)
    max_new_tokens: int = 24
    scales: int = 1  # window lengths: the window, then half of it, ..., none under MIN_WINDOW (the first is kept)
    agreement_weight: float = 0.0  # weight of a span's mean IoU with every other window's span

    def __post_init__(self):
        for name in ("window", "stride", "prior_weight", "agreement_weight"):
            value = getattr(self, name)
            if value is None and name in ("window", "stride"):
                continue
            least = 0 if name in ("prior_weight", "agreement_weight") else math.ulp(0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not least <= value < math.inf:
                raise ConfigError(f"grounding search: {name} must be a number {'>= 0' if least == 0 else '> 0'}, "
                                  f"got {value!r}")
        for name, least in (("samples", 2), ("seed", 0), ("max_new_tokens", 1), ("scales", 1)):
            check_int(f"grounding search: {name}", getattr(self, name), least)

    def windows(self, duration: float) -> tuple[float, float]:
        """(window, stride) in seconds for a video of `duration` seconds."""
        window = self.window or max(MIN_WINDOW, WINDOW_SHARE * duration)
        return window, self.stride or WINDOW_SHARE * window

    def lengths(self, duration: float) -> list[tuple[float, float]]:
        """(window, stride) of every scale, longest first: each half the one before, with its stride halved."""
        window, stride = self.windows(duration)
        return [(window / 2**k, stride / 2**k) for k in range(self.scales) if k == 0 or window / 2**k >= MIN_WINDOW]


@dataclass(frozen=True)
class Candidate:
    start: float  # seconds of the whole video
    end: float
    window: float  # the second at which its window starts
    consensus: float  # mean IoU of the span with its window's samples
    support: float  # mean IoU of the span with the whole video's samples
    score: float  # consensus + prior_weight * support (+ agreement_weight * agreement)
    length: float  # seconds its window reads
    agreement: float  # mean IoU of the span with every other window's span

    def report(self) -> dict:
        """Its window and scores as the command line and prediction records give them."""
        return {"window": self.window, "length": self.length, "consensus": round(self.consensus, 4),
                "support": round(self.support, 4), "agreement": round(self.agreement, 4)}


@dataclass(frozen=True)
class Grounding:
    best: Candidate | None  # the answer; None if no window's answers held a time span
    candidates: list[Candidate]  # one per window with an answer, in the windows' order
    prior: list[TimeSpan | None]  # the whole video's sampled spans
    frames: int  # frames read
    window: float  # seconds each window of the first (longest) scale read
    stride: float  # seconds between those windows' starts

    @property
    def start(self) -> float | None:
        return self.best and self.best.start

    @property
    def end(self) -> float | None:
        return self.best and self.best.end


def consensus_span(spans: list[TimeSpan | None]) -> tuple[TimeSpan | None, float]:
    """The span that agrees most with the others (highest total IoU; the first of ties) and its mean IoU with all
    of them, itself included; a sample without a span agrees with none."""
    found = [s for s in spans if s is not None]
    if not found:
        return None, 0.0
    best = max(found, key=lambda a: sum(temporal_iou(a, b) for b in found))
    return best, sum(temporal_iou(best, b) for b in found) / len(spans)


def clipped(span: TimeSpan | None, length: float) -> TimeSpan | None:
    """A span answered about a part of `length` seconds (times from its start), clipped to the part."""
    return span and (min(max(span[0], 0.0), length), min(span[1], length))


def support(span: TimeSpan, prior: list[TimeSpan | None]) -> float:
    """Mean IoU of `span` with the prior's samples (one without a span counts 0)."""
    return sum(temporal_iou(span, p) for p in prior if p is not None) / len(prior)


def window_starts(duration: float, window: float, stride: float) -> list[float]:
    """Starts of windows `stride` apart, the last ending at `duration` (one window if the video is shorter)."""
    last = max(duration - window, 0.0)
    return [min(i * stride, last) for i in range(math.ceil(last / stride - 1e-9) + 1)]


def search(model, video, query: str, config: SearchConfig = SearchConfig(), fps: float = 1.0, chunk_frames: int = 256,
           on_frames: Callable[[int], None] | None = None,
           on_window: Callable[[int, int], None] | None = None) -> Grounding:
    """When `query` happens in `video` (a path, a decoded timeviper.sampling.Video, or uint8 frames [T, H, W, 3] taken
    as sampled at `fps`), by the search above. `on_frames(n)` is told of frames encoded, `on_window(i, total)` of
    windows done."""
    encoded = encode(model, video, fps, chunk_frames, on_frames)  # tokens [F, n, C], times [F] seconds
    times = encoded.times
    instruction = grounding_prompt(query)

    def sampled_spans(a: int, b: int, origin: float, seed: int) -> list[TimeSpan | None]:
        """The spans of `samples` answers about frames [a, b), their times counted from `origin` seconds."""
        prefilled = model.prefill_tokens(encoded.clip(model, a, b, origin, chunk_frames), instruction)
        texts = model.decode([prefilled] * config.samples, config.max_new_tokens, temperature=1.0, seed=seed)
        return [parse_time_span(t) for t in texts]

    prior = sampled_spans(0, len(times), 0.0, config.seed)
    duration = encoded.duration
    lengths = config.lengths(duration)  # [(window, stride)], longest first
    passes = [(start, window) for window, stride in lengths for start in window_starts(duration, window, stride)]
    found = []  # (span, window start, window length, consensus) of every window whose answers hold a span
    for i, (start, window) in enumerate(passes):
        a, b = torch.searchsorted(times, torch.tensor([start, start + window], dtype=times.dtype)).tolist()
        if b > a:
            length = min(window, duration - start)  # spans are clipped to the window
            spans = [clipped(s, length) for s in sampled_spans(a, b, start, config.seed + 1 + i)]
            span, consensus = consensus_span(spans)
            if span is not None:
                found.append(((span[0] + start, span[1] + start), start, window, consensus))
        if on_window is not None:
            on_window(i + 1, len(passes))
    candidates = []
    for j, (span, start, window, consensus) in enumerate(found):
        others = [other for k, (other, *_) in enumerate(found) if k != j]
        agreement = sum(temporal_iou(span, o) for o in others) / len(others) if others else 0.0
        agree = support(span, prior)
        score = consensus + config.prior_weight * agree + config.agreement_weight * agreement
        candidates.append(Candidate(*span, window=start, consensus=consensus, support=agree, score=score,
                                    length=window, agreement=agreement))
    return Grounding(max(candidates, key=lambda c: c.score, default=None), candidates, prior, len(times), *lengths[0])


@dataclass(frozen=True)
class ShotBelief:
    start: float  # seconds of the video the shot covers
    end: float
    happens: float  # the model's probability that its answer about the shot does not begin NO_EVENT


@dataclass(frozen=True)
class ShotGrounding:
    start: float | None  # seconds of the video; None if the chosen shot's answer held no time span
    end: float | None
    shot: int  # index of the chosen shot in `shots`
    shots: list[ShotBelief]  # in order
    raw: str  # the chosen shot's answer, its times counted from the shot's start
    frames: int  # frames read


def ground_by_shots(model, video, query: str, config: ShotConfig = ShotConfig(), fps: float = 1.0,
                    chunk_frames: int = 256, max_new_tokens: int = 24,
                    on_frames: Callable[[int], None] | None = None,
                    on_shot: Callable[[int, int], None] | None = None) -> ShotGrounding:
    """When `query` happens in `video` (a path, a decoded timeviper.sampling.Video, or uint8 frames [T, H, W, 3] taken
    as sampled at `fps`), asked shot by shot (see the module's docstring). `on_frames(n)` is told of frames encoded,
    `on_shot(i, total)` of shots asked."""
    cuts = ShotCuts(config)
    encoded = encode(model, video, fps, chunk_frames, on_frames, on_chunk=lambda chunk: cuts.update(chunk.frames))
    spans, times = cuts.shots(), encoded.times.tolist()  # [(a, b)] frame ranges; [F] seconds
    no_event = model.tokenizer.encode(NO_EVENT)[0]  # the first token of that answer
    instruction = grounding_prompt(query)
    shots, chosen = [], None  # chosen: (happens, index, prefilled) of the likeliest shot so far
    for i, (a, b) in enumerate(spans):
        prefilled = model.prefill_tokens(encoded.clip(model, a, b, times[a], chunk_frames, config.max_frames),
                                         instruction)  # (cache, logits [1, V])
        happens = 1.0 - prefilled[1].float().softmax(-1)[0, no_event].item()
        shots.append(ShotBelief(times[a], times[b - 1] + 1 / fps, happens))
        if chosen is None or happens > chosen[0]:
            chosen = (happens, i, prefilled)
        if on_shot is not None:
            on_shot(i + 1, len(spans))
    _, index, prefilled = chosen
    shot = shots[index]
    raw = model.decode([prefilled], max_new_tokens)[0]
    span = clipped(parse_time_span(raw), shot.end - shot.start)  # seconds of the shot
    start, end = (None, None) if span is None else (shot.start + span[0], shot.start + span[1])
    return ShotGrounding(start, end, index, shots, raw, len(times))
