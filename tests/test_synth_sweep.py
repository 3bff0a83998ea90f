"""The synthetic sweep on a tiny random TimeViper: its cells, frames, needles, resume, settings, plot, errors."""

import json

import pytest
import torch
from test_eval_runner import model_dir  # noqa: F401 (a fixture)

from timeviper.eval import accuracy_interval, runner, synth_sweep
from timeviper.eval.synth_sweep import main, plot
from timeviper.model import TimeViper
from timeviper.synth import make_item, make_video, render_frames, write_mp4
from timeviper.video import load_video

FIRST_TEST_SEED = 1_100_000


def sweep(model_dir, out, *extra):
    return main(["--model", str(model_dir), "--device", "cpu", "--size", "32", "--out", str(out), *extra])


@pytest.fixture
def calls(monkeypatch):
    """(model, item, frames) of every prediction the sweep makes (each still made by runner.predict)."""
    seen, real = [], runner.predict

    def spy(model, video, item, *args, **kwargs):
        seen.append((model, item, video))
        return real(model, video, item, *args, **kwargs)

    monkeypatch.setattr(runner, "predict", spy)
    return seen


def test_every_cell_is_written_with_paired_seeds(model_dir, tmp_path, calls, capsys):
    out, png = tmp_path / "sweep.json", tmp_path / "plots" / "sweep.png"
    assert sweep(model_dir, out, "--tasks", "mcq,tvg", "--frames", "8,12", "--items", "2",
                 "--transv", "none,default", "--plot", str(png)) == 0
    results = json.loads(out.read_text())
    assert results["settings"] == {"model": str(model_dir.resolve()), "items": 2, "seed_offset": 0,
                                   "max_frames": None, "size": 32}
    cells = results["cells"]
    assert [(c["transv"], c["task"], c["frames"]) for c in cells] == [
        (transv, task, frames) for transv in ("none", "default") for task in ("mcq", "tvg") for frames in (8, 12)]
    for c in cells:
        assert c["n"] == c["metrics"]["n"] == 2 and c["seeds"] == [FIRST_TEST_SEED, FIRST_TEST_SEED + 1]
        assert {"mcq": "accuracy", "tvg": "miou"}[c["task"]] in c["metrics"] and c["frames_per_item"] == c["frames"]
        assert c["spec"] == {"none": "none", "default": "uni_0_0.5-attn_2_0.5"}[c["transv"]]
        assert 0 <= c["seconds_per_item"] <= c["seconds"]
        assert len(c["responses"]) == 2 and all(isinstance(r, str) for r in c["responses"])
    assert len(calls) == 16 and not (tmp_path / "sweep.json.tmp").exists()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 9 and table[1].split()[:-1] == ["mcq", "8", "none", "accuracy", "0.000", "2"]

    # `default` after `none`: the TransV modules as trained, not fresh ones of the same spec
    loaded = TimeViper.from_pretrained(model_dir).transv.state_dict()
    used = next(model for model, _, _ in calls if model.config.transv != "none").transv.state_dict()
    assert used.keys() == loaded.keys() and all(torch.equal(used[k], loaded[k]) for k in loaded)


def test_the_plot_marks_the_most_frames_the_model_was_trained_on(tmp_path):
    cells = [{"transv": "default", "task": "mcq", "frames": n, "metrics": {"accuracy": a}}
             for n, a in ((16, 1), (1000, 0.5))]
    labels = [sorted(plot(cells, tmp_path / f"{marked}.png", marked).axes[0].get_legend_handles_labels()[1])
              for marked in (256, None)]
    assert labels == [["default", "trained on ≤ 256 frames"], ["default"]]


def test_the_plot_bars_each_accuracy_with_its_interval_and_nothing_else(tmp_path):
    cells = [{"transv": "default", "task": task, "frames": frames, "n": 30, "metrics": {metric: 29 / 30}}
             for task, metric in (("needle", "accuracy"), ("tvg", "miou")) for frames in (1000, 10000)]
    needle, tvg = plot(cells, tmp_path / "sweep.png").axes
    (bars,) = needle.containers
    low, high = accuracy_interval(29, 30)
    ends = [y for segment in bars.lines[2][0].get_segments() for y in segment[:, 1]]  # (bottom, top) at 1k, 10k
    assert ends == pytest.approx([low, high] * 2)
    assert "95%" in needle.get_ylabel() and tvg.get_ylabel() == "miou"
    assert [container.has_yerr for container in tvg.containers] == [False]


def test_frames_are_those_load_video_decodes_from_the_items_mp4(model_dir, tmp_path, calls):
    assert sweep(model_dir, tmp_path / "sweep.json", "--tasks", "tvg", "--frames", "12", "--items", "1",
                 "--transv", "none", "--max-frames", "5") == 0
    ((_, item, video),) = calls
    spec, same = make_item("tvg", FIRST_TEST_SEED, 12, 32)
    decoded = load_video(write_mp4(spec, tmp_path / "v.mp4"), max_frames=5)
    frames, times = video.frames, decoded.timestamps.round().long()
    assert same == item and frames.dtype == torch.uint8 and frames.shape == (5, 32, 32, 3)
    assert torch.equal(frames, torch.from_numpy(render_frames(spec)[times.numpy()]))
    torch.testing.assert_close(video.timestamps, decoded.timestamps)  # spread over 12 s, not 0-4


def test_needle_cells_ask_about_needles_only(model_dir, tmp_path, calls):
    out = tmp_path / "sweep.json"
    assert sweep(model_dir, out, "--tasks", "needle", "--frames", "120", "--items", "3", "--transv", "none",
                 "--max-frames", "6") == 0
    ((cell,),) = [json.loads(out.read_text())["cells"]]
    with_needle = [s for s in range(FIRST_TEST_SEED, FIRST_TEST_SEED + 50) if make_video(s, 120).needle][:3]
    assert cell["seeds"] == with_needle != list(range(FIRST_TEST_SEED, FIRST_TEST_SEED + 3))  # some are passed over
    assert [item["kind"] for _, item, _ in calls] == ["needle"] * 3
    assert cell["metrics"]["task"] == "mcq" and cell["metrics"]["accuracy_by_kind"].keys() == {"needle"}


class Killed(Exception):
    pass


def test_a_killed_run_keeps_its_cells_and_a_rerun_does_the_rest(model_dir, tmp_path, monkeypatch):
    out, args = tmp_path / "sweep.json", ("--tasks", "mcq", "--items", "2", "--transv", "default,none")
    calls, real = [], runner.predict

    def predict(model, video, item, **kwargs):
        calls.append((model.config.transv, item["frames"]))
        if len(calls) == 3:
            raise Killed  # in the second cell
        return real(model, video, item, **kwargs)

    def keys():
        return [(c["transv"], c["frames"]) for c in json.loads(out.read_text())["cells"]]

    monkeypatch.setattr(runner, "predict", predict)
    with pytest.raises(Killed):
        sweep(model_dir, out, "--frames", "8,12", *args)
    assert keys() == [("default", 8)]

    assert sweep(model_dir, out, "--frames", "8,12", *args) == 0
    default = "uni_0_0.5-attn_2_0.5"
    assert calls[3:] == [(default, 12)] * 2 + [("none", 8)] * 2 + [("none", 12)] * 2
    assert keys() == [("default", 8), ("default", 12), ("none", 8), ("none", 12)]

    assert sweep(model_dir, out, "--frames", "12,16,8", *args) == 0  # a longer video: only its cells run
    assert calls[9:] == [(default, 16)] * 2 + [("none", 16)] * 2 and keys()[4:] == [("default", 16), ("none", 16)]

    monkeypatch.setattr("timeviper.cli.load_model", lambda args: pytest.fail("loaded a model"))
    assert sweep(model_dir, out, "--frames", "8,16", *args) == 0 and len(calls) == 13


def test_other_settings_are_refused(model_dir, tmp_path, capsys):
    out, args = tmp_path / "sweep.json", ("--tasks", "mcq", "--frames", "8", "--items", "1", "--transv", "none")
    assert sweep(model_dir, out, *args) == 0
    before = out.read_text()
    for change, named in [(("--seed-offset", "3"), "seed_offset 0 -> 3"),
                          (("--max-frames", "4"), "max_frames None -> 4"), (("--size", "64"), "size 32 -> 64")]:
        capsys.readouterr()
        assert sweep(model_dir, out, *args, *change) == 1
        err = capsys.readouterr().err
        assert err.startswith("timeviper: error: ") and err.count("\n") == 1 and named in err and "other settings" in err
    assert main(["--model", str(tmp_path), "--out", str(out), *args]) == 1  # another model, refused before loading
    assert "other settings (model " in capsys.readouterr().err and out.read_text() == before


def test_more_items_grow_the_cells_as_a_fresh_sweep_of_as_many_would_be(model_dir, tmp_path, calls, capsys):
    grown, fresh = tmp_path / "grown.json", tmp_path / "fresh.json"
    args = ("--tasks", "mcq,tvg", "--frames", "8", "--transv", "default")
    assert sweep(model_dir, grown, *args, "--items", "2") == 0
    first = json.loads(grown.read_text())["cells"]
    assert sweep(model_dir, grown, *args, "--items", "5") == 0
    assert [item["seed"] for _, item, _ in calls[4:]] == [FIRST_TEST_SEED + i for i in (2, 3, 4)] * 2  # only new ones
    assert sweep(model_dir, fresh, *args, "--items", "5") == 0
    timing = ("seconds", "seconds_per_item")
    one, two = (json.loads(path.read_text()) for path in (grown, fresh))
    assert one["settings"] == two["settings"] and one["settings"]["items"] == 5
    assert [{k: v for k, v in c.items() if k not in timing} for c in one["cells"]] == [
        {k: v for k, v in c.items() if k not in timing} for c in two["cells"]]
    for before, after in zip(first, one["cells"]):
        assert after["responses"][:2] == before["responses"] and after["seconds"] >= before["seconds"]

    capsys.readouterr()
    before = grown.read_text()
    assert sweep(model_dir, grown, *args, "--items", "3") == 1  # fewer: the cells hold more than asked
    assert "holds cells of 5 items" in capsys.readouterr().err and grown.read_text() == before
    edited = json.loads(before)
    edited["cells"][0]["spec"] = "uni_1_0.5"  # asked with another TransV than the model's own now
    grown.write_text(json.dumps(edited))
    assert sweep(model_dir, grown, *args, "--items", "6") == 1
    assert "cannot be grown" in capsys.readouterr().err


def test_a_sweep_stopped_mid_cell_keeps_its_answers_and_a_rerun_finishes_the_cell(model_dir, tmp_path, calls,
                                                                                  monkeypatch):
    stopped, fresh = tmp_path / "stopped.json", tmp_path / "fresh.json"
    args = ("--tasks", "mcq", "--frames", "8", "--transv", "default", "--items", "5")
    monkeypatch.setattr(synth_sweep, "SAVE_EVERY_S", 0.0)
    real = runner.predict

    def stop_at_the_fourth(*a, **kw):
        if len(calls) == 3:  # three answered
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(runner, "predict", stop_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        sweep(model_dir, stopped, *args)
    (cell,) = json.loads(stopped.read_text())["cells"]
    assert cell["n"] == cell["metrics"]["n"] == 3 and cell["seeds"] == [FIRST_TEST_SEED + i for i in range(3)]

    monkeypatch.setattr(runner, "predict", real)
    calls.clear()
    assert sweep(model_dir, stopped, *args) == 0
    assert [item["seed"] for _, item, _ in calls] == [FIRST_TEST_SEED + 3, FIRST_TEST_SEED + 4]  # only the rest
    assert sweep(model_dir, fresh, *args) == 0
    timing = ("seconds", "seconds_per_item")
    one, two = (json.loads(path.read_text()) for path in (stopped, fresh))
    assert [{k: v for k, v in c.items() if k not in timing} for c in one["cells"]] == [
        {k: v for k, v in c.items() if k not in timing} for c in two["cells"]]


def test_logn_length_is_applied_and_recorded(model_dir, tmp_path, calls):
    out = tmp_path / "sweep.json"
    args = ("--tasks", "mcq", "--frames", "8", "--items", "1", "--transv", "default")
    assert sweep(model_dir, out, *args, "--logn-length", "6") == 0
    assert json.loads(out.read_text())["settings"]["logn_length"] == 6
    ((model, _, _),) = calls
    assert model.config.llm.logn_attention_length == 6
    assert all(m.logn_length == 6 for m in model.transv.values())
    assert sweep(model_dir, out, *args, "--logn-length", "none") == 1  # another setting: refused


def test_the_video_window_is_applied_and_recorded(model_dir, tmp_path, calls):
    out = tmp_path / "sweep.json"
    assert sweep(model_dir, out, "--tasks", "mcq", "--frames", "8", "--items", "1", "--transv", "default",
                 "--video-window", "4") == 0
    assert json.loads(out.read_text())["settings"]["video_window"] == 4
    ((model, _, _),) = calls
    assert model.config.video_window == 4


def test_time_past_period_is_applied_and_recorded(model_dir, tmp_path, calls):
    out = tmp_path / "sweep.json"
    assert sweep(model_dir, out, "--tasks", "mcq", "--frames", "8", "--items", "1", "--transv", "default",
                 "--time-past-period", "none") == 0
    assert json.loads(out.read_text())["settings"]["time_past_period"] == "none"
    ((model, _, _),) = calls
    assert model.config.time_past_period == "none"


def test_instruction_before_video_is_applied_and_recorded(model_dir, tmp_path, calls):
    out = tmp_path / "sweep.json"
    args = ("--tasks", "mcq", "--frames", "8", "--items", "1", "--transv", "default")
    assert sweep(model_dir, out, *args, "--instruction-before-video", "on") == 0
    assert json.loads(out.read_text())["settings"]["instruction_before_video"] is True
    ((model, _, _),) = calls
    assert model.config.instruction_before_video is True
    assert sweep(model_dir, out, *args) == 1  # the model's own layout is another setting: refused


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "mcq,qa"], "unknown task 'qa'"),
    (["--frames", "8,0"], "--frames must be positive whole seconds"),
    (["--frames", "8,1.5"], "--frames must be positive whole seconds"),
    (["--frames", " , "], "--frames is empty"),
    (["--items", "0"], "--items must be an integer >= 1"),
    (["--seed-offset", "-1"], "--seed-offset must be an integer >= 0"),
    (["--max-frames", "0"], "--max-frames must be an integer >= 1"),
    (["--size", "8"], "--size must be an integer >= 16"),
    (["--tasks", "mcq,needle", "--frames", "200,60"], "at least 120 frames"),
    (["--transv", "default,uni_0"], "bad TransV spec 'uni_0'"),
    (["--tvg-search", "--max-frames", "4"], "drop --max-frames"),
    (["--caption-shots", "--max-frames", "4"], "--caption-shots reads every frame"),
    (["--workers", "0"], "--workers must be an integer >= 1"),
])
def test_bad_arguments(model_dir, tmp_path, capsys, argv, message):
    assert sweep(model_dir, tmp_path / "sweep.json", "--tasks", "mcq", "--frames", "8", "--items", "1", *argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("timeviper: error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "sweep.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--transv", "uni_9_0.5"], "outside the LLM's 4 layers"),
    (["--model", "missing-model"], "has no config.json"),
])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_models_that_cannot_run_the_setting(model_dir, tmp_path, capsys, argv, message, workers):
    assert sweep(model_dir, tmp_path / "sweep.json", "--tasks", "mcq", "--frames", "8", "--items", "1", *argv,
                 "--workers", workers) == 1
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert last.startswith("timeviper: error: ") and message in last


def test_workers_give_the_answers_of_one_process(model_dir, tmp_path):
    grid = ["--tasks", "mcq,tvg", "--frames", "8,12", "--items", "3", "--transv", "none,default"]
    assert sweep(model_dir, tmp_path / "one.json", *grid) == 0
    assert sweep(model_dir, tmp_path / "two.json", *grid, "--workers", "2") == 0
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert one["settings"] == two["settings"]  # the same sweep: either file resumes the other
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("seconds")}  # noqa: E731
    assert [strip(c) for c in one["cells"]] == [strip(c) for c in two["cells"]]


def test_unreadable_out_files(model_dir, tmp_path, capsys):
    (tmp_path / "text.json").write_text("not JSON")
    (tmp_path / "list.json").write_text("[]")
    for out, message in [(tmp_path, "cannot read --out"), (tmp_path / "text.json", "cannot read --out"),
                         (tmp_path / "list.json", "is not a sweep file")]:
        assert sweep(model_dir, out, "--tasks", "mcq", "--frames", "8", "--items", "1") == 1
        err = capsys.readouterr().err
        assert err.startswith("timeviper: error: ") and err.count("\n") == 1 and message in err


def test_validation_seeds_are_asked_and_recorded(model_dir, tmp_path, calls):
    out, args = tmp_path / "sweep.json", ("--tasks", "mcq", "--frames", "8", "--items", "2", "--transv", "none")
    assert sweep(model_dir, out, *args, "--split", "validation") == 0
    results = json.loads(out.read_text())
    assert results["settings"]["split"] == "validation"
    assert results["cells"][0]["seeds"] == [1_000_000, 1_000_001] == [item["seed"] for _, item, _ in calls]
    assert sweep(model_dir, out, *args) == 1  # test seeds into a file of validation ones: refused


@pytest.mark.parametrize("flag, function", [("--tvg-search", "search"), ("--tvg-shots", "ground_by_shots")])
def test_whole_video_grounding_is_used_and_recorded(model_dir, tmp_path, monkeypatch, flag, function):
    from dataclasses import asdict

    from timeviper import grounding
    from timeviper.shots import ShotConfig

    asked, real = [], getattr(grounding, function)
    monkeypatch.setattr(grounding, function, lambda *a, **k: asked.append(a[2]) or real(*a, **k))
    out, args = tmp_path / "sweep.json", ("--tasks", "tvg,mcq", "--frames", "8", "--items", "2", "--transv", "none")
    assert sweep(model_dir, out, *args, flag) == 0
    config = grounding.SearchConfig() if function == "search" else ShotConfig()
    assert json.loads(out.read_text())["settings"][flag[2:].replace("-", "_")] == asdict(config)
    assert asked == [make_item("tvg", seed, 8, 32)[1]["query"] for seed in (FIRST_TEST_SEED, FIRST_TEST_SEED + 1)]
    assert sweep(model_dir, out, *args) == 1  # single-pass grounding into a file of the other mode: refused


def test_grounding_takes_one_whole_video_mode(model_dir, tmp_path):
    args = ("--tasks", "tvg", "--frames", "8", "--items", "1", "--tvg-shots", "--tvg-search")
    assert sweep(model_dir, tmp_path / "both.json", *args) == 1


def test_caption_shots_caption_shot_by_shot_and_are_recorded(model_dir, tmp_path, monkeypatch):  # noqa: F811
    from dataclasses import asdict

    from timeviper import captioning
    from timeviper.shots import ShotConfig

    captioned, real = [], captioning.caption_by_shots
    monkeypatch.setattr(captioning, "caption_by_shots", lambda *a, **k: captioned.append(len(a[1].frames)) or real(*a, **k))
    out, args = tmp_path / "sweep.json", ("--tasks", "caption,mcq", "--frames", "8", "--items", "2", "--transv", "none")
    assert sweep(model_dir, out, *args, "--caption-shots") == 0
    results = json.loads(out.read_text())
    assert results["settings"]["caption_shots"] == asdict(ShotConfig()) and captioned == [8, 8]  # not mcq
    assert sweep(model_dir, out, *args) == 1  # single-pass captions into a file of shot by shot: refused
