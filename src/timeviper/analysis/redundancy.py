"""Vision-token redundancy by depth (paper §3.1, Fig. 4): the task's score when a share p of the vision tokens is
dropped, without transfer, on entering layer l: evenly spaced (TransV kind `td`) or the least attended by the last
instruction token (`tdattn`, at attention layers only). Dropping runs through the usual inference (the engine's
TransV path with `td_l_p` specs), so a cell costs what answering does."""

from __future__ import annotations

from timeviper.analysis.plots import by_layer
from timeviper.errors import ConfigError
from timeviper.eval.synth_sweep import HEADLINE, model_answer, run_cell

STRATEGIES = {"uni": "td", "attn": "tdattn"}  # strategy -> TransV kind that drops without transfer


def specs(kinds: dict[int, str], rates: list[float], strategies: list[str]) -> list[tuple[str, int, float]]:
    """(strategy, layer, p) of every cell: each token-mixing layer (attention layers only for `attn`)."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ConfigError(f"unknown strategy {unknown[0]!r}; expected some of {', '.join(STRATEGIES)}")
    if not all(0 < p <= 1 for p in rates):
        raise ConfigError(f"drop rates must be in (0, 1], got {rates}")
    return [(s, layer, p) for s in strategies for layer, kind in kinds.items() if kind != "mlp"
            and (s == "uni" or kind == "attention") for p in rates]


def sweep(model, task: str, cells: list[tuple[str, int, float]], args, bar) -> dict:
    """{"baseline": metrics with every token kept, "cells": [{"strategy", "layer", "p", "metrics", "value"}]}."""
    answer = model_answer(model, args)
    model.set_transv("none")
    baseline = run_cell(answer, "none", task, args.frames, args, bar)["metrics"]
    out = []
    for strategy, layer, p in cells:
        spec = f"{STRATEGIES[strategy]}_{layer}_{p:g}"
        model.set_transv(spec)
        metrics = run_cell(answer, spec, task, args.frames, args, bar)["metrics"]
        out.append({"strategy": strategy, "layer": layer, "p": p, "metrics": metrics, "value": metrics[HEADLINE[task]]})
    model.set_transv("none")
    return {"baseline": baseline, "cells": out}


def plot(results: dict, kinds: dict[int, str], path) -> None:
    """Each task's headline metric against the layer where tokens drop, a line per (strategy, p)."""
    by_layer(results, kinds, path, lambda c: f"{c['strategy']} p={c['p']:g}", "layer where vision tokens drop",
             "all kept", lambda name: {"marker": "o", "linestyle": "-"} if name.startswith("uni")
             else {"marker": "s", "linestyle": "--"})
