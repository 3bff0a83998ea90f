"""LMConfig: one config for every decoder we run (NemotronH hybrids, Qwen2, Qwen3).

A decoder is a stack of pre-norm residual blocks whose mixers are spelled by a pattern:
`M` Mamba-2, `*` attention, `-` MLP (NemotronH's `hybrid_override_pattern`). A Qwen decoder layer
is two such blocks, attention then MLP, so Qwen-L is the pattern `*-` repeated L times.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from timeviper.errors import ConfigError

MIXER_OF_SYMBOL = {"M": "mamba", "*": "attention", "-": "mlp"}
SYMBOL_OF_MIXER = {mixer: symbol for symbol, mixer in MIXER_OF_SYMBOL.items()}
# The spellings checkpoints use for a layer's kind: ours, the hub's, and transformers 5's.
MIXER_ALIASES = {
    "mamba": "mamba", "M": "mamba", "linear_attention": "mamba",
    "attention": "attention", "*": "attention", "full_attention": "attention",
    "mlp": "mlp", "-": "mlp",
}
MODEL_TYPES = ("nemotron_h", "qwen2", "qwen3")


@dataclass
class LMConfig:
    model_type: str = "nemotron_h"
    vocab_size: int = 131072
    hidden_size: int = 4480
    pattern: str = "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-"
    norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    # attention
    num_heads: int = 40
    num_kv_heads: int = 8
    head_dim: int = 128
    attention_bias: bool = False  # Qwen2: bias on q/k/v (never on o)
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k
    rope_theta: float | None = None  # None: no positional encoding (NemotronH)
    # Past this many tokens, queries are scaled by log(position + 1) / log(length), so attention over far
    # more keys than training showed stays sharp (see attention.logn_scale). None: never scaled.
    logn_attention_length: int | None = None
    # MLP
    intermediate_size: int = 15680
    mlp_act: str = "relu2"  # "relu2": down(relu(up x)^2) ; "swiglu": down(silu(gate x) * up x)
    mlp_bias: bool = False
    # Mamba-2
    mamba_num_heads: int = 128
    mamba_head_dim: int = 80
    mamba_groups: int = 8
    ssm_state_size: int = 128
    conv_kernel: int = 4
    chunk_size: int = 128
    mamba_proj_bias: bool = False
    mamba_conv_bias: bool = True
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    # token ids (informational, carried through save/load)
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict)  # unknown config.json keys, written back on save

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        bad = sorted(set(self.pattern) - set(MIXER_OF_SYMBOL))
        if not self.pattern or bad:
            raise ConfigError(f"layer pattern {self.pattern!r} must be made of 'M', '*', '-' (bad: {bad})")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if "M" in self.pattern and self.mamba_num_heads % self.mamba_groups:
            raise ConfigError(f"mamba_num_heads {self.mamba_num_heads} is not a multiple of groups {self.mamba_groups}")
        if self.mlp_act not in ("relu2", "swiglu"):
            raise ConfigError(f"mlp_act must be 'relu2' or 'swiglu', got {self.mlp_act!r}")
        self.time_step_limit = tuple(float(v) for v in self.time_step_limit)
        check_logn_length(self.logn_attention_length)

    @property
    def mixers(self) -> list[str]:
        return [MIXER_OF_SYMBOL[s] for s in self.pattern]

    @property
    def num_layers(self) -> int:
        return len(self.pattern)

    @property
    def mamba_inner(self) -> int:
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def needs_positions(self) -> bool:
        """Whether attention reads position ids: rotary embeddings or logn scaling."""
        return self.rope_theta is not None or self.logn_attention_length is not None

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, s in enumerate(self.pattern) if s == "*"]

    @property
    def mixing_layers(self) -> list[int]:
        """The layers through which tokens read each other: attention and Mamba-2 (not MLP)."""
        return [i for i, kind in enumerate(self.mixers) if kind != "mlp"]

    def replace(self, **changes) -> "LMConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def nano_9b_v2(cls) -> "LMConfig":
        """Nemotron-Nano-9B-v2's shape (random weights: for benchmarks and capacity tests)."""
        return cls()

    @classmethod
    def qwen3_8b(cls) -> "LMConfig":
        """Qwen3-8B's shape."""
        return cls(model_type="qwen3", vocab_size=151936, hidden_size=4096, pattern="*-" * 36, norm_eps=1e-6,
                   num_heads=32, num_kv_heads=8, head_dim=128, qk_norm=True, rope_theta=1e6,
                   intermediate_size=12288, mlp_act="swiglu")


def check_logn_length(length) -> None:
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 2):
        raise ConfigError(f"logn_attention_length must be an integer >= 2 or None, got {length!r}")


def pattern_from_layer_types(layer_types: list[str]) -> str:
    """['mamba' | 'linear_attention' | 'M', ...] -> 'M*-...'; raises ConfigError on an unknown kind."""
    try:
        return "".join(SYMBOL_OF_MIXER[MIXER_ALIASES[t]] for t in layer_types)
    except KeyError as e:
        raise ConfigError(f"unknown layer type {e.args[0]!r} in layer list") from None
