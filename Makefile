# OmniMesh: `make run` starts the platform on 127.0.0.1, `make test` runs every test.
# Only the Rust toolchain is assumed; anything else a target needs it installs itself.

SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
# cargo-nextest (on the rust-svc machines) isolates tests in processes and enforces the
# timeouts of .config/nextest.toml; plain `cargo test` is the fallback.
HAVE_NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: promtool all build release run test test-rust test-stock-client chart-lint manifests validate eval-nl bench-nl bench-engine bench-engine-h2load bench-controller bench-gateway fuzz-nl fuzz-engine fuzz-gateway fmt fmt-check lint clean help

all: build

help:
	@echo "make run                 build (release) and start the whole platform on 127.0.0.1"
	@echo "make test                every test: unit, integration, end-to-end, stock gRPC client"
	@echo "make lint                rustfmt --check and clippy -D warnings"
	@echo "make validate            the Helm chart, istio/, argo-rollouts/, k8s/ and the Dockerfile, offline"
	@echo "make chart-lint          helm lint (warnings fail) of the chart with each values file"
	@echo "make manifests           render k8s/, istio/ and argo-rollouts/ from the chart"
	@echo "make build | release     debug | release build of the workspace"
	@echo "make eval-nl             score the English interpreter (plain and 5-fold cross-validated)"
	@echo "make bench-nl            the interpreter's latency and model load against their budgets"
	@echo "make bench-engine        core-engine against OpenSSL and numpy, same run, ratios"
	@echo "make bench-engine-h2load batched Encrypt and Decrypt under h2load: server CPU per call"
	@echo "make bench-controller    the event store on SQLite and PostgreSQL vs plain INSERT loops"
	@echo "make bench-gateway       proxy-gateway against the real Envoy and nginx, same run, ratios"
	@echo "make fuzz-nl             fuzz the interpreter (cargo-fuzz; FUZZ_SECONDS=300)"
	@echo "make fuzz-engine         fuzz core-engine's ciphertext parsing, stream framing, Analyze input and retired-key lists"
	@echo "make fuzz-gateway        fuzz proxy-gateway's configuration, route matching and endpoints file"

build:
	$(CARGO) build --workspace --bins

release:
	$(CARGO) build --release --workspace --bins

# Foreground: the launcher prints a status table and the URLs; Ctrl-C or SIGTERM stops
# every service and exits 0. Runtime data (logs) goes to ./.omnimesh/.
run: release
	exec ./target/release/mesh-controller launch

test: test-rust test-stock-client validate

# The end-to-end tests run the real binaries, so they are built first.
test-rust: build
ifeq ($(HAVE_NEXTEST),yes)
	$(CARGO) nextest run --workspace --no-fail-fast
	$(CARGO) test --workspace --doc
else
	$(CARGO) test --workspace --no-fail-fast
endif

$(VENV)/.stock-client: tests/stock-client/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r $<
	touch $@

# Deployment artifacts, checked offline: the real Helm SDK renders the chart, every document
# is validated against the Kubernetes 1.37 schemas and the upstream Istio / Argo Rollouts
# CRDs (../shared/tools/validate-deploy), the analysis PromQL is parsed by promtool (Debian
# package prometheus), and tests/deploy checks what schemas cannot (non-root, limits, probes,
# drift of the committed manifests, the Dockerfile's structure and hadolint).
SHARED ?= ../shared
VALIDATE = $(VENV)/bin/python $(SHARED)/tools/validate-deploy
CHECKS = --check-refs --promql
# The Prometheus Operator's CRD is not among the shared schemas: its ServiceMonitor (on in
# ci/servicemonitor-values.yaml) is reported as SKIP with that reason; tests/deploy checks
# its ports.
NO_SERVICEMONITOR_SCHEMA = --allow-kind monitoring.coreos.com/ServiceMonitor

$(VENV)/.deploy: $(SHARED)/tools/requirements-deploy.txt tests/deploy/requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r $(SHARED)/tools/requirements-deploy.txt -r tests/deploy/requirements.txt
	touch $@

promtool:
	@command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

chart-lint: $(VENV)/.deploy
	$(VALIDATE) helm/omnimesh --strict-lint -q
	$(VALIDATE) helm/omnimesh -f helm/omnimesh/values-production.yaml --strict-lint -q
	for values in helm/omnimesh/ci/*.yaml; do $(VALIDATE) helm/omnimesh -f $$values --strict-lint -q $(NO_SERVICEMONITOR_SCHEMA) || exit 1; done

manifests: $(VENV)/.deploy
	$(VENV)/bin/python tests/deploy/manifests.py

validate: $(VENV)/.deploy promtool
	$(VALIDATE) helm/omnimesh $(CHECKS) --strict-lint
	$(VALIDATE) helm/omnimesh -f helm/omnimesh/values-production.yaml $(CHECKS) --strict-lint
	for values in helm/omnimesh/ci/*.yaml; do $(VALIDATE) helm/omnimesh -f $$values $(CHECKS) --strict-lint $(NO_SERVICEMONITOR_SCHEMA) || exit 1; done
	$(VALIDATE) istio $(CHECKS)
	$(VALIDATE) argo-rollouts $(CHECKS)
	$(VALIDATE) k8s $(CHECKS)
	$(VENV)/bin/python -m unittest discover -s tests/deploy

# A stock client (Python grpcio) that has never seen our protos, against the launcher.
test-stock-client: build $(VENV)/.stock-client
	$(VENV)/bin/python tests/stock-client/check.py target/debug

# The interpreter's figures on the shared development set and on our held-out phrasings.
NL_DEV ?= ../shared/nl/utterances-dev.jsonl
eval-nl:
	$(CARGO) build --release -p omniterm-interface
	./target/release/omniterm-interface eval-nl $(NL_DEV)
	@echo
	@echo "== held-out phrasings (never trained on)"
	./target/release/omniterm-interface eval-nl crates/omniterm-interface/data/holdout.jsonl | sed -n '/trained on everything/,/safety/p'

# The interpreter's latency (p50/p99 per utterance, model load) against the budgets, then
# criterion's statistics.
bench-nl:
	$(CARGO) bench -p omniterm-interface --bench interpret

# core-engine against OpenSSL and numpy in the same run; prints the ratios
# (target/bench-engine/results.md). BENCH_QUICK=1 for a smoke run.
bench-engine:
	bash bench/engine/run.sh

# The batched Encrypt and Decrypt RPCs driven by h2load (C) instead of tonic: the server's
# CPU per call.
bench-engine-h2load:
	bash bench/engine/h2load.sh

# The event store on SQLite and on PostgreSQL (127.0.0.1:5432) side by side, each against
# a plain INSERT loop on the same database in the same run. EVENTS_BENCH_SCALE=0.2 for a
# smoke run.
bench-controller:
	$(CARGO) bench -p mesh-controller --bench events

# proxy-gateway (one worker thread) against Envoy and nginx through the shared script;
# ends with its ratio line.
bench-gateway:
	bash bench/gateway/run.sh
	bash bench/gateway/jwt.sh

# Coverage-guided fuzzing of the interpreter (libFuzzer through cargo-fuzz, installed from
# crates.io when missing), seeded with every labelled line. FUZZ_SECONDS bounds the run.
FUZZ_SECONDS ?= 300
fuzz-nl:
	$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz
	mkdir -p fuzz/corpus/interpret
	cat ../shared/nl/utterances-dev.jsonl crates/omniterm-interface/data/*.jsonl 2>/dev/null \
	  | $(PYTHON) -c 'import sys,json,hashlib,pathlib; [pathlib.Path("fuzz/corpus/interpret", hashlib.sha1(t.encode()).hexdigest()).write_text(t) for t in (json.loads(l)["text"] for l in sys.stdin if l.strip())]'
	cd fuzz && $(CARGO) fuzz run --sanitizer none interpret -- \
	  -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=2 -rss_limit_mb=1024 -print_final_stats=1

# The core-engine fuzz targets (ciphertext parsing and opening, stream framing, Analyze
# input), each for
# FUZZ_SECONDS.
fuzz-engine:
	$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz
	for target in engine_ciphertext engine_stream engine_analyze engine_master_keys; do \
	  mkdir -p fuzz/corpus/$$target; \
	  (cd fuzz && $(CARGO) fuzz run --sanitizer none $$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=2 -rss_limit_mb=2048 -print_final_stats=1) || exit 1; \
	done

# proxy-gateway's configuration loading, route matching, endpoints file and traceparent, for
# FUZZ_SECONDS each.
fuzz-gateway:
	$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz
	mkdir -p fuzz/corpus/gateway_routes fuzz/corpus/gateway_endpoints fuzz/corpus/gateway_traceparent
	printf '%s' '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' > fuzz/corpus/gateway_traceparent/seed
	printf '%s\n' 'POST /omnimesh.engine.v1.Engine/Echo x-variant=b host=api.example.com' '[[proxy-gateway.routes]]' \
	  'match = { prefix = "/omnimesh.engine.v1." }' 'hosts = ["*.example.com"]' 'headers = [["x-variant", "b"]]' \
	  'split = [{ cluster = "e", subset = "stable", weight = 90 }, { cluster = "e", subset = "canary", weight = 10 }]' \
	  '[[proxy-gateway.routes]]' 'match = { regex = "/items/[0-9]+" }' 'cluster = "web"' \
	  > fuzz/corpus/gateway_routes/seed-split
	printf '%s\n' '[[clusters.core-engine]]' 'address = "10.0.0.5:50051"' 'subset = "stable"' \
	  '[[clusters.core-engine]]' 'address = "[::1]:50051"' 'weight = 5' 'healthy = false' \
	  > fuzz/corpus/gateway_endpoints/seed
	for target in gateway_routes gateway_endpoints gateway_traceparent; do \
	  (cd fuzz && $(CARGO) fuzz run --sanitizer none $$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -timeout=2 -rss_limit_mb=1024 -print_final_stats=1) || exit 1; \
	done

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all --check

lint: fmt-check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(VENV) .omnimesh
