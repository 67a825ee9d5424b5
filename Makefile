# Two commands for a newcomer: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
# pip resolves an unpinned torch to a multi-GB CUDA build; install this CPU wheel first when no
# torch is present (override: make test TORCH_SPEC="torch==2.14.1").
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
OUT ?= out

.PHONY: install demo test quick lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m modgraph demo --out $(OUT)

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# the suite without the tests marked slow (a quick loop while working; CI runs `make test`)
quick: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(PY) -m ruff check .

bench: $(VENV)/.installed
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
