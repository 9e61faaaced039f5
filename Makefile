# RaftMQ — `make run` starts a node, `make test` runs the tests. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint lint-deploy typecheck bench bench-quick bench-workloads bench-workloads-quick bench-cluster bench-cluster-quick bench-failover bench-burst bench-cpu bench-codec bench-memory bench-publish chaos chaos-long rolling-restart fuzz clean install cluster cluster-stop

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
	$(BIN)/mypy tests bench harness
	$(BIN)/python -m pytest -q

# 3 nodes on 127.0.0.1 (deploy/local-cluster.sh): AMQP CLUSTER_BASE_PORT..+2, management +10000,
# metrics +10020, Raft +20000; data and logs in CLUSTER_DATA. The defaults clash with make run.
CLUSTER_BASE_PORT ?= 5672
CLUSTER_DATA ?= data/cluster
cluster: $(STAMP)
	CLUSTER_BASE_PORT=$(CLUSTER_BASE_PORT) CLUSTER_DATA=$(CLUSTER_DATA) deploy/local-cluster.sh start

cluster-stop:
	CLUSTER_BASE_PORT=$(CLUSTER_BASE_PORT) CLUSTER_DATA=$(CLUSTER_DATA) deploy/local-cluster.sh stop

# Dockerfile (hadolint), compose file (docker compose config), Kubernetes
# manifests (kubernetes-validate); the linters install into .venv on first use.
lint-deploy: $(STAMP)
	deploy/lint.sh

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy tests bench harness

# RaftMQ and RabbitMQ (installed from Debian by the harness if missing) side by side, alternating:
# 180 s of sustained load per broker and size on one broker process, in 30 s windows (~14 min),
# then the workloads users run (bench-workloads, 64 KiB only as run_bench did 100 B and 4 KiB;
# ~30 min). BENCH_ARGS adds options to run_bench, e.g. BENCH_ARGS="--strict --json out.json";
# WORKLOADS_ARGS to bench.workloads.
bench: $(STAMP)
	$(BIN)/python -m bench.run_bench $(BENCH_ARGS)
	$(BIN)/python -m bench.workloads --sizes 65536 $(WORKLOADS_ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run_bench --duration 10 --window-s 5 --warmup 1 --runs 1 $(BENCH_ARGS)

# The workloads users run, RaftMQ vs RabbitMQ, a fresh broker each: 10 queues x (1 producer,
# 1 consumer), fanout 1 -> 10 queues, a topic exchange with 1,000 bindings, 1,000 idle connections,
# 10,000 queues declared, 100 B / 4 KiB / 64 KiB bodies; 180 s in 30 s windows each (~40 min;
# the quick form 20 s in 10 s windows, ~9 min, too long for bench-quick).
bench-workloads: $(STAMP)
	$(BIN)/python -m bench.workloads $(WORKLOADS_ARGS)

bench-workloads-quick: $(STAMP)
	$(BIN)/python -m bench.workloads --quick $(WORKLOADS_ARGS)

# The producer alone, 500 in flight, 1 KiB, no consumer: RaftMQ vs RabbitMQ's quorum queue, 180 s
# in 30 s windows each (the sustained form of bench-memory's publish phase; ~8 min).
bench-publish: $(STAMP)
	$(BIN)/python -m bench.run_bench --no-consumer --inflight 500 --sizes 1024 \
		--rabbitmq-queue-type quorum $(BENCH_ARGS)

# Deep backlogs on one node: RaftMQ vs RabbitMQ 3.10 quorum and classic lazy queues; RSS idle,
# with 100,000 and 1,000,000 x 1 KiB queued, publish, restart after kill -9, drain (~25 min).
bench-memory: $(STAMP)
	$(BIN)/python -m bench.memory

# 3-node clusters: RaftMQ vs RabbitMQ quorum queue, clients on non-leader nodes: 180 s throughput
# and 90 s latency per size in 30 s windows, failovers (~25 min; quick ~4 min)
bench-cluster: $(STAMP)
	$(BIN)/python -m bench.run_bench_cluster $(BENCH_ARGS)

bench-cluster-quick: $(STAMP)
	$(BIN)/python -m bench.run_bench_cluster --quick $(BENCH_ARGS)

# Leader kill -9 -> next confirm (target <= 1 s at p99), lost, duplicates: 20 kills on one 3-node
# RaftMQ cluster, 5 on RabbitMQ's quorum queue, 1,000 confirmed msg/s through non-leaders (~8 min).
bench-failover: $(STAMP)
	$(BIN)/python -m bench.failover $(BENCH_ARGS)

# A burst of 1,024 publishes through 3-node RaftMQ / RabbitMQ (quorum) clusters and one node, per placement: longest gap between deliveries (<= 100 ms; ~3 min)
bench-burst: $(STAMP)
	$(BIN)/python -m bench.burst $(BENCH_ARGS)

# CPU µs per message (publish + deliver + ack) per node and per stage, at a fixed 5,000 msg/s:
# one node, then a 3-node cluster's leader and followers (docs/performance.md; ~6 min).
bench-cpu: $(STAMP)
	$(BIN)/python -m bench.cpu_budget $(BENCH_ARGS)

# Every node of a 3-node cluster drained, restarted and waited for in turn, with 1,200 msg/s of
# confirmed publishes and a consumer per node: longest confirm gap per node (<= 1 s), lost = 0.
rolling-restart: $(STAMP)
	$(BIN)/python -m tests.chaos.rolling

# Seeded fault schedules (kill, pause, partitions, power loss, leadership transfer, drain,
# rolling restart, membership change, slow disk, full disk) on 3- and 5-node clusters at
# CHAOS_RATE msg/s of confirmed publishes. full-disk mounts a tmpfs per node: needs root.
# make chaos SEED=N replays one schedule exactly; the default run is 50 schedules in <= 45 min,
# then the regression tests named after the seeds that found bugs (~12 min); both always run.
SEED ?=
CHAOS_RATE ?= 1050
CHAOS_KINDS ?= kill,kill-minority,pause,isolate,halves,ring,kill-all,power-loss,power-loss-all,transfer,drain,rolling,membership,slow-disk,full-disk
chaos: $(STAMP)
ifneq ($(SEED),)
	$(BIN)/python -m tests.chaos --seed $(SEED) --keep always --rate $(CHAOS_RATE) \
		--kinds $(CHAOS_KINDS)
else
	s=0; $(BIN)/python -m tests.chaos --schedules 50 --nodes 3,5 --minutes 45 --fault-seconds 45 \
		--rate $(CHAOS_RATE) --kinds $(CHAOS_KINDS) || s=$$?; \
	$(BIN)/python -m pytest -m chaos -q -rxX -p no:cacheprovider tests/chaos; t=$$?; \
	exit $$(( s || t ))
endif

# Not in CI: CHAOS_LONG_SCHEDULES (200) schedules drawing from every fault kind (all: the
# chaos kinds and slow) on 3- and 5-node clusters, no time budget (~50 s each, about 3 h),
# then the same table as chaos. CHAOS_LONG_BASE=N fixes the seeds (default: random, printed).
CHAOS_LONG_SCHEDULES ?= 200
CHAOS_LONG_KINDS ?= all
CHAOS_LONG_BASE ?=
chaos-long: $(STAMP)
	$(BIN)/python -m tests.chaos --schedules $(CHAOS_LONG_SCHEDULES) --nodes 3,5 \
		--fault-seconds 45 --rate $(CHAOS_RATE) --kinds $(CHAOS_LONG_KINDS) \
		$(if $(CHAOS_LONG_BASE),--base-seed $(CHAOS_LONG_BASE),)

# Hostile input, three layers (~10 min): 1,000,000 mutated conversations against the protocol
# object, 20,000 hypothesis command logs against the state machine, 20,000 hostile connections
# (200 at once) against a running node beside a well-behaved client. make test runs a short one.
# Then the hostile-tenant suite for 5 minutes (tests/hostile: tenant B attacks, tenant A
# measures losses and confirm latency); both always run.
fuzz: $(STAMP)
	s=0; $(BIN)/python -m tests.fuzz all || s=$$?; \
	$(BIN)/python -m tests.hostile --minutes 5; t=$$?; \
	exit $$(( s || t ))

bench-codec: $(STAMP)
	$(BIN)/python bench/codec_bench.py

clean:
	rm -rf $(VENV) data build *.egg-info
