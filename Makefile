# Two commands on a fresh machine: `make run` and `make test`. Everything installs into .venv.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
MODEL := models/dupq-qqp
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test serving-check lint train evaluate bench docker clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per install, remade when pyproject.toml changes: serving alone (no PyTorch), and
# serving with training and the development tools (the tests train tiny models).
$(VENV)/.stamp-base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@
$(VENV)/.stamp-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $@

## run: install and serve the bundled model with the demo corpus on $(HOST):$(PORT)
run: $(VENV)/.stamp-base
	DUPQ_SEED_FILE=$${DUPQ_SEED_FILE:-demo/questions.tsv} DUPQ_DATA_DIR=$${DUPQ_DATA_DIR:-data} \
		$(BIN)/dupq serve --host $(HOST) --port $(PORT)

## lint: ruff (lint and format) and mypy
lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check app model tests bench scripts
	$(BIN)/ruff format --check app model tests bench scripts
	$(BIN)/mypy

## test: lint, then the whole test suite (slow tests included)
test: lint
	$(BIN)/pytest -q

## serving-check: a fresh virtual environment with a plain `pip install .` (no PyTorch) serves every endpoint and error of the contract over real HTTP, 1.1 included (through the client)
serving-check: $(VENV)/.stamp-dev
	rm -rf build/serve-venv
	$(PYTHON) -m venv build/serve-venv
	build/serve-venv/bin/pip install --quiet .
	! build/serve-venv/bin/python -c 'import torch' 2>/dev/null
	DUPQ_TEST_PYTHON=$(CURDIR)/build/serve-venv/bin/python $(BIN)/pytest -q tests/app/test_http.py tests/app/test_client_import.py

# The shipped tokenizer is reused when present: `tokenizers` breaks ties between equally frequent
# merges in no fixed order, and everything else in training is seeded. `make train TOKENIZER=`
# trains a new one.
TOKENIZER ?= $(wildcard $(MODEL)/tokenizer.json)

## train: reproduce the shipped model from $(DATA), then evaluate it (see docs/model.md for the times)
# The recipe is dupq train's defaults (model/training/config.py; docs/model.md): one network, seed 0,
# all-MiniLM-L6-v2 as the teacher, in float32. The pair training runs on one torch thread (a second
# thread changes the order of float sums, so the weights too); the teacher's pass runs on every CPU
# (its vectors are the same bytes on 1 and 2 threads).
train: $(VENV)/.stamp-dev
	mkdir -p build
	$(BIN)/dupq split --pairs $(DATA)/qqp/dev.tsv.gz --fraction 0.5 --seed 0 --out-rest build/valid.tsv --out-held build/holdout.tsv
	HF_HUB_OFFLINE=1 $(BIN)/dupq train --train $(DATA)/qqp/train.tsv.gz --valid build/valid.tsv --out $(MODEL) \
		--teacher-cache build/teacher.npy --threads 1 $(if $(TOKENIZER),--tokenizer $(TOKENIZER)) $(TRAIN_FLAGS)
	$(MAKE) evaluate

## evaluate: the shipped model on the held-out half of the BiMPM dev split, then on STS-B and SICK, next to TF-IDF and MiniLM
evaluate: $(VENV)/.stamp-dev
	mkdir -p $(MODEL)/report
	HF_HUB_OFFLINE=1 $(BIN)/dupq evaluate --model $(MODEL) --pairs build/holdout.tsv --tune build/valid.tsv \
		--reference --report $(MODEL)/report > $(MODEL)/report/evaluation.json
	cat $(MODEL)/report/evaluation.json
	HF_HUB_OFFLINE=1 $(BIN)/dupq sts --model $(MODEL) --pairs $(DATA)/sts/stsbenchmark.tsv.gz --split test \
		--reference > $(MODEL)/report/sts-benchmark.json
	HF_HUB_OFFLINE=1 $(BIN)/dupq sts --model $(MODEL) --pairs $(DATA)/sts/SICK_test_annotated.txt.gz \
		--reference > $(MODEL)/report/sick.json
	cat $(MODEL)/report/sts-benchmark.json $(MODEL)/report/sick.json

## bench: encoder and tokenizer throughput (with MiniLM), the teacher in float32 and bfloat16, the HTTP load test at 100,000 questions, exact against HNSW by size, a 5-minute soak, and a site's own questions (import, filters, groups, export; namespace layouts). The million- and ten-million-question runs are in docs/benchmarks.md
bench: $(VENV)/.stamp-dev
	HF_HUB_OFFLINE=1 $(BIN)/python bench/encoder.py
	$(BIN)/python bench/tokenizer.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/teacher.py
	$(BIN)/python bench/service.py
	$(BIN)/python bench/crossover.py
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/site.py
	$(BIN)/python bench/groups.py
	$(BIN)/python bench/namespaces.py

## docker: build the image and run the compose stack here, checked through the gateway
docker:
	bash scripts/docker.sh

clean:
	rm -rf $(VENV) build data .mypy_cache .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
