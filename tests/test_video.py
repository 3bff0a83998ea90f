import math
import warnings

import numpy as np
import pytest
import torch

from media import cfr, damaged_copy, frame_indices, write_audio, write_image, write_video
from timeviper import video
from timeviper.errors import ConfigError, VideoDecodeError
from timeviper.model import frame_chunks
from timeviper.video import iter_video, load_video

VFR_TIMES = [0.0, 0.1, 0.15, 0.9, 1.0, 1.7, 2.5, 4.0, 4.01, 4.5]  # a 1.5 s hold, a 10 ms flash
FORMATS = [("mp4", "libx264"), ("avi", "mpeg4"), ("webm", "libvpx-vp9"), ("mkv", "mjpeg")]


def on_screen(times, sample_times):
    """Index of the frame on screen at each sample time: the last one shown at or before it."""
    return [max(i for i, t in enumerate(times) if t <= s + 1e-6) for s in sample_times]


@pytest.fixture(scope="module")
def cfr_video(tmp_path_factory):
    """12 s at 5 fps, a keyframe every 2 s: 60 frames."""
    return write_video(tmp_path_factory.mktemp("v") / "cfr.mp4", cfr(60, 5), options={"g": "10"})


@pytest.mark.parametrize("fps", [1.0, 2.0, 0.5])
def test_constant_rate_picks_frame_on_screen(cfr_video, fps):
    v = load_video(cfr_video, fps=fps)
    assert v.duration == pytest.approx(12.0)
    assert v.timestamps.dtype == torch.float64
    assert v.timestamps.tolist() == [k / fps for k in range(math.ceil(12 * fps))]
    assert v.frames.dtype == torch.uint8 and v.frames.shape[1:] == (32, 32, 3)
    assert frame_indices(v.frames) == on_screen(cfr(60, 5), v.timestamps.tolist())
    assert v.path == str(cfr_video)


@pytest.mark.parametrize("ext,codec", FORMATS)
def test_variable_rate_uses_presentation_times(tmp_path, ext, codec):
    path = write_video(tmp_path / f"vfr.{ext}", VFR_TIMES, codec=codec)
    v = load_video(path, fps=2.0)
    assert len(v.frames) == math.ceil(v.duration * 2 - 1e-6)
    assert v.timestamps.tolist() == [k / 2 for k in range(len(v.frames))]
    expected = on_screen(VFR_TIMES, v.timestamps.tolist())
    assert frame_indices(v.frames) == expected
    assert expected[:9] == [0, 2, 4, 4, 5, 6, 6, 6, 7]  # the held frame repeats; the flash is never on screen


def test_uniform_spreads_max_frames_over_the_grid(cfr_video):
    v = load_video(cfr_video, max_frames=4)
    assert v.timestamps.tolist() == [0.0, 4.0, 7.0, 11.0]  # grid 0..11, evenly picked, ends included
    assert frame_indices(v.frames) == [0, 20, 35, 55]
    assert len(load_video(cfr_video, max_frames=100).frames) == 12  # never more than the grid


def test_first_takes_the_start(cfr_video):
    v = load_video(cfr_video, max_frames=3, sampling="first")
    assert v.timestamps.tolist() == [0.0, 1.0, 2.0]
    assert frame_indices(v.frames) == [0, 5, 10]


def test_seeking_skips_work_not_frames(tmp_path, monkeypatch):
    path = write_video(tmp_path / "long.mp4", cfr(300, 5), size=(16, 16), options={"g": "10"})  # 60 s
    seeks = []
    original = video._Reader.seek
    monkeypatch.setattr(video._Reader, "seek", lambda self, t: seeks.append(t) or original(self, t))
    sparse = load_video(path, max_frames=6)
    assert len(seeks) >= 4
    assert sparse.timestamps.tolist() == [0.0, 12.0, 24.0, 35.0, 47.0, 59.0]
    assert frame_indices(sparse.frames) == [0, 60, 120, 175, 235, 295]
    seeks.clear()
    assert torch.equal(load_video(path, max_frames=6, seek=False).frames, sparse.frames)
    assert seeks == []


def test_iter_video_chunks_match_load_video(cfr_video):
    chunks = list(iter_video(cfr_video, fps=1.0, chunk_frames=5))
    assert [len(c.frames) for c in chunks] == [5, 5, 2]
    assert all(c.duration == pytest.approx(12.0) for c in chunks)
    whole = load_video(cfr_video)
    assert torch.equal(torch.cat([c.frames for c in chunks]), whole.frames)
    assert torch.equal(torch.cat([c.timestamps for c in chunks]), whole.timestamps)


def test_one_frame_video(tmp_path):
    v = load_video(write_video(tmp_path / "one.mp4", [0.0]), fps=1.0)
    assert v.timestamps.tolist() == [0.0] and frame_indices(v.frames) == [0]


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_image_is_a_one_frame_video(tmp_path, ext):
    v = load_video(write_image(tmp_path / f"still.{ext}", 77, size=(20, 12)), fps=2.0, max_frames=8)
    assert v.frames.shape == (1, 12, 20, 3)
    assert v.timestamps.tolist() == [0.0] and v.duration == 0.0
    assert frame_indices(v.frames) == [77]


def test_rotation_is_applied(tmp_path):
    def corner(i, size):  # white top-left quadrant on black, 32 wide and 16 high as stored
        image = np.zeros((size[1], size[0], 3), np.uint8)
        image[: size[1] // 2, : size[0] // 2] = 255
        return image

    v = load_video(write_video(tmp_path / "rot.mp4", [0.0], size=(32, 16), pattern=corner, rotation=90))
    frame = v.frames[0, ..., 0].float()
    assert frame.shape == (32, 16)  # displayed upright: turned a quarter counter-clockwise
    assert frame[:16, :8].mean() < 30 and frame[16:, :8].mean() > 220  # the corner moved to bottom-left


@pytest.mark.parametrize("size", [(16, 16), (1920, 1080)])
def test_tiny_and_large_frames(tmp_path, size):
    path = write_video(tmp_path / "s.mp4", [0.0, 1.0], size=size, options={"preset": "ultrafast"})
    v = load_video(path)
    assert v.frames.shape == (2, size[1], size[0], 3)
    assert frame_indices(v.frames) == [0, 1]


def test_truncated_file_returns_frames_before_the_cut(tmp_path):
    full = write_video(tmp_path / "full.mp4", cfr(150, 5), options={"g": "10"},
                       container_options={"movflags": "+faststart"})  # 30 s, index at the front
    cut = damaged_copy(full, tmp_path / "cut.mp4", keep=0.5)
    with pytest.warns(UserWarning, match=r"cut\.mp4: video data ends at .* of 30\.00 s"):
        v = load_video(cut)
    assert 3 <= len(v.frames) < 30
    assert frame_indices(v.frames) == [5 * k for k in range(len(v.frames))]


def test_truncated_file_with_seeking_into_the_missing_part(tmp_path):
    full = write_video(tmp_path / "full.mp4", cfr(150, 5), options={"g": "10"},
                       container_options={"movflags": "+faststart"})  # the index still lists the lost frames
    cut = damaged_copy(full, tmp_path / "cut.mp4", keep=0.5)
    for seek in (True, False):
        with pytest.warns(UserWarning, match="cut.mp4: video data ends at"):
            v = load_video(cut, max_frames=7, seek=seek)  # samples at 0, 5, 10, 15, ... s
        assert v.timestamps.tolist() == [0.0, 5.0] and frame_indices(v.frames) == [0, 25]


def test_seek_into_nothing_reads_on_sequentially(cfr_video, monkeypatch):
    original = video._Reader.seek
    monkeypatch.setattr(video._Reader, "seek", lambda self, t: iter(()) if t >= 6 else original(self, t))
    v = load_video(cfr_video, max_frames=3)  # samples at 0, 6 and 11 s; seeking to 6 s finds no data
    assert frame_indices(v.frames) == [0, 30, 55]


def test_truncated_file_without_index_fails_clearly(tmp_path):
    full = write_video(tmp_path / "full.mp4", cfr(20, 5))  # mp4 index written at the end
    with pytest.raises(VideoDecodeError, match="cut.mp4: not a readable video"):
        load_video(damaged_copy(full, tmp_path / "cut.mp4", keep=0.5))


@pytest.mark.parametrize("ext,codec", FORMATS)
@pytest.mark.parametrize("span", [(0.0, 0.05), (0.4, 0.6), (0.9, 1.0), (0.02, 0.98)])
def test_corrupted_bytes_decode_or_fail_clearly(tmp_path, ext, codec, span):
    full = write_video(tmp_path / f"full.{ext}", cfr(50, 5), codec=codec)
    damaged = damaged_copy(full, tmp_path / f"damaged.{ext}", overwrite=span)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            v = load_video(damaged)
        except VideoDecodeError as e:
            assert str(damaged) in str(e)
            return
    assert v.frames.dtype == torch.uint8 and v.frames.shape[1:] == (32, 32, 3) and len(v.frames) >= 1


def test_no_decodable_frames(tmp_path):
    full = write_video(tmp_path / "full.mp4", [0.0, 0.5, 1.0], container_options={"movflags": "+faststart"})
    data = bytearray(full.read_bytes())
    payload = data.find(b"mdat") + 4
    data[payload:] = bytes(len(data) - payload)  # valid index, zeroed frames
    (tmp_path / "blank.mp4").write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(VideoDecodeError, match="blank.mp4: no decodable video frames"):
            load_video(tmp_path / "blank.mp4")


def test_unknown_codec(tmp_path):
    data = write_video(tmp_path / "h264.mp4", [0.0, 0.5, 1.0]).read_bytes()
    assert b"avc1" in data
    (tmp_path / "odd.mp4").write_bytes(data.replace(b"avc1", b"zzzz"))  # a sample entry no decoder knows
    with pytest.raises(VideoDecodeError, match=r"odd.mp4: no decoder for its video codec \(found: video\)"):
        load_video(tmp_path / "odd.mp4")


def test_unreadable_inputs(tmp_path):
    with pytest.raises(VideoDecodeError, match="missing.mp4: no such file"):
        load_video(tmp_path / "missing.mp4")
    with pytest.raises(VideoDecodeError, match="is a directory"):
        load_video(tmp_path)
    (tmp_path / "notes.mp4").write_text("not a video, just text\n" * 20)
    with pytest.raises(VideoDecodeError, match="notes.mp4: not a readable video"):
        load_video(tmp_path / "notes.mp4")
    with pytest.raises(VideoDecodeError, match=r"song.m4a: has no video stream \(found: audio\)"):
        load_video(write_audio(tmp_path / "song.m4a"))


@pytest.mark.parametrize("max_frames,sampling", [(4, "uniform"), (3, "first"), (100, "uniform")])
def test_decoded_frames_are_thinned_as_the_file_would_be(cfr_video, max_frames, sampling):
    whole = load_video(cfr_video)
    from_file = load_video(cfr_video, max_frames=max_frames, sampling=sampling)
    for video in (whole, whole.frames):  # a decoded Video, or its frames taken as sampled at 1 fps
        chunks = list(frame_chunks(video, max_frames=max_frames, sampling=sampling, chunk_frames=2))
        assert torch.cat([c.timestamps for c in chunks]).tolist() == from_file.timestamps.tolist()
        assert torch.equal(torch.cat([c.frames for c in chunks]), from_file.frames)
        if max_frames >= len(whole.frames):  # nothing to thin: the chunks are views, not a copy of the video
            assert chunks[0].frames.data_ptr() == whole.frames.data_ptr()


@pytest.mark.parametrize("kwargs", [dict(fps=0), dict(fps=-1.0), dict(fps=float("nan")), dict(fps="1"),
                                    dict(max_frames=0), dict(max_frames=2.5), dict(sampling="random")])
def test_bad_arguments(cfr_video, kwargs):
    with pytest.raises(ConfigError):
        load_video(cfr_video, **kwargs)
    with pytest.raises(ConfigError):
        iter_video(cfr_video, **kwargs)
    with pytest.raises(ConfigError):
        frame_chunks(torch.zeros(4, 8, 8, 3, dtype=torch.uint8), **kwargs)


@pytest.mark.parametrize("chunk_frames", [0, 2.5])
def test_bad_chunk_size(cfr_video, chunk_frames):
    with pytest.raises(ConfigError, match="chunk_frames"):
        iter_video(cfr_video, chunk_frames=chunk_frames)
    with pytest.raises(ConfigError, match="chunk_frames"):
        frame_chunks(torch.zeros(4, 8, 8, 3, dtype=torch.uint8), chunk_frames=chunk_frames)


def test_frames_made_in_memory_need_no_pyav():
    """Synthetic data, training, sweeps and the command line import without PyAV: only files are decoded with it."""
    import subprocess
    import sys

    check = """
import sys
class NoPyAV:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "av":
            raise ImportError("no PyAV here")
sys.meta_path.insert(0, NoPyAV())
from timeviper import cli
from timeviper.data import SynthDataset
from timeviper.eval import synth_sweep
from timeviper.model import frame_chunks
from timeviper.train import trainer
import torch
(chunk,) = frame_chunks(torch.zeros(3, 8, 8, 3, dtype=torch.uint8))
assert chunk.timestamps.tolist() == [0.0, 1.0, 2.0]
try:
    list(frame_chunks("video.mp4"))
except ImportError as e:
    print(e)
"""
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no PyAV here"  # a file, and only a file, asks for it
