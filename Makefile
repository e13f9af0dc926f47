# HD-Compute-Toolkit: one entry point for set-up, tests, benchmarks and the demo.
# `make demo` and `make test` are the two commands a new user runs (README.md).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out
PYTEST_ARGS ?=

.PHONY: install tools images lint test test-images test-gpu bench bench-operator bench-state demo demo-engine clean cluster-up cluster-down

# Installs the package (editable, with the compiled CPU kernels) and its test/bench extras into .venv.
# torch is large: the first run downloads it once into pip's cache (~/.cache/pip), later runs reuse it.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py worker/hd_compute/kernels/cpu_kernels.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar on -e '.[dev]'
	@touch $@

# Test tooling (a real Kubernetes control plane, etcd, kwok, helm, an OpenTelemetry Collector, ...) built from
# pinned Go modules into ~/.cache/hd-compute/tools (HDC_TOOLS_DIR), plus the Debian packages the tests start
# (Prometheus, Alertmanager, PostgreSQL). The first build takes ~15 min on 2 cores; later runs are no-ops.
tools:
	@hack/build-tools.sh >/dev/null
	@hack/build-otelcol.sh >/dev/null
	@hack/system-packages.sh

# A local Kubernetes control plane with fake GPU nodes (docs/testing.md). Its last line is `export KUBECONFIG=...`.
cluster-up: tools
	@hack/cluster.sh up

cluster-down:
	@hack/cluster.sh down

# The worker and operator images as OCI archives, built without a container daemon (hack/images/build_images.py, as
# root): $(OUT)/images/hdc-worker.oci.tar and hdc-operator.oci.tar, named in hack/images/images.env, reported in
# $(OUT)/images/images.json. The Debian rootfs, the wheels and the layers are cached in ~/.cache/hd-compute/images,
# so only what changed is rebuilt (docs/install.md, docs/testing.md).
images: install
	@hack/system-packages.sh
	$(PY) hack/images/build_images.py

# Static checks, as CI runs them: ruff (lint and format), mypy (strict for the pure modules; the list is in
# pyproject.toml), and import-linter's contracts for the layering of docs/architecture.md.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The whole suite, the tests marked `k8s` against the local cluster included (or HDC_TEST_KUBECONFIG's).
# pytest's exit code 5 (nothing collected) means the suite is broken, so it fails too.
# The tests marked `images` (the image archives themselves) are left to `make test-images`: a cold image build
# downloads ~3 GiB of wheels (the worker's torch carries CUDA) and takes 10-16 min on 2 cores, past this target's
# budget; everything else, the real node included, runs here.
test: install tools
	@set +e; $(PY) -m pytest -m "not images" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; the suite is broken" >&2; exit 1; fi; \
	exit $$rc

# The image archives of `make images`, checked as a container runtime sees them (tests/deploy/test_images.py).
test-images: images
	$(PY) -m pytest -m images $(PYTEST_ARGS)

# Only the tests that need a CUDA device (run on a GPU machine).
test-gpu: install
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

# Ours vs torchhd on the seed's baseline cases; writes $(OUT)/bench.json and $(OUT)/bench.png.
bench: install
	@mkdir -p $(OUT)
	$(VENV)/bin/hdc-bench --kernels --json $(OUT)/bench.json --plot $(OUT)/bench.png --markdown $(OUT)/bench.md

# The operator on the local control plane: reconcile latency over 100 workloads vs direct applies, then 1,000
# workloads (time to all Running, operator peak RSS, API writes per idle minute); writes $(OUT)/bench-operator.json.
bench-operator: install tools
	@mkdir -p $(OUT)
	@KUBECONFIG=$$(hack/cluster.sh up | tail -1 | sed 's/^export KUBECONFIG=//') && \
	$(PY) benchmarks/operator/bench_operator.py --kubeconfig "$$KUBECONFIG" --json $(OUT)/bench-operator.json

# The state store (docs/state.md) on a throwaway local PostgreSQL: write to visible on 3 followers, catch-up of a
# new follower against reading the same bytes, add throughput of a growing memory; writes $(OUT)/bench-state.json.
bench-state: install tools
	@mkdir -p $(OUT)
	$(PY) benchmarks/state/bench_state.py --json $(OUT)/bench-state.json

# The main job: the local control plane with fake GPU nodes, the operator, one real worker process per pod,
# Prometheus with the operator's rules, an example HDCWorkload under load, and a live status table (hdcctl dev
# demo; docs/testing.md). Ctrl-C stops it and cleans up; HDC_DEMO_SECONDS=N stops after N seconds.
demo: install
	@hack/build-tools.sh >/dev/null
	@$(VENV)/bin/hdcctl dev demo

# The HDC engine alone (no cluster): digits classification on real data and the baseline benchmark.
demo-engine: install
	$(PY) -m hd_compute.demo

clean:
	rm -rf build $(OUT) .pytest_cache worker/*.egg-info worker/hd_compute/kernels/_cpu*.so
