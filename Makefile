# Everything runs from the project's own virtualenv in .venv.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
BUF := npx --yes --prefix .buf buf

.PHONY: install run test lint protos check-protos clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	# The CPU build of torch first; any other torch requirement pulls CUDA wheels.
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/rag up

test: install
	$(PYTHON) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PYTHON) scripts/generate_protos.py --check
	npm install --silent --prefix .buf @bufbuild/buf
	$(BUF) lint

protos: install
	$(PYTHON) scripts/generate_protos.py

clean:
	rm -rf $(VENV) .buf var
