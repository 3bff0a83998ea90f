"""HybridLM: a pattern-driven stack of pre-norm residual blocks (Mamba-2 | attention | MLP)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from timeviper.llm.attention import Attention, VideoQueries
from timeviper.llm.cache import Cache, KVCache
from timeviper.llm.config import LMConfig, check_logn_length
from timeviper.llm.layers import MLP, RMSNorm
from timeviper.llm.mamba import Mamba2

MIXER_CLASSES = {"mamba": Mamba2, "attention": Attention, "mlp": MLP}


class Block(nn.Module):
    def __init__(self, cfg: LMConfig, kind: str):
        super().__init__()
        self.kind = kind
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mixer = MIXER_CLASSES[kind](cfg)

    def forward(self, x: Tensor, positions=None, cu_seqlens=None, state=None, video=None) -> Tensor:
        return x + self.mixer(self.norm(x), positions=positions, cu_seqlens=cu_seqlens, state=state, video=video)


@dataclass
class LMOutput:
    logits: Tensor | None  # [B, T, V] float32 (only the last `num_logits` positions when asked)
    hidden_states: Tensor  # [B, T, C] after the final norm
    cache: Cache | None = None


class HybridLM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, kind) for kind in cfg.mixers)
        self.norm_f = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    # --- building blocks, used directly by TimeViper to act between layers ---------------------
    def new_cache(self, batch: int, capacity: int = 0) -> Cache:
        """An empty inference state for `batch` rows; KV caches pre-sized to `capacity` tokens."""
        p = self.embed_tokens.weight
        cache = Cache.new(len(self.layers), batch, p.device)
        for i, block in enumerate(self.layers):
            if block.kind == "mamba":
                cache.layers[i] = block.mixer.empty_state(batch, p.device, p.dtype)
            elif block.kind == "attention":
                m = block.mixer
                cache.layers[i] = KVCache.allocate(batch, m.num_kv_heads, m.head_dim, capacity, p.dtype, p.device)
        return cache

    def positions_for(self, batch: int, length: int, cache: Cache | None, device) -> Tensor:
        """Position ids [B, T] of `length` new tokens."""
        offset = torch.arange(length, device=device)[None]
        return offset.expand(batch, -1) if cache is None else cache.next_position[:, None] + offset

    def run_layers(self, h: Tensor, start: int, stop: int, positions: Tensor | None = None,
                   cu_seqlens: Tensor | None = None, cache: Cache | None = None,
                   video: VideoQueries | None = None) -> Tensor:
        """h [B, T, C] through layers[start:stop]; with no tokens (T = 0: a chunk TransV dropped whole) nothing
        runs and caches stay as they are. `video`: h holds video tokens (prefill of one row; see VideoQueries)."""
        if not h.shape[1]:
            return h
        for i in range(start, stop):
            h = self.layers[i](h, positions, cu_seqlens, None if cache is None else cache.layers[i], video)
        return h

    def head(self, h: Tensor, num_logits: int | None = None) -> tuple[Tensor, Tensor]:
        """Final norm and LM head over the last `num_logits` positions (all when None)."""
        h = self.norm_f(h)
        tail = h if num_logits is None else h[:, -num_logits:]
        return h, self.lm_head(tail).float()

    # --- the usual forward -------------------------------------------------------------------------
    def forward(self, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                positions: Tensor | None = None, cu_seqlens: Tensor | None = None, cache: Cache | None = None,
                num_logits: int | None = None) -> LMOutput:
        """input_ids [B, T] (or inputs_embeds [B, T, C]) -> logits [B, T, V].

        `cu_seqlens` ([S+1], B == 1) packs S sequences that never see each other. With `cache`, the
        tokens continue the cached rows and the cache is advanced in place.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, t, _ = h.shape
        if positions is None and self.config.needs_positions:
            positions = self.positions_for(b, t, cache, h.device) if cu_seqlens is None else packed_positions(cu_seqlens)
        h = self.run_layers(h, 0, len(self.layers), positions, cu_seqlens, cache)
        if cache is not None:
            cache.next_position += t
        h, logits = self.head(h, num_logits)
        return LMOutput(logits, h, cache)

    def set_logn_attention(self, length: int | None) -> None:
        """Scale attention past `length` tokens (see attention.logn_scale); None turns it off."""
        check_logn_length(length)
        self.config.logn_attention_length = length
        for block in self.layers:
            if block.kind == "attention":
                block.mixer.logn_length = length

    # --- checkpoints ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None) -> "HybridLM":
        """Load a local HF-layout directory (nemotron_h, qwen2 or qwen3) straight into place."""
        from timeviper.llm import hf_io

        return hf_io.load(path, dtype=dtype, device=device)

    def save_pretrained(self, path: str | Path, max_shard_bytes: int = 5 * 2**30) -> None:
        """Write config.json + safetensors that both HybridLM and transformers' own classes load."""
        from timeviper.llm import hf_io

        hf_io.save(self, path, max_shard_bytes=max_shard_bytes)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def packed_positions(cu_seqlens: Tensor) -> Tensor:
    """Position ids [1, T] restarting at 0 at every packed sequence."""
    lengths = cu_seqlens.diff()
    starts = torch.repeat_interleave(cu_seqlens[:-1], lengths)
    return (torch.arange(int(cu_seqlens[-1]), device=cu_seqlens.device) - starts)[None]


def matmul_params(module: nn.Module) -> int:
    """Parameters used as multiply-add weights once per token (or patch): matrices and convolution taps,
    not norms, biases or per-channel scalars. Embedding tables are lookups: leave them out of `module`."""
    return sum(p.numel() for p in module.parameters() if p.ndim >= 2)
