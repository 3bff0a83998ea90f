"""Drawing a VideoSpec's frames with numpy, and writing them to MP4 with PyAV.

Every frame is a pure function of (spec, t, size), so any chunk of any video can be drawn on its
own, and a chunk equals the same frames cut from a larger render. Geometry is in fractions of the
frame's side, so a video looks the same at 64 px and at 384 px.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from itertools import chain
from pathlib import Path

import numpy as np

from timeviper.errors import ConfigError
from timeviper.synth.world import FPS, MIN_SIZE, OBJECT_SIZE, VideoSpec, background_parts

OBJECT_RGB = {
    "red": (230, 25, 25), "orange": (255, 140, 0), "yellow": (255, 230, 0), "green": (30, 190, 40),
    "blue": (30, 80, 255), "purple": (150, 40, 210), "white": (255, 255, 255), "black": (0, 0, 0),
}
BACKGROUND_RGB = {"gray": (128, 128, 128), "teal": (0, 128, 128), "brown": (139, 90, 43), "pink": (240, 160, 190)}
SHADE = 0.7  # the second tone of a pattern is the background colour darkened by this factor
CHUNK = 256  # frames drawn at a time when streaming


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    angles = np.pi * np.arange(2 * points) / points - np.pi / 2
    radii = np.where(np.arange(2 * points) % 2, inner, 1.0)
    return list(zip(radii * np.cos(angles), radii * np.sin(angles) + 0.1))


def _inside_polygon(x, y, vertices) -> np.ndarray:
    """Even-odd rule, vectorised over the points (x, y)."""
    inside = np.zeros(x.shape, bool)
    for (x1, y1), (x2, y2) in zip(vertices, vertices[1:] + vertices[:1]):
        crosses = (y1 > y) != (y2 > y)
        inside ^= crosses & (x < x1 + (y - y1) * (x2 - x1) / ((y2 - y1) or 1.0))
    return inside


# Each shape tests points of the square [-1, 1]^2 (y grows downwards).
SHAPE_TESTS = {
    "circle": lambda x, y: x**2 + y**2 <= 0.95**2,
    "square": lambda x, y: np.maximum(abs(x), abs(y)) <= 0.9,
    "triangle": lambda x, y: _inside_polygon(x, y, [(0.0, -0.95), (0.95, 0.8), (-0.95, 0.8)]),
    "star": lambda x, y: _inside_polygon(x, y, _star()),
    "diamond": lambda x, y: abs(x) + abs(y) <= 1.0,
    "cross": lambda x, y: ((abs(x) <= 0.25) | (abs(y) <= 0.25)) & (np.maximum(abs(x), abs(y)) <= 0.95),
}


@lru_cache(maxsize=None)
def _background(name: str, size: int) -> np.ndarray:
    """The [size, size, 3] image of a background: plain, or a pattern of its colour and a shade."""
    pattern, color = background_parts(name)
    u = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(u, u)
    dark = {
        "plain": np.zeros_like(x, bool),
        "striped": np.floor(x * 8) % 2 == 1,
        "checkered": (np.floor(x * 4) + np.floor(y * 4)) % 2 == 1,
        "dotted": np.hypot(x * 6 % 1 - 0.5, y * 6 % 1 - 0.5) < 0.3,
    }[pattern]
    rgb = np.array(BACKGROUND_RGB[color], np.float32)
    image = np.where(dark[..., None], rgb * SHADE, rgb).round().astype(np.uint8)
    image.flags.writeable = False
    return image


@lru_cache(maxsize=None)
def _sprite(obj: str, size: int, supersample: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(keep, paint) for an anti-aliased object: a pixel becomes pixel * keep + paint."""
    color, shape = obj.split()
    side = round(OBJECT_SIZE * size) * supersample
    u = (np.arange(side) + 0.5) / side * 2 - 1
    x, y = np.meshgrid(u, u)
    alpha = SHAPE_TESTS[shape](x, y).reshape(side // supersample, supersample, -1, supersample).mean((1, 3))
    alpha = alpha[..., None].astype(np.float32)
    return 1 - alpha, alpha * np.array(OBJECT_RGB[color], np.float32) + 0.5


def _draw(frame: np.ndarray, obj: str, center: tuple[float, float]) -> None:
    size = frame.shape[0]
    keep, paint = _sprite(obj, size)
    side = keep.shape[0]
    x, y = (min(max(round(c * size - side / 2), 0), size - side) for c in center)
    region = frame[y : y + side, x : x + side]
    region[...] = region * keep + paint


def _frame_size(spec: VideoSpec, size: int | None) -> int:
    size = spec.size if size is None else size
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise ConfigError(f"size must be an integer >= {MIN_SIZE} pixels, got {size!r}")
    return size


def render_frames(spec: VideoSpec, start: int = 0, stop: int | None = None, size: int | None = None) -> np.ndarray:
    """Frames [start, stop) of the video as uint8 [stop - start, size, size, 3] RGB."""
    size = _frame_size(spec, size)
    stop = spec.frames if stop is None else stop
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= spec.frames):
        raise ConfigError(f"frames [{start}, {stop}) are not within the video's [0, {spec.frames})")
    out = np.empty((stop - start, size, size, 3), np.uint8)
    for scene in spec.scenes:
        if scene.end > start and scene.start < stop:
            out[max(scene.start, start) - start : min(scene.end, stop) - start] = _background(scene.background, size)
        for actor in scene.actors:
            for t in range(max(actor.start, start), min(actor.end, stop)):
                _draw(out[t - start], actor.obj, actor.center(t))
    return out


def stream_frames(spec: VideoSpec, size: int | None = None, chunk: int = CHUNK):
    """The whole video as successive chunks of at most `chunk` frames, so it never sits in memory."""
    for start in range(0, spec.frames, chunk):
        yield render_frames(spec, start, min(start + chunk, spec.frames), size)


def write_mp4(spec: VideoSpec, path, size: int | None = None) -> Path:
    """Write the video to `path` at 1 fps (H.264 yuv420p where available; frame t at t seconds), chunk by chunk."""
    size = _frame_size(spec, size)
    if size % 2:
        raise ConfigError(f"an MP4 (yuv420p) needs an even frame size, got {size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import av  # only writing files needs PyAV

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    options = {"crf": "18", "preset": "ultrafast"} if codec == "libx264" else {}
    time_base = Fraction(1, FPS)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=FPS, options=options)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = time_base
        for t, rgb in enumerate(chain.from_iterable(stream_frames(spec, size))):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = t, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
