# Quick start: `make evaluate` (main job) and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SCALE ?= small

.PHONY: setup evaluate test bench pipeline
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

evaluate: setup
	$(PY) evaluate.py

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/run_all.py

pipeline: setup
	$(PY) pipeline.py --scale $(SCALE)
