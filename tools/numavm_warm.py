"""Compile numatp's kernels on the host, into the Numba cache the NUMA test VM will use.

Compiling the transformer step takes minutes of CPU on the host and would take an hour
under the VM's software emulation. Numba's cache is keyed by the CPU name and feature
string, so `make test-numa` runs this with a portable CPU target (NUMBA_CPU_NAME and
NUMBA_CPU_FEATURES that the emulated CPU also has) and hands the cache directory to the
guest, which then only loads what it needs.

It runs the same code paths as tests/numa: one shard in-process, and a process group
whose workers compile the step with the all-reduce's argument types.
"""
import os
import sys
from pathlib import Path

import numatp
from numatp.sampling import SamplingParams

REPO = Path(__file__).resolve().parents[1]
STORIES = REPO / "tests" / "data" / "stories260K.gguf"


def main():
    for nodes in (1, 2):
        with numatp.load(STORIES, nodes=nodes, ctx_size=128) as llm:
            ids = llm.prompt_ids("Once upon a time")
            list(llm.generate_ids(ids, 4, SamplingParams(temperature=0), stop_at_eog=False))
    print(f"numavm_warm: Numba cache ready in {os.environ.get('NUMBA_CACHE_DIR')}", file=sys.stderr)


if __name__ == "__main__":
    main()
