"""Vision-to-LLM projector: ToMe merges each frame's patches to a few tokens, a 2-layer MLP maps them
to the LLM width, and (optionally) a frame-time embedding tells every token when its frame was shown."""

from __future__ import annotations

import math

import torch
from torch import nn

from timeviper.errors import ConfigError
from timeviper.vision.tome import merge_tokens


def check_time_period(period) -> None:
    if period is not None and (isinstance(period, bool) or not isinstance(period, (int, float))
                               or not 2 <= period < math.inf):
        raise ConfigError(f"time_period must be a number of seconds >= 2, or None (no time embedding); got {period!r}")


TIME_PAST_PERIOD = ("wrap", "none")  # what a frame at or past the longest period is told of its time


def check_time_past_period(value) -> None:
    if value not in TIME_PAST_PERIOD:
        raise ConfigError(f"time_past_period must be one of {', '.join(TIME_PAST_PERIOD)}; got {value!r}")


def num_periods(period: float) -> int:
    """How many periods halve from `period` down to no less than 2 s (the shortest that 1 fps can tell)."""
    return int(math.log2(period / 2)) + 1


def time_features(times: torch.Tensor, period: float) -> torch.Tensor:
    """Frame times in seconds [F] -> [F, 2K] sin/cos features of periods period, period/2, ... down to 2 s.

    Every feature repeats within `period`: trained on videos of that length, a model has seen all their
    values, so a frame at 10,000 s is described by values it knows (time is then told modulo `period`)."""
    periods = period / 2.0 ** torch.arange(num_periods(period), dtype=torch.float64, device=times.device)
    angles = 2 * math.pi * times.to(torch.float64)[:, None] / periods  # [F, K]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TimeEmbedding(nn.Module):
    """Frame times [F] -> [F, llm_dim]: time_features through a linear map that starts at zero, so that a
    model given one reads exactly as before until training teaches it to use the time."""

    def __init__(self, period: float, llm_dim: int):
        super().__init__()
        check_time_period(period)
        self.period = period
        self.proj = nn.Linear(2 * num_periods(period), llm_dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, times: torch.Tensor) -> torch.Tensor:
        return self.proj(time_features(times, self.period).to(self.proj.weight.dtype))


class Projector(nn.Module):
    """[F, P, vision_dim] patch features (and the frames' times [F]) -> [F, num_tokens, llm_dim] vision tokens.
    Without times the tokens hold what the frames show alone (frame-level pretraining reads them so).

    Weights: mlp.0 (Linear vision_dim -> llm_dim), mlp.1 (GELU), mlp.2 (Linear llm_dim -> llm_dim); with a
    time_period, time.proj (Linear 2K -> llm_dim, no bias), whose output is added to each token of a frame.
    Without one (the paper's model) time is implicit in the order of the tokens."""

    def __init__(self, vision_dim: int, llm_dim: int, num_tokens: int = 16, time_period: float | None = None):
        super().__init__()
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
            raise ConfigError(f"num_tokens must be a positive integer, got {num_tokens!r}")
        check_time_period(time_period)
        self.num_tokens = num_tokens
        self.mlp = nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))
        self.time = None if time_period is None else TimeEmbedding(time_period, llm_dim)

    def forward(self, features: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        if features.ndim != 3 or features.shape[1] < self.num_tokens \
                or features.shape[2] != self.mlp[0].in_features:
            raise ConfigError(f"features must be [frames, >= {self.num_tokens} patches, "
                              f"{self.mlp[0].in_features}], got {tuple(features.shape)}")
        merged, _ = merge_tokens(features, self.num_tokens)  # [F, num_tokens, vision_dim]
        return self.add_times(self.mlp(merged.to(self.mlp[0].weight.dtype)), times)  # [F, num_tokens, llm_dim]

    def add_times(self, tokens: torch.Tensor, times: torch.Tensor | None, past_period: str = "wrap") -> torch.Tensor:
        """Tokens [F, n, llm_dim] with the time term of their frames' times [F] added (none without a time
        embedding or without times: what the frames show alone). A frame at or past the longest period is told
        its time modulo the period (`past_period` "wrap", as trained) or nothing ("none")."""
        if self.time is None or times is None:
            return tokens
        if times.shape != tokens.shape[:1]:
            raise ConfigError(f"this projector embeds frame times: pass one time per frame ([{tokens.shape[0]}]), "
                              f"got {tuple(times.shape)}")
        check_time_past_period(past_period)
        term = self.time(times)  # [F, llm_dim]
        if past_period == "none":
            term = term * (times < self.time.period).to(term.dtype)[:, None]
        return tokens + term[:, None]  # [F, 1, llm_dim] onto each of the frame's tokens
