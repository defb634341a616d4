PYTHON ?= python3

.PHONY: install test test-fast test-numa

install:
	$(PYTHON) -m pip install -e '.[test]'

test:
	$(PYTHON) -m pytest -q tests --ignore=tests/numa

test-fast:
	$(PYTHON) -m pytest -q tests --ignore=tests/numa -m "not slow"

# tests/numa inside a throw-away 2-node QEMU VM (tools/numavm.py), whose python3 is
# $(PYTHON). Needs tools/install-numavm-deps.sh once (as root). Exit 124: timeout, 125:
# no VM. Third-party pytest plugins stay unloaded: their imports cost a minute emulated.
test-numa:
	PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 $(PYTHON) tools/numavm.py -- python3 -m pytest -q tests/numa
