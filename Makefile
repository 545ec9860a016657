# make run   set up if needed, migrate, then run the broker and the web app
# make test  set up if needed, then run the test suite
# Setting up is skipped while .venv is newer than requirements.txt.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: setup run test migrate

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
