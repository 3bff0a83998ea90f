"""One request laid out for analysis: the whole sequence [system][vision][instruction][response] at once, each
token tagged with its group, run through the LLM with token mixing made explicit where asked (analysis.mixing).

The backbone is analysed as it reads a video without TransV (every vision token reaches every layer), as the
paper's blocking and attention analyses do, or, with `drops`, with a share of the vision tokens dropped evenly
at chosen layers and nothing transferred (TransV's `td` kind), for a model whose later layers were trained on
fewer tokens. Greedy answers are decoded by running the whole sequence again for every new token: slow, and
exact under any cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from timeviper.analysis.mixing import mixing
from timeviper.prompts import encode_prompt
from timeviper.transv import uniform_drop

GROUPS = ("system", "vision", "instruction", "response")  # system: every token before the video
SYSTEM, VISION, INSTRUCTION, RESPONSE = range(len(GROUPS))


@dataclass
class Sequence:
    embeds: Tensor  # [1, T, C] the prompt's embeddings, then the response's so far
    groups: Tensor  # [T] long: the GROUPS index of every token
    response: list[int]  # token ids of the response so far

    def extended(self, model, token: int) -> "Sequence":
        embed = model.llm.embed_tokens(torch.tensor([[token]], device=self.embeds.device))
        return Sequence(torch.cat([self.embeds, embed], 1),
                        torch.cat([self.groups, self.groups.new_tensor([RESPONSE])]), self.response + [token])


def request(model, frames: Tensor, times: Tensor, instruction: str) -> Sequence:
    """The prompt of `instruction` about uint8 frames [F, H, W, 3] shown at `times` (seconds [F])."""
    enc = encode_prompt(model.tokenizer, instruction, model.config.system_prompt, model.config.instruction_before_video)
    ids = torch.tensor(enc.ids, device=model.device)[None]
    text = model.llm.embed_tokens(ids)  # [1, n, C]
    vision = model.embed_frames(frames, times)[None].to(text.dtype)  # [1, F * tokens_per_frame, C]
    groups = [torch.full((enc.vision_at,), SYSTEM), torch.full((vision.shape[1],), VISION),
              torch.full((len(enc.ids) - enc.vision_at,), INSTRUCTION)]
    return Sequence(torch.cat([text[:, :enc.vision_at], vision, text[:, enc.vision_at:]], 1),
                    torch.cat(groups).to(model.device), [])


def pairs(groups: Tensor, reader: int, source: int) -> Tensor:
    """Bool [T, T]: the pairs (t, s) where a token of group `reader` would read one of group `source`."""
    return (groups[:, None] == reader) & (groups[None, :] == source)


def run(llm, seq: Sequence, cuts: dict[int, tuple[int, int]] | None = None, maps: bool = False,
        num_logits: int = 1, drops: dict[int, float] | None = None) -> tuple[Tensor, dict[int, tuple[Tensor, Tensor]]]:
    """The LLM over the whole sequence: (logits of the last `num_logits` tokens [1, n, V], {layer: (its mixing
    matrix [H, T_l, T_l], the groups [T_l] of the tokens it mixes)} of every attention and Mamba-2 layer when
    `maps`). Layers in `cuts` mix by their explicit matrix with the (reader group, source group) pairs cut; the
    others by their own forward unless `maps` asks for their matrix. Entering a layer of `drops`, that share of
    the vision tokens left is dropped evenly (as TransV's uniform_drop picks them), so later matrices are over
    fewer tokens."""
    cuts, drops = cuts or {}, drops or {}
    h, groups = seq.embeds, seq.groups
    positions = torch.arange(h.shape[1], device=h.device)[None] if llm.config.needs_positions else None
    matrices = {}
    for i, block in enumerate(llm.layers):
        if i in drops:
            vision = groups == VISION
            keep = ~vision
            keep[vision] = ~uniform_drop(0, int(vision.sum()), drops[i], h.device)
            h, groups = h[:, keep], groups[keep]
            positions = None if positions is None else positions[:, keep]
        if block.kind != "mlp" and (i in cuts or maps):
            h, weights = mixing(block, h, positions, pairs(groups, *cuts[i]) if i in cuts else None)
            if maps:
                matrices[i] = weights[0], groups
        else:
            h = block(h, positions)
    _, logits = llm.head(h, num_logits)
    return logits, matrices


@torch.inference_mode()
def greedy(model, seq: Sequence, max_new_tokens: int = 24, cut: tuple[int, int] | None = None,
           layers: tuple[int, ...] = (), drops: dict[int, float] | None = None) -> Sequence:
    """The sequence with its greedy response (up to the end-of-turn token or `max_new_tokens`); with `cut`
    (reader group, source group), readers never read sources at `layers`, response tokens included; `drops`
    as in run."""
    stop = model.tokenizer.stop_id
    cuts = {layer: cut for layer in layers} if cut else None
    for _ in range(max_new_tokens):
        logits, _ = run(model.llm, seq, cuts, drops=drops)
        token = int(logits[0, -1].argmax())
        if token == stop:
            break
        seq = seq.extended(model, token)
    return seq
