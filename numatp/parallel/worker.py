"""A tensor-parallel worker process: one per (real or virtual) NUMA node.

It pins itself to its node's CPUs, binds its memory policy to the node before allocating,
copies its shard out of the mmapped GGUF into node-local memory, verifies where the pages
landed, then runs transformer steps on command until told to quit.

This module imports nothing at the top that loads Numba: its thread count must be set in
the environment before Numba is first imported in the child.
"""
import os
import signal
import sys
import threading
import traceback

from numatp.parallel.protocol import STEP, WORKER_IGNORED_SIGNALS, io_views


def _exit_with_coordinator(lifeline):
    """Exit, quietly and at once, when the coordinator process is gone: `lifeline` is the
    read end of a pipe whose write end only the coordinator holds, so a read returns (end
    of file) only once it has exited, however it ended, SIGKILL included, even before we
    got here. Loading can take minutes; a worker orphaned meanwhile would finish it for
    nothing. (Not PR_SET_PDEATHSIG: it fires when the *thread* that started us exits,
    e.g. a ThreadPoolExecutor's, not the process. The control channel's liveness check
    is the second line of defence.)"""
    def watch():
        try:
            while os.read(lifeline.fileno(), 1):
                pass
        except OSError:
            pass
        os._exit(1)
    threading.Thread(target=watch, name="numatp-lifeline", daemon=True).start()


def worker_main(rank, placement, shard, model_path, ctx, max_tokens, names, conn, lifeline,
                n_slots=1, gpu=None):
    _exit_with_coordinator(lifeline)
    for sig in WORKER_IGNORED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    os.environ["NUMBA_NUM_THREADS"] = str(len(placement.cpus))
    try:
        state, channel, ar, io_seg, report = _load(rank, placement, shard, model_path, ctx,
                                                     max_tokens, names, n_slots, gpu)
    except BaseException as e:  # anything at load: report it in one line, then exit
        from numatp.errors import NumatpError
        if isinstance(e, NumatpError):
            msg = str(e)
        elif isinstance(e, MemoryError):  # e.g. the node's memory is full
            msg = f"not enough memory ({e})"
        else:  # a bug: keep the traceback for the report
            msg = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
        try:
            conn.send({"error": msg})
        finally:
            os._exit(1)
    try:
        conn.send(report)
        conn.close()
    except OSError:  # the coordinator is gone (the lifeline ends us, if not already)
        os._exit(1)
    _serve(state, channel, ar, io_seg, rank, shard, max_tokens, n_slots)
    os._exit(0)


def _load(rank, placement, shard, model_path, ctx, max_tokens, names, n_slots, gpu):
    from numatp.numa.placement import alloc_on_node, bind_memory, local_fraction, pin_to_cpus
    pin_to_cpus(placement.cpus)
    if placement.bind:
        bind_memory(placement.node)
    import numba
    import numpy as np

    from numatp.model.config import from_gguf
    from numatp.model.gguf_file import GGUFFile
    from numatp.parallel.control import WorkerChannel
    from numatp.parallel.local import ShardState
    from numatp.shm.allreduce import AllReduceGroup
    from numatp.shm.segment import SharedSegment

    numba.set_num_threads(len(placement.cpus))
    gguf = GGUFFile(model_path, tokenizer=False)   # the parent process tokenizes
    cfg = from_gguf(gguf)
    alloc = (lambda n: alloc_on_node(n, placement.node)) if placement.bind else None
    # build_shard releases each tensor's file pages as it copies them out.
    # With --gpu attn, rank 0 owns the GPU (numatp/forward/offload.py says why).
    state = ShardState(gguf, cfg, shard, ctx, alloc, n_slots, gpu=gpu, gpu_owner=rank == 0,
                       max_tokens=max_tokens)
    gguf.close()

    channel = WorkerChannel.attach(names["control"], rank)
    ar = AllReduceGroup.attach(names["allreduce"], shard.n_ranks, names["allreduce_floats"],
                               rank=rank)
    io_seg = SharedSegment.attach(names["io"])
    state.warm_up()  # before reporting ready
    report = {"rank": rank, "pid": os.getpid(), "cpus": list(placement.cpus),
              "node": placement.node, "bound": placement.bind,
              "weight_bytes": int(state.weights.arena.nbytes),
              "kv_bytes": sum(int(c.nbytes) for c in state.caches),
              "threads": numba.get_num_threads()}
    if state.gpu_attention is not None:
        report["gpu"] = state.gpu_report()
    if placement.bind:
        report["weights_local"] = local_fraction(state.weights.arena, placement.node)
    if placement.bind and state.caches:
        report["kv_local"] = local_fraction(state.caches[0].reshape(-1).view(np.uint8), placement.node)
    return state, channel, ar, io_seg, report


def _serve(state, channel, ar, io_seg, rank, shard, max_tokens, n_slots):
    import numpy as np

    from numatp.parallel.control import QUIT
    pos_in, base_in, x_in, logits = io_views(io_seg, max_tokens, state.hidden, state.n_vocab,
                                             n_slots)
    v0, v1 = shard.vocab
    # The step writes a C-contiguous block; the shared logits interleave the ranks'
    # slices row by row, so each row is copied into place.
    my_logits = np.empty((n_slots, v1 - v0), dtype=np.float32)
    ctl, data = ar.arrays()
    while True:
        cmd, args = channel.wait()
        if cmd == QUIT:
            break
        if cmd == STEP:
            n, k = int(args[0]), int(args[1])
            x = np.array(x_in[:n])  # my own copy: the step updates it in place
            status = state.step(x, np.array(pos_in[:n]), np.array(base_in[:n]), my_logits[:k],
                                ctl, data, rank, shard.n_ranks)
            if status != 0:
                channel.fail(f"all-reduce failed with status {status} (a peer stopped)")
                break
            logits[:k, v0:v1] = my_logits[:k]
            channel.done()
        else:
            channel.fail(f"unknown command {cmd}")
    state.close()
    channel.close()
    ar.close()
    io_seg.close()
