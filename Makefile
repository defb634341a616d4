PYTHON ?= python3

.PHONY: install test test-fast test-numa

install:
	$(PYTHON) -m pip install -e '.[test]'

test:
	$(PYTHON) -m pytest -q tests --ignore=tests/numa

test-fast:
	$(PYTHON) -m pytest -q tests --ignore=tests/numa -m "not slow"
