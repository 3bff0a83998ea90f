"""Decode a video file into RGB frames sampled at a fixed rate, by presentation time.

Frame selection. Sample k is taken at time ``k / fps`` seconds from the first frame and holds the frame
*on screen* at that moment: the last frame whose presentation time (``pts * time_base``) is at or before
it. Frame times come from the container, never from an assumed frame rate, so variable-frame-rate files
sample correctly; a frame shown longer than ``1 / fps`` appears in several samples. ``timestamps`` are
the sample times (exactly ``k / fps``), not the frames' own pts.

Still images (png, jpeg, webp, ...) are one-frame videos: ``timestamps == [0.]`` and ``duration == 0.0``.

Damaged files. A file whose data ends early (truncated download, cut-off recording) returns the frames
decoded before the damage and warns with ``warnings.warn``, naming the file and the time reached; damaged
packets in the middle are skipped with a warning. Only a file with no decodable frame at all raises
``VideoDecodeError``. Display-matrix rotation is applied in multiples of 90 degrees (flips are ignored).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from itertools import chain, islice
from typing import Iterator

import av
import numpy as np
import torch

from timeviper.errors import ConfigError, VideoDecodeError
from timeviper.sampling import EPS, Video, check_chunk_frames, check_sampling, sample_times

_SEEK_MIN_SKIP = 1.0  # seconds of video a seek must skip to be worth flushing the decoder
_TRUNCATION_SLACK = 1.0  # seconds the frames may end before the declared duration without a warning


def load_video(path, fps: float = 1.0, max_frames: int | None = None, sampling: str = "uniform",
               seek: bool = True) -> Video:
    """Decode the frames of ``path`` sampled at ``fps``.

    sampling="uniform" spreads ``max_frames`` samples evenly over the whole 1/fps grid (first and last
    grid point included); "first" keeps the first ``max_frames`` grid points. ``seek`` lets the decoder
    jump over keyframe intervals that hold no sample (it never changes which frames are returned).
    Raises ConfigError for bad arguments and VideoDecodeError when the file cannot be decoded.
    """
    reader, targets = _open(path, fps, max_frames, sampling)
    return next(_chunks(reader, targets, len(targets), seek))


def iter_video(path, fps: float = 1.0, chunk_frames: int = 256, max_frames: int | None = None,
               sampling: str = "uniform", seek: bool = True) -> Iterator[Video]:
    """Like `load_video`, but yields the samples in order as `Video` chunks of at most ``chunk_frames``
    frames, so memory stays bounded however long the video (about two chunks: the one being filled and
    the one the caller holds). Each chunk carries the whole video's ``duration``. The file is opened (and
    open errors raised) at the call; decode errors surface while iterating."""
    check_chunk_frames(chunk_frames)
    reader, targets = _open(path, fps, max_frames, sampling)
    return _chunks(reader, targets, chunk_frames, seek)


def _open(path, fps, max_frames, sampling) -> tuple[_Reader, np.ndarray]:
    check_sampling(fps, max_frames, sampling)
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"path must be a file path, got {type(path).__name__}")
    reader = _Reader(os.fspath(path))
    return reader, sample_times(reader.duration, fps, max_frames, sampling)


def _chunks(reader: _Reader, targets: np.ndarray, chunk_frames: int, seek: bool) -> Iterator[Video]:
    with reader:
        samples = _sample(reader, targets, seek)
        for first in range(0, len(targets), chunk_frames):
            times = targets[first:first + chunk_frames]
            frames = None
            for i, rgb in enumerate(islice(samples, len(times))):
                if frames is None:
                    frames = np.empty((len(times), *rgb.shape), np.uint8)  # [t, H, W, 3]
                frames[i] = rgb
            if frames is None:  # the video ended early
                return
            n = i + 1
            yield Video(torch.from_numpy(frames[:n]), torch.from_numpy(times[:n].copy()), reader.duration,
                        reader.path)
            if n < len(times):
                return


@dataclass
class _Frame:
    time: float  # presentation time, seconds from the first frame
    end: float  # when the next frame is due, seconds
    frame: av.VideoFrame


def _sample(reader: _Reader, targets: np.ndarray, allow_seek: bool) -> Iterator[np.ndarray]:
    """Yield the RGB frame on screen at each of the sorted targets, stopping if the video ends early."""
    keyframes = reader.keyframe_times() if allow_seek else np.empty(0)
    frames = reader.frames()
    prev = None  # the last decoded frame at or before the current target
    ahead = next(frames, None)  # the first decoded frame after it; None at the end of the data
    last, last_rgb = None, None
    for target in targets:
        position = ahead.time if ahead else prev.time if prev else -math.inf
        k = np.searchsorted(keyframes, target + EPS, side="right") - 1
        if k >= 0 and keyframes[k] > position + _SEEK_MIN_SKIP:
            frames = reader.seek(target)
            prev, ahead = None, next(frames, None)
            if ahead is None:  # the index points past the readable data: read on from where we were
                keyframes, frames = keyframes[:0], reader.seek(max(position, 0.0))
                ahead = next(frames, None)
        while ahead is not None and ahead.time <= target + EPS:
            prev, ahead = ahead, next(frames, None)
        chosen = prev or ahead  # a target before the first frame gets the first frame
        if chosen is None:
            reason = f" ({reader.first_error})" if reader.first_error else ""
            raise VideoDecodeError(f"{reader.path}: no decodable video frames{reason}")
        past_end = ahead is None and target >= chosen.end - EPS
        if past_end and last is not None and reader.duration - chosen.end > _TRUNCATION_SLACK:
            warnings.warn(f"{reader.path}: video data ends at {chosen.end:.2f} s of {reader.duration:.2f} s "
                          f"(truncated or damaged file); returning the frames before that")
            return
        if chosen.frame is not last:
            last, last_rgb = chosen.frame, reader.to_rgb(chosen.frame)
        yield last_rgb


class _Reader:
    """An opened video file: its first real video stream, decoded from any position, with frame times."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.exists(path):
            raise VideoDecodeError(f"{path}: no such file")
        if os.path.isdir(path):
            raise VideoDecodeError(f"{path}: is a directory, not a video file")
        self.first_error = None  # reason of the first damaged packet, if any
        self._open()
        try:
            self.time_base = float(self.stream.time_base)
            self.start_pts = self.stream.start_time or 0
            rate = self.stream.guessed_rate or self.stream.average_rate
            self.frame_step = 1 / float(rate) if rate else 0.0  # seconds; for frames without pts/duration
            fmt = self.container.format.name
            is_image = fmt == "image2" or fmt.endswith("_pipe")
            self.duration = 0.0 if is_image else self._declared_duration()
        except BaseException:
            self.container.close()
            raise
        self.size = None  # (width, height) of the first frame; later frames are scaled to it
        self._previous = None  # the last decoded frame

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.container.close()

    def _open(self):
        """Open the container and pick its first video stream that is not cover art."""
        try:
            self.container = av.open(self.path)
        except av.FFmpegError as e:
            raise VideoDecodeError(f"{self.path}: not a readable video or image file ({_reason(e)})") from None
        streams = [s for s in self.container.streams.video
                   if not s.disposition & av.stream.Disposition.attached_pic]
        kinds = sorted({s.type for s in self.container.streams}) or ["no streams"]
        if not streams or streams[0].codec_context is None:
            self.container.close()
            problem = "no decoder for its video codec" if streams else "has no video stream"
            raise VideoDecodeError(f"{self.path}: {problem} (found: {', '.join(kinds)})")
        self.stream = streams[0]
        self.stream.codec_context.thread_type = "AUTO"  # frame and slice threads

    def _declared_duration(self) -> float:
        """Seconds, from the stream or container header, else from a pass over the packets (no decoding)."""
        if self.stream.duration:
            return self.stream.duration * self.time_base
        if self.container.duration:
            return self.container.duration / av.time_base
        end = count = 0
        for packet in self._packets():
            count += packet.size > 0
            if packet.pts is not None:
                end = max(end, (packet.pts - self.start_pts + (packet.duration or 0)) * self.time_base)
        self.container.close()
        self._open()  # back to the start
        return max(end, count * self.frame_step)

    def keyframe_times(self) -> np.ndarray:
        """Sorted keyframe times in seconds from the container's index (empty when it has none)."""
        entries = self.stream.index_entries
        times = [e.timestamp for e in entries if e.is_keyframe] if entries is not None else []
        return np.sort((np.asarray(times, np.float64) - self.start_pts) * self.time_base)

    def _packets(self) -> Iterator[av.Packet]:
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as e:  # the container itself is cut off or broken here
                self.first_error = self.first_error or _reason(e)
                return
            yield packet

    def frames(self) -> Iterator[_Frame]:
        """Decoded frames from the current position to the end of the readable data."""
        for packet in self._packets():
            try:
                decoded = packet.decode()
            except av.FFmpegError as e:
                self._note_damage(e)
                continue
            for frame in decoded:
                yield self._timed(frame)

    def seek(self, target: float) -> Iterator[_Frame]:
        """Frames from the keyframe before ``target`` on. Where the container lands after ``target`` (its
        index is coarse or holds decode times), step further back until the first frame is not late."""
        back = 0.0
        while True:
            start = max(0.0, target - back)
            try:
                self.container.seek(self.start_pts + int(start / self.time_base), stream=self.stream)
            except av.FFmpegError as e:
                raise VideoDecodeError(f"{self.path}: seeking to {start:.2f} s failed ({_reason(e)}); "
                                       f"decode without seeking (seek=False)") from None
            frames = self.frames()
            first = next(frames, None)
            if first is None or first.time <= target + EPS or start == 0.0:
                return chain([first] if first else [], frames)
            back = max(_SEEK_MIN_SKIP, 2 * back)

    def _timed(self, frame: av.VideoFrame) -> _Frame:
        if frame.pts is not None:
            time = (frame.pts - self.start_pts) * self.time_base
        else:  # elementary streams carry no timestamps: frames follow each other
            time = 0.0 if self._previous is None else self._previous.end
        shown = frame.duration * self.time_base if frame.duration else self.frame_step
        self._previous = _Frame(time, time + shown, frame)
        return self._previous

    def to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        """uint8 [H, W, 3], upright, at the size of the first frame."""
        if self.size is None:
            self.size = frame.width, frame.height
        rgb = frame.to_ndarray(format="rgb24", width=self.size[0], height=self.size[1])
        turns = round(frame.rotation / 90) % 4  # counter-clockwise quarter turns for display
        return np.rot90(rgb, turns) if turns else rgb

    def _note_damage(self, error: av.FFmpegError):
        """Warn once per file about packets the decoder rejects; decoding goes on after them."""
        if self.first_error is None:
            near = f" near {self._previous.end:.2f} s" if self._previous else ""
            warnings.warn(f"{self.path}: skipping damaged video data{near} ({_reason(error)})")
        self.first_error = self.first_error or _reason(error)


def _reason(error: av.FFmpegError) -> str:
    return error.strerror or type(error).__name__
