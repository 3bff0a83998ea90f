"""timeviper.surgery (growing an LM, blending a model trained further with its base) and its scripts,
scripts/grow_lm.py and scripts/blend_lm.py."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from timeviper import TimeViper
from timeviper.data.synth_source import sample_video
from timeviper.errors import ConfigError
from timeviper.model import frame_chunks
from timeviper.surgery import blend, grow, parse_insert, parse_inserts
from timeviper.synth import make_item
from timeviper.transv import parse_transv

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def guided_layer(model: TimeViper) -> int:
    """The layer of the model's attention-guided TransV."""
    (layer,) = (spec.layer for spec in parse_transv(model.config.transv) if spec.kind == "attn")
    return layer


def test_grow_lm_inserts_identity_blocks_and_moves_transv(tmp_path):
    out = tmp_path / "grown"
    subprocess.run([sys.executable, SCRIPTS / "grow_lm.py", out, "--insert", "9:M*-", "--insert", "14:-"],
                   check=True, capture_output=True)
    shipped, grown = TimeViper.from_pretrained(None, torch.float32), TimeViper.from_pretrained(out, torch.float32)
    pattern = shipped.config.llm.pattern
    assert grown.config.llm.pattern == pattern[:9] + "M*-" + pattern[9:14] + "-" + pattern[14:]
    attention, guided = pattern.rindex("*"), guided_layer(shipped)  # both past layer 14: 4 blocks before them
    assert grown.config.transv == shipped.config.transv.replace(f"attn_{guided}_", f"attn_{guided + 4}_")
    old, new = shipped.state_dict(), grown.state_dict()
    assert torch.equal(new[f"llm.layers.{attention + 4}.mixer.q_proj.weight"],
                       old[f"llm.layers.{attention}.mixer.q_proj.weight"])
    assert torch.equal(new[f"transv.{guided + 4}.o_proj.weight"], old[f"transv.{guided}.o_proj.weight"])
    for name in ("9.mixer.out_proj", "10.mixer.o_proj", "11.mixer.down_proj", "17.mixer.down_proj"):
        assert not new[f"llm.layers.{name}.weight"].any(), name
    assert new["llm.layers.9.mixer.in_proj.weight"].std() > 0  # fresh, not zero: it learns once out_proj does

    spec, item = make_item("mcq", 1100000, 24, 64)
    video = sample_video(spec, None, "uniform")
    logits = [model.prefill(frame_chunks(video), item["question"])[1] for model in (shipped, grown)]
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=1e-5)
    with torch.no_grad():
        grown.llm.layers[9].mixer.out_proj.weight.normal_(std=0.02)  # a trained block changes the answer
    assert not torch.allclose(grown.prefill(frame_chunks(video), item["question"])[1], logits[0], atol=1e-3)

    again = subprocess.run([sys.executable, SCRIPTS / "grow_lm.py", out, "--insert", "9:M"],
                           capture_output=True, text=True)
    assert again.returncode != 0 and "already holds a model" in again.stderr  # the first model is kept
    assert TimeViper.from_pretrained(out, torch.float32).config.llm.pattern == grown.config.llm.pattern

    with pytest.raises(ConfigError, match=f"layers 0..{len(pattern) - 1}"):
        grow(shipped, {len(pattern) + 1: "M"})
    with pytest.raises(ConfigError, match="LAYER:SYMBOLS"):
        parse_insert("9:MX")
    with pytest.raises(ConfigError, match="names a layer twice"):
        parse_inserts(["9:M", "9:-"])


def trained_further(model: TimeViper, seed: int) -> TimeViper:
    """`model` with every weight moved, as training would."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(torch.randn_like(weight), alpha=0.01)
    return model


def test_blend_mixes_shared_weights_and_keeps_grown_blocks(tmp_path):
    shipped = TimeViper.from_pretrained(None, torch.float32)
    tuned = trained_further(grow(shipped, {9: "M*-"}), seed=1)
    tuned.save_pretrained(tmp_path / "tuned")
    subprocess.run([sys.executable, SCRIPTS / "blend_lm.py", tmp_path / "blend", "--model", tmp_path / "tuned",
                    "--alpha", "0.25", "--insert", "9:M*-"], check=True, capture_output=True)
    blended = TimeViper.from_pretrained(tmp_path / "blend", torch.float32)
    old, own, mixed = shipped.state_dict(), tuned.state_dict(), blended.state_dict()
    attention, guided = shipped.config.llm.pattern.rindex("*"), guided_layer(shipped)  # past layer 9: moved by 3
    for new_name, old_name in ((f"llm.layers.{attention + 3}.mixer.q_proj.weight",
                                f"llm.layers.{attention}.mixer.q_proj.weight"),
                               ("llm.layers.4.mixer.in_proj.weight", "llm.layers.4.mixer.in_proj.weight"),
                               (f"transv.{guided + 3}.o_proj.weight", f"transv.{guided}.o_proj.weight"),
                               ("projector.mlp.0.weight", "projector.mlp.0.weight")):
        torch.testing.assert_close(mixed[new_name], 0.25 * own[new_name] + 0.75 * old[old_name])
    for name in ("llm.layers.9.mixer.in_proj.weight", "llm.layers.10.mixer.o_proj.weight"):  # grown: kept
        assert torch.equal(mixed[name], own[name]), name
    assert blended.config.extra["blend"] == {"alpha": 0.25, "base": "embedded", "inserts": ["9:M*-"], "kept": []}
    assert blended.config.transv == tuned.config.transv == shipped.config.transv.replace(
        f"attn_{guided}_", f"attn_{guided + 3}_")

    spec, item = make_item("mcq", 1100000, 24, 64)
    video = sample_video(spec, None, "uniform")
    moved = trained_further(TimeViper.from_pretrained(None, torch.float32), seed=2)
    logits = [model.prefill(frame_chunks(video), item["question"])[1] for model in (moved, shipped)]
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)
    back = blend(moved, shipped, 0.0)  # alpha 0: the base's answers
    torch.testing.assert_close(back.prefill(frame_chunks(video), item["question"])[1], logits[1])


def test_blend_keeps_the_tuned_weights_under_a_kept_prefix():
    shipped = TimeViper.from_pretrained(None, torch.float32)
    tuned = trained_further(TimeViper.from_pretrained(None, torch.float32), seed=3)
    own = {k: v.clone() for k, v in tuned.state_dict().items()}
    mixed = blend(tuned, shipped, 0.5, keep=("vision.", "projector.")).state_dict()
    old = shipped.state_dict()
    for name in ("vision.model.embeddings.patch_embedding.weight", "projector.mlp.0.weight"):
        assert torch.equal(mixed[name], own[name]), name
    name = "llm.layers.4.mixer.in_proj.weight"
    torch.testing.assert_close(mixed[name], 0.5 * own[name] + 0.5 * old[name])
    with pytest.raises(ConfigError, match="no weight's name starts with 'visoin.'"):
        blend(tuned, shipped, 0.5, keep=("visoin.",))


@pytest.mark.parametrize("args, error", [
    (["--alpha", "1.5", "--insert", "9:M*-"], "alpha must be in"),
    ([], "blend a model with the one it was trained from"),  # the inserts left out
    (["--insert", "8:M*-"], "blend a model with the one it was trained from"),  # inserted elsewhere
    (["--base", "nowhere", "--insert", "9:M*-"], "has no config.json")])
def test_blend_lm_refuses_what_does_not_match(tmp_path, args, error):
    grow(TimeViper.from_pretrained(None, torch.float32), {9: "M*-"}).save_pretrained(tmp_path / "tuned")
    failed = subprocess.run([sys.executable, SCRIPTS / "blend_lm.py", tmp_path / "out", "--model", tmp_path / "tuned",
                             *args], capture_output=True, text=True, cwd=tmp_path)
    assert failed.returncode == 2 and error in failed.stderr and "Traceback" not in failed.stderr
    assert not (tmp_path / "out").exists()
