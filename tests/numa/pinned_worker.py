"""A stand-in for a numatp worker, run as its own process by test_placement.py.

    python pinned_worker.py NODE CPU[,CPU...] NBYTES

It pins itself to the CPUs and binds its memory to NODE the way a worker does, then
allocates and touches an ordinary numpy array, and prints one JSON line: where the
array's pages are, which CPUs each of its threads may use and the CPU each last ran on.
"""
import json
import sys
import threading

import numpy as np

from numatp.numa import placement

import kernel_view  # this script's directory is on sys.path


def main():
    node, nbytes = int(sys.argv[1]), int(sys.argv[3])
    cpus = [int(c) for c in sys.argv[2].split(",")]
    # A thread that exists before pinning (numpy's OpenBLAS pool is another) must be
    # moved too; one started after pinning must inherit the mask. Both meet the main
    # thread at a barrier after pinning, so all three have been scheduled since then and
    # the CPU the kernel last put them on says where pinned threads really run.
    ran, done = threading.Barrier(3), threading.Event()

    def helper():
        ran.wait()
        done.wait()

    early = threading.Thread(target=helper)
    early.start()
    placement.pin_to_cpus(cpus)
    placement.bind_memory(node)
    late = threading.Thread(target=helper)
    late.start()
    ran.wait()

    arr = np.ones(nbytes, dtype=np.uint8)  # first touch of every page, after binding
    pages = placement.page_nodes(arr)
    result = {
        "page_nodes": {str(n): int(c) for n, c in zip(*np.unique(pages, return_counts=True))},
        "local_fraction": placement.local_fraction(arr, node),
        "threads": {str(tid): {"allowed": sorted(t["allowed"]), "last_cpu": t["last_cpu"]}
                    for tid, t in kernel_view.threads().items()},
        "ran_since_pinning": [threading.get_native_id(), early.native_id, late.native_id],
    }
    done.set()
    early.join()
    late.join()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
