"""Attention maps of one request (paper §4.3, Fig. 5 and 6): the mixing matrix of every attention layer (its
weights) and Mamba-2 layer (its SSD matrix, analysis.mixing), over the model's own answer.

A Mamba-2 row is not a distribution (its entries are signed and unnormalised): rows are compared as |M| shares,
each row's absolute entries divided by their sum. `received` is the share of the attention of the tokens after
the video (instruction and response) that lands on each token group, averaged over those tokens; `sink` the share
that lands on the first token, averaged over every token after it. `evidence`, for items that say where their
answer is on screen (timeviper.synth's `evidence`), is the share of those tokens' attention on the video that lands
on the evidence frames' tokens (against `evidence_share`, their share of the video's tokens): which layers look
where the answer is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from timeviper.analysis.plots import layer_label
from timeviper.analysis.sequence import GROUPS, INSTRUCTION, VISION, greedy, request, run


def shares(matrix: Tensor) -> Tensor:
    """[H, T, T] -> [T, T]: every row's absolute entries as shares of their sum, averaged over heads."""
    a = matrix.abs()
    return (a / a.sum(-1, keepdim=True).clamp_min(1e-30)).mean(0)


def summarize(layer_shares: Tensor, groups: Tensor) -> dict:
    """{"received": {group: share}, "sink": share} of one layer's shares [T, T]."""
    readers = groups >= INSTRUCTION  # [T] the text after the video
    received = {name: round(float(layer_shares[readers][:, groups == g].sum(-1).mean()), 4)
                for g, name in enumerate(GROUPS)}
    return {"received": received, "sink": round(float(layer_shares[1:, 0].mean()), 4)}


def evidence_received(layer_shares: Tensor, groups: Tensor, evidence: Tensor) -> float | None:
    """The share of the video's part of the attention of the text after the video that lands on the evidence tokens
    (bool [V] over the video's tokens), averaged over all those readers (evidence attention, in training, teaches
    the last instruction token alone); None for a layer that mixes fewer vision tokens than the video has (after a
    drop: which ones are left is not kept)."""
    vision = groups == VISION  # [T]
    if int(vision.sum()) != len(evidence):
        return None
    read = layer_shares[groups >= INSTRUCTION][:, vision]  # [readers, V]
    return round(float((read[:, evidence].sum(-1) / read.sum(-1).clamp_min(1e-30)).mean()), 4)


@torch.inference_mode()
def attention_maps(model, frames: Tensor, times: Tensor, instruction: str, max_new_tokens: int = 24,
                   drops: dict[int, float] | None = None):
    """(the answer, groups [T], {layer: (shares [T_l, T_l], groups [T_l])}) of `instruction` about frames shown
    at `times`; `drops` as in sequence.run (layers after a drop mix fewer tokens)."""
    answered = greedy(model, request(model, frames, times, instruction), max_new_tokens, drops=drops)
    _, matrices = run(model.llm, answered, maps=True, drops=drops)
    return (model.tokenizer.decode(answered.response).strip(), answered.groups.cpu(),
            {layer: (shares(m).cpu(), g.cpu()) for layer, (m, g) in matrices.items()})


def plot_maps(maps: dict[int, tuple[Tensor, Tensor]], kinds: dict[int, str], path) -> None:
    """One heatmap per layer (log colour scale), the token groups' borders drawn."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    columns = min(len(maps), 5)
    rows = -(-len(maps) // columns)
    fig = Figure(figsize=(3 * columns, 3 * rows), layout="constrained")
    for ax, (layer, (m, groups)) in zip(fig.subplots(rows, columns, squeeze=False).flat, maps.items()):
        borders = (torch.nonzero(groups.diff()).flatten() + 0.5).tolist()
        ax.imshow(m.clamp_min(1e-6).numpy(), norm=LogNorm(1e-6, 1), cmap="viridis", interpolation="nearest")
        for b in borders:
            ax.axhline(b, color="white", linewidth=0.5)
            ax.axvline(b, color="white", linewidth=0.5)
        ax.set_title(f"layer {layer} ({kinds[layer]})", fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in fig.axes[len(maps):]:
        ax.set_axis_off()
    fig.savefig(path, dpi=120)


def plot_received(summary: dict[int, dict], kinds: dict[int, str], path, evidence_share: float | None = None) -> None:
    """The share each token group receives from the text after the video, by layer; with `evidence_share`, also the
    share of the video's part on the evidence (dashed) against the evidence's share of the video (dotted)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.4), layout="constrained")
    ax = fig.subplots()
    layers = list(summary)
    for name in GROUPS:
        ax.plot(range(len(layers)), [summary[l]["received"][name] for l in layers], marker="o", label=name)
    if evidence_share is not None:
        on = [summary[l].get("evidence") for l in layers]
        ax.plot(range(len(layers)), [float("nan") if v is None else v for v in on], "k--", marker="x",
                label="evidence (share of vision)")
        ax.axhline(evidence_share, color="k", linestyle=":", linewidth=1, label="evidence's share of the video")
    ax.set_xticks(range(len(layers)), [layer_label(l, kinds) for l in layers])
    ax.set(xlabel="layer (M Mamba-2, * attention)", ylabel="share of attention received", ylim=(-0.02, 1.02))
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
