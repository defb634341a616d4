PYTHON ?= python3

.PHONY: help install test test-fast test-numa
.DEFAULT_GOAL := help

# `make` alone lists the targets: each documented one carries a "## what it does" comment.
help:
	@echo "usage: make TARGET   (PYTHON=$(PYTHON))"
	@sed -n 's/^\([a-z-]*\):.*## \(.*\)/  \1\t\2/p' $(MAKEFILE_LIST) | expand -t 14

install:  ## pip install -e '.[test]': numatp and what the tests need
	$(PYTHON) -m pip install -e '.[test]'

test:  ## unit, end-to-end and real-model tests (the README's test command)
	$(PYTHON) -m pytest -q tests --ignore=tests/numa

test-fast:  ## the tests without the real-model ones (marked slow)
	$(PYTHON) -m pytest -q tests --ignore=tests/numa -m "not slow"

# tests/numa inside a throw-away 2-node QEMU VM (tools/numavm.py), whose python3 is
# $(PYTHON). Needs tools/install-numavm-deps.sh once (as root). Exit 124: timeout, 125:
# no VM. Third-party pytest plugins stay unloaded: their imports cost a minute emulated.
# The kernels are compiled on the host for a CPU target the emulated guest CPU also has
# (tools/numavm_warm.py says why), and the guest loads them from that cache.
# One cache per state of the package sources: Numba re-checks only a cached function's
# own file, so a cached step would otherwise keep a stale copy of an edited kernel.
NUMAVM_NUMBA_CACHE := /tmp/numatp-numavm-numba/$(shell cat $$(find numatp -name '*.py' | LC_ALL=C sort) | sha1sum | cut -c1-16)
PORTABLE_CPU := NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=+64bit,+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16,+cx8,+cmov,+fxsr,+mmx,+sahf,+xsave,+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+lzcnt,+movbe

NUMA_TESTS ?= tests/numa

test-numa:  ## tests/numa inside a 2-node QEMU VM (tools/install-numavm-deps.sh first)
	$(PORTABLE_CPU) NUMBA_CACHE_DIR=$(NUMAVM_NUMBA_CACHE) $(PYTHON) tools/numavm_warm.py
	$(PORTABLE_CPU) NUMAVM_NUMBA_CACHE_DIR=$(NUMAVM_NUMBA_CACHE) PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 \
		$(PYTHON) tools/numavm.py -- python3 -m pytest -q $(NUMA_TESTS)
