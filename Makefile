# `make run` and `make test` set up .venv themselves (pinned requirements), then do their job.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-heavy bench clean

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	$(BIN)/qwen25 data fetch
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/qwen25 pipeline run --fresh

test: $(STAMP)
	$(BIN)/python -m pytest

test-heavy: $(STAMP)  # minutes-long real-model quality checks (eval parity with transformers, quantization quality)
	$(BIN)/python -m pytest -m heavy

bench: $(STAMP)
	$(BIN)/python bench/bench_inference.py
	$(BIN)/python bench/bench_tokenizer.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_moe.py
	$(BIN)/python bench/bench_eval.py

clean:
	rm -rf $(VENV) runs .pytest_cache
