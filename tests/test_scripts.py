"""scripts/fresh_lm.py and the data lists that gpu_suite.sh's embedded step takes in place of a config's mix."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from timeviper import TimeViper
from timeviper.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "src" / "timeviper" / "assets" / "embedded"


def test_fresh_lm_keeps_the_vision_front_and_renews_the_rest(tmp_path):
    out = tmp_path / "fresh"
    subprocess.run([sys.executable, ROOT / "scripts" / "fresh_lm.py", out], check=True, capture_output=True)
    fresh, shipped = load_file(out / "model.safetensors"), load_file(EMBEDDED / "model.safetensors")
    assert fresh.keys() == shipped.keys()
    for name, weight in fresh.items():
        same = torch.equal(weight.to(shipped[name].dtype), shipped[name])
        if name.startswith(("vision.", "projector.")):
            assert same, name
        elif shipped[name].numel() > 1 and shipped[name].std() > 0:  # trained weights, not constant initialisations
            assert not same, name
    model = TimeViper.from_pretrained(out, torch.float32)
    assert model.config.transv == TimeViper.from_pretrained(None, torch.float32).config.transv


@pytest.mark.parametrize("phase, name, weight", [("embedded-motion-only", "synth_motion_only", 1),
                                                  ("embedded-grounding", "synth_tvg_short", 4)])  # the mix's: 1
def test_a_phase_mix_loads_in_place_of_the_mix(phase, name, weight):  # as gpu_suite.sh's EMBEDDED_DATA, make embedded
    text = (ROOT / "configs" / f"{phase}.yaml").read_text()
    config = load_config(ROOT / "configs" / "embedded.yaml",
                         ["model.tiny=null", "model.pretrained=embedded", f"data.datasets={text}"])
    assert all(spec.synth is not None for spec in config.data.datasets)
    assert {spec.name: spec.weight for spec in config.data.datasets}[name] == weight
