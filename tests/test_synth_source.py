"""The synthetic world as training data: samples, prompts, answers, frames, and the config entries."""

from functools import partial

import numpy as np
import pytest
import torch
from test_records import fake_tokenize

from timeviper.data import IGNORE_INDEX, VISION_SLOT_ID, Sample, Skipped, SynthDataset, build_train_data
from timeviper.data.synth_source import answer_text, conversation, sample_frames, sample_video, task_prompt
from timeviper.errors import ConfigError
from timeviper.eval.metrics import caption_scene_f1, parse_option_letter, parse_time_span
from timeviper.prompts import NO_EVENT, TextTokenizer, encode_conversation, encode_prompt
from timeviper.sampling import kept_samples
from timeviper.synth import make_item, make_video, parse_caption, render_frames, write_mp4
from timeviper.synth.tokenizer import train_tokenizer
from timeviper.synth.world import background_parts
from timeviper.train.config import SynthConfig, config_from_dict
from timeviper.video import load_video

TOKENS_PER_FRAME = 4


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer(train_tokenizer(vocab_size=1024), "timeviper")


def dataset(tokenizer, task, *, kind=None, frames=(8, 40), max_tokens=4096, max_frames=16, seeds=(100, 120),
            **synth):
    spec = SynthConfig(task, seeds, list(frames), size=32, kind=kind, **synth)
    return SynthDataset(f"synth_{task}", spec, tokenize=partial(encode_conversation, tokenizer),
                        tokens_per_frame=TOKENS_PER_FRAME, max_tokens=max_tokens, max_frames=max_frames)


def same(a: Sample, b: Sample) -> bool:
    return (a.id == b.id and torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
            and torch.equal(a.frames, b.frames) and (a.vision_span, a.instruction_end) == (b.vision_span, b.instruction_end))


def test_each_index_is_one_seed_deterministically(tokenizer):
    ds = dataset(tokenizer, "mcq")
    assert len(ds) == 20
    a, b = ds[3], dataset(tokenizer, "mcq")[3]
    assert isinstance(a, Sample) and same(a, b) and a.id.startswith("mcq-103-")
    assert ds[4].id.startswith("mcq-104-") and not same(ds[4], a)
    with pytest.raises(IndexError):
        ds[20]


@pytest.mark.parametrize("task", ["mcq", "tvg", "caption"])
def test_the_sample_is_the_inference_prompt_then_the_parsable_answer(tokenizer, task):
    ds = dataset(tokenizer, task)
    for index in range(4):
        s = ds[index]
        _, item = ds.item(index)
        prompt = encode_prompt(tokenizer, task_prompt(item))
        n = s.frames.shape[0] * TOKENS_PER_FRAME
        at = prompt.vision_at
        assert s.vision_span == (at, at + n) and s.instruction_end == len(prompt.ids) + n
        assert s.input_ids[: s.instruction_end].tolist() == prompt.ids[:at] + [VISION_SLOT_ID] * n + prompt.ids[at:]
        learnt = s.labels[s.labels != IGNORE_INDEX].tolist()
        assert learnt == s.input_ids[s.instruction_end :].tolist()
        answer = tokenizer.decode(learnt)  # the end-of-turn token is special: decoding drops it
        if task == "mcq":
            assert parse_option_letter(answer) == item["answer"]
        elif task == "tvg":
            assert parse_time_span(answer) == (item["start"], item["end"])
        else:
            assert answer == item["caption"] and caption_scene_f1(answer, item["caption"]) == 1.0


def test_conversation_and_prompts():
    _, item = make_item("tvg", 5, 60)
    human, gpt = conversation(item)
    assert human == {"from": "human", "value": "<video>\n" + task_prompt(item)} and item["query"] in human["value"]
    assert gpt["value"] == f"{item['start']:.1f} - {item['end']:.1f} seconds"
    with pytest.raises(ConfigError, match="unknown task 'qa'"):
        task_prompt({"id": "x", "task": "qa"})


def test_frames_are_those_load_video_decodes(tmp_path):
    spec = make_video(7, 50, size=32)
    path = write_mp4(spec, tmp_path / "v.mp4")
    for sampling in ("uniform", "first"):
        decoded = load_video(path, max_frames=12, sampling=sampling).timestamps
        times = decoded.round().long()
        assert np.array_equal(sample_frames(spec, 12, sampling), render_frames(spec)[times.numpy()])
        torch.testing.assert_close(sample_video(spec, 12, sampling).timestamps, decoded)
    assert sample_frames(spec).shape == (50, 32, 32, 3)  # no cap: every second
    assert np.array_equal(sample_frames(spec, fps=0.5), render_frames(spec)[::2])


def test_long_videos_are_subsampled_and_too_long_ones_skipped(tokenizer):
    s = dataset(tokenizer, "caption", frames=(30, 30), max_frames=10)[0]
    assert s.frames.shape == (10, 32, 32, 3)
    assert s.frame_times[0] == 0 and s.frame_times[-1] == 29  # spread over the video's 30 s
    skipped = dataset(tokenizer, "caption", frames=(30, 30), max_frames=10, max_tokens=40)[0]
    assert isinstance(skipped, Skipped) and skipped.reason == "too_long" and "synth_caption#0" in skipped.detail


def test_make_item_asks_a_chosen_kind():
    assert make_item("mcq", 3, 200) == make_item("mcq", 3, 200, kind=None)
    seed = next(s for s in range(100) if make_video(s, 200).needle)
    _, item = make_item("mcq", seed, 200, kind="needle")
    assert item["kind"] == "needle" and "only a few seconds" in item["question"]
    with pytest.raises(ConfigError, match="has no 'needle' question"):
        make_item("mcq", seed, 60, kind="needle")  # too short for a needle
    with pytest.raises(ConfigError, match="for mcq items only"):
        make_item("tvg", seed, 200, kind="needle")


def test_a_kind_is_asked_where_the_video_has_one(tokenizer):
    ds = dataset(tokenizer, "mcq", kind="needle", frames=(120, 200), seeds=(0, 30))
    kinds = [ds.item(i)[1]["kind"] for i in range(len(ds))]
    has_needle = [ds.item(i)[0].needle is not None for i in range(len(ds))]
    assert any(has_needle) and not all(has_needle)
    assert all((k == "needle") == n for k, n in zip(kinds, has_needle))


@pytest.mark.parametrize("task", ["mcq", "tvg"])
def test_several_questions_on_one_video_are_turns_of_one_sample(tokenizer, task):
    one, three = dataset(tokenizer, task), dataset(tokenizer, task, questions=3)
    for index in range(6):
        video, items = three.items(index)
        assert items[0] == one.item(index)[1] and 1 <= len(items) <= 3
        facts = [(i["question"], i["options"][ord(i["answer"]) - 65] if task == "mcq" else i["query"]) for i in items]
        assert len(set(facts)) == len(facts)  # no question asked twice
        a, b = one[index], three[index]
        # the first question is the inference prompt, as with one question: TransV is steered by it
        assert (a.vision_span, a.instruction_end) == (b.vision_span, b.instruction_end)
        assert torch.equal(a.input_ids[: a.instruction_end], b.input_ids[: b.instruction_end])
        assert torch.equal(a.frames, b.frames)
        text = encode_conversation(tokenizer, conversation(*items))
        answers = [l for l in b.labels.tolist() if l != IGNORE_INDEX]
        assert answers == [l for l in text.labels if l != IGNORE_INDEX]
        assert "".join(tokenizer.decode(answers).split()) == "".join(answer_text(i) for i in items).replace(" ", "")
    assert any(len(three.items(i)[1]) == 3 for i in range(6))


def test_same_kind_asks_every_question_of_a_sample_in_that_kind(tokenizer):
    mixed = dataset(tokenizer, "mcq", kind="motion", questions=3, frames=(64, 128))
    motion = dataset(tokenizer, "mcq", kind="motion", questions=3, frames=(64, 128), same_kind=True)
    for index in range(6):
        (_, items), (_, others) = motion.items(index), mixed.items(index)
        assert items[0] == others[0] and len(items) == 3
        assert [i["kind"] for i in items] == ["motion"] * 3
        assert len({i["question"] for i in items}) == 3
    assert any(i["kind"] != "motion" for index in range(6) for i in mixed.items(index)[1])
    # a video with no question of the kind asks random kinds, as without same_kind
    short = dataset(tokenizer, "mcq", kind="needle", questions=2, frames=(8, 16), same_kind=True)
    assert short.items(0) == dataset(tokenizer, "mcq", kind="needle", questions=2, frames=(8, 16)).items(0)
    with pytest.raises(ConfigError, match="same_kind"):
        SynthConfig("mcq", (0, 10), 8, same_kind=True)


def test_same_colour_haystack_hides_needles_among_scenes_of_their_colour(tokenizer):
    plain = dataset(tokenizer, "mcq", kind="needle", frames=(120, 256))
    hidden = dataset(tokenizer, "mcq", kind="needle", frames=(120, 256), same_colour_haystack=True)
    needles = 0
    for index in range(8):
        (video, item), (made, same_item) = hidden.item(index), plain.item(index)
        assert item == same_item  # the question, its options and its answer do not depend on backgrounds
        if item["kind"] != "needle":  # no needle in this video: left as made
            assert video == made
            continue
        needles += 1
        colour = background_parts(made.needle.background)[1]
        assert video.needle == made.needle
        assert {background_parts(s.background)[1] for s in video.scenes} == {colour}
        assert [(s.start, s.end, s.actors) for s in video.scenes] == [(s.start, s.end, s.actors) for s in made.scenes]
        assert video != made and not torch.equal(hidden[index].frames, plain[index].frames)
    assert needles >= 2
    with pytest.raises(ConfigError, match="same_colour_haystack"):
        SynthConfig("mcq", (0, 10), 200, kind="count", same_colour_haystack=True)
    with pytest.raises(ConfigError, match="same_colour_haystack"):
        SynthConfig("mcq", (0, 10), 200, kind="needle", questions=2, same_colour_haystack=True)


def test_make_item_draws_other_questions_from_streams_of_their_own():
    assert make_item("mcq", 7, 60, question=0) == make_item("mcq", 7, 60)
    spec, item = make_item("mcq", 7, 60, question=2)
    assert spec == make_item("mcq", 7, 60)[0] and item["id"] == "mcq-7-60-q2"
    assert make_item("mcq", 7, 60, question=2) == (spec, item)
    with pytest.raises(ConfigError, match="question must be an integer >= 1"):
        make_item("mcq", 7, 60, question=-1)


def test_an_mcq_answer_can_name_the_option_before_its_letter(tokenizer):
    letters, named = dataset(tokenizer, "mcq"), dataset(tokenizer, "mcq", mcq_answer="option")
    for index in range(4):
        _, item = named.item(index)
        a, b = letters[index], named[index]
        assert torch.equal(a.input_ids[: a.instruction_end], b.input_ids[: b.instruction_end])
        said = tokenizer.decode([l for l in b.labels.tolist() if l != IGNORE_INDEX])
        option = item["options"]["ABCD".index(item["answer"])]
        assert said.split() == f"{option} ({item['answer']})".split()
        assert parse_option_letter(said) == item["answer"]  # what evaluation reads back
    with pytest.raises(ConfigError, match="mcq_answer"):
        SynthConfig("mcq", (0, 10), 8, mcq_answer="text")
    with pytest.raises(ConfigError, match="for mcq only"):
        SynthConfig("tvg", (0, 10), 8, mcq_answer="option")


def test_captions_take_one_question():
    with pytest.raises(ConfigError, match="questions"):
        SynthConfig("caption", (0, 10), 8, questions=2)
    with pytest.raises(ConfigError, match="questions"):
        SynthConfig("mcq", (0, 10), 8, questions=0)


def test_a_shot_sample_captions_one_scene_read_as_captions_by_shot_read_it(tokenizer):
    ds = dataset(tokenizer, "caption", frames=(12, 160), shot_frames=8)
    lengths = set()
    for index in range(8):
        video, scene, item = ds.shot(index)
        s = ds[index]
        assert parse_caption(item["caption"]) == [(scene.background, tuple((a.obj, a.motion) for a in scene.actors))]
        assert s.id == item["id"] and s.id.startswith(f"caption-{video.seed}-") and scene in video.scenes
        seconds = scene.start + kept_samples(scene.end - scene.start, 8, "uniform")  # what EncodedVideo.clip reads
        assert torch.equal(s.frames, sample_video(video).frames[seconds])
        assert s.frame_times.tolist() == (seconds - scene.start).tolist()
        lengths.add(scene.end - scene.start > 8)
        assert same(s, ds[index])
    assert lengths == {True, False}  # scenes longer than 8 s read 8 frames of theirs, shorter ones every frame


def test_a_grounding_shot_sample_asks_about_its_scene_or_another(tokenizer):
    ds = dataset(tokenizer, "tvg", frames=(40, 160), shot_frames=8, seeds=(100, 140))
    asked = []
    for index in range(40):
        video, scene, item = ds.shot(index)
        events = {f"the {a.obj} moves {a.motion} on the {s.background} background": (s, a) for s, a in video.events()}
        where, actor = events[item["query"]]
        text = tokenizer.decode(ds[index].input_ids.tolist())
        if item["start"] is None:  # an event of another scene: it does not happen in this one
            assert where is not scene and text.rstrip().endswith(NO_EVENT) and not item["evidence"]
        else:  # an event of this scene, timed from its start as the shot reader times the shot's frames
            assert where is scene and (item["start"], item["end"]) == (actor.start - scene.start, actor.end - scene.start)
            assert f"{item['start']:.1f} - {item['end']:.1f} seconds" in text
        asked.append(item["start"] is None)
    assert 10 < sum(asked) < 30  # about half the shots are asked about another scene's event


def test_shot_frames_are_for_captions_and_grounding():
    with pytest.raises(ConfigError, match="shot_frames: is for captions and grounding only"):
        SynthConfig("mcq", (0, 10), 8, shot_frames=16)
    with pytest.raises(ConfigError, match="shot_frames"):
        SynthConfig("caption", (0, 10), 8, shot_frames=0)


def config(*datasets, **data):
    return {
        "model": {"tiny": {}},
        "train": {"max_steps": 2, "global_batch_tokens": 512, "micro_batch_tokens": 512},
        "data": {"datasets": list(datasets), "num_workers": 0, "max_frames": 8, **data},
    }


def test_synth_entries_build_the_training_stream():
    cfg = config_from_dict(config({"synth": {"task": "mcq", "seeds": [0, 50], "frames": 6, "size": 16}},
                                  {"synth": {"task": "caption", "seeds": [0, 50], "frames": [4, 20], "size": 16},
                                   "weight": 2}))
    assert [d.name for d in cfg.data.datasets] == ["synth_mcq", "synth_caption"]
    shots = config_from_dict(config({"synth": {"task": "caption", "seeds": [0, 5], "frames": 8, "shot_frames": 4}}))
    assert shots.data.datasets[0].name == "synth_caption_shots"
    stream = build_train_data(cfg, tokenize=fake_tokenize, tokens_per_frame=TOKENS_PER_FRAME)
    batch = next(stream)
    assert batch["sample_ids"] and all(f.shape[1:] == (16, 16, 3) and len(f) <= 8 for f in batch["frames"])
    assert stream.state_dict()["datasets"] == ["synth_mcq", "synth_caption"]


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"synth": {"task": "mcq", "seeds": [999_000, 1_000_001], "frames": 8}}, r"synth.seeds: \[999000, 1000001\) must"),
        ({"synth": {"task": "mcq", "seeds": [1_100_000, 1_100_010], "frames": 8}}, r"synth.seeds: .* train split"),
        ({"synth": {"task": "mcq", "seeds": [5, 5], "frames": 8}}, r"synth.seeds: .* non-empty"),
        ({"synth": {"task": "qa", "seeds": [0, 5], "frames": 8}}, r"synth.task: must be one of mcq, tvg, caption"),
        ({"synth": {"task": "mcq", "seeds": [0, 5], "frames": [9, 3]}}, r"synth.frames: must be a length"),
        ({"synth": {"task": "mcq", "seeds": [0, 5], "frames": "long"}}, r"synth.frames: expected an integer or a list"),
        ({"synth": {"task": "tvg", "seeds": [0, 5], "frames": 8, "kind": "needle"}}, r"synth.kind: is for mcq only"),
        ({"synth": {"task": "mcq", "seeds": [0, 5], "frames": 8, "size": 8}}, r"synth.size: must be >= 16"),
        ({"synth": {"task": "mcq", "seeds": [0, 5]}}, r"synth.frames: is required"),
        ({"synth": {"task": "mcq", "seeds": [0, 5], "frames": 8}, "path": "x.jsonl"}, r"path: set either path"),
        ({"weight": 2}, r"path: set either path"),
        ({"synth": {"task": "mcq", "seeds": [0, 5], "frames": 8}, "root": "."}, r"root: goes with path"),
    ],
)
def test_synth_entry_errors_name_the_key(entry, message):
    with pytest.raises(ConfigError, match=r"data.datasets\[0\]." + message):
        config_from_dict(config(entry))


def test_a_synth_config_survives_to_dict():
    cfg = config_from_dict(config({"synth": {"task": "mcq", "seeds": [0, 5], "frames": [8, 16], "kind": "needle"}}))
    again = config_from_dict(cfg.to_dict())
    assert again.data.datasets[0] == cfg.data.datasets[0] and again.data.datasets[0].name == "synth_mcq_needle"
