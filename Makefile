# make demo: the console with a fleet of simulated agents (Ctrl-C stops it).
#   PORT=8000 and DEMO_ARGS="--no-fleet" or "--duration 60" are optional.
# make test: the test suite. Both create .venv and install the project on first use; make test
#   also installs Chromium for the browser tests when it is missing (.ci/chromium).
#   It ends with `make test-client`: the client package's tests (clients/python/tests, the
#   framework adapters against the real frameworks and a live console) in the client's own
#   virtualenv; SKIP_CLIENT_TESTS=1 leaves them out.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PORT ?= 8000
DEMO_ARGS ?=

CLIENT_VENV := clients/python/.venv
CLIENT_STAMP := $(CLIENT_VENV)/.installed
SKIP_CLIENT_TESTS ?=

.PHONY: demo test test-client install install-client chromium

demo: $(STAMP)
	$(VENV)/bin/python manage.py demo --port $(PORT) $(DEMO_ARGS)

test: $(STAMP) chromium
	$(VENV)/bin/pytest
	@if [ -z "$(SKIP_CLIENT_TESTS)" ]; then $(MAKE) --no-print-directory test-client; fi

# The client's tests start the console from .venv; the client's virtualenv never holds the server
# (the OpenAI Agents SDK's top-level package is `agents`, like the console's app).
test-client: $(STAMP) $(CLIENT_STAMP)
	cd clients/python && .venv/bin/pytest

install: $(STAMP)

install-client: $(CLIENT_STAMP)

# The browser tests' Chromium, from the distribution's packages (or says what to run, and stops).
chromium:
	@.ci/chromium

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when a pyproject.toml is newer than the last install. The client package
# (clients/python, httpx only) goes in too: the server's tests and the demo fleet use it.
$(STAMP): pyproject.toml clients/python/pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install -e '.[dev]' -e ./clients/python
	touch $(STAMP)

$(CLIENT_VENV)/bin/python:
	$(PYTHON) -m venv $(CLIENT_VENV)

# The client with every adapter's extra (the frameworks at their pinned versions), pytest and mypy.
$(CLIENT_STAMP): clients/python/pyproject.toml | $(CLIENT_VENV)/bin/python
	$(CLIENT_VENV)/bin/pip install -e './clients/python[langgraph,openai-agents,pydantic-ai]' \
	  'pytest>=9,<10' 'mypy>=1.19,<1.20'
	touch $(CLIENT_STAMP)
