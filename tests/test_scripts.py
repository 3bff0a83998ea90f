"""scripts/fresh_lm.py, scripts/paired_bootstrap.py, scripts/probe_selection.py, scripts/probe_motion.py's confusions
and binding labels, scripts/probe_captions.py, scripts/probe_needles.py's summary, scripts/probe_needle_tokens.py,
scripts/probe_mamba_memory.py, and the data lists that gpu_suite.sh's embedded step takes in place of a config's mix."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from timeviper import TimeViper
from timeviper.train.build import tiny_model
from timeviper.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "src" / "timeviper" / "assets" / "embedded"


def test_fresh_lm_keeps_the_vision_front_and_renews_the_rest(tmp_path):
    out = tmp_path / "fresh"
    subprocess.run([sys.executable, ROOT / "scripts" / "fresh_lm.py", out], check=True, capture_output=True)
    fresh, shipped = load_file(out / "model.safetensors"), load_file(EMBEDDED / "model.safetensors")
    assert fresh.keys() == shipped.keys()
    for name, weight in fresh.items():
        same = torch.equal(weight.to(shipped[name].dtype), shipped[name])
        if name.startswith(("vision.", "projector.")):
            assert same, name
        elif shipped[name].numel() > 1 and shipped[name].std() > 0:  # trained weights, not constant initialisations
            assert not same, name
    model = TimeViper.from_pretrained(out, torch.float32)
    assert model.config.transv == TimeViper.from_pretrained(None, torch.float32).config.transv

    for args, error in (([out], "already holds a model"), ([tmp_path / "new", "--model", tmp_path / "none"],
                                                            "has no config.json")):
        failed = subprocess.run([sys.executable, ROOT / "scripts" / "fresh_lm.py", *args], capture_output=True,
                                text=True)
        assert failed.returncode == 2 and error in failed.stderr and "Traceback" not in failed.stderr
    kept = load_file(out / "model.safetensors")
    assert all(torch.equal(kept[name], weight) for name, weight in fresh.items())  # the first model is kept


@pytest.mark.parametrize("phases, name, weight, count", [
    (["embedded-motion-only"], "synth_motion_only", 1, 1),
    (["embedded-grounding"], "synth_tvg_short", 4, 8),  # the mix's: 1
    (["embedded-grounding", "embedded-long-mcq"], "synth_motion_long", 2, 10),  # files concatenated
    (["embedded-short-shares"], "synth_tvg_short", 2, 7),
    (["embedded-binding-only"], "synth_motion_bound_only", 3, 1),
    (["embedded-grounding", "embedded-long-mcq", "embedded-binding-only"], "synth_motion_bound_only", 3, 11),
    (["embedded-grounding", "embedded-long-mcq", "embedded-binding-only", "embedded-shots"], "synth_caption_shots", 3,
     12),
    (["embedded-grounding", "embedded-long-mcq", "embedded-binding-only", "embedded-captions"], "synth_caption_more",
     3, 13),
    (["embedded-grounding", "embedded-long-mcq", "embedded-binding-only", "embedded-shots", "embedded-shot-grounding",
      "embedded-needle-haystack"], "synth_mcq_needle_haystack", 4, 14)])
def test_a_phase_mix_loads_in_place_of_the_mix(phases, name, weight, count):  # as EMBEDDED_DATA, make embedded
    text = "".join((ROOT / "configs" / f"{phase}.yaml").read_text() for phase in phases)
    config = load_config(ROOT / "configs" / "embedded.yaml",
                         ["model.tiny=null", "model.pretrained=embedded", f"data.datasets={text}"])
    assert all(spec.synth is not None for spec in config.data.datasets)
    assert len(config.data.datasets) == count
    assert {spec.name: spec.weight for spec in config.data.datasets}[name] == weight


def load_script(name: str):
    import importlib.util

    spec_file = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec_file)
    spec_file.loader.exec_module(module)
    return module


def test_motion_confusions_tell_the_asked_scene_from_another():
    from timeviper.errors import ConfigError
    from timeviper.synth import make_item
    from timeviper.synth.tasks import LETTERS

    probe = load_script("probe_motion")
    cell = {"frames": 64, "seeds": [], "responses": []}
    kinds = set()
    for seed in range(1100000, 1100400):  # one motion question of each kind, answered with the other scene's direction
        try:
            spec, item = make_item("mcq", seed, 64, 64)
        except ConfigError:
            continue
        if item.get("kind") != "motion":
            continue
        scene, actor = probe.asked(spec, item)
        other = {a.motion for s in spec.scenes if s.background != scene.background
                 for a in s.actors if a.obj == actor.obj}
        other = sorted((other - {actor.motion}) & set(item["options"]))
        kind = "elsewhere" if other else "only_here"
        if kind in kinds:
            continue
        kinds.add(kind)
        said = other[0] if other else actor.motion
        cell["seeds"].append(seed)
        cell["responses"].append(f"{said} ({LETTERS[item['options'].index(said)]})")
    assert kinds == {"elsewhere", "only_here"}
    assert probe.motion_confusions(cell, 64) == {"only_here": 1, "only_here_right": 1, "elsewhere": 1,
                                                 "elsewhere_right": 0, "wrong_says_elsewhere": 1}


def test_the_binding_probe_labels_frames_with_one_object_on_screen():
    from timeviper.synth import make_video
    from timeviper.synth.world import BACKGROUNDS, OBJECTS

    probe = load_script("probe_motion")
    spec = make_video(1100000, 64, 32)
    frames = probe.one_object_frames(spec)
    assert 0 < len(frames) < 64
    for t, background, obj in frames:
        scene = next(s for s in spec.scenes if s.start <= t < s.end)
        (actor,) = [a for a in scene.actors if a.start <= t < a.end]
        assert (BACKGROUNDS[background], OBJECTS[obj]) == (scene.background, actor.obj)
    on_screen = [sum(a.start <= t < a.end for s in spec.scenes for a in s.actors) for t in range(64)]
    assert [t for t, _, _ in frames] == [t for t in range(64) if on_screen[t] == 1]  # the empty frames left out


def test_the_selection_probe_maps_tokens_to_frames_and_steers_the_selection():
    import timeviper.engine as engine
    from timeviper.data.synth_source import sample_video
    from timeviper.eval import runner
    from timeviper.eval.synth_sweep import sweep_items

    probe = load_script("probe_selection")
    model = TimeViper.from_pretrained(None, torch.float32).eval()
    (spec, item), = sweep_items("tvg", 16, 1, 0, 64)
    original = engine._select_and_transfer, engine.attention_drop
    with probe.selection_probe(model.config.tokens_per_frame) as seen:
        runner.predict(model, sample_video(spec, None, "uniform"), item)
    assert (engine._select_and_transfer, engine.attention_drop) == original  # restored
    # uniform p=0.5 at layer 2 leaves 8 of each frame's 16 tokens: every frame of the video, 8 times
    assert torch.equal(seen["frames"].bincount(), torch.full((16,), 8))
    assert seen["scores"].sum().item() == pytest.approx(1.0, abs=1e-4)  # a distribution over those tokens
    with probe.selection_probe(16, rescore=lambda scores, frames: (frames == 2).float()) as seen:
        seen["frames"] = torch.tensor([0, 0, 1, 1, 2, 2])
        dropped = engine.attention_drop(torch.tensor([9.0, 8, 7, 6, 0, 0]), 2 / 3)
    assert dropped.tolist() == [True, True, True, True, False, False]  # the rescored tokens are kept


def test_caption_probe_tells_order_from_content():
    from dataclasses import replace

    from timeviper.synth import make_item
    from timeviper.synth.tasks import caption_text

    probe = load_script("probe_captions")
    spec = next(spec for seed in range(1100000, 1100100) for spec in [make_item("caption", seed, 32, 64)[0]]
                if len(spec.scenes) >= 2 and len(spec.scenes[0].actors) >= 2)
    first, second, *rest = spec.scenes
    scenes_swapped = caption_text(replace(spec, scenes=(second, first, *rest)))
    objects_swapped = caption_text(replace(spec, scenes=(replace(first, actors=first.actors[::-1]), second, *rest)))
    truth = caption_text(spec)
    cell = {"task": "caption", "frames": 32, "transv": "default", "seeds": [spec.seed] * 4,
            "responses": [truth, scenes_swapped, objects_swapped, truth.replace(first.background, "a made-up")]}
    (row,) = probe.caption_cells({"settings": {"size": 64}, "cells": [cell, dict(cell, task="mcq")]})
    strict = sum(map(lambda p: probe.caption_scene_f1(p, truth), cell["responses"])) / 4
    assert row["n"] == 4 and row["scene_f1"] == pytest.approx(strict) and strict < 0.9
    assert probe.order_forgiven(scenes_swapped, truth) == (1.0, 1.0)
    assert probe.order_forgiven(objects_swapped, truth)[0] < 1.0 == probe.order_forgiven(objects_swapped, truth)[1]
    assert max(probe.order_forgiven(cell["responses"][3], truth)) < 1.0  # a wrong background is content
    assert row["scene_f1"] < row["scene_order_forgiven"] < row["object_order_forgiven"] < 1.0


def sweep_file(path, answers: list[str], seeds: list[int]) -> Path:
    cell = {"transv": "default", "task": "mcq", "frames": 16, "seeds": seeds, "responses": answers,
            "metrics": {"accuracy": 0.0}}
    path.write_text(json.dumps({"settings": {"size": 64}, "cells": [cell]}))
    return path


def test_needle_probe_counts_right_answers_by_colour(tmp_path):
    probe = load_script("probe_needles")
    rows = [{"colour": "teal", "as made": True, "same colour": False},
            {"colour": "teal", "as made": False, "same colour": False},
            {"colour": "pink", "as made": True, "same colour": True}]
    summary = probe.summary(rows, ["as made", "same colour"])
    assert summary["teal"] == {"videos": 2, "as made": 1, "same colour": 0}
    assert summary["all"] == {"videos": 3, "as made": 2, "same colour": 1}

    from timeviper.eval.synth_sweep import sweep_items
    (spec, item), (other, other_item) = sweep_items("needle", 200, 2, 0, 64)
    wrong = next(letter for letter in "ABCD" if letter != other_item["answer"])
    cell = {"task": "needle", "frames": 200, "seeds": [spec.seed, other.seed],
            "responses": [f"({item['answer']})", f"({wrong})"]}
    gray = probe.VARIANTS["needle gray"](other)
    assert gray.needle.background == "dotted gray" and gray.needle.actors == other.needle.actors
    haystack = [s.background for s in other.scenes if not s.is_needle]
    assert [s.background for s in gray.scenes if not s.is_needle] == haystack
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"cells": [], "earlier_model": {"cells": [cell, {**cell, "frames": 100}]}}))
    rows = probe.scored_rows([results], 200)  # the cell nested under another model's key, not the shorter one
    assert rows == [{"colour": probe.colour(spec), "frames": 200, "right": True},
                    {"colour": probe.colour(other), "frames": 200, "right": False}]

    for args, error in ((["--cells", tmp_path / "none.json"], "No such file"),
                        (["--seeds", str(spec.seed + 1), "--frames", "100", "--split", "test"], "no 'needle' question")):
        failed = subprocess.run([sys.executable, ROOT / "scripts" / "probe_needles.py", *args, "--out", tmp_path / "o"],
                                capture_output=True, text=True)
        assert failed.returncode == 2 and error in failed.stderr and "Traceback" not in failed.stderr


def test_paired_bootstrap_scores_each_item_and_bounds_the_difference(tmp_path, capsys):
    from timeviper.synth import make_item

    bootstrap = load_script("paired_bootstrap")
    seeds = list(range(1_100_000, 1_100_040))
    truth = [make_item("mcq", seed, 16, 64)[1]["answer"] for seed in seeds]
    wrong = [{"A": "B", "B": "C", "C": "D", "D": "A"}[t] for t in truth]
    new = sweep_file(tmp_path / "new.json", truth, seeds)  # every answer right
    base = sweep_file(tmp_path / "base.json", truth[:30] + wrong[30:], seeds)  # the last 10 wrong
    assert bootstrap.main([str(new), str(base), "--samples", "2000"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:3] == ["mcq", "16", "default"] and row[5] == "+0.250" and row[-1] == "40"
    lo, hi = (float(x) for x in " ".join(row[6:8]).strip("[]").split(", "))
    assert 0.1 < lo < 0.25 < hi < 0.4
    stripped = json.loads(base.read_text())
    del stripped["cells"][0]["responses"]
    base.write_text(json.dumps(stripped))
    assert bootstrap.main([str(new), str(base)]) == 1
    assert "holds no responses" in capsys.readouterr().err


def test_needle_token_probe_measures_how_far_apart_the_dotted_tokens_lie():
    separation = load_script("probe_needle_tokens").separation
    g = torch.Generator().manual_seed(0)

    def normal(n):  # (fitted, held-out) tokens [n, 8]
        return tuple(torch.randn(n, 8, generator=g, dtype=torch.float64) for _ in range(2))

    others, alike = normal(4000), normal(2000)
    shift = torch.zeros(8, dtype=torch.float64)
    shift[3] = 6.0  # six standard deviations along one axis: the dotted tokens stand apart
    apart = tuple(x + shift for x in alike)
    far, same = separation(apart, others, 0.001), separation(alike, others, 0.001)
    assert 5.5 < far["fisher"] < 6.5 and far["detected"] > 0.9
    assert abs(same["fisher"]) < 0.2 and same["detected"] < 0.01
    assert far["dotted_tokens"] == 2000 and far["other_tokens"] == 4000


def test_needle_token_probe_names_a_missing_model_or_too_few_frames(tmp_path, capsys):
    probe = load_script("probe_needle_tokens")
    out = tmp_path / "tokens.json"
    assert probe.main([str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "has no config.json" in capsys.readouterr().err
    assert probe.main(["embedded", "--frames", "16", "--out", str(out)]) == 1
    assert "too few" in capsys.readouterr().err and not out.exists()


def test_mamba_memory_counts_the_tokens_an_input_outlives_as_a_naive_product_does():
    memory = load_script("probe_mamba_memory").memory
    g = torch.Generator().manual_seed(0)
    log_decay = -torch.rand(60, 4, generator=g) * torch.tensor([0.01, 0.1, 1.0, 5.0])  # [T, H] slow to fast heads
    log_decay[20:40, 1] = 0.0  # a stretch where head 1 neither forgets nor writes
    got = memory(log_decay, 0.01)
    for h in range(4):
        for t in range(60):
            s, kept = t, 1.0  # the input of step s is kept exp(log_decay[s + 1] + ... + log_decay[t]) at t
            while s > 0 and kept * math.exp(log_decay[s, h]) >= 0.01:
                kept *= math.exp(log_decay[s, h])
                s -= 1
            assert got[t, h] == t - s, (t, h)
    means = got.double().mean(0)
    assert got[:, 0].max() == 59 and got[39, 1] >= 19 and means[1] > means[2] > means[3]


def test_mamba_memory_probe_reads_every_mamba_layer_of_a_prompt(tmp_path, capsys):
    probe = load_script("probe_mamba_memory")
    out = tmp_path / "memory.json"
    assert probe.main(["--task", "mcq", "--frames", "8", "--items", "1", "--out", str(out)]) == 0
    layers = json.loads(out.read_text())["layers"]
    model = TimeViper.from_pretrained(None, torch.float32)
    assert len(layers) == model.config.llm.pattern.count("M")
    for row in layers.values():
        assert len(row["max"]) == model.config.llm.mamba_num_heads
        assert 0 <= min(row["median"]) and max(row["max"]) < row["tokens_seen"][0]
    assert layers["llm.layers.0.mixer"]["tokens_seen"][0] > layers["llm.layers.4.mixer"]["tokens_seen"][0]  # TransV
    assert probe.main(["--model", str(tmp_path / "missing")]) == 1
    assert "has no config.json" in capsys.readouterr().err
    attention_only = {"llm": {"hidden_size": 32, "pattern": "*-*-", "num_heads": 2, "num_kv_heads": 1, "head_dim": 16,
                              "intermediate_size": 64},
                      "vision": {"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "intermediate_size": 32}, "tokens_per_frame": 4}
    tiny_model(attention_only, None).save_pretrained(tmp_path / "transformer")
    assert probe.main(["--model", str(tmp_path / "transformer"), "--task", "mcq", "--frames", "8"]) == 1
    assert "has no Mamba layers" in capsys.readouterr().err
