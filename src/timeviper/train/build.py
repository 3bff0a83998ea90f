"""The model a training config asks for (from HF parts, a TimeViper directory, or a tiny random config),
and a training checkpoint exported as a TimeViper directory."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from timeviper.errors import CheckpointError, ConfigError
from timeviper.llm.config import LMConfig
from timeviper.evidence import EvidenceAttention
from timeviper.model import TimeViper, TimeViperConfig
from timeviper.prompts import TextTokenizer
from timeviper.train.checkpoint import MARKER, latest_checkpoint, load_model_weights
from timeviper.train.config import Config, load_config
from timeviper.train.distributed import DistEnv


def tiny_model(spec: dict, transv: str | None, time_period: float | None = None) -> TimeViper:
    """A random TimeViper from {llm: LMConfig fields, vision: SiglipVisionConfig fields, tokens_per_frame},
    with the synthetic world's tokenizer."""
    from timeviper.synth.tokenizer import train_tokenizer

    unknown = set(spec) - {"llm", "vision", "tokens_per_frame", "vocab_size"}
    if unknown or "llm" not in spec or "vision" not in spec:
        raise ConfigError(f"model.tiny needs llm and vision (and optionally tokens_per_frame, vocab_size); "
                          f"unknown keys: {sorted(unknown)}")
    allowed = {f.name for f in fields(LMConfig)}
    bad = set(spec["llm"]) - allowed
    if bad:
        raise ConfigError(f"model.tiny.llm: unknown LMConfig fields {sorted(bad)}")
    tokenizer = TextTokenizer(train_tokenizer(vocab_size=spec.get("vocab_size", 1024)), "timeviper")
    llm = LMConfig(**{"vocab_size": tokenizer.vocab_size, **spec["llm"]})
    config = TimeViperConfig(llm, spec["vision"], spec.get("tokens_per_frame", 16), transv or "none",
                             chat_template="timeviper", time_period=time_period)
    return TimeViper(config, tokenizer)


def build_model(config: Config, dtype: torch.dtype = torch.float32, device=None) -> TimeViper:
    """The model of `config` with its weights in `dtype` (float32: the master weights that training
    updates; bf16 compute comes from autocast or FSDP2's mixed precision) on `device` (default: CPU)."""
    m = config.model
    if m.llm is not None:
        model = TimeViper.from_parts(m.vision, m.llm, transv=m.transv or "none", dtype=dtype, device=device,
                                     time_period=m.time_period)
    elif m.pretrained is not None:
        model = TimeViper.from_pretrained(None if m.pretrained == "embedded" else m.pretrained, dtype, device)
        if m.transv is not None:
            model.set_transv(m.transv)
        if m.time_period is not None:  # a new embedding starts at zero; one of that period is kept
            model.set_time_period(m.time_period)
    else:
        model = tiny_model(m.tiny, m.transv, m.time_period).to(device=device, dtype=dtype)
    if m.instruction_before_video is not None:
        model.config.instruction_before_video = m.instruction_before_video
    if m.transv_train_shares is not None:
        if not any(t.spec.strategy == "uniform" for t in model.transv_layers.values()):
            raise ConfigError(f"model.transv_train_shares needs a uniform TransV layer; the model's TransV is "
                              f"{model.config.transv!r}")
        model.train_shares = tuple(float(x) for x in m.transv_train_shares)
    if config.train.evidence_weight:
        model.evidence_attention = EvidenceAttention(tuple(config.train.evidence_layers), config.train.evidence_weight)
        model.evidence_attention.check(model.config.llm)
    model.vision.trainable = "vision" in config.train.trainable
    return model


def export_checkpoint(checkpoint: str | Path, out: str | Path, dtype: torch.dtype = torch.float32,
                      logn_length: int | None = None, time_past_period: str | None = None) -> Path:
    """Write the model of a training checkpoint (or of the newest one in a run directory) to `out` as a
    TimeViper directory, weights as `dtype`, with `logn_length` (when given) as its logn attention length and
    `time_past_period` (when given) as what frames past its time period are told; returns the checkpoint used.

    The model is built afresh from the checkpoint's config.yaml (frozen parts from their pretrained
    directories) and receives the checkpoint's trained weights, in one process on the CPU. Its
    `trained_frames` becomes the most frames a sample of this run's data can hold, or the pretrained
    model's own where that is more.
    """
    checkpoint = Path(checkpoint)
    found = checkpoint if (checkpoint / MARKER).is_file() else latest_checkpoint(checkpoint)
    if found is None:
        raise CheckpointError(f"{checkpoint} is neither a complete training checkpoint nor a run directory holding one")
    config = load_config(found / "config.yaml")
    model = build_model(config, dtype)
    random_init = config.model.tiny is not None  # no pretrained source: every weight must be in the checkpoint
    model.requires_grad_(random_init)
    load_model_weights(model, found, DistEnv(0, 0, 1, torch.device("cpu")), require_all=random_init)
    if logn_length is not None:
        model.set_logn_attention(logn_length)
    if time_past_period is not None:
        model.set_time_past_period(time_past_period)
    model.config.trained_frames = max(model.config.trained_frames or 0, config.data.most_frames())
    model.save_pretrained(out)
    return found
