"""Inference state of a HybridLM: per layer a Mamba-2 state (O(1) in length) or an attention KV cache.

Every layer keeps its own length, so a layer may see fewer tokens than the layer before it (TransV
removes vision tokens mid-network). Rows of a batch may hold different lengths: `Cache.stack` pads
single-request caches into one batch for decoding, and attention masks the padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class MambaState:
    conv: Tensor  # [B, conv_dim, K-1] the last K-1 inputs of the depthwise conv
    ssm: Tensor  # [B, H, P, N] float32

    @staticmethod
    def stack(states: list["MambaState"]) -> "MambaState":
        return MambaState(torch.cat([s.conv for s in states]), torch.cat([s.ssm for s in states]))


class KVCache:
    """Keys and values of one attention layer, [B, Hkv, capacity, D], grown geometrically, and the position id of
    each key, [B, capacity] long (read by the video window, see attention.VideoQueries).

    `length` is the longest row; `lengths` ([B] long) is set only when rows differ (after `stack`) or
    the cache is `static`: then every step attends over the whole capacity under a mask, so a decoding
    step has fixed shapes and can be captured in a CUDA graph.
    """

    def __init__(self, k: Tensor, v: Tensor, positions: Tensor, length: int = 0, lengths: Tensor | None = None):
        self.k, self.v, self.positions, self.length, self.lengths = k, v, positions, length, lengths
        self.static = False

    @classmethod
    def allocate(cls, batch: int, kv_heads: int, head_dim: int, capacity: int, dtype, device) -> "KVCache":
        """An empty cache with room for `capacity` tokens. Storage is zeroed: masked slots are still read
        (0 * NaN would poison the attention output)."""
        shape = (batch, kv_heads, capacity, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device),
                   torch.zeros(batch, capacity, dtype=torch.long, device=device))

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def reserve(self, capacity: int) -> None:
        """Make room for `capacity` tokens in one allocation (avoids regrowth on long prefills)."""
        if capacity <= self.capacity:
            return
        k, v = self.k, self.v
        self.k = k.new_zeros(k.shape[0], k.shape[1], capacity, k.shape[3])
        self.v = v.new_zeros(self.k.shape)
        self.k[:, :, : self.length] = k[:, :, : self.length]
        self.v[:, :, : self.length] = v[:, :, : self.length]
        positions, self.positions = self.positions, self.positions.new_zeros(k.shape[0], capacity)
        self.positions[:, : self.length] = positions[:, : self.length]

    def append(self, k: Tensor, v: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Add k, v [B, Hkv, T, D] at position ids [B, T] (None: not needed); return all keys and values so far and
        a key mask [B,1,1,L] or None.

        With rows of different lengths only one token at a time may be added (decoding).
        """
        t = k.shape[2]
        needed = self.length + t
        if needed > self.capacity:
            self.reserve(max(needed, 2 * self.capacity, 256))
        if self.lengths is None:
            self.k[:, :, self.length : needed] = k
            self.v[:, :, self.length : needed] = v
            if positions is not None:
                self.positions[:, self.length : needed] = positions
            self.length = needed
            return self.k[:, :, :needed], self.v[:, :, :needed], None
        if t != 1:
            raise ValueError("rows of different lengths can only be extended one token at a time")
        rows = torch.arange(k.shape[0], device=k.device)
        self.k[rows, :, self.lengths] = k[:, :, 0]
        self.v[rows, :, self.lengths] = v[:, :, 0]
        if positions is not None:
            self.positions[rows, self.lengths] = positions[:, 0]
        self.lengths.add_(1)  # in place: a captured graph replays on the same tensor
        self.length = needed
        span = self.capacity if self.static else needed
        mask = torch.arange(span, device=k.device)[None, :] < self.lengths[:, None]  # [B, span]
        return self.k[:, :, :span], self.v[:, :, :span], mask[:, None, None, :]

    def make_static(self, extra: int) -> None:
        """Fix the capacity at the current length + `extra` and track lengths per row on the device."""
        self.reserve(self.length + extra)
        if self.lengths is None:
            self.lengths = torch.full((self.k.shape[0],), self.length, dtype=torch.long, device=self.k.device)
        self.static = True

    @staticmethod
    def stack(caches: list["KVCache"], extra: int = 0) -> "KVCache":
        """Pad single-row caches into one batch with room for `extra` more tokens per row."""
        lengths = [c.length for c in caches]
        ref = caches[0].k
        out = KVCache.allocate(len(caches), ref.shape[1], ref.shape[3], max(lengths) + extra, ref.dtype, ref.device)
        for row, c in enumerate(caches):
            out.k[row, :, : c.length] = c.k[0, :, : c.length]
            out.v[row, :, : c.length] = c.v[0, :, : c.length]
            out.positions[row, : c.length] = c.positions[0, : c.length]
        out.length = max(lengths)
        if len(set(lengths)) > 1:
            out.lengths = torch.tensor(lengths, device=ref.device)
        return out


class Cache:
    """The state of a whole HybridLM for a batch of B rows.

    `layers[i]` is a MambaState, a KVCache or None (MLP layers, or not yet run).
    `next_position` ([B] long) is the position id of each row's next token: it counts every token a
    row was given, including those that TransV later removed, so rotary positions stay those of the
    full sequence.
    """

    def __init__(self, num_layers: int, next_position: Tensor):
        self.layers: list[MambaState | KVCache | None] = [None] * num_layers
        self.next_position = next_position

    @classmethod
    def new(cls, num_layers: int, batch: int, device=None) -> "Cache":
        return cls(num_layers, torch.zeros(batch, dtype=torch.long, device=device))

    @property
    def batch_size(self) -> int:
        return self.next_position.shape[0]

    def kv_tokens(self) -> int:
        """Tokens held by all KV caches together (a measure of the cache's size)."""
        return sum(c.length for c in self.layers if isinstance(c, KVCache))

    def make_static(self, extra: int) -> None:
        """Prepare for `extra` decoding steps of fixed shapes (see KVCache.make_static)."""
        for layer in self.layers:
            if isinstance(layer, KVCache):
                layer.make_static(extra)

    def nbytes(self) -> int:
        total = 0
        for c in self.layers:
            if isinstance(c, KVCache):
                total += c.k.nbytes + c.v.nbytes + c.positions.nbytes
            elif isinstance(c, MambaState):
                total += c.conv.nbytes + c.ssm.nbytes
        return total

    @staticmethod
    def stack(caches: list["Cache"], extra: int = 0) -> "Cache":
        """Join single-request caches (each B=1, any lengths) into one batch, with room for `extra` tokens."""
        out = Cache(len(caches[0].layers), torch.cat([c.next_position for c in caches]))
        for i, layer in enumerate(caches[0].layers):
            states = [c.layers[i] for c in caches]
            if isinstance(layer, KVCache):
                out.layers[i] = KVCache.stack(states, extra)
            elif isinstance(layer, MambaState):
                out.layers[i] = MambaState.stack(states)
        return out
