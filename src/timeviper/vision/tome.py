"""Token merging (ToMe, Bolya et al. 2023): shrink each frame's tokens by bipartite soft matching.

One round splits the tokens alternately into sets A (even positions) and B (odd positions), matches
every A token to its most cosine-similar B token, and merges the r best-matched A tokens into their B
match. Merged features are size-weighted means and sizes add, so ``(merged * size).sum(1)`` equals
``(x * size).sum(1)``. Rounds repeat, each merging at most half the tokens, until exactly ``num_tokens``
remain.

Output order: the surviving tokens (every B token and each unmerged A token) keep their original
order, so spatial order within a frame is preserved. Ties in similarity go to the earlier A token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from timeviper.errors import ConfigError


def merge_tokens(x: torch.Tensor, num_tokens: int, size: torch.Tensor | None = None):
    """x [N, T, C] (N frames of T tokens), size [N, T, 1] token sizes (None: all 1)
    -> (merged [N, num_tokens, C] in x's dtype, size [N, num_tokens, 1]). Vectorised over frames;
    computed in float32 (or float64 for float64 input). num_tokens >= T returns the input unchanged."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise ConfigError(f"x must be a tensor [frames, tokens, channels], got {getattr(x, 'shape', type(x))}")
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise ConfigError(f"num_tokens must be a positive integer, got {num_tokens!r}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    if size is None:
        size = torch.ones(*x.shape[:2], 1, dtype=dtype, device=x.device)
    elif size.shape != (*x.shape[:2], 1):
        raise ConfigError(f"size must have shape {(*x.shape[:2], 1)}, got {tuple(size.shape)}")
    if num_tokens >= x.shape[1]:
        return x, size
    weighted, size = x.to(dtype) * size.to(dtype), size.to(dtype)  # merging adds these up
    while (count := weighted.shape[1]) > num_tokens:
        weighted, size = _merge_round(weighted, size, min(count - num_tokens, count // 2))
    return (weighted / size).to(x.dtype), size


def _merge_round(weighted: torch.Tensor, size: torch.Tensor, r: int):
    """One round on size-weighted sums [N, t, C] and sizes [N, t, 1]: merge r A tokens into B tokens."""
    n, t, c = weighted.shape
    features = F.normalize(weighted, dim=-1)  # the direction of a weighted sum is that of the mean
    scores = features[:, ::2] @ features[:, 1::2].transpose(1, 2)  # [N, ceil(t/2), floor(t/2)] A to B
    best, match = scores.max(dim=-1)  # [N, ceil(t/2)]
    src = best.argsort(dim=-1, descending=True, stable=True)[:, :r]  # [N, r] A tokens to merge
    src_pos, dst_pos = 2 * src, 2 * match.gather(1, src) + 1  # [N, r] positions in the sequence
    weighted = weighted.scatter_add(1, dst_pos[..., None].expand(-1, -1, c),
                                    weighted.gather(1, src_pos[..., None].expand(-1, -1, c)))
    size = size.scatter_add(1, dst_pos[..., None], size.gather(1, src_pos[..., None]))
    keep = torch.ones(n, t, dtype=torch.bool, device=weighted.device).scatter_(1, src_pos, False)
    return weighted[keep].view(n, t - r, c), size[keep].view(n, t - r, 1)
