"""Information blocking (paper §3.1, Fig. 3, after Zhang et al. 2024): where in depth does a task need its
instruction (V2I) or its response (V2R) to read the vision tokens?

For every attention and Mamba-2 layer l, the model answers again with the flow from vision tokens to the
instruction's tokens (or to the response's) cut at the token-mixing layers of [l, l + window) (analysis.mixing),
and the task is scored as usual. The paper's finding in Nano-9B: cutting V2I early ruins multiple choice and
grounding while late cuts cost nothing, since the instruction has by then absorbed what it needs; captions
instead need V2R early. A window of 1 cuts one layer; a window as deep as the LM cuts from l on.
"""

from __future__ import annotations

from timeviper.analysis.plots import by_layer
from timeviper.analysis.sequence import INSTRUCTION, RESPONSE, VISION, greedy, request
from timeviper.data.synth_source import sample_video, task_prompt
from timeviper.errors import ConfigError
from timeviper.eval.metrics import score
from timeviper.eval.runner import MAX_NEW_TOKENS, answer_record
from timeviper.eval.synth_sweep import HEADLINE

PAIRS = {"v2i": (INSTRUCTION, VISION), "v2r": (RESPONSE, VISION)}  # name -> (reader group, source group)


def windows(llm, window: int) -> dict[int, tuple[int, ...]]:
    """{l: the token-mixing layers of [l, l + window)} for every token-mixing layer l."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"the blocking window must be a whole number of layers >= 1, got {window!r}")
    mixers = llm.config.mixing_layers
    return {l: tuple(i for i in mixers if l <= i < l + window) for l in mixers}


def block_items(model, task: str, items: list, window: int = 1, pairs=tuple(PAIRS), on_answer=None,
                drops: dict[int, float] | None = None) -> dict:
    """Score `task` on `items` ((VideoSpec, item) pairs, as synth_sweep.sweep_items makes them) answered as they
    are and under every (pair, layer) cut: {"baseline": metrics, "cells": [{"pair", "layer", "layers",
    "metrics", "value"}]}, `value` the task's headline metric. `on_answer()` is called after every answer;
    `drops` ({layer: share}) drops vision tokens in every answer (sequence.run)."""
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown:
        raise ConfigError(f"unknown blocking pair {unknown[0]!r}; expected some of {', '.join(PAIRS)}")
    spans = windows(model.llm, window)
    conditions = [None] + [(pair, layer) for pair in pairs for layer in spans]
    records = {condition: [] for condition in conditions}
    for spec, item in items:
        video = sample_video(spec)
        prompt = request(model, video.frames, video.timestamps, task_prompt(item))
        for condition in conditions:
            cut = {} if condition is None else {"cut": PAIRS[condition[0]], "layers": spans[condition[1]]}
            answered = greedy(model, prompt, MAX_NEW_TOKENS[task], drops=drops, **cut)
            text = model.tokenizer.decode(answered.response).strip()
            records[condition].append(answer_record(item, text))
            if on_answer is not None:
                on_answer()
    references = [item for _, item in items]

    def scored(condition) -> dict:
        return score(task, records[condition], references)

    cells = [{"pair": pair, "layer": layer, "layers": list(spans[layer]), "metrics": (m := scored((pair, layer))),
              "value": m[HEADLINE[task]]} for pair, layer in conditions[1:]]
    return {"baseline": scored(None), "cells": cells}


def plot(results: dict, kinds: dict[int, str], path) -> None:
    """Each task's headline metric against the layer where blocking starts, a line per pair."""
    by_layer(results, kinds, path, lambda c: c["pair"].upper(), "layer where blocking starts", "no blocking")
