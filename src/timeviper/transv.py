"""TransV (paper §3.2, Eq. 5-6): drop vision tokens inside the LLM and transfer them into the instruction.

At layer l, a share p of the vision tokens present there is dropped, either evenly spaced (`uni`) or
the least attended by the last instruction token under layer l's own attention (`attn`); then

    X1 <- X1 + tanh(alpha_l) * CrossAttn_l(X1, dropped)          alpha_l initialised to 0

and the dropped tokens leave the sequence for every later layer and cache. `td` / `tdattn` drop
without transfer (the paper's ablation). TransV acts on the hidden states *entering* layer l.

Spec strings: `kind_layer_p` joined by `-`, e.g. the paper's `uni_7_0.5-attn_39_0.9`; `none` for no TransV.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from timeviper.errors import ConfigError
from timeviper.llm.attention import Attention, logn_scale
from timeviper.llm.config import LMConfig
from timeviper.llm.layers import RMSNorm

KINDS = {"uni": ("uniform", True), "attn": ("attention", True), "td": ("uniform", False),
         "tduni": ("uniform", False), "tdattn": ("attention", False)}


@dataclass(frozen=True)
class TransVSpec:
    kind: str
    layer: int
    p: float

    @property
    def strategy(self) -> str:  # "uniform" | "attention"
        return KINDS[self.kind][0]

    @property
    def transfers(self) -> bool:
        return KINDS[self.kind][1]

    def __str__(self) -> str:
        return f"{self.kind}_{self.layer}_{self.p:g}"


def parse_transv(spec: str | None, cfg: LMConfig | None = None) -> list[TransVSpec]:
    """'uni_7_0.5-attn_39_0.9' -> [TransVSpec('uni', 7, 0.5), TransVSpec('attn', 39, 0.9)], sorted by layer."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return []
    specs = []
    for part in spec.split("-"):
        fields = part.split("_")
        try:
            kind, layer, p = fields[0].lower(), int(fields[1]), float(fields[2])
            if len(fields) != 3 or kind not in KINDS:
                raise ValueError
        except (ValueError, IndexError):
            raise ConfigError(f"bad TransV spec {part!r} in {spec!r}: expected kind_layer_p with kind in "
                              f"{sorted(KINDS)}, e.g. uni_7_0.5-attn_39_0.9") from None
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"TransV drop share p must be in [0, 1], got {p} in {part!r}")
        specs.append(TransVSpec(kind, layer, p))
    layers = [s.layer for s in specs]
    if len(set(layers)) != len(layers):
        raise ConfigError(f"TransV spec {spec!r} names a layer twice")
    if cfg is not None:
        for s in specs:
            if not 0 <= s.layer < cfg.num_layers:
                raise ConfigError(f"TransV layer {s.layer} is outside the LLM's {cfg.num_layers} layers")
            if s.strategy == "attention" and cfg.pattern[s.layer] != "*":
                raise ConfigError(f"attention-guided TransV needs an attention layer, but layer {s.layer} is "
                                  f"{cfg.mixers[s.layer]!r} (attention layers: {cfg.attention_layers})")
    return sorted(specs, key=lambda s: s.layer)


# --- which tokens to drop -----------------------------------------------------------------------------
def uniform_drop(start: int, count: int, p: float, device=None) -> Tensor:
    """Bool [count]: drop vision token j (global index start + i) iff floor((j+1)p) > floor(jp).

    Evenly spaced, exactly floor(n p) of the first n tokens, and a function of the global index only,
    so dropping chunk by chunk drops the same tokens as dropping the whole sequence at once.
    """
    j = torch.arange(start, start + count, device=device, dtype=torch.float64)
    return torch.floor((j + 1) * p) > torch.floor(j * p)


def attention_drop(scores: Tensor, p: float, sample: Tensor | None = None) -> Tensor:
    """Bool [n]: drop the floor(n_s p) tokens with the lowest scores of each sample s (ties: the earlier
    token goes first). `sample` [n] says which sample each token belongs to (default: all one sample)."""
    if sample is None:
        sample = torch.zeros_like(scores, dtype=torch.long)
    counts = torch.bincount(sample, minlength=int(sample.max()) + 1 if len(sample) else 0)  # [S]
    order = torch.sort(scores.float(), stable=True).indices  # ascending
    order = order[torch.sort(sample[order], stable=True).indices]  # by sample, ascending within each
    rank = torch.arange(len(order), device=scores.device) - (counts.cumsum(0) - counts)[sample[order]]
    drop = torch.zeros_like(sample, dtype=torch.bool)
    drop[order] = rank < torch.floor(counts.double() * p).long()[sample[order]]
    return drop


def attention_logits(attn: Attention, norm: RMSNorm, query_h: Tensor, query_pos: Tensor | None,
                     keys_h: Tensor, key_pos: Tensor | None) -> Tensor:
    """Logits [H, m, n] of m query tokens over n keys under an attention layer's own projections.

    query_h [1, m, C] and keys_h [1, n, C] are hidden states entering the layer (normed here).
    """
    q, _, _ = attn.qkv(norm(query_h), query_pos)  # [1, H, m, D]
    _, k, _ = attn.qkv(norm(keys_h), key_pos)  # [1, Hkv, n, D]
    k = k.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=1)
    return (q @ k.transpose(-1, -2))[0].float() / math.sqrt(attn.head_dim)


@contextmanager
def unsharded(block: nn.Module):
    """Gather an FSDP2-sharded block's parameters for use outside its forward (no-op otherwise)."""
    if not hasattr(block, "unshard"):
        yield
        return
    block.unshard()
    try:
        yield
    finally:
        block.reshard()


def attention_scores(logits: Tensor, sample: Tensor | None = None) -> Tensor:
    """Mean over heads of the softmax over the vision keys of each sample: [H, n] -> [n].

    `sample` [n] says which sample each key belongs to (default: all one sample)."""
    if sample is None:
        return logits.softmax(-1).mean(0)
    index = sample.expand_as(logits)
    top = logits.new_full((logits.shape[0], int(sample.max()) + 1), -torch.inf).scatter_reduce(1, index, logits, "amax")
    e = (logits - top.gather(1, index)).exp()
    return (e / e.new_zeros(top.shape).index_add_(1, sample, e).gather(1, index)).mean(0)


# --- transfer -----------------------------------------------------------------------------------------
class TransV(nn.Module):
    """Gated GQA cross-attention from instruction tokens to dropped vision tokens, sized like the LLM's."""

    def __init__(self, cfg: LMConfig, spec: TransVSpec):
        super().__init__()
        self.spec, self.logn_length = spec, cfg.logn_attention_length
        if not spec.transfers:
            return
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.norm_q = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.norm_kv = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        self.alpha = nn.Parameter(torch.zeros(1))  # 1-d: FSDP2 shards no 0-d parameters

    def memory(self, dropped: Tensor) -> tuple[Tensor, Tensor]:
        """dropped [n, C] -> keys and values [Hkv, n, D] (what must be kept until the instruction arrives)."""
        h = self.norm_kv(dropped)
        k = self.k_proj(h).view(-1, self.num_kv_heads, self.head_dim).transpose(0, 1)
        v = self.v_proj(h).view(-1, self.num_kv_heads, self.head_dim).transpose(0, 1)
        return k, v

    def delta(self, x1: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
              positions: Tensor | None = None) -> Tensor:
        """x1 [m, C] instruction tokens; k, v [Hkv, n, D] -> tanh(alpha) * CrossAttn(x1, dropped) [m, C].

        mask [m, n] (bool, optional): which dropped tokens each instruction token may see. positions [1, m]:
        the instruction tokens' position ids, for logn scaling as in the LLM's attention."""
        q = self.q_proj(self.norm_q(x1)).view(-1, self.num_heads, self.head_dim).transpose(0, 1)  # [H, m, D]
        if self.logn_length is not None:
            q = q * logn_scale(positions, self.logn_length)[:, :, None].to(q.dtype)
        out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask,
                                             enable_gqa=True)[0]  # [H, m, D]
        return torch.tanh(self.alpha).to(x1.dtype) * self.o_proj(out.transpose(0, 1).reshape(x1.shape[0], -1))


@dataclass(frozen=True)
class Span:
    """One sample of a packed sequence, as token indices: [start, vision_start) system,
    [vision_start, vision_end) vision, [vision_end, instruction_end) instruction, then the response."""

    start: int
    vision_start: int
    vision_end: int
    instruction_end: int
    end: int

    def shifted(self, before: int, dropped: int) -> "Span":
        return Span(self.start - before, self.vision_start - before, self.vision_end - before - dropped,
                    self.instruction_end - before - dropped, self.end - before - dropped)


def cu_seqlens_of(spans: list[Span], device=None) -> Tensor:
    return torch.tensor([0] + [s.end for s in spans], dtype=torch.int32, device=device)


def token_indices(bounds: list[tuple[int, int]], device) -> tuple[Tensor, Tensor]:
    """The token indices [a, b) of each (a, b) in `bounds`, concatenated, and the bound each belongs to."""
    index = torch.cat([torch.arange(a, b) for a, b in bounds] or [torch.zeros(0, dtype=torch.long)])
    owner = torch.repeat_interleave(torch.arange(len(bounds)), torch.tensor([b - a for a, b in bounds]))
    return index.to(device), owner.to(device)


def select_packed(spec: TransVSpec, block: nn.Module, h: Tensor, positions: Tensor | None, spans: list[Span],
                  vision: Tensor, sample: Tensor, shares: list[float] | None = None) -> Tensor:
    """Bool [V]: which of the vision tokens `vision` [V] (of samples `sample` [V], see token_indices) drop
    at `block`; uniform layers drop each sample's share of `shares` if given, else the spec's p.

    Attention-guided: each sample's vision tokens are scored by its own last instruction token, all
    samples in one pass (an FSDP2-sharded block is gathered once, so every rank runs the same
    collectives whatever number of samples its micro-batch packs).
    """
    if spec.strategy == "uniform":  # on the CPU, then one copy
        shares = shares or [spec.p] * len(spans)
        return torch.cat([uniform_drop(0, sp.vision_end - sp.vision_start, p) for sp, p in zip(spans, shares)]
                         ).to(h.device)
    if not len(vision):
        return torch.zeros(0, dtype=torch.bool, device=h.device)
    with torch.no_grad(), unsharded(block):  # selection is not differentiable
        return attention_drop(selection_scores(block, h, positions, spans, vision, sample), spec.p, sample)


def selection_scores(block: nn.Module, h: Tensor, positions: Tensor | None, spans: list[Span], vision: Tensor,
                     sample: Tensor) -> Tensor:
    """[V]: what attention-guided selection at `block` ranks the vision tokens `vision` [V] (of samples `sample`
    [V]) by: each sample's last instruction token's softmax over its own vision tokens, mean over heads."""
    last = torch.tensor([sp.instruction_end - 1 for sp in spans], device=h.device)  # [S]

    def at(index: Tensor) -> Tensor | None:
        return None if positions is None else positions[:, index]

    logits = attention_logits(block.mixer, block.norm, h[:, last], at(last), h[:, vision], at(vision))  # [H, S, V]
    own = logits[:, sample, torch.arange(len(vision), device=h.device)]  # [H, V] under its own sample's query
    return attention_scores(own, sample)


def apply_packed(module: TransV, block: nn.Module, h: Tensor, positions: Tensor | None, spans: list[Span],
                 shares: list[float] | None = None) -> tuple[Tensor, Tensor | None, list[Span], Tensor]:
    """TransV on a whole packed sequence h [1, T, C] entering `block` (the layer TransV sits at).

    Each sample drops its own vision tokens and transfers them into its own instruction, all samples at
    once: one cross-attention whose mask lets each instruction token see only its own sample's dropped
    tokens. Returns the shortened h and positions, the new spans and the bool mask [T] of kept tokens.
    """
    vision, vision_sample = token_indices([(sp.vision_start, sp.vision_end) for sp in spans], h.device)  # [V]
    drop = select_packed(module.spec, block, h, positions, spans, vision, vision_sample, shares)  # [V]
    counts = torch.zeros(len(spans), dtype=torch.long, device=h.device).index_add_(0, vision_sample, drop.long())
    counts = counts.tolist()  # dropped tokens of each sample
    if module.spec.transfers and any(counts):
        instruction, instruction_sample = token_indices([(sp.vision_end, sp.instruction_end) for sp in spans],
                                                        h.device)  # [m]
        k, v = module.memory(h[0, vision[drop]])  # [Hkv, n, D]
        mask = instruction_sample[:, None] == vision_sample[drop][None]  # [m, n]
        receives = mask.any(1)  # a sample that dropped nothing transfers nothing
        receivers = instruction[receives]
        delta = module.delta(h[0, receivers], k, v, mask[receives],
                             None if positions is None else positions[:, receivers])
        h = h.index_add(1, receivers, delta[None])
    keep = torch.ones(h.shape[1], dtype=torch.bool, device=h.device)
    keep[vision[drop]] = False
    removed = [0, *itertools.accumulate(counts)]
    new_spans = [sp.shifted(before, n) for sp, before, n in zip(spans, removed, counts)]
    return h[:, keep], None if positions is None else positions[:, keep], new_spans, keep


def run_packed(llm, transv: dict[int, TransV], h: Tensor, positions: Tensor | None, spans: list[Span],
               shares: dict[int, list[float]] | None = None, watch: dict[int, Callable] | None = None
               ) -> tuple[Tensor, Tensor]:
    """The whole (packed) sequence h [1, T, C] through every layer of `llm`, TransV included; `shares` gives
    uniform TransV layers each sample's drop share in place of their spec's p (training with drawn shares).
    `watch[l](h, positions, spans, index)` is called with what enters layer l (before its TransV).

    Returns the last hidden states [1, T', C] (before the final norm) and the index [T'] of the
    surviving tokens into the input (to gather labels).
    """
    index = torch.arange(h.shape[1], device=h.device)
    watch = watch or {}

    def cu():
        return cu_seqlens_of(spans, h.device) if len(spans) > 1 else None

    layer = 0
    for at in sorted(set(transv) | set(watch)):
        h, layer = llm.run_layers(h, layer, at, positions, cu()), at
        if at in watch:
            watch[at](h, positions, spans, index)
        if at in transv:
            h, positions, spans, keep = apply_packed(transv[at], llm.layers[at], h, positions, spans,
                                                     (shares or {}).get(at))
            index = index[keep]
    return llm.run_layers(h, layer, len(llm.layers), positions, cu()), index
