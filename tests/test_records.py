"""Record parsing, validation and skip accounting; also the fakes other training tests share.

The fake media files hold their duration in seconds as text; the fake loader turns one into frames
whose pixels are the frame's second, so a test can tell which frames were chosen.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from timeviper.data import IGNORE_INDEX, VISION_SLOT_ID, ConversationDataset, RecordFile, Sample, Skipped, SkipStats
from timeviper.errors import TimeViperError, VideoDecodeError

END_OF_TURN = 63


@dataclass
class Encoded:
    ids: list
    labels: list
    vision_at: int
    instruction_end: int


def fake_tokenize(conversations):
    """[system][vision goes here][turns...]: a token per character, an end token per turn; gpt turns learnt."""
    ids, labels, instruction_end = [1], [IGNORE_INDEX], 0
    for turn in conversations:
        text = turn["value"].replace("<video>", "").replace("<image>", "")
        tokens = [3 + ord(c) % 50 for c in text] + [END_OF_TURN]
        ids += tokens
        labels += tokens if turn["from"] == "gpt" else [IGNORE_INDEX] * len(tokens)
        instruction_end = instruction_end or len(ids)
    return Encoded(ids, labels, 1, instruction_end)


@dataclass
class FakeVideo:
    frames: torch.Tensor
    timestamps: torch.Tensor


def fake_load_video(path, fps=1.0, max_frames=None, sampling="uniform"):
    text = Path(path).read_text()
    if text == "corrupt":
        raise VideoDecodeError(f"{path}: cannot decode")
    times = torch.arange(0, float(text), 1 / fps)
    if max_frames is not None and len(times) > max_frames:
        times = times[torch.linspace(0, len(times) - 1, max_frames).round().long()]
    frames = times.to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 2, 2, 3).contiguous()
    return FakeVideo(frames, times)


def write_media(root: Path, name: str, content: str) -> str:
    (root / name).write_text(content)
    return name


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def chat(question="<video>\nWhat?", answer="Yes."):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def make_dataset(path, root, *, max_tokens=4096, max_frames=8, tokenize=fake_tokenize, name="ds"):
    return ConversationDataset(
        name,
        path,
        root,
        tokenize=tokenize,
        tokens_per_frame=4,
        max_tokens=max_tokens,
        max_frames=max_frames,
        fps=1.0,
        load_video=fake_load_video,
    )


def test_records_become_samples_or_skips_with_a_reason(tmp_path):
    video = write_media(tmp_path, "v.mp4", "5")
    image = write_media(tmp_path, "i.jpg", "1")
    bad = write_media(tmp_path, "bad.mp4", "corrupt")
    records = [
        {"id": "video", "video": video, "conversations": chat()},
        {"id": "image", "image": image, "conversations": chat("<image> What?")},
        {"id": "text", "conversations": chat("Hi?", "Hello.")},
        "{not json",
        "",
        {"id": "x", "video": video},
        {"id": "x", "video": video, "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
        {"id": "x", "conversations": [{"from": "system", "value": "a"}, {"from": "human", "value": "b"}]},
        {"id": "x", "video": video, "conversations": [{"from": "human", "value": "only a question"}]},
        {"id": "x", "video": "missing.mp4", "conversations": chat()},
        {"id": "x", "video": bad, "conversations": chat()},
        {"id": "x", "image": image, "start": 1, "end": 2, "conversations": chat()},
        {"id": "x", "video": video, "image": image, "conversations": chat()},
        {"id": "x", "video": video, "conversations": chat(answer="long " * 100)},
        [1, 2],
    ]
    dataset = make_dataset(write_jsonl(tmp_path / "d.jsonl", records), tmp_path, max_tokens=200)
    assert len(dataset) == len(records) - 1  # the blank line is not a record
    items = [dataset[i] for i in range(len(dataset))]
    assert [s.id for s in items[:3]] == ["video", "image", "text"]
    assert [getattr(s, "reason", None) for s in items[3:]] == [
        "bad_json",
        "bad_fields",
        "bad_roles",
        "bad_roles",
        "no_assistant_turn",
        "media_missing",
        "media_decode",
        "bad_fields",
        "bad_fields",
        "too_long",
        "bad_fields",
    ]
    assert "d.jsonl#3" in items[3].detail

    video_sample, image_sample, text_sample = items[:3]
    text = fake_tokenize(chat())
    assert video_sample.frames.shape == (5, 2, 2, 3) and video_sample.vision_span == (1, 21)
    assert video_sample.input_ids.tolist() == text.ids[:1] + [VISION_SLOT_ID] * 20 + text.ids[1:]
    assert video_sample.labels.tolist() == text.labels[:1] + [IGNORE_INDEX] * 20 + text.labels[1:]
    assert video_sample.instruction_end == text.instruction_end + 20
    assert image_sample.frames.shape[0] == 1 and image_sample.vision_span == (1, 5)
    assert text_sample.frames is None and text_sample.vision_span == (1, 1)
    assert text_sample.labels.tolist() == fake_tokenize(chat("Hi?", "Hello.")).labels

    stats = SkipStats(["d"])
    for item in items:
        stats.add(0, item)
    summary = stats.summary()
    assert summary["samples"] == 14 and summary["skipped"] == 11
    assert summary["skipped_by_reason"]["bad_fields"] == 4 and summary["skipped_by_reason"]["too_long"] == 1


def test_json_list_reads_like_jsonl(tmp_path):
    records = [{"id": str(i), "conversations": chat(f"q{i}", f"é{i}")} for i in range(3)] + [{"id": "bad"}]
    (tmp_path / "d.json").write_text(json.dumps(records))
    write_jsonl(tmp_path / "d.jsonl", records)
    as_list, as_lines = RecordFile(tmp_path / "d.json"), RecordFile(tmp_path / "d.jsonl")
    assert len(as_list) == len(as_lines) == 4
    assert [json.loads(as_list.raw(i)) for i in range(4)] == [json.loads(as_lines.raw(i)) for i in range(4)] == records
    (tmp_path / "broken.json").write_text('{"id": 1}')
    with pytest.raises(TimeViperError, match="JSON list"):
        RecordFile(tmp_path / "broken.json")


def test_long_videos_are_spread_over_max_frames_and_clips_cut(tmp_path):
    video = write_media(tmp_path, "v.mp4", "100")
    records = [
        {"video": video, "conversations": chat()},
        {"video": video, "start": 30, "end": 40.5, "conversations": chat()},
        {"video": video, "start": 10, "end": 90, "conversations": chat()},
        {"video": video, "start": 200, "end": 300, "conversations": chat()},
    ]
    dataset = make_dataset(write_jsonl(tmp_path / "d.jsonl", records), tmp_path, max_frames=8)
    whole, short_clip, long_clip, outside = (dataset[i] for i in range(4))
    seconds = lambda s: s.frames[:, 0, 0, 0].tolist()  # noqa: E731
    assert seconds(whole) == [0, 14, 28, 42, 57, 71, 85, 99]
    assert seconds(short_clip) == [30, 31, 33, 34, 36, 37, 39, 40]  # 11 frames in [30, 40.5]
    assert seconds(long_clip) == [10, 21, 33, 44, 56, 67, 79, 90]
    # frame times count from the start of the clip: its first frame is at 0 s
    assert whole.frame_times.tolist() == seconds(whole)
    assert short_clip.frame_times.tolist() == [s - 30 for s in seconds(short_clip)]
    assert isinstance(outside, Skipped) and outside.reason == "media_decode"
    assert whole.id == "d.jsonl#0"


def test_evidence_is_read_in_the_time_of_the_frames(tmp_path):
    video, image = write_media(tmp_path, "v.mp4", "100"), write_media(tmp_path, "i.jpg", "1")
    records = [
        {"video": video, "evidence": [[12, 15.5], [70, 71]], "conversations": chat()},
        {"video": video, "start": 10, "end": 90, "evidence": [[12, 15.5]], "conversations": chat()},
        {"video": video, "conversations": chat()},
        {"video": video, "evidence": [[15, 12]], "conversations": chat()},
        {"video": video, "evidence": [12, 15], "conversations": chat()},
        {"video": video, "evidence": "12-15", "conversations": chat()},
        {"image": image, "evidence": [[0, 1]], "conversations": chat("<image> What?")},
    ]
    dataset = make_dataset(write_jsonl(tmp_path / "d.jsonl", records), tmp_path)
    whole, clip, none, *bad = (dataset[i] for i in range(len(records)))
    assert whole.evidence == ((12.0, 15.5), (70.0, 71.0)) and none.evidence == ()
    assert clip.evidence == ((2.0, 5.5),)  # the clip's frame times start at 0
    assert [b.reason for b in bad] == ["bad_fields"] * 4 and "bad evidence" in bad[0].detail


def test_samples_without_loss_tokens_are_skipped_and_bad_tokenizers_fail(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"conversations": chat()}])

    def no_labels(conversations):
        text = fake_tokenize(conversations)
        return Encoded(text.ids, [IGNORE_INDEX] * len(text.labels), text.vision_at, text.instruction_end)

    assert make_dataset(path, tmp_path, tokenize=no_labels)[0].reason == "no_loss_tokens"
    for wrong in (Encoded([1, 2], [1], 0, 0), Encoded([1, 2], [1, 2], 2, 1), Encoded([1, 2], [1, 2], 0, 3)):
        with pytest.raises(TimeViperError, match="tokenize returned 2 ids, .* which do not fit together"):
            make_dataset(path, tmp_path, tokenize=lambda conversations, w=wrong: w)[0]


def test_skip_check_waits_for_enough_samples_then_names_the_dataset():
    stats = SkipStats(["good", "noisy"])
    sample = Sample("s", torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long), (0, 0), 1, None)
    for i in range(20):
        stats.add(0, sample)
        stats.add(1, Skipped("media_missing", "gone") if i % 4 == 0 else sample)
    stats.check(max_fraction=0.05, min_samples=21)  # too few samples to judge yet
    stats.check(max_fraction=0.25, min_samples=20)  # 5 of 20 is not more than a quarter
    with pytest.raises(TimeViperError, match=r"dataset 'noisy': 5 of 20 samples skipped \(media_missing: 5\)"):
        stats.check(max_fraction=0.05, min_samples=20)
