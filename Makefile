# statestream: every install step lives here. `make serve` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
PORT ?= 50051
MODELS ?= models/demo.onnx
GOBIN := $(CURDIR)/.tools/bin
export GOBIN

.PHONY: serve test proto install-server install-dev install-triton-client tools bench clean help

help:
	@echo "make serve   serve the bundled demo model on port $(PORT) (creates $(VENV))"
	@echo "make test    install everything the tests need into $(VENV) and run them"
	@echo "make proto   regenerate the committed Python and Go stubs from proto/"
	@echo "make bench   run the benchmarks (ghz, baselines; stores and workers) into bench/results/"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Stamps are keyed on pyproject.toml so a changed dependency reinstalls.
$(VENV)/.server-installed: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[server]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[server,export,dev]"
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

install-server: $(VENV)/.server-installed
install-dev: $(VENV)/.dev-installed
install-triton-client: $(TRITON_VENV)/.installed

serve: install-server
	$(VENV)/bin/statestream-server --models $(MODELS) --port $(PORT)

# Go/Node tools (ghz, grpcurl, protoc plugins, npm packages) for the interop tests and bench.
tools:
	bash scripts/install-tools.sh

# One optional tool that fails to install (recorded in .tools/failed/) fails only its own tests; the suite still runs.
test: install-dev
	bash scripts/install-tools.sh --keep-going
	@$(MAKE) --no-print-directory install-triton-client || { mkdir -p .tools/failed; printf '%s\n' \
	  "install of 'tritonclient' failed (make install-triton-client)" "cause: pip could not install $(TRITON_REQS) into $(TRITON_VENV)" \
	  "fix: check that PyPI is reachable, then run make install-triton-client" > .tools/failed/tritonclient; }
	$(PY) -m pytest -q

GO_MODULE := github.com/statestream/statestream/client/go

# Python stubs into client/ (statestream.v1 and Triton's inference), Go stubs into client/go/statestreamv1 (protoc from grpcio-tools, pinned Go plugins from `make tools`).
proto: install-dev tools
	$(PY) -m grpc_tools.protoc -Iproto --python_out=client --pyi_out=client --grpc_python_out=client proto/statestream/v1/statestream.proto
	$(PY) -m grpc_tools.protoc -Iproto --python_out=client --pyi_out=client proto/statestream/inference/model_config.proto
	$(PY) -m grpc_tools.protoc -Iproto --python_out=client --pyi_out=client --grpc_python_out=client proto/statestream/inference/grpc_service.proto
	$(PY) -m grpc_tools.protoc -Iproto \
		--plugin=protoc-gen-go=$(GOBIN)/protoc-gen-go --go_out=client/go --go_opt=module=$(GO_MODULE) \
		--plugin=protoc-gen-go-grpc=$(GOBIN)/protoc-gen-go-grpc --go-grpc_out=client/go --go-grpc_opt=module=$(GO_MODULE) \
		proto/statestream/v1/statestream.proto
	cp proto/statestream/v1/statestream.proto client/node/proto/statestream/v1/  # shipped inside the npm package

bench: install-dev tools install-triton-client
	$(PY) -m bench.run
	$(PY) -m bench.scaleout
	$(PY) -m bench.proxy
	$(PY) -m bench.client_stream

clean:
	rm -rf $(VENV) $(TRITON_VENV) .tools
