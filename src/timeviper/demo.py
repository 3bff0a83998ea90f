"""`timeviper demo`: render a synthetic test video, then show the model's answers next to the truth.

One video of the test split, a couple of minutes long, asked the three tasks: a multiple-choice question about its
needle (a scene of a few seconds), a grounding query and a caption (each in one pass, and shot by shot), each with the
model's answer, the truth, a score and the seconds it took. Uses rich for the layout when it is installed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

SEED = 1_100_002  # a test-split video whose needle scene (8 s) is asked about
FRAMES = 150


def run_demo(args) -> None:
    import torch

    from timeviper.eval.metrics import caption_event_f1, caption_scene_f1, temporal_iou
    from timeviper.eval.runner import predict
    from timeviper.model import TimeViper
    from timeviper.shots import ShotConfig
    from timeviper.synth import TASKS, make_item, write_mp4

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = TimeViper.from_pretrained(args.model, dtype=dtype, device=args.device)
    size = model.vision.config.image_size
    size = size if size % 2 == 0 else 64  # an MP4 needs an even side
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="timeviper-demo-"))
    made = {task: make_item(task, SEED, FRAMES, size, kind="needle" if task == "mcq" else None) for task in TASKS}
    video = write_mp4(made["mcq"][0], out / "video.mp4")
    items = {task: item for task, (_, item) in made.items()}
    pred = {task: predict(model, str(video), item) for task, item in items.items()}
    by_shots = {task: predict(model, str(video), items[task], shots=ShotConfig()) for task in ("tvg", "caption")}

    mcq, tvg, cap = items["mcq"], items["tvg"], items["caption"]
    letter = pred["mcq"]["answer"]
    truth_span = (tvg["start"], tvg["end"])

    def grounded(record: dict) -> list[tuple[str, str]]:
        span = (record["start"], record["end"])
        found = span[0] is not None
        return [("model", f"{span[0]:.1f} - {span[1]:.1f} s" if found else f"(no time span in {record['raw']!r})"),
                ("truth", f"{truth_span[0]:.1f} - {truth_span[1]:.1f} s"),
                ("IoU", f"{temporal_iou(span if found else None, truth_span):.2f}"),
                ("time", f"{record['seconds']:.2f} s")]

    shot_a, shot_b, belief = by_shots["tvg"]["shots"][by_shots["tvg"]["shot"]]
    sections = [
        ("Multiple choice", [
            ("question", mcq["question"]),
            ("options", "   ".join(f"({k}) {o}" for k, o in zip("ABCD", mcq["options"]))),
            ("model", f"{letter}  {'right' if letter == mcq['answer'] else 'wrong'}" if letter
             else f"(no option letter in {pred['mcq']['raw']!r})"),
            ("truth", f"{mcq['answer']} ({mcq['options'][ord(mcq['answer']) - ord('A')]})"),
            ("time", f"{pred['mcq']['seconds']:.2f} s"),
        ]),
        ("Temporal grounding", [("query", tvg["query"]), *grounded(pred["tvg"])]),
        ("Temporal grounding, shot by shot (ground --shots)", [
            ("shot", f"{by_shots['tvg']['shot'] + 1} of {len(by_shots['tvg']['shots'])} ({shot_a:.0f}-{shot_b:.0f} s), "
                     f"where the model most believes it happens ({belief:.2f})"), *grounded(by_shots["tvg"])]),
        ("Caption", [
            ("model", pred["caption"]["caption"] or "(empty)"),
            ("truth", cap["caption"]),
            ("scene F1", f"{caption_scene_f1(pred['caption']['caption'], cap['caption']):.2f}   event F1 "
                         f"{caption_event_f1(pred['caption']['caption'], cap['caption']):.2f}"),
            ("time", f"{pred['caption']['seconds']:.2f} s"),
        ]),
        ("Caption, shot by shot (caption --shots)", [
            ("model", by_shots["caption"]["caption"] or "(empty)"),
            ("shots", "  ".join(f"{a:.0f}-{b:.0f} s" for a, b in by_shots["caption"]["shots"])),
            ("scene F1", f"{caption_scene_f1(by_shots['caption']['caption'], cap['caption']):.2f}   event F1 "
                         f"{caption_event_f1(by_shots['caption']['caption'], cap['caption']):.2f}"),
            ("time", f"{by_shots['caption']['seconds']:.2f} s"),
        ]),
    ]
    title = (f"TimeViper demo: {video} ({FRAMES} s at 1 fps, {size}x{size} px, synthetic test seed {SEED}; "
             f"{pred['mcq']['frames']} frames read per answer)")
    show(title, sections)


def show(title: str, sections: list[tuple[str, list[tuple[str, str]]]]) -> None:
    """Print titled sections of (label, value) rows: rich panels if rich is installed, else plain text."""
    try:
        from rich.console import Console
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        print(title)
        for name, rows in sections:
            print(f"\n{name}")
            for label, value in rows:
                print(f"  {label + ':':<10} {value}")
        return
    console = Console()
    console.print(Text(title, style="bold"))
    for name, rows in sections:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for label, value in rows:
            table.add_row(label, Text(value))  # Text: model output is not rich markup
        console.print(Panel(table, title=name, title_align="left"))
