"""SigLIP vision encoder (transformers' SiglipVisionModel without its pooling head), loadable from a
local HF or timm checkpoint directory.

HF layout: config.json with model_type "siglip_vision_model", or "siglip" (a full SiglipModel: the
text tower and logit scale/bias are skipped), and *.safetensors with or without the "vision_model."
prefix. timm layout (e.g. vit_so400m_patch14_siglip_384, also open_clip's "visual.trunk." prefix): no HF
config; the config is read off the tensor shapes, except the number of attention heads, known for the
SigLIP widths (768, 1024, 1152, 1536) and otherwise taken from a vision_config.json beside the weights
({"num_attention_heads": N}, any SiglipVisionConfig field). The pooling head is never loaded.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel

from timeviper.errors import CheckpointError, ConfigError

HF_MODEL_TYPES = ("siglip", "siglip_vision_model")
SIGLIP_HEADS = {768: 12, 1024: 16, 1152: 16, 1536: 16}  # width -> heads of the released SigLIP ViTs
OVERRIDES_FILE = "vision_config.json"

_HF_SKIP = re.compile(r"text_model\..*|logit_scale|logit_bias|head\..*")  # after the prefix is gone
_TIMM_SKIP = re.compile(r"attn_pool\..*|head\..*")
_TIMM_RENAMES = [  # (timm name, HF SiglipVisionModel name) as full-match regexes
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"pos_embed", r"embeddings.position_embedding.weight"),
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"encoder.layers.\1.layer_norm\2.\3"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.out_proj.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)", r"post_layernorm.\1"),
]
_TIMM_QKV = re.compile(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)")  # rows: q, then k, then v


class VisionEncoder(nn.Module):
    """SigLIP ViT: pixel values [T, 3, S, S] -> patch features [T, P, C] (P = (S / patch)^2).

    feature_layer -1 is the last layer's output after the post-layernorm; -k (k >= 2) is transformers'
    hidden_states[-k], the output of layer L - k + 1 without the norm, and the layers after it are not
    run. Frozen (no gradients, always in eval mode) unless ``trainable``."""

    def __init__(self, config: SiglipVisionConfig, feature_layer: int = -1, trainable: bool = False):
        super().__init__()
        layers = config.num_hidden_layers
        if isinstance(feature_layer, bool) or not isinstance(feature_layer, int) \
                or not -layers - 1 <= feature_layer <= -1:
            raise ConfigError(f"feature_layer must be an integer from {-layers - 1} to -1, got {feature_layer!r}")
        config = copy.deepcopy(config)
        config.vision_use_head = False
        self.model = SiglipVisionModel(config)
        self.feature_layer = feature_layer
        self.depth = layers if feature_layer == -1 else layers + 1 + feature_layer  # encoder layers run
        self.trainable = trainable
        self.requires_grad_(trainable)
        self.train(False)

    @property
    def config(self) -> SiglipVisionConfig:
        return self.model.config

    @property
    def num_patches(self) -> int:
        return (self.config.image_size // self.config.patch_size) ** 2

    def train(self, mode: bool = True):
        return super().train(mode and self.trainable)  # a frozen encoder stays in eval mode

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model.embeddings(pixel_values)  # [B, P, C]
        for layer in self.model.encoder.layers[: self.depth]:
            hidden = layer(hidden, attention_mask=None)
        return self.model.post_layernorm(hidden) if self.feature_layer == -1 else hidden

    def encode(self, pixel_values: torch.Tensor, chunk_size: int = 64) -> torch.Tensor:
        """[T, 3, S, S] -> [T, P, C] on the encoder's device and in its dtype, ``chunk_size`` frames at a
        time; without autograd unless the encoder is trainable."""
        expected = (self.config.num_channels, self.config.image_size, self.config.image_size)
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 \
                or tuple(pixel_values.shape[1:]) != expected:
            got = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
            raise ConfigError(f"pixel_values must be [T, {', '.join(map(str, expected))}], got {got}")
        weight = self.model.embeddings.patch_embedding.weight
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            return torch.cat([self(chunk.to(weight.device, weight.dtype))
                              for chunk in pixel_values.split(chunk_size)])

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | None = None, device=None, feature_layer: int = -1,
                        trainable: bool = False) -> VisionEncoder:
        """Load an HF- or timm-layout SigLIP directory (see the module docstring). dtype defaults to
        bfloat16 on CUDA, float32 elsewhere."""
        path = Path(path)
        device = torch.device("cpu" if device is None else device)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        config, state = _read_checkpoint(path)
        with torch.device("meta"):  # no random init: every weight comes from the checkpoint
            encoder = cls(config, feature_layer, trainable)
        _check_fit(path, encoder.model, state)
        encoder.model.load_state_dict({k: v.to(device, dtype) for k, v in state.items()}, assign=True)
        embeddings = encoder.model.embeddings  # its position_ids buffer is not saved in checkpoints
        embeddings.position_ids = torch.arange(embeddings.num_positions, device=device)[None]
        encoder.requires_grad_(trainable)
        return encoder

    def save_pretrained(self, path):
        """Write config.json and model.safetensors in HF layout (SiglipVisionModel.from_pretrained reads it)."""
        self.model.save_pretrained(path)


def _read_checkpoint(path: Path) -> tuple[SiglipVisionConfig, dict[str, torch.Tensor]]:
    """(config, tensors named as in SiglipVisionModel) from an HF- or timm-layout directory."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    config = _read_json(path / "config.json")
    files = _safetensors_keys(path)
    model_type = config.get("model_type")
    if model_type is None:
        return _read_timm(path, files)
    if model_type not in HF_MODEL_TYPES:
        raise CheckpointError(f"{path}: model_type {model_type!r} is not a SigLIP model "
                              f"(expected one of {', '.join(HF_MODEL_TYPES)})")
    names = {key: key.removeprefix("vision_model.") for key in files}
    state = _load(files, {key: name for key, name in names.items() if not _HF_SKIP.fullmatch(name)})
    vision = config.get("vision_config", {}) if model_type == "siglip" else config
    return SiglipVisionConfig.from_dict(vision), state


def _read_timm(path: Path, files: dict[str, Path]) -> tuple[SiglipVisionConfig, dict[str, torch.Tensor]]:
    prefix = "visual.trunk." if any(k.startswith("visual.trunk.") for k in files) else ""  # open_clip
    state = _load(files, {key: key[len(prefix):] for key in files
                          if key.startswith(prefix) and not _TIMM_SKIP.fullmatch(key[len(prefix):])})
    if "patch_embed.proj.weight" not in state:
        raise CheckpointError(f"{path}: neither an HF SigLIP checkpoint (no config.json with a model_type) "
                              f"nor timm SigLIP weights (no patch_embed.proj.weight)")
    return _timm_config(path, state), _from_timm(state)


def _timm_config(path: Path, state: dict[str, torch.Tensor]) -> SiglipVisionConfig:
    overrides = _read_json(path / OVERRIDES_FILE)
    try:
        patch = state["patch_embed.proj.weight"]  # [C, channels, p, p]
        positions = state["pos_embed"].shape[-2]  # [1, P, C]
        intermediate = state["blocks.0.mlp.fc1.weight"].shape[0]  # [I, C]
    except KeyError as e:
        raise CheckpointError(f"{path}: the timm weights have no {e.args[0]}") from None
    side = math.isqrt(positions)
    if side * side != positions:
        raise CheckpointError(f"{path}: pos_embed has {positions} positions, not a square grid")
    hidden = patch.shape[0]
    heads = overrides.get("num_attention_heads", SIGLIP_HEADS.get(hidden))
    if heads is None:
        raise CheckpointError(f"{path}: the number of attention heads of a width-{hidden} ViT is unknown; "
                              f'write {{"num_attention_heads": N}} to {OVERRIDES_FILE} beside the weights')
    layers = 1 + max(int(m[1]) for key in state if (m := re.match(r"blocks\.(\d+)\.", key)))
    inferred = dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                    num_attention_heads=heads, num_channels=patch.shape[1], patch_size=patch.shape[-1],
                    image_size=side * patch.shape[-1])
    return SiglipVisionConfig(**{**inferred, **overrides})


def _from_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm names to SiglipVisionModel names; unknown names are kept, to be reported as unexpected."""
    out = {}
    for key, tensor in state.items():
        if m := _TIMM_QKV.fullmatch(key):
            for name, part in zip("qkv", tensor.chunk(3)):
                out[f"encoder.layers.{m[1]}.self_attn.{name}_proj.{m[2]}"] = part
        elif key == "pos_embed":
            out[_timm_name(key)] = tensor.reshape(-1, tensor.shape[-1])  # [1, P, C] -> [P, C]
        else:
            out[_timm_name(key)] = tensor
    return out


def _timm_name(key: str) -> str:
    for pattern, target in _TIMM_RENAMES:
        if m := re.fullmatch(pattern, key):
            return m.expand(target)
    return key


def _check_fit(path: Path, model: nn.Module, state: dict[str, torch.Tensor]):
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    problems = {
        "missing": [key for key in expected if key not in state],
        "unexpected": [key for key in state if key not in expected],
        "mis-shaped": [f"{key} {list(t.shape)} (model: {list(expected[key])})" for key, t in state.items()
                       if key in expected and tuple(t.shape) != expected[key]],
    }
    if any(problems.values()):
        c = model.config
        found = "; ".join(f"{kind}: {_listing(names)}" for kind, names in problems.items() if names)
        raise CheckpointError(f"{path}: weights do not fit a SigLIP ViT with hidden {c.hidden_size}, "
                              f"{c.num_hidden_layers} layers, image {c.image_size}, patch {c.patch_size}: {found}")


def _listing(names: list[str], limit: int = 6) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _read_json(file: Path) -> dict:
    if not file.exists():
        return {}
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: unreadable JSON ({e})") from None


def _safetensors_keys(path: Path) -> dict[str, Path]:
    """Every tensor name in the directory's safetensors files -> the file holding it."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors weights (other formats are not read)")
    keys = {}
    for file in files:
        try:
            with safe_open(file, "pt") as f:
                keys.update(dict.fromkeys(f.keys(), file))
        except Exception as e:  # safetensors raises its own error type for damaged files
            raise CheckpointError(f"{file}: unreadable safetensors file ({e})") from None
    return keys


def _load(files: dict[str, Path], names: dict[str, str]) -> dict[str, torch.Tensor]:
    """Read the tensors named by the keys of ``names``, renamed to its values."""
    state = {}
    for file in sorted(set(files[key] for key in names)):
        with safe_open(file, "pt") as f:
            state.update({names[key]: f.get_tensor(key) for key in names if files[key] == file})
    return state
