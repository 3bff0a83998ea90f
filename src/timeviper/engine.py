"""Long-video inference: streaming staged prefill with TransV, then batched decoding.

Prefill never holds the activations of the whole sequence. Vision tokens arrive in chunks and go
through the LLM chunk by chunk; Mamba states carry across chunks and attention layers append to their
KV caches. Uniform TransV drops tokens chunk by chunk (the dropped set is a function of the global
index) and keeps the dropped tokens' cross-attention keys/values until the instruction arrives.

An attention-guided TransV layer needs the instruction's last token, which comes after the video, so
prefill runs in stages split at those layers: every chunk of [system + vision] through the layers
before the split (their outputs are kept), then the instruction, then selection and transfer; the
kept vision tokens then continue through the next stage, and so on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor

from timeviper.llm import Cache, HybridLM
from timeviper.llm.attention import VideoQueries
from timeviper.transv import TransV, attention_drop, attention_logits, attention_scores, uniform_drop


@dataclass
class Chunk:
    h: Tensor  # [1, n, C] hidden states entering the current layer
    positions: Tensor  # [1, n] position ids (as given at the input)
    is_vision: bool


def prefill(llm: HybridLM, transv: dict[int, TransV], prefix: Tensor, vision: Iterable[Tensor],
            instruction: Tensor, cache: Cache, progress=None, window: int | None = None) -> Tensor:
    """Prefill one request into `cache` (batch 1) and return the logits [1, V] of its last token.

    prefix [1, s, C] and instruction [1, m, C] are embedded text; `vision` yields chunks [1, n, C].
    `progress(tokens)` is called as vision tokens enter the LLM. `window` (positions): vision tokens attend to
    the prefix and the last `window` positions only (attention.VideoQueries); None: to everything before them.
    The instruction reads everything before it either way.
    """
    start_position = int(cache.next_position[0])
    counter = {"next": start_position}
    video = VideoQueries(start_position + prefix.shape[1], window)

    def with_positions(h: Tensor, is_vision: bool) -> Chunk:
        pos = torch.arange(counter["next"], counter["next"] + h.shape[1], device=h.device)[None]
        counter["next"] += h.shape[1]
        if is_vision and progress is not None:
            progress(h.shape[1])
        return Chunk(h, pos, is_vision)

    stream: Iterable[Chunk] = _source(prefix, vision, with_positions)
    instruction_chunk: Chunk | None = None
    guided = sorted(layer for layer, m in transv.items() if m.spec.strategy == "attention")
    bounds = [0, *guided, len(llm.layers)]
    for stage, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        uniform = {l: transv[l] for l in sorted(transv) if start <= l < stop and l not in guided}
        last_stage = stop == len(llm.layers)
        kept: list[Chunk] = []
        memories: dict[int, list[tuple[Tensor, Tensor]]] = {l: [] for l in uniform}
        seen_vision = {l: 0 for l in uniform}  # vision tokens present at layer l so far
        for chunk in stream:
            chunk = _through(llm, chunk, start, stop, uniform, memories, seen_vision, cache, video)
            if not last_stage:
                kept.append(chunk)
        if instruction_chunk is None:  # the instruction's positions come after every vision token
            instruction_chunk = with_positions(instruction, False)
        instruction_chunk = _instruction_through(llm, instruction_chunk, start, stop, uniform, memories, cache)
        if last_stage:
            break
        stream = _select_and_transfer(llm, transv[stop], stop, kept, instruction_chunk)
    cache.next_position += counter["next"] - start_position
    _, logits = llm.head(instruction_chunk.h, num_logits=1)
    return logits[:, -1]


def _source(prefix: Tensor, vision: Iterable[Tensor], with_positions) -> Iterator[Chunk]:
    if prefix.shape[1]:
        yield with_positions(prefix, False)
    for h in vision:
        yield with_positions(h, True)


def _through(llm, chunk: Chunk, start: int, stop: int, uniform: dict[int, TransV], memories, seen_vision,
             cache, video: VideoQueries) -> Chunk:
    """One chunk through layers [start, stop), dropping vision tokens at the uniform TransV layers."""
    h, pos, layer = chunk.h, chunk.positions, start
    video = video if chunk.is_vision else None
    for l, module in uniform.items():
        h = llm.run_layers(h, layer, l, pos, cache=cache, video=video)
        layer = l
        if chunk.is_vision:
            drop = uniform_drop(seen_vision[l], h.shape[1], module.spec.p, h.device)
            seen_vision[l] += h.shape[1]
            if module.spec.transfers and drop.any():
                memories[l].append(module.memory(h[0, drop]))
            h, pos = h[:, ~drop], pos[:, ~drop]
    h = llm.run_layers(h, layer, stop, pos, cache=cache, video=video)
    return Chunk(h, pos, chunk.is_vision)


def _instruction_through(llm, chunk: Chunk, start, stop, uniform, memories, cache) -> Chunk:
    h, layer = chunk.h, start
    for l, module in uniform.items():
        h = llm.run_layers(h, layer, l, chunk.positions, cache=cache)
        layer = l
        if memories[l]:
            k = torch.cat([m[0] for m in memories[l]], dim=1)
            v = torch.cat([m[1] for m in memories[l]], dim=1)
            memories[l].clear()
            h = h + module.delta(h[0], k, v, positions=chunk.positions)[None]
    h = llm.run_layers(h, layer, stop, chunk.positions, cache=cache)
    return Chunk(h, chunk.positions, False)


def _select_and_transfer(llm, module: TransV, layer: int, kept: list[Chunk], instruction: Chunk) -> list[Chunk]:
    """Attention-guided TransV at `layer`: drop the least attended vision tokens, transfer, return the rest."""
    block = llm.layers[layer]
    query_h, query_pos = instruction.h[:, -1:], instruction.positions[:, -1:]
    vision = [c for c in kept if c.is_vision]
    if not vision:
        return kept
    logits = torch.cat([attention_logits(block.mixer, block.norm, query_h, query_pos, c.h, c.positions)[:, 0]
                        for c in vision], dim=1)  # [H, n_vision]
    drop = attention_drop(attention_scores(logits), module.spec.p)
    out, offset, ks, vs = [], 0, [], []
    for c in kept:
        if not c.is_vision:
            out.append(c)
            continue
        d = drop[offset: offset + c.h.shape[1]]
        offset += c.h.shape[1]
        if module.spec.transfers and d.any():
            k, v = module.memory(c.h[0, d])
            ks.append(k)
            vs.append(v)
        if (~d).any():
            out.append(Chunk(c.h[:, ~d], c.positions[:, ~d], True))
    if ks:
        instruction.h = instruction.h + module.delta(instruction.h[0], torch.cat(ks, 1), torch.cat(vs, 1),
                                                     positions=instruction.positions)[None]
    return out


# --- decoding -----------------------------------------------------------------------------------------------
def sample(logits: Tensor, temperature: float = 0.0, top_p: float = 1.0, generator=None) -> Tensor:
    """logits [B, V] -> token ids [B]. Greedy at temperature 0; otherwise temperature + nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest set reaching top_p
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


class DecodeStep:
    """One decoding step over a static cache; on CUDA captured once as a graph and replayed.

    Eager PyTorch launches ~1,700 kernels a step for Nano-9B, so the GPU waits on Python; a graph
    launches them at once. The first two steps run eagerly (warming up kernels and libraries), the
    third is captured.
    """

    def __init__(self, llm: HybridLM, cache: Cache, max_new_tokens: int, use_graph: bool = True):
        self.llm, self.cache = llm, cache
        cache.make_static(max_new_tokens)
        device = cache.next_position.device
        self.use_graph = use_graph and device.type == "cuda"
        self.tokens = torch.zeros(cache.batch_size, 1, dtype=torch.long, device=device)
        self.graph, self.logits, self.calls = None, None, 0

    def _step(self) -> Tensor:
        return self.llm(input_ids=self.tokens, cache=self.cache, num_logits=1).logits[:, -1]

    def __call__(self, tokens: Tensor) -> Tensor:
        self.tokens.copy_(tokens.view(-1, 1))
        self.calls += 1
        if not self.use_graph or self.calls <= 2:
            return self._step()
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self._step()
        self.graph.replay()
        return self.logits


def decode(llm: HybridLM, cache: Cache, first_logits: Tensor, max_new_tokens: int, stop_ids: set[int],
           temperature: float = 0.0, top_p: float = 1.0, generator=None,
           stop_when: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
    """Generate up to `max_new_tokens` per row from a prefilled cache.

    A row stops at a token of `stop_ids` (not kept) or once `stop_when(row_tokens)` holds.
    """
    rows = first_logits.shape[0]
    step = DecodeStep(llm, cache, max_new_tokens)
    out: list[list[int]] = [[] for _ in range(rows)]
    done = torch.zeros(rows, dtype=torch.bool)
    logits = first_logits
    for _ in range(max_new_tokens):
        tokens = sample(logits, temperature, top_p, generator)
        for r, t in enumerate(tokens.tolist()):
            if not done[r]:
                if t in stop_ids:
                    done[r] = True
                else:
                    out[r].append(t)
                    done[r] = stop_when is not None and stop_when(out[r])
        if done.all():
            break
        logits = step(tokens)
    return out
