# make run   set up if needed, migrate, then run the broker and the web app
# make test  set up if needed, then run the test suite
# make test-pure  the broker and client tests again without orjson and uvloop (CI runs both)
# Setting up is skipped while .venv is newer than requirements.txt.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: setup run test test-pure migrate

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

migrate: setup
	$(PY) manage.py migrate --noinput

run: migrate
	$(PY) manage.py run_coremq $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

test-pure: setup
	COREMQ_PURE_PYTHON=1 $(PY) -m pytest tests/client tests/broker $(ARGS)
