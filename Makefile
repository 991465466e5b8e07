# make demo: the console with a fleet of simulated agents (Ctrl-C stops it).
#   PORT=8000 and DEMO_ARGS="--no-fleet" or "--duration 60" are optional.
# make test: the test suite. Both create .venv and install the project on first use; make test
#   also installs Chromium for the browser tests when it is missing (.ci/chromium).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PORT ?= 8000
DEMO_ARGS ?=

.PHONY: demo test install chromium

demo: $(STAMP)
	$(VENV)/bin/python manage.py demo --port $(PORT) $(DEMO_ARGS)

test: $(STAMP) chromium
	$(VENV)/bin/pytest

install: $(STAMP)

# The browser tests' Chromium, from the distribution's packages (or says what to run, and stops).
chromium:
	@.ci/chromium

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml is newer than the last install.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install -e '.[dev]'
	touch $(STAMP)
