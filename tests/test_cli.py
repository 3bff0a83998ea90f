"""The `timeviper` command line on a tiny random model and a rendered video: outputs, --json keys, exit codes."""

import json
import sys

import pytest
from test_eval_runner import save_tiny_model

from timeviper.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    out = tmp_path_factory.mktemp("video")
    assert main(["synth", "--task", "tvg", "--seed", "1100003", "--frames", "12", "--size", "32", "--out", str(out)]) == 0
    return str(out / "video.mp4")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_synth_writes_a_video_and_its_item(tmp_path, capsys):
    code, out, _ = run(capsys, "synth", "--task", "mcq", "--seed", 1100000, "--frames", 10, "--size", 32,
                       "--out", tmp_path, "--json")
    item = json.loads(out)
    assert code == 0 and item["task"] == "mcq" and item["answer"] in "ABCD" and len(item["options"]) == 4
    assert json.loads((tmp_path / "item.json").read_text()) == item and (tmp_path / "video.mp4").is_file()


def test_score(tmp_path, capsys):
    refs = [{"id": "a", "answer": "B", "kind": "order"}, {"id": "b", "answer": "C", "kind": "count"}]
    (tmp_path / "refs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    (tmp_path / "preds.jsonl").write_text('{"id": "a", "answer": "The answer is B"}\n{"id": "b", "answer": "A"}\n')
    code, out, _ = run(capsys, "score", "--task", "mcq", "--predictions", tmp_path / "preds.jsonl",
                       "--references", tmp_path / "refs.jsonl")
    assert code == 0 and json.loads(out) == {"task": "mcq", "n": 2, "accuracy": 0.5,
                                             "accuracy_by_kind": {"count": 0.0, "order": 1.0}}


@pytest.mark.parametrize(
    "argv, keys",
    [
        (["ask", "What is shown?"], {"answer", "frames", "seconds"}),
        (["ask", "Which?", "--options", "a", "b", "c", "d", "--max-frames", "4"], {"answer", "frames", "seconds"}),
        (["ground", "the red circle moves left"], {"start", "end", "frames", "seconds"}),
        (["caption"], {"caption", "frames", "seconds"}),
        (["caption", "--logn-length", "8"], {"caption", "frames", "seconds"}),
        (["ask", "What is shown?", "--video-window", "2"], {"answer", "frames", "seconds"}),
        (["ground", "the red circle moves left", "--time-past-period", "none"], {"start", "end", "frames", "seconds"}),
    ],
)
def test_questions_print_one_json_object(capsys, model_dir, video, argv, keys):
    command, *rest = argv
    code, out, _ = run(capsys, command, video, *rest, "--model", model_dir, "--device", "cpu", "--max-new-tokens", 6,
                       "--json", "--quiet")  # no progress bar, the same counts
    result = json.loads(out)
    assert code == 0 and keys <= result.keys()
    assert result["frames"] == (4 if "--max-frames" in argv else 12) and result["seconds"] >= 0
    if "--options" in argv:
        assert result["answer"] is None or result["answer"] in "ABCD" or result["answer"] == result["raw"]


def test_plain_output_is_the_answer(capsys, model_dir, video):
    code, out, _ = run(capsys, "caption", video, "--model", model_dir, "--device", "cpu", "--max-new-tokens", 4,
                       "--quiet")
    assert code == 0 and out.strip() and not out.lstrip().startswith("{")


@pytest.mark.parametrize("trained, noted", [(12, False), (11, True), (None, False)])
@pytest.mark.parametrize("command", [["ask", "What is shown?"], ["ground", "the red circle moves left"], ["caption"]])
def test_reading_more_frames_than_trained_is_noted(capsys, tmp_path, video, command, trained, noted):
    model_dir = save_tiny_model(tmp_path / "model")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "trained_frames": trained}))
    verb, *rest = command
    code, out, err = run(capsys, verb, video, *rest, "--model", model_dir, "--device", "cpu", "--max-new-tokens", 2,
                         "--json", "--quiet")
    assert code == 0 and json.loads(out)["frames"] == 12
    assert ("note: read 12 frames in one pass; this model was trained on videos of at most 11 frames" in err) == noted
    assert (f"`{verb} --shots`" in err) == (noted and verb != "ask")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ask", "{tmp}/missing.mp4", "What?", "--model", "{model}"], "missing.mp4"),
        (["ask", "{tmp}/missing.mp4", "What?", "--model", "{tmp}/no-model"], "missing.mp4"),  # the video first
        (["caption", "{video}", "--model", "{tmp}/no-model"], "no-model"),
        (["score", "--task", "tvg", "--predictions", "{tmp}/p.jsonl", "--references", "{tmp}/r.jsonl"], "cannot read"),
    ],
)
def test_errors_are_one_line_and_exit_1(capsys, tmp_path, model_dir, video, argv, message):
    argv = [a.format(tmp=tmp_path, video=video, model=model_dir) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 1 and not out and err.startswith("timeviper: error:") and err.count("\n") == 1 and message in err


@pytest.mark.parametrize("argv", [[], ["ask"], ["synth", "--task", "qa", "--seed", "1", "--frames", "2", "--out", "x"],
                                  ["eval", "synth-mcq"], ["train"], ["caption", "v.mp4", "--logn-length", "1"],
                                  ["ask", "v.mp4", "What?", "--logn-length", "long"],
                                  ["ask", "v.mp4", "What?", "--video-window", "0"],
                                  ["ask", "v.mp4", "What?", "--time-past-period", "off"],
                                  ["export", "run", "--out", "m", "--logn-length", "none"],
                                  ["export", "run", "--out", "m", "--time-past-period", "default"]])
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "usage: timeviper" in capsys.readouterr().err


def test_demo_shows_the_three_tasks(capsys, tmp_path, model_dir):
    code, out, _ = run(capsys, "demo", "--model", model_dir, "--out", tmp_path)
    assert code == 0 and (tmp_path / "video.mp4").is_file()
    for part in ("Multiple choice", "Temporal grounding", "ground --shots", "Caption", "caption --shots", "shots", "truth",
                 "IoU", "scene F1"):
        assert part in out


def test_demo_without_the_embedded_model_says_so(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("timeviper.model.EMBEDDED", tmp_path / "embedded")
    code, out, err = run(capsys, "demo")
    assert code == 1 and err == "timeviper: error: cannot load TimeViper: the embedded model is not installed\n"


def test_demo_layout_without_rich(capsys, monkeypatch):
    from timeviper.demo import show

    monkeypatch.setitem(sys.modules, "rich.console", None)  # import fails: plain text
    show("Title", [("Section", [("model", "[b]not markup[/b]"), ("truth", "x")])])
    assert capsys.readouterr().out == "Title\n\nSection\n  model:     [b]not markup[/b]\n  truth:     x\n"


def test_the_parser_offers_the_time_past_period_settings_the_model_takes():
    from timeviper import cli
    from timeviper.vision import projector

    assert cli.TIME_PAST_PERIOD == projector.TIME_PAST_PERIOD
