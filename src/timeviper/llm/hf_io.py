"""Read and write HF-layout checkpoint directories (config.json + safetensors) for HybridLM.

Weights stream tensor by tensor from safetensors into a model whose parameters were allocated once,
on the target device and in the target dtype, so a 9B checkpoint never needs twice its size in RAM.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from timeviper.errors import CheckpointError, ConfigError
from timeviper.llm.config import LMConfig, pattern_from_layer_types

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# --- config.json <-> LMConfig -----------------------------------------------------------------------
# (our field, config.json keys in order of preference)
_NEMOTRON_FIELDS = [
    ("vocab_size", ["vocab_size"]), ("hidden_size", ["hidden_size"]),
    ("norm_eps", ["layer_norm_epsilon"]), ("tie_word_embeddings", ["tie_word_embeddings"]),
    ("num_heads", ["num_attention_heads"]), ("num_kv_heads", ["num_key_value_heads"]), ("head_dim", ["head_dim"]),
    ("attention_bias", ["attention_bias"]), ("intermediate_size", ["intermediate_size"]), ("mlp_bias", ["mlp_bias"]),
    ("mamba_num_heads", ["mamba_num_heads"]), ("mamba_head_dim", ["mamba_head_dim"]),
    ("mamba_groups", ["n_groups", "mamba_n_groups"]), ("ssm_state_size", ["ssm_state_size"]),
    ("conv_kernel", ["conv_kernel", "mamba_d_conv"]), ("chunk_size", ["chunk_size", "mamba_chunk_size"]),
    ("mamba_proj_bias", ["use_bias"]), ("mamba_conv_bias", ["use_conv_bias", "mamba_conv_bias"]),
    ("time_step_limit", ["time_step_limit", "mamba_dt_limit"]),
]
_QWEN_FIELDS = [
    ("vocab_size", ["vocab_size"]), ("hidden_size", ["hidden_size"]), ("norm_eps", ["rms_norm_eps"]),
    ("tie_word_embeddings", ["tie_word_embeddings"]), ("num_heads", ["num_attention_heads"]),
    ("num_kv_heads", ["num_key_value_heads"]), ("head_dim", ["head_dim"]), ("intermediate_size", ["intermediate_size"]),
]
_TOKEN_FIELDS = [("bos_token_id", ["bos_token_id"]), ("eos_token_id", ["eos_token_id"]), ("pad_token_id", ["pad_token_id"])]
_LOGN = "logn_attention_length"
# keys that we derive or rewrite ourselves and so do not carry through `extra`
_DERIVED = {"model_type", "architectures", "hybrid_override_pattern", "layers_block_type", "layer_types",
            "num_hidden_layers", "rope_theta", "rope_parameters", "rope_scaling", "hidden_act", "mlp_hidden_act",
            "mamba_hidden_act", "use_sliding_window", "sliding_window", "max_window_layers", "torch_dtype", "dtype",
            "transformers_version", _LOGN}


def _json_value(value):
    """transformers 5 writes infinity as {"__float__": "Infinity"}; JSON itself cannot."""
    if isinstance(value, dict) and "__float__" in value:
        return float(value["__float__"])
    return [_json_value(v) for v in value] if isinstance(value, list) else value


def _take(raw: dict, fields) -> tuple[dict, set]:
    values, used = {}, set()
    for name, keys in fields:
        for key in keys:
            if key in raw and raw[key] is not None:
                values[name] = _json_value(raw[key])
                used.add(key)
                break
        used.update(k for k in keys if k in raw)
    return values, used


def config_from_hf(raw: dict) -> LMConfig:
    """LMConfig from the dict of a config.json; CheckpointError for what we cannot run."""
    model_type = raw.get("model_type")
    try:
        if model_type == "nemotron_h":
            values, used = _take(raw, _NEMOTRON_FIELDS + _TOKEN_FIELDS)
            if raw.get("hybrid_override_pattern"):
                values["pattern"] = raw["hybrid_override_pattern"]
            else:
                layers = raw.get("layers_block_type") or raw.get("layer_types")
                if not layers:
                    raise CheckpointError("nemotron_h config.json has neither hybrid_override_pattern nor a layer list")
                values["pattern"] = pattern_from_layer_types(layers)
            act = raw.get("mlp_hidden_act", "relu2")
            if act != "relu2":
                raise CheckpointError(f"nemotron_h mlp_hidden_act {act!r} is not supported (only relu2)")
            values.setdefault("head_dim", values["hidden_size"] // values["num_heads"])
        elif model_type in ("qwen2", "qwen3"):
            values, used = _take(raw, _QWEN_FIELDS + _TOKEN_FIELDS)
            values["pattern"] = "*-" * raw["num_hidden_layers"]
            values["mlp_act"] = "swiglu"
            values.setdefault("head_dim", values["hidden_size"] // values["num_heads"])
            values["attention_bias"] = True if model_type == "qwen2" else bool(raw.get("attention_bias", False))
            values["qk_norm"] = model_type == "qwen3"
            rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
            if rope.get("rope_type", rope.get("type", "default")) != "default":
                raise CheckpointError(f"{model_type} rope type {rope.get('rope_type')!r} is not supported (only default)")
            values["rope_theta"] = float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
            if raw.get("use_sliding_window"):
                raise CheckpointError(f"{model_type} with sliding-window attention is not supported")
            if raw.get("hidden_act", "silu") != "silu":
                raise CheckpointError(f"{model_type} hidden_act {raw['hidden_act']!r} is not supported (only silu)")
        else:
            raise CheckpointError(f"unknown model_type {model_type!r}: expected nemotron_h, qwen2 or qwen3")
        if raw.get(_LOGN) is not None:  # ours: transformers' classes ignore it
            values["logn_attention_length"] = raw[_LOGN]
        extra = {k: v for k, v in raw.items() if k not in used and k not in _DERIVED}
        return LMConfig(model_type=model_type, extra=extra, **values)
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{model_type} config.json is incomplete or invalid: {e}") from None


def config_to_hf(cfg: LMConfig, dtype: torch.dtype) -> dict:
    fields = _NEMOTRON_FIELDS if cfg.model_type == "nemotron_h" else _QWEN_FIELDS
    raw = {"model_type": cfg.model_type, **cfg.extra}
    for name, keys in fields + _TOKEN_FIELDS:
        value = getattr(cfg, name)
        raw[keys[0]] = list(value) if isinstance(value, tuple) else value
    if cfg.model_type == "nemotron_h":
        raw.update(architectures=["NemotronHForCausalLM"], hybrid_override_pattern=cfg.pattern,
                   mlp_hidden_act="relu2", mamba_hidden_act="silu")
    else:
        arch = "Qwen2ForCausalLM" if cfg.model_type == "qwen2" else "Qwen3ForCausalLM"
        raw.update(architectures=[arch], num_hidden_layers=cfg.num_layers // 2, hidden_act="silu",
                   rope_theta=cfg.rope_theta, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})
        if cfg.model_type == "qwen3":
            raw["attention_bias"] = cfg.attention_bias
    if cfg.logn_attention_length is not None:
        raw[_LOGN] = cfg.logn_attention_length
    raw["torch_dtype"] = str(dtype).removeprefix("torch.")
    if raw.get("time_step_limit") and math.isinf(raw["time_step_limit"][1]):
        raw["time_step_limit"] = [raw["time_step_limit"][0], 1e30]  # JSON has no infinity
    return raw


# --- weight names ------------------------------------------------------------------------------------
_QWEN_TO_OURS = [
    (r"model\.embed_tokens\.", lambda m: "embed_tokens."),
    (r"model\.norm\.", lambda m: "norm_f."),
    (r"model\.layers\.(\d+)\.input_layernorm\.", lambda m: f"layers.{2 * int(m[1])}.norm."),
    (r"model\.layers\.(\d+)\.self_attn\.", lambda m: f"layers.{2 * int(m[1])}.mixer."),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.", lambda m: f"layers.{2 * int(m[1]) + 1}.norm."),
    (r"model\.layers\.(\d+)\.mlp\.", lambda m: f"layers.{2 * int(m[1]) + 1}.mixer."),
]
_OURS_TO_QWEN = [
    (r"embed_tokens\.", lambda m: "model.embed_tokens."),
    (r"norm_f\.", lambda m: "model.norm."),
    (r"layers\.(\d+)\.norm\.",
     lambda m: f"model.layers.{int(m[1]) // 2}." + ("input_layernorm." if int(m[1]) % 2 == 0 else "post_attention_layernorm.")),
    (r"layers\.(\d+)\.mixer\.",
     lambda m: f"model.layers.{int(m[1]) // 2}." + ("self_attn." if int(m[1]) % 2 == 0 else "mlp.")),
]


def _rename(name: str, rules) -> str | None:
    for pattern, repl in rules:
        m = re.match(pattern, name)
        if m:
            return repl(m) + name[m.end():]
    return name if name.startswith("lm_head.") else None


def hf_to_ours(name: str, model_type: str) -> str | None:
    if model_type == "nemotron_h":  # the hub writes `backbone.`, transformers 5 `model.`
        name = re.sub(r"^(backbone|model)\.embeddings\.", "embed_tokens.", name)
        return re.sub(r"^(backbone|model)\.", "", name) if not name.startswith("lm_head.") else name
    return _rename(name, _QWEN_TO_OURS)


def ours_to_hf(name: str, model_type: str) -> str:
    if model_type == "nemotron_h":
        if name.startswith("lm_head."):
            return name
        return "backbone." + name.replace("embed_tokens.", "embeddings.", 1)
    return _rename(name, _OURS_TO_QWEN)


# --- loading -----------------------------------------------------------------------------------------
def read_config(path: str | Path) -> LMConfig:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{str(path)!r} has no config.json")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file} is not valid JSON: {e}") from None
    return config_from_hf(raw), raw


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index: {e}") from None
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise CheckpointError(f"{path}: shards named in the index are missing: {missing}")
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{str(path)!r} has no *.safetensors weights")
    return files


def load_weights(module: torch.nn.Module, files: list[Path], rename, device, skip=lambda name: False) -> None:
    """Copy every tensor of `files` into `module`'s parameters (named by `rename(file_key)`).

    Raises one CheckpointError listing unexpected, missing and mis-shaped weights.
    """
    targets = dict(module.state_dict(keep_vars=True))
    unexpected, misshaped, loaded = [], [], set()
    dev = str(device) if device is not None else "cpu"
    with torch.no_grad():
        for file in files:
            try:
                handle = safe_open(str(file), framework="pt", device=dev)
            except Exception as e:  # safetensors raises its own error types for corrupt files
                raise CheckpointError(f"cannot read {file}: {e}") from None
            with handle as f:
                for key in f.keys():
                    ours = rename(key)
                    if ours is None or ours not in targets:
                        if not skip(key):
                            unexpected.append(key)
                        continue
                    tensor = f.get_tensor(key)
                    if tuple(tensor.shape) != tuple(targets[ours].shape):
                        misshaped.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(targets[ours].shape)}")
                        continue
                    targets[ours].copy_(tensor)
                    loaded.add(ours)
    missing = sorted(set(targets) - loaded - _tied_names(module))
    problems = [f"{label} ({len(items)}): {items[:8]}{' ...' if len(items) > 8 else ''}"
                for label, items in (("unexpected", unexpected), ("missing", missing), ("mis-shaped", misshaped)) if items]
    if problems:
        raise CheckpointError(f"weights in {files[0].parent} do not fit the model: " + "; ".join(problems))


def _tied_names(module: torch.nn.Module) -> set:
    cfg = getattr(module, "config", None)
    return {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()


def load(path: str | Path, dtype: torch.dtype | None = None, device=None):
    from timeviper.llm.model import HybridLM

    path = Path(path)
    cfg, raw = read_config(path)
    files = weight_files(path)
    if dtype is None:
        dtype = DTYPES.get(raw.get("torch_dtype") or raw.get("dtype"), torch.float32)
    with torch.device("meta"):
        model = HybridLM(cfg).to(dtype)
    model.to_empty(device=device or "cpu")
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    load_weights(model, files, lambda k: hf_to_ours(k, cfg.model_type), device)
    return model.eval()


# --- saving ------------------------------------------------------------------------------------------
def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, max_shard_bytes: int) -> None:
    """Write `tensors` as model.safetensors, or shards + index when larger than `max_shard_bytes`.

    Each file is written under a temporary name and renamed into place, so an interrupted save never
    leaves a truncated file under a final name.
    """
    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        if current and size + t.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t.detach().contiguous().cpu()
        size += t.nbytes
    shards.append(current)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for shard, name in zip(shards, names):
        tmp = path / f".{name}.tmp"
        save_file(shard, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path / name)
    for stale in path.glob("model*.safetensors"):
        if stale.name not in names:
            stale.unlink()
    index_file = path / "model.safetensors.index.json"
    if len(shards) == 1:
        index_file.unlink(missing_ok=True)
    else:
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                 "weight_map": {k: n for shard, n in zip(shards, names) for k in shard}}
        write_json(index_file, index)


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def save(model, path: str | Path, max_shard_bytes: int = 5 * 2**30) -> None:
    cfg = model.config
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tied = _tied_names(model)
    tensors = {ours_to_hf(k, cfg.model_type): v for k, v in model.state_dict().items() if k not in tied}
    write_safetensors(tensors, path, max_shard_bytes)
    write_json(path / "config.json", config_to_hf(cfg, model.embed_tokens.weight.dtype))
