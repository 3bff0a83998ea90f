"""Evidence attention: teaching attention-guided TransV what to keep (a training signal, not in the paper).

Attention-guided TransV keeps the vision tokens that the last instruction token attends to most under its
layer's own attention (mean over heads of the softmax over the sample's vision tokens; transv.selection_scores).
Nothing in next-token training says which tokens those should be. Where the data know which frames show what the
answer names (the synthetic world's `evidence` intervals, or a record's), training can add, for each such sample
and each chosen attention layer,

    weight * -log( sum over the evidence frames' vision tokens of that attention )

so that the selection keeps the answer's frames and the hidden states reaching that layer make them findable.
Samples without evidence (captions, records without an "evidence" field) add nothing. Inference is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from timeviper.errors import ConfigError
from timeviper.llm.config import LMConfig
from timeviper.transv import Span, selection_scores, token_indices


@dataclass(frozen=True)
class EvidenceAttention:
    layers: tuple[int, ...]  # attention layers whose selection is taught
    weight: float

    def check(self, cfg: LMConfig) -> None:
        wrong = [layer for layer in self.layers if not 0 <= layer < cfg.num_layers or cfg.pattern[layer] != "*"]
        if wrong:
            raise ConfigError(f"evidence attention needs attention layers; {wrong} are not "
                              f"(attention layers: {cfg.attention_layers})")


def evidence_tokens(batch: dict, tokens_per_frame: int, length: int, device) -> Tensor | None:
    """Bool [length]: the vision tokens of a packed micro-batch whose frame shows evidence (batch["evidence"],
    see timeviper.data.packing); None when no sample has any."""
    flags = torch.zeros(length, dtype=torch.bool, device=device)
    for (start, end), frames in zip(batch["vision_spans"].tolist(), batch.get("evidence") or ()):
        if frames is not None and end > start:
            flags[start:end] = frames.to(device).repeat_interleave(tokens_per_frame)
    return flags if flags.any() else None


def evidence_loss(block: nn.Module, h: Tensor, positions: Tensor | None, spans: list[Span], evidence: Tensor) -> Tensor:
    """Sum over the samples with evidence among their vision tokens of -log(the share of their last instruction
    token's attention at `block` that falls on those tokens).

    h [1, T, C] enters `block` (an attention layer), evidence bool [T] marks its evidence tokens, spans are
    the samples as they stand there (after any TransV before it).
    """
    vision, sample = token_indices([(sp.vision_start, sp.vision_end) for sp in spans], h.device)  # [V]
    on = evidence[vision]  # [V]
    if not on.any():
        return h.new_zeros((), dtype=torch.float32)
    scores = selection_scores(block, h, positions, spans, vision, sample)  # [V], summing to 1 within a sample
    mass = scores.new_zeros(len(spans)).index_add(0, sample[on], scores[on])  # [S]
    return -mass[sample[on].unique()].clamp_min(1e-6).log().sum()  # over the samples with evidence
