"""Bad checkpoint directories give one CheckpointError that names the problem."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from timeviper.errors import CheckpointError
from timeviper.llm import HybridLM, LMConfig

TINY = LMConfig(vocab_size=50, hidden_size=32, pattern="M*-", num_heads=2, num_kv_heads=1, head_dim=16,
                intermediate_size=48, mamba_num_heads=4, mamba_head_dim=8, mamba_groups=1, ssm_state_size=8,
                chunk_size=4)


@pytest.fixture
def ckpt(tmp_path):
    HybridLM(TINY).save_pretrained(tmp_path)
    return tmp_path


def _edit_weights(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        HybridLM.from_pretrained(tmp_path / "nope")


def test_no_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        HybridLM.from_pretrained(ckpt)


def test_unknown_model_type(ckpt):
    raw = json.loads((ckpt / "config.json").read_text())
    raw["model_type"] = "llama"
    (ckpt / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="unknown model_type 'llama'"):
        HybridLM.from_pretrained(ckpt)


def test_missing_unexpected_and_misshaped_named(ckpt):
    def edit(t):
        del t["backbone.layers.0.mixer.A_log"]
        t["backbone.layers.9.mixer.extra"] = torch.zeros(3)
        t["backbone.norm_f.weight"] = torch.zeros(7)
    _edit_weights(ckpt, edit)
    with pytest.raises(CheckpointError) as err:
        HybridLM.from_pretrained(ckpt)
    message = str(err.value)
    for needle in ("layers.0.mixer.A_log", "backbone.layers.9.mixer.extra", "backbone.norm_f.weight: checkpoint (7,)"):
        assert needle in message


def test_corrupt_weights_file(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        HybridLM.from_pretrained(ckpt)


def test_bad_config_json(ckpt):
    (ckpt / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        HybridLM.from_pretrained(ckpt)


def test_unsupported_layer_kind(ckpt):
    raw = json.loads((ckpt / "config.json").read_text())
    raw["hybrid_override_pattern"] = "ME-"
    (ckpt / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="invalid"):
        HybridLM.from_pretrained(ckpt)


def test_missing_shard_named(ckpt):
    HybridLM(TINY).save_pretrained(ckpt, max_shard_bytes=4000)
    shard = sorted(ckpt.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        HybridLM.from_pretrained(ckpt)


def test_loads_on_meta_first(ckpt, monkeypatch):
    """Parameters are built on the meta device and allocated once: no real tensor is initialised."""
    devices = []
    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", lambda t, *a, **k: devices.append(t.device.type))
    HybridLM.from_pretrained(ckpt)
    assert devices and set(devices) == {"meta"}
