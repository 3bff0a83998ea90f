"""CPU benchmark of `timeviper.video`: sampling a long 720p H.264 video at 1 fps, streamed or sparse.

The source video is synthetic and cached in --workdir: 1280x720, 10 fps, H.264 (libx264 preset ultrafast,
crf 28, a keyframe every 5 s), a slowly panning smooth texture with film-grain noise (about 0.8 Mbit/s) and
a per-second grey patch in the corner. Each scenario runs in a fresh process so its peak RSS is its own.

    python benchmarks/video_decode.py                # the 1-hour video (encoding it takes a few minutes)
    python benchmarks/video_decode.py --minutes 5    # quick mode
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import time
from pathlib import Path

import av
import numpy as np

WIDTH, HEIGHT, SOURCE_FPS, KEYFRAME_SECONDS = 1280, 720, 10, 5
X264 = {"preset": "ultrafast", "crf": "28", "g": str(SOURCE_FPS * KEYFRAME_SECONDS)}

# name: (load_video / iter_video keyword arguments, streamed in chunks?)
SCENARIOS = {
    "stream_1fps": (dict(fps=1.0), True),
    "uniform_256_seek": (dict(fps=1.0, max_frames=256, seek=True), False),
    "uniform_256_no_seek": (dict(fps=1.0, max_frames=256, seek=False), False),
    "uniform_32_seek": (dict(fps=1.0, max_frames=32, seek=True), False),
}


def smooth_noise(rng, height: int, width: int, cells: tuple[int, int]) -> np.ndarray:
    """uint8 [height, width]: random values on a coarse grid, bilinearly interpolated."""
    grid = rng.integers(0, 256, cells).astype(np.float32)
    ys, xs = np.linspace(0, cells[0] - 1, height), np.linspace(0, cells[1] - 1, width)
    y0, x0 = ys.astype(int).clip(0, cells[0] - 2), xs.astype(int).clip(0, cells[1] - 2)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.uint8)


def make_video(path: Path, minutes: float):
    """Encode the synthetic source video (yuv420p planes are built directly, no colour conversion)."""
    rng = np.random.default_rng(0)
    ch, cw = 2 * HEIGHT, 2 * WIDTH  # canvas the camera pans over
    luma = smooth_noise(rng, ch, cw, (40, 70)).astype(np.int16) * 3 // 4 + smooth_noise(rng, ch, cw, (360, 640)) // 4
    cb, cr = (smooth_noise(rng, ch // 2, cw // 2, (10, 18)) for _ in range(2))
    grain = rng.integers(-6, 7, (8, HEIGHT, WIDTH)).astype(np.int16)
    plane = np.empty((HEIGHT * 3 // 2, WIDTH), np.uint8)  # Y, then U and V as quarter planes
    u = plane[HEIGHT:HEIGHT * 5 // 4].reshape(HEIGHT // 2, WIDTH // 2)
    v = plane[HEIGHT * 5 // 4:].reshape(HEIGHT // 2, WIDTH // 2)
    count = round(minutes * 60 * SOURCE_FPS)
    partial = path.with_suffix(".partial.mp4")
    start = time.perf_counter()
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=SOURCE_FPS)
        stream.width, stream.height, stream.pix_fmt, stream.options = WIDTH, HEIGHT, "yuv420p", X264
        for i in range(count):
            t = i / SOURCE_FPS
            oy = int((np.sin(t / 37) * 0.5 + 0.5) * (ch - HEIGHT)) // 2 * 2
            ox = int((np.sin(t / 23 + 1) * 0.5 + 0.5) * (cw - WIDTH)) // 2 * 2
            plane[:HEIGHT] = (luma[oy:oy + HEIGHT, ox:ox + WIDTH] + grain[i % 8]).clip(0, 255)
            u[:] = cb[oy // 2:oy // 2 + HEIGHT // 2, ox // 2:ox // 2 + WIDTH // 2]
            v[:] = cr[oy // 2:oy // 2 + HEIGHT // 2, ox // 2:ox // 2 + WIDTH // 2]
            plane[:64, :64] = int(t) * 37 % 256
            frame = av.VideoFrame.from_ndarray(plane, format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
            if i % (SOURCE_FPS * 600) == 0:
                print(f"  encoded {t / 60:.0f} of {minutes:g} min", flush=True)
        container.mux(stream.encode())
    partial.rename(path)
    print(f"  encoded {count} frames in {time.perf_counter() - start:.0f} s", flush=True)


def run_scenario(path: str, kwargs: dict, streamed: bool) -> dict:
    """Runs in a fresh process: decode, then report time, peak RSS and a hash of the frames (loaded only)."""
    from timeviper.video import iter_video, load_video

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if streamed:
        frames, digest = sum(len(chunk.frames) for chunk in iter_video(path, **kwargs)), None
        seconds = time.perf_counter() - start
    else:
        video = load_video(path, **kwargs)
        seconds = time.perf_counter() - start
        frames, digest = len(video.frames), hashlib.sha1(video.frames.numpy()).hexdigest()
    return dict(frames=frames, seconds=round(seconds, 2), frames_per_s=round(frames / seconds, 1),
                peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                rss_after_imports_mb=round(rss_before), frames_sha1=digest)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the source video")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"), help="where the source video is cached")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/video_decode.json"))
    args = parser.parse_args()

    path = args.workdir / f"timeviper_bench_{args.minutes:g}min_{WIDTH}x{HEIGHT}_{SOURCE_FPS}fps.mp4"
    if not path.exists():
        print(f"encoding {path}", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        make_video(path, args.minutes)

    results = {}
    spawn = multiprocessing.get_context("spawn")
    for name, (kwargs, streamed) in SCENARIOS.items():
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            results[name] = dict(kwargs, streamed=streamed, **pool.submit(run_scenario, str(path), kwargs,
                                                                          streamed).result())
        print(f"  {name}: {results[name]['seconds']} s", flush=True)
    seek, no_seek = results["uniform_256_seek"], results["uniform_256_no_seek"]
    assert seek["frames_sha1"] == no_seek["frames_sha1"], "seeking changed which frames were returned"

    header = (f"{'scenario':<22}{'frames':>8}{'seconds':>9}{'frames/s':>10}{'video s/s':>11}"
              f"{'peak RSS MB':>13}{'after imports':>15}")
    print(f"\n{path.name} ({path.stat().st_size / 2**20:.0f} MiB), {os.cpu_count()} CPU cores\n{header}")
    for name, r in results.items():
        print(f"{name:<22}{r['frames']:>8}{r['seconds']:>9.2f}{r['frames_per_s']:>10.1f}"
              f"{args.minutes * 60 / r['seconds']:>11.0f}{r['peak_rss_mb']:>13}{r['rss_after_imports_mb']:>15}")

    report = dict(
        video=dict(path=str(path), minutes=args.minutes, width=WIDTH, height=HEIGHT, fps=SOURCE_FPS,
                   codec="h264", x264=X264, bytes=path.stat().st_size),
        machine=dict(cpu_count=os.cpu_count(), processor=platform.processor(), python=platform.python_version(),
                     pyav=av.__version__),
        results=results,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
