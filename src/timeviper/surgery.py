"""Checkpoint surgery on a trained TimeViper: grow its LM by blocks that start as the identity, and blend a model
trained further with the one it started from.

grow: an inserted block's output projection starts at zero, so in a pre-norm residual stack (h + mixer(norm h)) it
adds nothing: the grown model answers as the one it grew from until training moves it, and its other weights
(fresh, as in a new model) start learning once that projection does. TransV's layers move with the blocks inserted
before them. The way to more capacity for a model that training no longer improves, without starting over.

blend: every weight the two share becomes alpha * tuned + (1 - alpha) * base (weight-space ensembling, as
WiSE-FT, Wortsman et al. 2022); blocks that `grow` inserted have no counterpart in the base and are kept as tuned.
Further training on short videos can cost what a model read far past them; alpha trades the one for the other.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from timeviper.errors import ConfigError
from timeviper.llm.config import MIXER_OF_SYMBOL
from timeviper.model import TimeViper
from timeviper.transv import parse_transv

OUTPUT_PROJECTION = {"M": "out_proj", "*": "o_proj", "-": "down_proj"}  # the Linear that writes a block's output


def parse_insert(text: str) -> tuple[int, str]:
    """'9:M*-' -> (9, 'M*-'): blocks (M Mamba-2, * attention, - MLP) to put before LM layer 9."""
    match = re.fullmatch(r"(\d+):([M*-]+)", text.strip())
    if not match:
        raise ConfigError(f"bad insert {text!r}: expected LAYER:SYMBOLS, e.g. 9:M*- (symbols "
                          f"{', '.join(f'{s} {m}' for s, m in MIXER_OF_SYMBOL.items())})")
    return int(match[1]), match[2]


def parse_inserts(texts: list[str]) -> dict[int, str]:
    inserts = dict(map(parse_insert, texts))
    if len(inserts) != len(texts):
        raise ConfigError("an insert names a layer twice: put all of its blocks in one, e.g. 9:M*-")
    return inserts


def grown_pattern(old: str, inserts: dict[int, str]) -> tuple[str, list[int]]:
    """The LM pattern with `inserts[i]` before layer i (i == len(old): after the last), and the new index of
    each old layer."""
    bad = sorted(i for i in inserts if not 0 <= i <= len(old))
    if bad:
        raise ConfigError(f"cannot insert before layer(s) {bad}: the LM has layers 0..{len(old) - 1} "
                          f"(insert at {len(old)} to append)")
    pattern, moved = "", []
    for i in range(len(old) + 1):
        pattern += inserts.get(i, "")
        if i < len(old):
            moved.append(len(pattern))
            pattern += old[i]
    return pattern, moved


def renamed_weights(model: TimeViper, moved: list[int]) -> dict[str, torch.Tensor]:
    """`model`'s weights under the names its LM layers and TransV modules take when layer i becomes moved[i]."""
    renamed = {f"llm.layers.{i}.": f"llm.layers.{j}." for i, j in enumerate(moved)}
    renamed |= {f"transv.{s.layer}.": f"transv.{moved[s.layer]}." for s in parse_transv(model.config.transv)}
    weights = {}
    for name, tensor in model.state_dict().items():
        prefix = next((p for p in renamed if name.startswith(p)), "")
        weights[renamed.get(prefix, "") + name[len(prefix):]] = tensor
    return weights


def grow(model: TimeViper, inserts: dict[int, str], seed: int = 0) -> TimeViper:
    """`model` with `inserts[i]` placed before its LM layer i, each inserted block the identity."""
    pattern, moved = grown_pattern(model.config.llm.pattern, inserts)
    transv = "-".join(str(dataclasses.replace(s, layer=moved[s.layer])) for s in parse_transv(model.config.transv))
    config = dataclasses.replace(model.config, llm=dataclasses.replace(model.config.llm, pattern=pattern),
                                 transv=transv or "none", extra=dict(model.config.extra))
    torch.manual_seed(seed)
    grown = TimeViper(config, model.tokenizer).to(model.dtype)
    new_layers = sorted(set(range(len(pattern))) - set(moved))
    missing, unexpected = grown.load_state_dict(renamed_weights(model, moved), strict=False)
    assert not unexpected, unexpected
    assert all(any(k.startswith(f"llm.layers.{j}.") for j in new_layers) for k in missing), missing
    with torch.no_grad():
        for j in new_layers:
            getattr(grown.llm.layers[j].mixer, OUTPUT_PROJECTION[pattern[j]]).weight.zero_()
    return grown.eval()


def blend(tuned: TimeViper, base: TimeViper, alpha: float, inserts: dict[int, str] | None = None,
          keep: tuple[str, ...] = ()) -> TimeViper:
    """`tuned` with each weight it shares with `base` set to alpha * tuned + (1 - alpha) * base, in place.

    `inserts`: the blocks grown into base before tuned was trained from it (as given to grow); they are kept, as are
    the weights whose names start with one of `keep` (e.g. ("vision.", "projector.") for a new vision front).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    pattern, moved = grown_pattern(base.config.llm.pattern, inserts or {})
    if pattern != tuned.config.llm.pattern:
        grown = f" grown by {inserts}" if inserts else ""
        raise ConfigError(f"the base's LM{grown} has layers {pattern!r}, the tuned model's "
                          f"{tuned.config.llm.pattern!r}: blend a model with the one it was trained from "
                          "(and the same inserts)")
    shared = renamed_weights(base, moved)
    own = tuned.state_dict()
    for name, weight in shared.items():
        if name not in own or own[name].shape != weight.shape:
            raise ConfigError(f"the base's {name} {tuple(weight.shape)} has no counterpart in the tuned model "
                              f"({tuple(own[name].shape) if name in own else 'missing'})")
    unmatched = [prefix for prefix in keep if not any(name.startswith(prefix) for name in shared)]
    if unmatched:
        raise ConfigError(f"no weight's name starts with {unmatched[0]!r} (kept prefixes name weights such as "
                          f"{next(iter(shared))!r})")
    with torch.no_grad():
        for name, weight in shared.items():
            if own[name].is_floating_point() and not name.startswith(keep):
                own[name].lerp_(weight.to(own[name].dtype), 1.0 - alpha)
    return tuned
