"""The embedded model with its language model and TransV freshly initialised; vision encoder and projector kept.

    python scripts/fresh_lm.py OUT [--model DIR] [--seed 0]

The starting point of a VLM run that reuses a trained vision front, e.g. the shipped embedded model's first phase
(configs/embedded-motion-only.yaml; its model card tells the whole recipe).
"""

import argparse
from pathlib import Path

import torch

from timeviper import TimeViper
from timeviper.errors import CheckpointError


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="where the model directory is written")
    p.add_argument("--model", default=None, help="a TimeViper directory (default: the embedded model)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh weights")
    args = p.parse_args()
    if (Path(args.out) / "config.json").exists():
        p.error(f"{args.out} already holds a model: give a new directory")
    try:
        trained = TimeViper.from_pretrained(args.model, dtype=torch.float32)
    except CheckpointError as e:
        p.error(str(e))
    torch.manual_seed(args.seed)
    fresh = TimeViper(trained.config, trained.tokenizer)
    fresh.vision.load_state_dict(trained.vision.state_dict())
    fresh.projector.load_state_dict(trained.projector.state_dict())
    fresh.save_pretrained(args.out)
    print(f"wrote {args.out}: the vision front of {args.model or 'the embedded model'}, a fresh LM and TransV")


if __name__ == "__main__":
    main()
