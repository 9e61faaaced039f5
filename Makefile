# RaftMQ — `make run` starts a node, `make test` runs the tests. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint lint-deploy typecheck bench bench-quick bench-codec clean install cluster cluster-stop

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/raftmq serve

test: $(STAMP) lint-deploy
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mypy tests/harness bench
	$(BIN)/python -m pytest -q

cluster: $(STAMP)
	deploy/local-cluster.sh start

cluster-stop:
	deploy/local-cluster.sh stop

# Dockerfile (hadolint), compose file (docker compose config), Kubernetes
# manifests (kubernetes-validate); the linters install into .venv on first use.
lint-deploy: $(STAMP)
	deploy/lint.sh

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# RaftMQ and RabbitMQ (installed from Debian by the harness if missing) side by side.
bench: $(STAMP)
	$(BIN)/python -m bench.run_bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run_bench --duration 5 --warmup 1 --runs 1

bench-codec: $(STAMP)
	$(BIN)/python bench/codec_bench.py

clean:
	rm -rf $(VENV) data build *.egg-info
