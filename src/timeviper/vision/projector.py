"""Vision-to-LLM projector: ToMe merges each frame's patches to a few tokens, a 2-layer MLP maps them
to the LLM width."""

from __future__ import annotations

import torch
from torch import nn

from timeviper.errors import ConfigError
from timeviper.vision.tome import merge_tokens


class Projector(nn.Module):
    """[F, P, vision_dim] patch features -> [F, num_tokens, llm_dim] vision tokens.

    Weights: mlp.0 (Linear vision_dim -> llm_dim), mlp.1 (GELU), mlp.2 (Linear llm_dim -> llm_dim)."""

    def __init__(self, vision_dim: int, llm_dim: int, num_tokens: int = 16):
        super().__init__()
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
            raise ConfigError(f"num_tokens must be a positive integer, got {num_tokens!r}")
        self.num_tokens = num_tokens
        self.mlp = nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 3 or features.shape[1] < self.num_tokens \
                or features.shape[2] != self.mlp[0].in_features:
            raise ConfigError(f"features must be [frames, >= {self.num_tokens} patches, "
                              f"{self.mlp[0].in_features}], got {tuple(features.shape)}")
        merged, _ = merge_tokens(features, self.num_tokens)  # [F, num_tokens, vision_dim]
        return self.mlp(merged.to(self.mlp[0].weight.dtype))
