"""Frames to vision-encoder input: resize to a square (no crop), rescale to [0, 1], normalise.

Matches SigLIP's image processor (PIL bicubic resize of the whole frame to size x size, then
(x / 255 - mean) / std), computed batched in torch: antialiased bicubic on float pixels, clamped to
[0, 255] as PIL's uint8 output is, but not rounded to integers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from timeviper.errors import ConfigError

_CHUNK_ELEMENTS = 2**26  # float pixels per resize step (256 MiB in float32) bounds the working memory


def preprocess_frames(frames: torch.Tensor, size: int = 384, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                      dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """uint8 [T, H, W, 3] RGB frames -> [T, 3, size, size] pixel values in ``dtype`` on ``device``
    (default: the frames' device). Frames move to the device before resizing, so a GPU does the work."""
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or frames.ndim != 4 \
            or frames.shape[-1] != 3:
        got = f"{frames.dtype} {tuple(frames.shape)}" if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ConfigError(f"frames must be a uint8 tensor [T, H, W, 3], got {got}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"size must be a positive integer, got {size!r}")
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"mean and std need one value per RGB channel, got {mean!r} and {std!r}")
    device = frames.device if device is None else torch.device(device)
    count, height, width, _ = frames.shape
    # (x / 255 - mean) / std == x * scale + shift
    scale = 1 / (255 * torch.tensor(std, dtype=torch.float32, device=device)).view(1, 3, 1, 1)
    shift = -torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255 * scale
    out = torch.empty(count, 3, size, size, dtype=dtype, device=device)
    step = max(1, _CHUNK_ELEMENTS // (3 * height * width))
    for start in range(0, count, step):
        x = frames[start:start + step].to(device).permute(0, 3, 1, 2).float()  # [t, 3, H, W]
        if (height, width) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 255)
        out[start:start + step] = x * scale + shift
    return out
