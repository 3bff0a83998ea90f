# `make test` and `make demo` work on a fresh machine: they create .venv and install first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test demo embedded clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q tests

demo: install
	$(VENV)/bin/timeviper demo

# Retrain the embedded model from scratch on one GPU (needs the gpu extra: pip install -e ".[gpu]"), in the phases
# of the shipped model (its model card): vision pretraining; motion questions alone, which a fresh LM needs to
# start on; the VLM stage of configs/embedded.yaml; 1,120 steps of configs/embedded-grounding.yaml's
# grounding-heavy mix, cosine 3e-4 -> 2e-5; then 1,100 more of it with a frame-time embedding (period 256 s),
# cosine 5e-4 -> 2e-5; then twice 1,050 more, cosine 2e-4 -> 2e-5 with the frame-time embedding at 1e-2
# (data seeds 26 and 27), and twice more with configs/embedded-long-mcq.yaml's long motion and counting questions
# added (data seeds 29 and 30); then that LM grown by a Mamba-2, an attention and an MLP block before its layer 9
# (scripts/grow_lm.py, identity at the start) and trained three times more on the same mix (data seeds 33-35, the
# new blocks at 3 times the rate; the third stops at step 971 of its 1,050, where the shipped model's time budget
# ended it),
# and blended half and half with the model it grew from (scripts/blend_lm.py); then 810 steps of motion questions
# alone, most about an object that also moves another way on another background (configs/embedded-binding-only.yaml,
# cosine 5e-4, data seed 50; it stops where the shipped model's time budget stopped it), 880 of the long-MCQ mix
# with those questions added (data seed 51), 880 of that mix with captions of one scene at a time added
# (configs/embedded-shots.yaml, data seed 53), and 820 with grounding questions on one scene at a time added as well
# (configs/embedded-shot-grounding.yaml, data seed 54): a bf16 model directory in runs/embedded-model, with logn attention past
# 1,024 tokens, as shipped (the frame-time phases train with it, as the shipped model's did), and frames past 256 s
# told no time, as shipped (the phases trained with them told their time modulo 256 s, as the shipped model's did).
GROUNDING_MIX = --set "data.datasets=$$(cat configs/embedded-grounding.yaml)"
LONG_MCQ_FILES = configs/embedded-grounding.yaml configs/embedded-long-mcq.yaml
LONG_MCQ_MIX = --set "data.datasets=$$(cat $(LONG_MCQ_FILES))"
BINDING_FILES = $(LONG_MCQ_FILES) configs/embedded-binding-only.yaml
BINDING_MIX = --set "data.datasets=$$(cat $(BINDING_FILES))"
SHOTS_FILES = $(BINDING_FILES) configs/embedded-shots.yaml
SHOTS_MIX = --set "data.datasets=$$(cat $(SHOTS_FILES))"
SHOT_GROUNDING_MIX = --set "data.datasets=$$(cat $(SHOTS_FILES) configs/embedded-shot-grounding.yaml)"
TIME_PHASE = --set model.tiny=null \
	--set train.max_steps=1050 --set optim.lr=2.0e-4 --set optim.transv_lr=2.0e-4 --set optim.min_lr_ratio=0.1 \
	--set optim.warmup_ratio=0.02 --set 'optim.lr_by_prefix={"projector.time": 1.0e-2}'
GROWN_PHASE = $(TIME_PHASE) $(LONG_MCQ_MIX) --set model.transv=null --set 'optim.lr_by_prefix={"projector.time": \
	1.0e-2, "llm.layers.9": 6.0e-4, "llm.layers.10": 6.0e-4, "llm.layers.11": 6.0e-4}'
embedded: install
	$(PY) -m timeviper.synth.pretrain_vision --config configs/embedded.yaml --out runs/embedded-vision --workers 12
	$(VENV)/bin/timeviper train --config configs/embedded.yaml --output runs/embedded-motion \
		--set model.tiny=null --set model.pretrained=runs/embedded-vision \
		--set "data.datasets=$$(cat configs/embedded-motion-only.yaml)" --set train.max_steps=620 \
		--set optim.scheduler=constant --set optim.warmup_ratio=0.001
	$(VENV)/bin/timeviper export runs/embedded-motion --out runs/embedded-motion-model
	$(VENV)/bin/timeviper train --config configs/embedded.yaml --output runs/embedded \
		--set model.tiny=null --set model.pretrained=runs/embedded-motion-model
	$(VENV)/bin/timeviper export runs/embedded --out runs/embedded-mix-model
	$(VENV)/bin/timeviper train --config configs/embedded.yaml --output runs/embedded-grounding \
		--set model.tiny=null --set model.pretrained=runs/embedded-mix-model \
		--set "data.datasets=$$(cat configs/embedded-grounding.yaml)" --set train.max_steps=1120 \
		--set optim.lr=3.0e-4 --set optim.transv_lr=3.0e-4 --set optim.min_lr_ratio=0.0667 \
		--set optim.warmup_ratio=0.008
	$(VENV)/bin/timeviper export runs/embedded-grounding --out runs/embedded-grounding-model --logn-length 1024
	$(VENV)/bin/timeviper train --config configs/embedded.yaml --output runs/embedded-time \
		--set model.tiny=null --set model.pretrained=runs/embedded-grounding-model --set model.time_period=256 \
		--set "data.datasets=$$(cat configs/embedded-grounding.yaml)" --set train.max_steps=1100 \
		--set optim.lr=5.0e-4 --set optim.transv_lr=5.0e-4 --set optim.min_lr_ratio=0.04 \
		--set optim.warmup_ratio=0.02
	$(VENV)/bin/timeviper export runs/embedded-time --out runs/embedded-time-model
	$(VENV)/bin/timeviper train --config configs/embedded.yaml --output runs/embedded-time-2 $(TIME_PHASE) \
		$(GROUNDING_MIX) --set model.pretrained=runs/embedded-time-model --set train.seed=26
	$(VENV)/bin/timeviper export runs/embedded-time-2 --out runs/embedded-time-2-model
	$(VENV)/bin/timeviper train --config configs/embedded.yaml --output runs/embedded-time-3 $(TIME_PHASE) \
		$(GROUNDING_MIX) --set model.pretrained=runs/embedded-time-2-model --set train.seed=27
	$(VENV)/bin/timeviper export runs/embedded-time-3 --out runs/embedded-time-3-model
	$(VENV)/bin/timeviper train --config configs/embedded.yaml --output runs/embedded-long-1 $(TIME_PHASE) \
		$(LONG_MCQ_MIX) --set model.pretrained=runs/embedded-time-3-model --set train.seed=29
	$(VENV)/bin/timeviper export runs/embedded-long-1 --out runs/embedded-long-1-model
	$(VENV)/bin/timeviper train --config configs/embedded.yaml --output runs/embedded-long-2 $(TIME_PHASE) \
		$(LONG_MCQ_MIX) --set model.pretrained=runs/embedded-long-1-model --set train.seed=30
	$(VENV)/bin/timeviper export runs/embedded-long-2 --out runs/embedded-long-2-model --dtype bfloat16
	$(PY) scripts/grow_lm.py runs/embedded-grown-model --model runs/embedded-long-2-model --insert 9:M*-
	$(VENV)/bin/timeviper train --config configs/embedded.yaml --output runs/embedded-grown-1 $(GROWN_PHASE) \
		--set model.pretrained=runs/embedded-grown-model --set train.seed=33
	$(VENV)/bin/timeviper export runs/embedded-grown-1 --out runs/embedded-grown-1-model --dtype bfloat16
	$(VENV)/bin/timeviper train --config configs/embedded.yaml --output runs/embedded-grown-2 $(GROWN_PHASE) \
		--set model.pretrained=runs/embedded-grown-1-model --set train.seed=34
	$(VENV)/bin/timeviper export runs/embedded-grown-2 --out runs/embedded-grown-2-model --dtype bfloat16
	$(VENV)/bin/timeviper train --config configs/embedded.yaml --output runs/embedded-grown-3 $(GROWN_PHASE) \
		--set model.pretrained=runs/embedded-grown-2-model --set train.seed=35 --max-steps 971
	$(VENV)/bin/timeviper export runs/embedded-grown-3 --out runs/embedded-grown-3-model --dtype bfloat16
	$(PY) scripts/blend_lm.py runs/embedded-blend-model --model runs/embedded-grown-3-model \
		--base runs/embedded-long-2-model --insert 9:M*- --alpha 0.5 --dtype bfloat16
	$(VENV)/bin/timeviper train --config configs/embedded.yaml --output runs/embedded-binding --set model.tiny=null \
		--set model.pretrained=runs/embedded-blend-model --set model.transv=null --set train.seed=50 \
		--set "data.datasets=$$(cat configs/embedded-binding-only.yaml)" --set train.max_steps=900 --max-steps 810 \
		--set optim.lr=5.0e-4 --set optim.transv_lr=5.0e-4 --set optim.min_lr_ratio=0.1 --set optim.warmup_ratio=0.02
	$(VENV)/bin/timeviper export runs/embedded-binding --out runs/embedded-binding-model --dtype bfloat16
	$(VENV)/bin/timeviper train --config configs/embedded.yaml --output runs/embedded-rebind $(TIME_PHASE) \
		$(BINDING_MIX) --set model.transv=null --set train.max_steps=880 \
		--set model.pretrained=runs/embedded-binding-model --set train.seed=51
	$(VENV)/bin/timeviper export runs/embedded-rebind --out runs/embedded-rebind-model --dtype bfloat16
	$(VENV)/bin/timeviper train --config configs/embedded.yaml --output runs/embedded-shots $(TIME_PHASE) \
		$(SHOTS_MIX) --set model.transv=null --set train.max_steps=880 \
		--set model.pretrained=runs/embedded-rebind-model --set train.seed=53
	$(VENV)/bin/timeviper export runs/embedded-shots --out runs/embedded-shots-model --dtype bfloat16
	$(VENV)/bin/timeviper train --config configs/embedded.yaml --output runs/embedded-shot-grounding $(TIME_PHASE) \
		$(SHOT_GROUNDING_MIX) --set model.transv=null --set train.max_steps=820 \
		--set model.pretrained=runs/embedded-shots-model --set train.seed=54
	$(VENV)/bin/timeviper export runs/embedded-shot-grounding --out runs/embedded-model --dtype bfloat16 \
		--time-past-period none

clean:
	rm -rf $(VENV) build dist src/*.egg-info
