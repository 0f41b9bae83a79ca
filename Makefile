# CPU machines get the pinned CPU wheel of torch first; GPU machines keep setup.py's range.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PYTEST_ARGS ?=
# Two workers: most tests run one process with one OpenMP thread, and the SLURM tests mostly wait.
# Each test module stays on one worker (tests/conftest.py), so its module fixtures are built once.
TEST_WORKERS ?= 2
TESTS ?= tests

.PHONY: install test demo lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q $(FIND_LINKS) --upgrade pip setuptools wheel
ifneq ($(HAS_GPU),1)
	$(PIP) install -q $(FIND_LINKS) torch==2.13.0
	$(PIP) install -q $(FIND_LINKS) -e '.[hf,dev]' torch==2.13.0
else
	$(PIP) install -q --no-build-isolation -e '.[gpu,hf,dev]'
endif
	touch $@

test: install
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) $(PYTEST_ARGS) $(TESTS)

# Plants each known bug (tests/mutants/mutants.py) in a copy and runs the tests meant to catch it; not in `test`.
mutants: install
	$(PY) tests/mutants/run.py

demo: install
	$(PY) examples/quickstart.py

lint: install
	$(VENV)/bin/ruff check megatron_llm kernels tests benchmarks examples

bench: install
	for b in benchmarks/*.py; do \
		case "$$b:$(HAS_GPU)" in *gpu_throughput.py:) echo "== $$b skipped: no GPU"; continue;; esac; \
		echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
