"""A naive masked, scaled softmax attention: the reference for logn scaling and windows."""

import math


def naive_attention(q, k, v, scale, mask):
    """q [H, m, D], k v [H, n, D], scale [m], mask [m, n] -> [H, m, D], one query at a time."""
    out = q.new_zeros(q.shape)
    for i in range(q.shape[1]):
        logits = scale[i] * (k[:, mask[i]] @ q[:, i, :, None])[..., 0] / math.sqrt(q.shape[-1])  # [H, n_i]
        out[:, i] = (logits.softmax(-1)[..., None] * v[:, mask[i]]).sum(1)
    return out
