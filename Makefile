# fedgate — every target installs into .venv first when it is missing or older than pyproject.toml or
# constraints.txt (the exact versions the suite was last run with).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean constraints

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' -c constraints.txt
	@# OPA's own Go engine for the real-OPA tests: the package declares Python >=3.14 but runs on 3.11.
	$(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python -c constraints.txt opa-golib-python-bindings
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m gateway.demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gateway connectors pseudonymize audit tests bench
	$(BIN)/ruff format --check gateway connectors pseudonymize audit tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/policy.py
	$(BIN)/python bench/audit.py
	$(BIN)/python bench/query.py
	$(BIN)/python bench/query_steps.py
	$(BIN)/python bench/query_waits.py
	$(BIN)/python bench/query_ab.py --a "switch_interval_ms = 5" --b "switch_interval_ms = 10"
	$(BIN)/python bench/federation.py

constraints: $(STAMP)
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
