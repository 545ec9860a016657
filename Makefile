# make run          set up the runtime if needed, migrate, then run the broker and the web app
# make test         set up for development if needed (tests, browser tests, benchmarks), then run the tests
# make test-pure    the broker and client tests again without orjson and uvloop (CI runs both)
# make screenshots  run the browser tests that take the pictures in docs/img/, saving them there
# make setup        the development setup alone (requirements-dev.txt: the runtime and the test tools)
# Each setup step is skipped while its stamp in .venv is newer than the requirements it installs.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.requirements-installed
DEV_STAMP := $(VENV)/.requirements-dev-installed
PIP_INSTALL := $(PY) -m pip install --progress-bar off
SCREENSHOT_TESTS := \
	tests/status/test_status_page_browser.py::test_staff_sees_clients_and_counts_live \
	tests/status/test_durable_status.py::test_page_shows_the_durable_store_failing_and_recovering \
	tests/websocket/test_browser.py::test_demo_page_screenshot

.PHONY: setup setup-runtime run test test-pure screenshots migrate

setup: $(DEV_STAMP)

setup-runtime: $(RUNTIME_STAMP)

$(PY):
	@echo "== Creating the virtual environment $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): requirements.txt | $(PY)
	@echo "== Installing the runtime packages of requirements.txt into $(VENV): pip lists each one"
	$(PIP_INSTALL) -r requirements.txt
	touch $@

$(DEV_STAMP): requirements-dev.txt $(RUNTIME_STAMP)
	@echo "== Installing the test and benchmark packages of requirements-dev.txt into $(VENV)"
	$(PIP_INSTALL) -r requirements-dev.txt
	touch $@

migrate: setup-runtime
	@echo "== Migrating the database"
	$(PY) manage.py migrate --noinput

run: migrate
	@echo "== Starting the broker and the web app (Ctrl-C stops them)"
	$(PY) manage.py run_coremq $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

test-pure: setup
	COREMQ_PURE_PYTHON=1 $(PY) -m pytest tests/client tests/broker $(ARGS)

screenshots: setup
	COREMQ_SAVE_SCREENSHOTS=1 $(PY) -m pytest $(SCREENSHOT_TESTS) $(ARGS)
