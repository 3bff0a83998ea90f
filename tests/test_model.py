"""TimeViper assembly: save/load, from_parts, chat on paths and tensors, the training forward."""

import json

import pytest
import torch
from transformers import SiglipVisionConfig

from timeviper.errors import CheckpointError, ConfigError
from timeviper.llm import HybridLM, LMConfig
from timeviper.model import TimeViper, TimeViperConfig
from timeviper.prompts import TextTokenizer, encode_conversation
from timeviper.synth.tokenizer import train_tokenizer
from timeviper.vision.siglip import VisionEncoder

LLM = LMConfig(vocab_size=1024, hidden_size=32, pattern="M-M*-M-*-", num_heads=4, num_kv_heads=2, head_dim=8,
               intermediate_size=48, mamba_num_heads=4, mamba_head_dim=8, mamba_groups=2, ssm_state_size=8,
               chunk_size=8)
VISION = SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=48).to_dict()


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer(train_tokenizer(vocab_size=1024), "timeviper")


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    m = TimeViper(TimeViperConfig(LLM, VISION, tokens_per_frame=4, transv="uni_2_0.5-attn_3_0.5",
                                  chat_template="timeviper"), tokenizer).eval()
    with torch.no_grad():
        for t in m.transv.values():
            t.alpha.fill_(0.5)
    return m


def frames(n, seed=0):
    return torch.randint(0, 256, (n, 40, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_chat_on_frames_is_deterministic(model):
    a = model.chat(frames(6), "What is shown?", max_new_tokens=5)
    b = model.chat(frames(6), "What is shown?", max_new_tokens=5, chunk_frames=4)
    assert isinstance(a, str) and a == b


def test_save_and_load_roundtrip(model, tmp_path):
    model.save_pretrained(tmp_path)
    back = TimeViper.from_pretrained(tmp_path)
    assert back.config.transv == "uni_2_0.5-attn_3_0.5"
    for (name, p), (_, q) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(p, q), name
    assert back.chat(frames(5), "Describe.", max_new_tokens=4) == model.chat(frames(5), "Describe.", max_new_tokens=4)


def test_instruction_before_video_reaches_the_prefill_and_round_trips(model, tmp_path):
    """The vision tokens are read after the instruction, so the same instruction after them answers differently."""
    video = model.embed_frames(frames(4))[None]
    logits = [model.prefill_tokens([video], "What is shown?")[1]]
    model.config.instruction_before_video = True
    try:
        logits.append(model.prefill_tokens([video], "What is shown?")[1])
        model.save_pretrained(tmp_path)
    finally:
        model.config.instruction_before_video = False
    assert not torch.allclose(*logits)
    assert json.loads((tmp_path / "config.json").read_text())["instruction_before_video"] is True
    back = TimeViper.from_pretrained(tmp_path)
    assert back.config.instruction_before_video is True
    torch.testing.assert_close(back.prefill_tokens([video], "What is shown?")[1], logits[1])
    with pytest.raises(ConfigError, match="instruction_before_video"):
        TimeViperConfig(LLM, VISION, transv="none", instruction_before_video="yes")


def test_trained_frames_round_trips_and_is_checked(model, tmp_path):
    model.config.trained_frames = 256
    try:
        model.save_pretrained(tmp_path)
    finally:
        model.config.trained_frames = None
    assert json.loads((tmp_path / "config.json").read_text())["trained_frames"] == 256
    assert TimeViper.from_pretrained(tmp_path).config.trained_frames == 256
    model.save_pretrained(tmp_path / "unrecorded")
    assert "trained_frames" not in json.loads((tmp_path / "unrecorded" / "config.json").read_text())
    for bad in (0, 2.5, "256", True):
        with pytest.raises(ConfigError, match="trained_frames"):
            TimeViperConfig(LLM, VISION, transv="none", trained_frames=bad)


def test_chat_on_a_video_file(model, tmp_path):
    from timeviper.synth.render import write_mp4
    from timeviper.synth.world import make_video

    path = write_mp4(make_video(7, 12), tmp_path / "v.mp4", size=32)
    assert isinstance(model.chat(str(path), "What happens?", max_new_tokens=3, max_frames=8), str)


def test_batched_generation_of_different_lengths(model):
    reqs = [(iter([frames(3)]), "one"), (iter([frames(9, 1)]), "two")]
    batched = model.generate(reqs, max_new_tokens=4)
    alone = [model.generate([(iter([frames(3)]), "one")], max_new_tokens=4)[0],
             model.generate([(iter([frames(9, 1)]), "two")], max_new_tokens=4)[0]]
    assert batched == alone


ANSWERS = ((3, "A red circle."), (2, "Scene 1: a blue square, then a green star moving left."))


def packed_batch(tokenizer, answers) -> dict:
    """A micro-batch of (frames, answer) samples laid out as timeviper.data.packing does (4 tokens a frame)."""
    ids, labels, spans, ends, bounds, vids = [], [], [], [], [0], []
    for n, answer in answers:
        enc = encode_conversation(tokenizer, [{"from": "human", "value": "<video>\nWhat?"},
                                              {"from": "gpt", "value": answer}])
        k = n * 4
        off = bounds[-1]
        seq = enc.ids[:enc.vision_at] + [0] * k + enc.ids[enc.vision_at:]
        lab = enc.labels[:enc.vision_at] + [-100] * k + enc.labels[enc.vision_at:]
        ids += seq
        labels += lab[1:] + [-100]
        spans.append((off + enc.vision_at, off + enc.vision_at + k))
        ends.append(off + enc.instruction_end + k)
        bounds.append(off + len(seq))
        vids.append(frames(n, seed=n))
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
            "position_ids": torch.zeros(1, len(ids), dtype=torch.long), "cu_seqlens": torch.tensor(bounds),
            "vision_spans": torch.tensor(spans), "instruction_ends": torch.tensor(ends), "frames": vids,
            "frame_times": [torch.arange(len(v), dtype=torch.float64) for v in vids]}


def test_forward_train_packs_two_samples(model, tokenizer):
    model.train()
    batch = packed_batch(tokenizer, ANSWERS)
    loss, count = model.forward_train(batch)
    assert count == int((batch["labels"] != -100).sum()) and torch.isfinite(loss)
    loss.backward()
    assert model.projector.mlp[0].weight.grad.abs().sum() > 0
    assert model.transv["2"].q_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vision.parameters())
    model.zero_grad()
    model.eval()


def test_forward_train_under_bf16_autocast_follows_float32(model, tokenizer):
    """The trainer runs the packed forward under bf16 autocast on one GPU; CPU autocast casts the same ops."""
    batch = packed_batch(tokenizer, ANSWERS)
    with torch.no_grad():
        exact, _ = model.forward_train(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed, _ = model.forward_train(batch)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, exact, rtol=2e-2, atol=0)


def test_sample_average_weighs_every_sample_alike(model, tokenizer):
    with torch.no_grad():
        alone = [model.forward_train(packed_batch(tokenizer, [a])) for a in ANSWERS]  # (sum, tokens) each
        loss, count = model.forward_train(packed_batch(tokenizer, ANSWERS), average="sample")
    assert alone[0][1] != alone[1][1] and count == 2
    torch.testing.assert_close(loss, sum(s / n for s, n in alone), rtol=1e-5, atol=1e-5)


def test_from_parts(tmp_path, tokenizer):
    torch.manual_seed(0)
    VisionEncoder(SiglipVisionConfig(**VISION)).save_pretrained(tmp_path / "siglip")
    HybridLM(LLM).save_pretrained(tmp_path / "llm")
    tokenizer.save(tmp_path / "llm")
    model = TimeViper.from_parts(tmp_path / "siglip", tmp_path / "llm", transv="uni_2_0.5", tokens_per_frame=4,
                                 chat_template="timeviper")
    assert model.transv["2"].alpha.item() == 0.0
    assert isinstance(model.chat(frames(3), "Hi", max_new_tokens=2), str)
    timed = TimeViper.from_parts(tmp_path / "siglip", tmp_path / "llm", transv="none", tokens_per_frame=4,
                                 chat_template="timeviper", time_period=64)
    assert timed.config.time_period == 64 and timed.projector.time.proj.weight.abs().sum() == 0


def test_logn_attention_reaches_every_attention(tokenizer):
    m = TimeViper(TimeViperConfig(LLM.replace(), VISION, tokens_per_frame=4, transv="uni_2_0.5",
                                  chat_template="timeviper"), tokenizer)
    m.set_logn_attention(64)
    m.set_transv("uni_2_0.5-attn_3_0.5")  # a module made after the setting takes it too
    assert [b.mixer.logn_length for b in m.llm.layers if b.kind == "attention"] == [64, 64]
    assert [t.logn_length for t in m.transv.values()] == [64, 64]
    assert m.config.to_dict()["llm"]["logn_attention_length"] == 64
    m.set_logn_attention(None)
    assert {t.logn_length for t in m.transv.values()} == {None} and "logn_attention_length" not in m.config.to_dict()["llm"]


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        TimeViper.from_pretrained(tmp_path)
    HybridLM(LLM).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="expected 'timeviper'"):
        TimeViper.from_pretrained(tmp_path)


def test_bad_frames_and_specs(model):
    with pytest.raises(ConfigError, match="uint8"):
        model.chat(torch.zeros(3, 8, 8, 3), "x")
    with pytest.raises(ConfigError, match="needs an attention layer"):
        TimeViperConfig(LLM, VISION, transv="attn_2_0.5")


def test_stop_strings_end_generation(model):
    full = model.chat(frames(4), "Go on.", max_new_tokens=12)
    if len(full) < 4:
        pytest.skip("the random model stopped by itself")
    stop = full[2:4]
    cut = model.chat(frames(4), "Go on.", max_new_tokens=12, stop=[stop])
    assert cut == full[:full.find(stop)].strip()


def test_weights_saved_in_bfloat16_load_as_their_rounded_values(model, tmp_path):
    from safetensors import safe_open

    model.save_pretrained(tmp_path, dtype=torch.bfloat16)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    loaded = TimeViper.from_pretrained(tmp_path)
    assert loaded.dtype == torch.float32
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a.to(torch.bfloat16).float(), b), name


def test_videos_embedded_together_equal_each_alone(model, monkeypatch):
    """Frames of several videos (different sizes) share encoder chunks, cut across videos, in order."""
    import timeviper.model

    videos = [frames(3, seed=1), torch.randint(0, 256, (5, 24, 30, 3), dtype=torch.uint8), frames(1, seed=2)]
    alone = torch.cat([model.embed_frames(v) for v in videos])
    monkeypatch.setattr(timeviper.model, "VISION_CHUNK_ELEMENTS",
                        4 * model.vision.num_patches * model.vision.config.hidden_size)
    together = model.embed_frames(videos)  # chunks of 4 frames: [3 + 1], [4], [1]
    assert together.shape == (9 * model.config.tokens_per_frame, LLM.hidden_size)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_training_builds_float32_master_weights_from_bf16_checkpoints(tmp_path, tokenizer):
    from timeviper.train import config_from_dict
    from timeviper.train.build import build_model

    VisionEncoder(SiglipVisionConfig(**VISION)).to(torch.bfloat16).save_pretrained(tmp_path / "siglip")
    HybridLM(LLM).to(torch.bfloat16).save_pretrained(tmp_path / "llm")
    tokenizer.save(tmp_path / "llm")
    assert json.loads((tmp_path / "llm" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    config = config_from_dict({
        "model": {"llm": str(tmp_path / "llm"), "vision": str(tmp_path / "siglip"), "transv": "uni_2_0.5"},
        "train": {"max_steps": 1, "global_batch_tokens": 256, "micro_batch_tokens": 256},
        "data": {"datasets": [{"synth": {"task": "mcq", "seeds": [0, 10], "frames": 4}}]},
    })
    assert {p.dtype for p in build_model(config).parameters()} == {torch.float32}
