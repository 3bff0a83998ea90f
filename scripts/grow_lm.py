"""A TimeViper with blocks inserted into its LM, each starting as the identity; everything else kept.

    python scripts/grow_lm.py OUT --insert 9:M*- [--insert 14:M-] [--model DIR] [--seed 0]

`--insert I:SYMBOLS` puts blocks (M Mamba-2, * attention, - MLP) before the LM's layer I (I = its layer count: at
the end). An inserted block's output projection starts at zero, so in a pre-norm residual stack (h + mixer(norm h))
it adds nothing: the grown model answers as the one it grew from until training moves it, and its other weights
(fresh, as in a new model) start learning once that projection does. TransV's layers move with the blocks inserted
before them. The way to more capacity for a model that training no longer improves, without starting over.
"""

import argparse
import dataclasses
import re
from pathlib import Path

import torch

from timeviper import TimeViper
from timeviper.errors import CheckpointError, ConfigError
from timeviper.llm.config import MIXER_OF_SYMBOL
from timeviper.transv import parse_transv

OUTPUT_PROJECTION = {"M": "out_proj", "*": "o_proj", "-": "down_proj"}  # the Linear that writes a block's output


def parse_insert(text: str) -> tuple[int, str]:
    """'9:M*-' -> (9, 'M*-')."""
    match = re.fullmatch(r"(\d+):([M*-]+)", text.strip())
    if not match:
        raise ConfigError(f"bad --insert {text!r}: expected LAYER:SYMBOLS, e.g. 9:M*- (symbols "
                          f"{', '.join(f'{s} {m}' for s, m in MIXER_OF_SYMBOL.items())})")
    return int(match[1]), match[2]


def grow(model: TimeViper, inserts: dict[int, str], seed: int = 0) -> TimeViper:
    """`model` with `inserts[i]` placed before its LM layer i (i == layer count: after the last)."""
    old = model.config.llm.pattern
    bad = sorted(i for i in inserts if not 0 <= i <= len(old))
    if bad:
        raise ConfigError(f"cannot insert before layer(s) {bad}: the LM has layers 0..{len(old) - 1} "
                          f"(insert at {len(old)} to append)")
    pattern, moved = "", []  # moved[i]: the new index of old layer i
    for i in range(len(old) + 1):
        pattern += inserts.get(i, "")
        if i < len(old):
            moved.append(len(pattern))
            pattern += old[i]
    specs = parse_transv(model.config.transv)
    transv = "-".join(str(dataclasses.replace(s, layer=moved[s.layer])) for s in specs) or "none"
    config = dataclasses.replace(model.config, llm=dataclasses.replace(model.config.llm, pattern=pattern),
                                 transv=transv, extra=dict(model.config.extra))
    torch.manual_seed(seed)
    grown = TimeViper(config, model.tokenizer).to(model.dtype)
    renamed = {f"llm.layers.{i}.": f"llm.layers.{j}." for i, j in enumerate(moved)}
    renamed |= {f"transv.{s.layer}.": f"transv.{moved[s.layer]}." for s in specs}
    weights = {}
    for name, tensor in model.state_dict().items():
        prefix = next((p for p in renamed if name.startswith(p)), "")
        weights[renamed.get(prefix, "") + name[len(prefix):]] = tensor
    new_layers = sorted(set(range(len(pattern))) - set(moved))
    missing, unexpected = grown.load_state_dict(weights, strict=False)
    assert not unexpected, unexpected
    assert all(any(k.startswith(f"llm.layers.{j}.") for j in new_layers) for k in missing), missing
    with torch.no_grad():
        for j in new_layers:
            getattr(grown.llm.layers[j].mixer, OUTPUT_PROJECTION[pattern[j]]).weight.zero_()
    return grown.eval()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="where the model directory is written")
    p.add_argument("--insert", action="append", required=True, metavar="LAYER:SYMBOLS",
                   help="blocks to put before LM layer LAYER, e.g. 9:M*- (repeatable)")
    p.add_argument("--model", default=None, help="a TimeViper directory (default: the embedded model)")
    p.add_argument("--seed", type=int, default=0, help="seed of the inserted blocks' fresh weights")
    args = p.parse_args()
    if (Path(args.out) / "config.json").exists():
        p.error(f"{args.out} already holds a model: give a new directory")
    try:
        inserts = dict(map(parse_insert, args.insert))
        if len(inserts) != len(args.insert):
            raise ConfigError("--insert names a layer twice: put all of its blocks in one, e.g. 9:M*-")
        model = TimeViper.from_pretrained(args.model)
        grown = grow(model, inserts, args.seed)
    except (ConfigError, CheckpointError) as e:
        p.error(str(e))
    grown.save_pretrained(args.out)
    old, new = model.config, grown.config
    print(f"wrote {args.out}: LM {old.llm.pattern} -> {new.llm.pattern}, TransV {old.transv} -> {new.transv}, "
          f"{sum(t.numel() for t in model.parameters()) / 1e6:.2f}M -> "
          f"{sum(t.numel() for t in grown.parameters()) / 1e6:.2f}M parameters")


if __name__ == "__main__":
    main()
