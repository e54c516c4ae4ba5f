# statestream: every install step lives here. `make serve` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
PORT ?= 50051
HOST ?= 127.0.0.1
MODELS ?= models/demo.onnx
# setuptools' "Editable installation" banner is a warning printed by pip's build step: noise for `make serve`.
QUIET_PIP := PYTHONWARNINGS=ignore $(PIP) install -q
GOBIN := $(CURDIR)/.tools/bin
export GOBIN

.PHONY: help serve test proto install-server install-dev install-triton-client install-torch tools bench clean

# Every target has a `## what it does` comment: `make help` lists them all from here.
help: ## list the targets
	@awk -F ':.*## ' '/^[a-z][a-z-]*:.*## / {printf "make %-22s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "variables: PORT=$(PORT) HOST=$(HOST) MODELS=$(MODELS) (e.g. make serve HOST=0.0.0.0 PORT=50052)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Stamps are keyed on pyproject.toml so a changed dependency reinstalls.
$(VENV)/.server-installed: pyproject.toml | $(PY)
	@echo "installing the server into $(VENV) (first run only)"
	@$(QUIET_PIP) -e ".[server]"
	@touch $@

$(VENV)/.dev-installed: pyproject.toml tests/requirements-nodeps.txt | $(PY)
	$(QUIET_PIP) -e ".[server,export,dev]"
	$(QUIET_PIP) --no-deps -r tests/requirements-nodeps.txt
	touch $@

# tritonclient pins protobuf<7 and our server needs protobuf>=7, so Triton's client gets its own venv: it is a
# separate process for a real Triton user too. The Triton protocol tests run small driver scripts with it.
TRITON_VENV ?= .venv-triton
TRITON_PY := $(TRITON_VENV)/bin/python
TRITON_REQS := tests/triton_client/requirements.txt

$(TRITON_VENV)/.installed: $(TRITON_REQS)
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_PY) -m pip --disable-pip-version-check install -q -r $(TRITON_REQS)
	touch $@

# PyPI's Linux torch is the CUDA build (about 5 GB), so the torch extra gets its own venv: the heavy packages in a
# cache outside the clone keyed by their pins (a second clone reuses it), .venv-torch per clone with this clone's code.
# The script checks in about a second when nothing changed, so the target always runs it (docs/models.md#pytorch).
TORCH_VENV ?= .venv-torch

install-server: $(VENV)/.server-installed ## install the server extra into .venv (no TensorFlow)
install-dev: $(VENV)/.dev-installed ## install the server, export and dev extras into .venv
install-triton-client: $(TRITON_VENV)/.installed ## install tritonclient into its own .venv-triton
install-torch: ## install the torch extra: a cached venv (~5 GB, once per machine) and .venv-torch
	$(PYTHON) scripts/install_torch.py --venv $(TORCH_VENV)

serve: install-server ## serve MODELS (the demo) on HOST:PORT (127.0.0.1:50051); Ctrl-C stops it
	@echo "make serve: $(MODELS) on $(HOST):$(PORT); make serve HOST=0.0.0.0 lets other machines connect, PORT=50052 moves it"
	@$(VENV)/bin/statestream-server --models $(MODELS) --host $(HOST) --port $(PORT)

# Go/Node tools (ghz, grpcurl, protoc plugins, npm packages) for the interop tests and bench.
tools: ## install the pinned Go/Node tools and perf_analyzer into .tools (interop tests, bench)
	bash scripts/install-tools.sh

# One optional tool that fails to install (recorded in .tools/failed/) fails only its own tests; the suite still runs.
test: install-dev ## install everything the tests need, then run them
	bash scripts/install-tools.sh --keep-going
	@$(MAKE) --no-print-directory install-triton-client || { mkdir -p .tools/failed; printf '%s\n' \
	  "install of 'tritonclient' failed (make install-triton-client)" "cause: pip could not install $(TRITON_REQS) into $(TRITON_VENV)" \
	  "fix: check that PyPI is reachable, then run make install-triton-client" > .tools/failed/tritonclient; }
	@if $(MAKE) --no-print-directory install-torch; then rm -f .tools/failed/torch; else mkdir -p .tools/failed; printf '%s\n' \
	  "install of 'torch' failed (make install-torch)" "cause: pip could not install pyproject's torch extra (see above)" \
	  "fix: check that PyPI is reachable and about 6 GB are free in ~/.cache, then run make install-torch" > .tools/failed/torch; fi
	$(PY) -m pytest -q

GO_MODULE := github.com/statestream/statestream/client/go

# Python stubs into client/ (statestream.v1 and Triton's inference), Go stubs into client/go/statestreamv1 (protoc from grpcio-tools, pinned Go plugins from `make tools`).
proto: install-dev tools ## regenerate the committed Python and Go stubs from proto/
	$(PY) -m grpc_tools.protoc -Iproto --python_out=client --pyi_out=client --grpc_python_out=client proto/statestream/v1/statestream.proto
	$(PY) -m grpc_tools.protoc -Iproto --python_out=client --pyi_out=client proto/statestream/inference/model_config.proto
	$(PY) -m grpc_tools.protoc -Iproto --python_out=client --pyi_out=client --grpc_python_out=client proto/statestream/inference/grpc_service.proto
	$(PY) -m grpc_tools.protoc -Iproto \
		--plugin=protoc-gen-go=$(GOBIN)/protoc-gen-go --go_out=client/go --go_opt=module=$(GO_MODULE) \
		--plugin=protoc-gen-go-grpc=$(GOBIN)/protoc-gen-go-grpc --go-grpc_out=client/go --go-grpc_opt=module=$(GO_MODULE) \
		proto/statestream/v1/statestream.proto
	cp proto/statestream/v1/statestream.proto client/node/proto/statestream/v1/  # shipped inside the npm package

bench: install-dev tools install-triton-client ## run the benchmarks into bench/results/ (ghz, ceilings, stores, workers)
	$(PY) -m bench.run --rounds 3
	$(PY) -m bench.scaleout
	$(PY) -m bench.proxy
	$(PY) -m bench.client_stream

clean: ## remove .venv, .venv-triton, .venv-torch and .tools (not the cached torch venv in ~/.cache/statestream)
	rm -rf $(VENV) $(TRITON_VENV) $(TORCH_VENV) .tools
