import json
import re

import pytest
import torch
from safetensors.torch import save_file
from transformers import SiglipConfig, SiglipModel, SiglipTextConfig, SiglipVisionConfig, SiglipVisionModel

from timeviper.errors import CheckpointError, ConfigError
from timeviper.vision import VisionEncoder

TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=42,
            patch_size=14)  # 9 patches


@pytest.fixture(scope="module")
def reference():
    """A random transformers SiglipVisionModel, pooling head included (the encoder must ignore it)."""
    torch.manual_seed(0)
    return SiglipVisionModel(SiglipVisionConfig(**TINY, vision_use_head=True)).eval()


@pytest.fixture
def pixels():
    return torch.randn(5, 3, 42, 42)


def hidden_states(model, pixels):
    with torch.no_grad():
        out = model(pixels, output_hidden_states=True)
    return out.last_hidden_state, out.hidden_states


def to_timm(state):
    """SiglipVisionModel names -> timm vit_*_siglip names (the mapping VisionEncoder undoes)."""
    out = {}
    for key, t in state.items():
        if m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", key):
            parts = [state[f"encoder.layers.{m[1]}.self_attn.{n}_proj.{m[2]}"] for n in "qkv"]
            out[f"blocks.{m[1]}.attn.qkv.{m[2]}"] = torch.cat(parts)
        elif not re.search(r"\.[kv]_proj\.", key):
            for pattern, target in [(r"embeddings\.patch_embedding\.", "patch_embed.proj."),
                                    (r"embeddings\.position_embedding\.weight", "pos_embed"),
                                    (r"encoder\.layers\.(\d+)\.layer_norm(\d)", r"blocks.\1.norm\2"),
                                    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj", r"blocks.\1.attn.proj"),
                                    (r"encoder\.layers\.(\d+)\.mlp", r"blocks.\1.mlp"),
                                    (r"post_layernorm", "norm"), (r"head\.probe", "attn_pool.latent"),
                                    (r"head\.", "attn_pool.")]:
                key = re.sub(pattern, target, key)
            out[key] = t[None] if key == "pos_embed" else t
    return {k: v.contiguous() for k, v in out.items()}


def save_timm(reference, path, prefix="", extra=None, heads=True):
    path.mkdir()
    state = {prefix + k: v for k, v in to_timm(reference.state_dict()).items()}
    save_file({**state, **(extra or {})}, path / "model.safetensors")
    if heads:
        (path / "vision_config.json").write_text(json.dumps({"num_attention_heads": 2}))
    return path


def test_hf_layout_matches_transformers(reference, pixels, tmp_path):
    reference.save_pretrained(tmp_path / "hf")
    encoder = VisionEncoder.from_pretrained(tmp_path / "hf")
    last, states = hidden_states(reference, pixels)
    torch.testing.assert_close(encoder.encode(pixels, chunk_size=2), last, atol=1e-5, rtol=1e-5)
    penultimate = VisionEncoder.from_pretrained(tmp_path / "hf", feature_layer=-2)
    torch.testing.assert_close(penultimate.encode(pixels), states[-2], atol=1e-5, rtol=1e-5)
    assert penultimate.depth == 2  # the last layer is never run
    assert encoder.num_patches == 9 and encoder.config.hidden_size == 32


def test_full_siglip_checkpoint_skips_text_tower(pixels, tmp_path):
    text = SiglipTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                            vocab_size=50)
    model = SiglipModel(SiglipConfig(text_config=text.to_dict(), vision_config=TINY)).eval()
    model.save_pretrained(tmp_path / "full")
    encoder = VisionEncoder.from_pretrained(tmp_path / "full")
    torch.testing.assert_close(encoder.encode(pixels), hidden_states(model.vision_model, pixels)[0],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prefix", ["", "visual.trunk."])
def test_timm_layout_matches_transformers(reference, pixels, tmp_path, prefix):
    extra = {"text.token_embedding.weight": torch.zeros(4, 4), "logit_scale": torch.zeros(1)} if prefix else {}
    encoder = VisionEncoder.from_pretrained(save_timm(reference, tmp_path / "timm", prefix, extra))
    assert encoder.config.num_hidden_layers == 3 and encoder.config.image_size == 42
    torch.testing.assert_close(encoder.encode(pixels), hidden_states(reference, pixels)[0], atol=1e-5, rtol=1e-5)


def test_timm_heads_of_known_widths_need_no_json(tmp_path):
    model = SiglipVisionModel(SiglipVisionConfig(hidden_size=768, intermediate_size=16, num_hidden_layers=1,
                                                 num_attention_heads=12, image_size=28, patch_size=14))
    encoder = VisionEncoder.from_pretrained(save_timm(model, tmp_path / "timm", heads=False))
    assert encoder.config.num_attention_heads == 12


def test_timm_unknown_width_asks_for_heads(reference, tmp_path):
    with pytest.raises(CheckpointError, match="num_attention_heads.*vision_config.json"):
        VisionEncoder.from_pretrained(save_timm(reference, tmp_path / "timm", heads=False))


def test_save_pretrained_round_trip(reference, pixels, tmp_path):
    reference.save_pretrained(tmp_path / "hf")
    encoder = VisionEncoder.from_pretrained(tmp_path / "hf")
    encoder.save_pretrained(tmp_path / "again")
    again = VisionEncoder.from_pretrained(tmp_path / "again")
    torch.testing.assert_close(again.encode(pixels), encoder.encode(pixels), atol=0, rtol=0)
    plain = SiglipVisionModel.from_pretrained(tmp_path / "again").eval()  # readable by transformers too
    torch.testing.assert_close(hidden_states(plain, pixels)[0], encoder.encode(pixels), atol=1e-5, rtol=1e-5)


def test_frozen_by_default_and_trainable_on_request(reference, pixels, tmp_path):
    reference.save_pretrained(tmp_path / "hf")
    frozen = VisionEncoder.from_pretrained(tmp_path / "hf")
    frozen.train()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert not frozen.encode(pixels).requires_grad
    trainable = VisionEncoder.from_pretrained(tmp_path / "hf", trainable=True)
    trainable.train()
    assert trainable.training
    trainable.encode(pixels).sum().backward()
    assert trainable.model.embeddings.patch_embedding.weight.grad is not None


def test_dtype_and_random_init():
    encoder = VisionEncoder(SiglipVisionConfig(**TINY)).to(torch.bfloat16)
    out = encoder.encode(torch.randn(3, 3, 42, 42))  # float32 input is cast to the encoder's dtype
    assert out.shape == (3, 9, 32) and out.dtype == torch.bfloat16


def test_bad_inputs(reference, tmp_path):
    encoder = VisionEncoder(SiglipVisionConfig(**TINY))
    with pytest.raises(ConfigError, match=r"pixel_values must be \[T, 3, 42, 42\]"):
        encoder.encode(torch.zeros(2, 3, 384, 384))
    with pytest.raises(ConfigError, match="feature_layer"):
        VisionEncoder(SiglipVisionConfig(**TINY), feature_layer=0)


def checkpoint_with(reference, path, drop=(), add=None, config=None):
    reference.save_pretrained(path)
    state = {k: v for k, v in reference.state_dict().items() if k not in drop}
    save_file({**state, **(add or {})}, path / "model.safetensors")
    if config:
        (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("change,message", [
    (dict(drop=["encoder.layers.2.mlp.fc1.bias"]), "missing: encoder.layers.2.mlp.fc1.bias"),
    (dict(add={"encoder.layers.9.extra": torch.zeros(2)}), "unexpected: encoder.layers.9.extra"),
    (dict(config={"model_type": "siglip_vision_model", **TINY, "intermediate_size": 64}),
     r"mis-shaped: .*encoder.layers.0.mlp.fc1.weight \[48, 32\] \(model: \[64, 32\]\)"),
    (dict(config={"model_type": "llama"}), "model_type 'llama' is not a SigLIP model"),
])
def test_weights_that_do_not_fit(reference, tmp_path, change, message):
    with pytest.raises(CheckpointError, match=message):
        VisionEncoder.from_pretrained(checkpoint_with(reference, tmp_path / "bad", **change))


def test_unusable_directories(reference, tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        VisionEncoder.from_pretrained(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        VisionEncoder.from_pretrained(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    save_file({"wte.weight": torch.zeros(2, 2)}, tmp_path / "other" / "model.safetensors")
    with pytest.raises(CheckpointError, match="neither an HF SigLIP checkpoint"):
        VisionEncoder.from_pretrained(tmp_path / "other")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        VisionEncoder.from_pretrained(tmp_path / "broken")
