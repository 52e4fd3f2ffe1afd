# pretextlab: `make run` starts the service on SQLite with a local worker; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
# `make run` is a single-user server on loopback: no token. AUTH=on (with `pretextlab token create`
# or PRETEXTLAB_API_TOKENS) for anything else; AUTH=off beyond loopback is refused.
AUTH   ?= off
PYTEST_ARGS ?=

.PHONY: run test install migrate data clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned to the builds this project supports (pip then keeps them).
	$(PIP) install -q "torch>=2.10,<=2.14.1" "torchvision>=0.25,<=0.29.1"
	$(PIP) install -q -e '.[ml,test]'
	touch $(STAMP)

install: $(STAMP)

migrate: $(STAMP)
	$(VENV)/bin/pretextlab db upgrade

data: $(STAMP)
	$(VENV)/bin/pretextlab data prepare fashion_mnist

run: migrate data
	PRETEXTLAB_AUTH=$(AUTH) $(VENV)/bin/pretextlab serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
