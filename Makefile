# Two commands matter: `make run` (the whole system, embedded) and `make test` (every tier).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test chaos bench images clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/aceorch up

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

chaos: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/reliability

bench: install
	$(BIN)/python -m tests.bench

images:
	bash deploy/images.sh

clean:
	rm -rf $(VENV) data build .pytest_cache
