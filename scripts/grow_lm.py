"""A TimeViper with blocks inserted into its LM, each starting as the identity; everything else kept.

    python scripts/grow_lm.py OUT --insert 9:M*- [--insert 14:M-] [--model DIR] [--seed 0]

`--insert I:SYMBOLS` puts blocks (M Mamba-2, * attention, - MLP) before the LM's layer I (I = its layer count: at
the end); timeviper.surgery.grow tells how they start as the identity and learn.
"""

import argparse
from pathlib import Path

from timeviper import TimeViper
from timeviper.errors import CheckpointError, ConfigError
from timeviper.surgery import grow, parse_inserts


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
        inserts = parse_inserts(args.insert)
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
