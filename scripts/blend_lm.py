"""A TimeViper whose weights blend a model trained further with the one it was trained from (WiSE-FT).

    python scripts/blend_lm.py OUT --model TUNED [--base DIR] [--alpha 0.5] [--insert 9:M*-] [--keep vision.]
        [--dtype bfloat16]

Each weight the two share becomes alpha * TUNED + (1 - alpha) * BASE (default: the embedded model). If TUNED was
grown from BASE (scripts/grow_lm.py), give the same --insert: the inserted blocks are kept as trained, and so are
the weights under each --keep prefix (`--keep vision. --keep projector.` for a TUNED on a new vision front). Config,
tokenizer and TransV come from TUNED; the blend is noted in the config's `extra`.
"""

import argparse
from pathlib import Path

import torch

from timeviper import TimeViper
from timeviper.cli import DTYPES
from timeviper.errors import CheckpointError, ConfigError
from timeviper.surgery import blend, parse_inserts


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="where the model directory is written")
    p.add_argument("--model", required=True, help="the TimeViper directory trained further (TUNED)")
    p.add_argument("--base", default=None, help="the TimeViper directory it was trained from (default: embedded)")
    p.add_argument("--alpha", type=float, default=0.5, help="the tuned model's share of each weight, in [0, 1]")
    p.add_argument("--insert", action="append", default=[], metavar="LAYER:SYMBOLS",
                   help="blocks grown into BASE before training, as given to grow_lm.py (repeatable)")
    p.add_argument("--keep", action="append", default=[], metavar="PREFIX",
                   help="weights whose names start so are TUNED's, unblended (repeatable)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="of the written weights")
    args = p.parse_args()
    if (Path(args.out) / "config.json").exists():
        p.error(f"{args.out} already holds a model: give a new directory")
    try:
        tuned = TimeViper.from_pretrained(args.model, torch.float32)
        base = TimeViper.from_pretrained(args.base, torch.float32)
        blended = blend(tuned, base, args.alpha, parse_inserts(args.insert), tuple(args.keep))
    except (ConfigError, CheckpointError) as e:
        p.error(str(e))
    blended.config.extra = {**blended.config.extra,
                            "blend": {"alpha": args.alpha, "base": args.base or "embedded", "inserts": args.insert,
                                      "kept": args.keep}}
    blended.save_pretrained(args.out, dtype=getattr(torch, args.dtype))
    print(f"wrote {args.out}: {args.alpha} x {args.model} + {1 - args.alpha:g} x {args.base or 'the embedded model'}")


if __name__ == "__main__":
    main()
