"""Figures shared by the analyses: scores by layer, layers labelled by kind."""

from __future__ import annotations

from typing import Callable

from timeviper.eval.synth_sweep import HEADLINE


def layer_label(layer: int, kinds: dict[int, str]) -> str:
    """'5*' for an attention layer, '4M' for a Mamba-2 one."""
    return f"{layer}{'*' if kinds[layer] == 'attention' else 'M'}"


def by_layer(results: dict, kinds: dict[int, str], path, line: Callable[[dict], str], xlabel: str,
             baseline: str, style: Callable[[str], dict] = lambda name: {"marker": "o"}) -> None:
    """Each task's headline metric against the cells' layer, a line per `line(cell)`, the baseline dotted."""
    from matplotlib.figure import Figure

    tasks = list(results)
    fig = Figure(figsize=(4.2 * len(tasks), 3.4), layout="constrained")
    for ax, task in zip(fig.subplots(1, len(tasks), squeeze=False)[0], tasks):
        cells = results[task]["cells"]
        for name in dict.fromkeys(map(line, cells)):
            points = [(c["layer"], c["value"]) for c in cells if line(c) == name]
            ax.plot(*zip(*points), label=name, **style(name))
        ax.axhline(results[task]["baseline"][HEADLINE[task]], color="grey", linestyle=":", label=baseline)
        layers = sorted({c["layer"] for c in cells})
        ax.set_xticks(layers, [layer_label(l, kinds) for l in layers], fontsize="small")
        ax.set(title=task, xlabel=xlabel, ylabel=HEADLINE[task], ylim=(-0.02, 1.02))
        ax.legend(fontsize="x-small")
    fig.savefig(path, dpi=120)
