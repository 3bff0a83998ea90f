"""`timeviper eval` on a tiny random TimeViper: synthetic benchmark directories, shards, resume, metrics."""

import json

import pytest
import torch

from timeviper.cli import main
from timeviper.errors import ConfigError
from timeviper.eval import runner
from timeviper.eval.runner import load_items, make_synth, parse_shard

TINY = {
    "llm": {"hidden_size": 32, "pattern": "M-*-", "num_heads": 2, "num_kv_heads": 1, "head_dim": 16,
            "intermediate_size": 64, "mamba_num_heads": 4, "mamba_head_dim": 8, "mamba_groups": 1,
            "ssm_state_size": 8, "chunk_size": 16},
    "vision": {"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
               "num_attention_heads": 2, "intermediate_size": 32},
    "tokens_per_frame": 4,
}


def save_tiny_model(path):
    """A random TimeViper with the synthetic world's tokenizer, saved to `path`."""
    from timeviper.train.build import tiny_model

    torch.manual_seed(0)
    tiny_model(TINY, "uni_0_0.5-attn_2_0.5").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def tvg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth-tvg")
    assert make_synth("tvg", range(1_100_000, 1_100_005), (8, 16), root, size=32) == 5
    return root


def evaluate(root, out, model_dir, *extra):
    return main(["eval", "synth-tvg", "--data-root", str(root), "--output", str(out), "--model", str(model_dir),
                 "--device", "cpu", *extra])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_make_synth_writes_items_and_videos(tvg_root):
    items = load_items(tvg_root, "tvg")
    assert [i["id"].split("-")[1] for i in items] == [str(s) for s in range(1_100_000, 1_100_005)]
    assert all((tvg_root / i["video"]).is_file() and 8 <= i["frames"] <= 16 for i in items)


def test_needle_benchmarks_ask_about_needles_only(tmp_path):
    n = make_synth("needle", range(1_100_000, 1_100_010), 130, tmp_path, size=32)
    items = load_items(tmp_path, "mcq")
    assert 0 < n == len(items) < 10 and {i["kind"] for i in items} == {"needle"}
    with pytest.raises(ConfigError, match="no seed of .* has a needle scene"):
        make_synth("needle", range(1_100_000, 1_100_010), 60, tmp_path / "short")


@pytest.mark.parametrize("seeds", [range(5, 9), range(1_000_000, 1_000_004), range(1_100_000, 1_100_000)])
def test_make_synth_takes_test_seeds_only(tmp_path, seeds):
    with pytest.raises(ConfigError, match="test split"):
        make_synth("mcq", seeds, 8, tmp_path)


def test_make_synth_command(tmp_path, capsys):
    assert runner.main(["make-synth", "--task", "caption", "--seeds", "1100000:1100002", "--frames", "6",
                        "--size", "32", "--out", str(tmp_path)]) == 0
    assert "wrote 2 items" in capsys.readouterr().out
    assert runner.main(["make-synth", "--task", "caption", "--seeds", "0:2", "--frames", "6", "--out",
                        str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_shards_resume_and_metrics(tvg_root, model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert evaluate(tvg_root, out, model_dir, "--shard", "0/2") == 0
    first = read_jsonl(out / "predictions.0-of-2.jsonl")
    assert [p["id"] for p in first] == [i["id"] for i in load_items(tvg_root, "tvg")[0::2]]
    assert all({"id", "start", "end", "raw", "frames", "seconds"} <= p.keys() and p["frames"] >= 8 for p in first)
    shard_metrics = json.loads((out / "metrics.0-of-2.json").read_text())
    assert shard_metrics["n"] == 3 and "miou" in shard_metrics and not (out / "metrics.json").exists()

    # shard 1, interrupted after its first item: the torn line is dropped and only that item redone
    assert evaluate(tvg_root, out, model_dir, "--shard", "1/2") == 0
    path = out / "predictions.1-of-2.jsonl"
    done = path.read_text().splitlines()
    path.write_text(done[0] + "\n" + done[1][:10])
    calls = []
    real = runner.predict
    monkeypatch.setattr(runner, "predict", lambda model, video, item, *a: calls.append(item["id"]) or real(model, video, item, *a))
    capsys.readouterr()
    assert evaluate(tvg_root, out, model_dir, "--shard", "1/2") == 0
    assert calls == [json.loads(done[1])["id"]] and len(read_jsonl(path)) == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "tvg" and metrics["n"] == 5 and {"miou", "r@0.5"} <= metrics.keys()
    assert json.loads(capsys.readouterr().out) == metrics

    # everything done: no model is loaded, no prediction made
    monkeypatch.setattr("timeviper.cli.load_model", lambda args: pytest.fail("loaded a model"))
    assert evaluate(tvg_root, out, model_dir, "--shard", "0/2") == 0 and len(calls) == 1


def test_search_grounds_every_frame_and_an_output_keeps_one_mode(tvg_root, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert evaluate(tvg_root, out, model_dir, "--search", "--max-frames", "4") == 0
    predictions = read_jsonl(out / "predictions.jsonl")
    items = load_items(tvg_root, "tvg")
    assert [p["frames"] for p in predictions] == [round(i["duration"]) for i in items]  # not 4: every frame
    assert all("search" in p for p in predictions)
    capsys.readouterr()
    assert evaluate(tvg_root, out, model_dir) == 1  # resuming it in single-pass mode would mix the two
    assert "made with --search, not in one pass" in capsys.readouterr().err
    assert len(read_jsonl(out / "predictions.jsonl")) == 5
    assert evaluate(tvg_root, out, model_dir, "--shots") == 1 and "not with --shots" in capsys.readouterr().err
    assert evaluate(tvg_root, out, model_dir, "--shots", "--search") == 1
    assert "two ways to ground" in capsys.readouterr().err


def test_shots_ground_tvg_items_shot_by_shot(tvg_root, model_dir, tmp_path):
    assert evaluate(tvg_root, tmp_path / "out", model_dir, "--shots") == 0
    predictions, items = read_jsonl(tmp_path / "out" / "predictions.jsonl"), load_items(tvg_root, "tvg")
    assert [p["frames"] for p in predictions] == [round(i["duration"]) for i in items]
    for p in predictions:  # shots tile the video; the answer, if a span, lies in the chosen one
        assert p["shots"][0][0] == 0 and p["shots"][-1][1] == p["frames"] and 0 <= p["shot"] < len(p["shots"])
        a, b, _ = p["shots"][p["shot"]]
        assert p["start"] is None or a <= p["start"] <= p["end"] <= b


def test_shots_caption_every_frame_and_flags_fit_their_task(tvg_root, model_dir, tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "out"
    make_synth("caption", range(1_100_000, 1_100_002), 12, root, size=32)
    caption = ["eval", "synth-caption", "--data-root", str(root), "--output", str(out), "--model", str(model_dir),
               "--device", "cpu", "--max-frames", "4"]
    assert main([*caption, "--shots"]) == 0
    predictions = read_jsonl(out / "predictions.jsonl")
    assert [p["frames"] for p in predictions] == [12, 12] and all(p["shots"][-1][1] == 12 for p in predictions)
    capsys.readouterr()
    assert main(caption) == 1 and "made with --shots" in capsys.readouterr().err
    assert main([*caption, "--search"]) == 1 and "--search is for tvg" in capsys.readouterr().err
    assert main(["eval", "synth-mcq", "--data-root", str(root), "--output", str(tmp_path / "mcq"), "--model",
                 str(model_dir), "--device", "cpu", "--shots"]) == 1
    assert "--shots is for tvg and caption benchmarks; synth-mcq is mcq" in capsys.readouterr().err


def test_one_shard_writes_metrics_json(tmp_path, model_dir):
    make_synth("mcq", range(1_100_000, 1_100_003), 8, tmp_path / "data", size=32)
    assert main(["eval", "synth-mcq", "--data-root", str(tmp_path / "data"), "--output", str(tmp_path / "out"),
                 "--model", str(model_dir), "--device", "cpu"]) == 0
    predictions = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert len(predictions) == 3 and all("answer" in p for p in predictions)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n"] == 3 and 0 <= metrics["accuracy"] <= 1


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/3"])
def test_bad_shards(text):
    with pytest.raises(ConfigError, match="--shard must be I/N"):
        parse_shard(text)


def test_bad_benchmarks_and_data_roots(tmp_path, tvg_root, capsys):
    assert main(["eval", "videomme", "--data-root", str(tmp_path)]) == 1
    assert "unknown benchmark 'videomme'" in capsys.readouterr().err
    assert main(["eval", "synth-tvg", "--data-root", str(tmp_path)]) == 1
    assert "items.jsonl not found" in capsys.readouterr().err
    assert main(["eval", "synth-mcq", "--data-root", str(tvg_root)]) == 1  # tvg items lack options
    assert "lacks options, answer" in capsys.readouterr().err
