# Two commands matter: `make run` (the whole system, embedded) and `make test` (every tier).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every runtime and test dependency, the build backend and pip itself, at exact
# versions with hashes: a new machine installs exactly what CI passed with.
LOCK := requirements.lock
# The tool that writes the lock, pinned so that `make lock` means the same everywhere.
UV_VERSION := 0.13.9
# `make lock LOCK_FLAGS=--upgrade` moves every pin to the newest release that fits pyproject.toml;
# without it, pins already in the lock are kept where they still fit.
LOCK_FLAGS ?=

# Node packages of the contract tests (the AsyncAPI parser, the NATS client of the README's
# JavaScript example), exactly as package-lock.json says; install scripts are not run (none is needed).
JS := tests/contract/js
JS_STAMP := $(JS)/node_modules/.package-lock.json

.PHONY: install js lock run lint test chaos bench mutate images clean contract

install: $(STAMP)

# Nothing unpinned is fetched: the lock is installed hash-checked (pip and
# setuptools included, so no `--upgrade pip` to whatever is newest), then the
# project from this tree with the locked setuptools and no index at all.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --no-index -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

js: $(JS_STAMP)

$(JS_STAMP): $(JS)/package.json $(JS)/package-lock.json
	npm ci --prefix $(JS) --no-audit --no-fund --ignore-scripts

# Write asyncapi.yaml (the NATS contract) from the code; a test fails while the committed one differs.
contract: install
	$(BIN)/aceorch contract

# Regenerate the lock on purpose (after editing dependencies in pyproject.toml);
# tests/test_lock.py fails while the two disagree. The build backend's and pip's
# own requirements go in through stdin, since pyproject.toml lists them elsewhere.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(BIN)/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"] + ["pip"]))' \
	| $(BIN)/uv pip compile pyproject.toml - --extra test --generate-hashes --python-version 3.11 --universal \
		--custom-compile-command 'make lock' --quiet $(LOCK_FLAGS) -o $(LOCK)

run: install
	$(BIN)/aceorch up

# Lint, formatting and types (rule sets and strictness in pyproject.toml); part of `make test`.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Every tier, after `lint`. The tests wait on real processes far more than they compute; three
# run at once (pytest-xdist, each worker with its own port range), which took the parallel part
# from 12 to 9 minutes on a 2-core machine (four made timing tests fail); the `alone` ones (chaos
# scenarios, long ones: they measure under a load they make themselves) then run one at a time.
# TEST_WORKERS=2 for a slower, quieter run.
TEST_WORKERS ?= 3
test: install js lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not alone" -n $(TEST_WORKERS) --dist worksteal
	$(BIN)/python -m pytest -q -p no:cacheprovider -m alone

chaos: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/reliability

bench: install
	$(BIN)/python -m tests.bench

# Mutation testing of shared/policy (slow: not part of `make test`); survivors are listed at the end.
# The mutate profile (tests/conftest.py) skips shrinking: a failing example is enough to catch a mutant.
mutate: install
	PYTEST_ADDOPTS=--hypothesis-profile=mutate $(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut results

images:
	bash deploy/images.sh

clean:
	rm -rf $(VENV) data build .pytest_cache .mypy_cache .ruff_cache mutants $(JS)/node_modules
