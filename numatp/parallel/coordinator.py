"""The coordinator: starts one worker per node, hands each its shard, and drives steps.

Per step the Python work is O(1): copy the embeddings into shared memory, publish one
command, wait for the workers (spin briefly, then futex), read the logits that the
workers wrote, each its vocabulary slice, into one shared buffer.
"""
import contextlib
import multiprocessing as mp
import signal
import sys
import time
import types

from numatp.errors import WorkerError
from numatp.parallel.control import ControlChannel
from numatp.parallel.protocol import (STEP, WORKER_IGNORED_SIGNALS, chunk_rows, io_nbytes,
                                      io_views)
from numatp.parallel.shard import shard_plan
from numatp.parallel.supervision import StopWatch, kill_stopped, stopped_message
from numatp.parallel.worker import worker_main
from numatp.shm.allreduce import AllReduceGroup
from numatp.shm.segment import SharedSegment, reclaim_stale_segments


@contextlib.contextmanager
def _user_main_hidden():
    """Start workers without the user's __main__ module. A spawned process re-imports it
    (multiprocessing's way of finding functions defined there), so a script calling
    numatp.load at top level, without an `if __name__ == "__main__":` guard, would have
    every worker load the model again; multiprocessing stops that with a RuntimeError and
    the worker dies. The worker runs numatp's own code and needs nothing from __main__."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class ProcessGroupModel:
    """N worker processes, one shard each; `run(x, pos, base, k)` and `forward(x, pos0,
    slot)` -> logits, as LocalModel."""

    def __init__(self, model_path, gguf, cfg, ctx, placements, max_tokens=64, moe_split="rows",
                 n_slots=1, gpu=None):
        self.n_ranks = len(placements)
        self.n_slots = n_slots
        self.ctx = ctx
        self.gpu = gpu   # the backend of --gpu attn (rank 0's), or None
        # A batched decode has a row per slot, each wanting its logits.
        self.max_tokens = max(max_tokens, n_slots)
        self.plan = shard_plan(gguf, cfg, self.n_ranks, moe_split)
        self.processes, self.reports = [], []
        self._ar = self._channel = self._io = self._lifeline = None
        # Segments left by a run whose processes were all SIGKILLed: nothing else would
        # ever free that memory.
        reclaim_stale_segments()
        try:
            # a rank publishes each of its reduce units' partial sums (plan.py)
            ar_floats = self.max_tokens * cfg.hidden * max(s.n_units for s in self.plan)
            self._ar = AllReduceGroup.create(self.n_ranks, ar_floats)
            self._channel = ControlChannel.create(self.n_ranks, groups=[self._ar])
            self._io = SharedSegment.create("io", io_nbytes(self.max_tokens, cfg.hidden,
                                                            cfg.vocab, n_slots))
            self._pos, self._base, self._x, self._logits = io_views(
                self._io, self.max_tokens, cfg.hidden, cfg.vocab, n_slots)
            names = {"control": self._channel.name, "allreduce": self._ar.name, "io": self._io.name,
                     "allreduce_floats": ar_floats}
            self._start(placements, model_path, ctx, names)
        except BaseException:
            # A worker still loading would see the quit command only once loaded.
            for p in self.processes:
                if p.is_alive():
                    p.terminate()
            self.close()
            raise

    def _start(self, placements, model_path, ctx, names):
        spawn = mp.get_context("spawn")
        # Every worker gets the read end of this pipe; only this process holds the write
        # end, so the workers see end-of-file when this process is gone, however it ended.
        lifeline, self._lifeline = spawn.Pipe(duplex=False)
        conns = []
        for rank, (placement, shard) in enumerate(zip(placements, self.plan)):
            parent, child = spawn.Pipe(duplex=False)
            p = spawn.Process(target=worker_main, name=f"numatp-worker-{rank}", daemon=True,
                              args=(rank, placement, shard, model_path, ctx, self.max_tokens,
                                    names, child, lifeline, self.n_slots, self.gpu))
            # The worker starts with Ctrl-C and hang-up blocked (the mask survives exec)
            # and keeps them so: a signal sent to the whole process group then cannot
            # break its start-up into a traceback; we stop it ourselves. Ours are
            # delivered when we unblock.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_IGNORED_SIGNALS)
            try:
                with _user_main_hidden():
                    p.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            child.close()
            self.processes.append(p)
            conns.append(parent)
        lifeline.close()
        self._channel.watch(self.processes, [pl.label for pl in placements])
        # Wait for every worker's load report; a worker that dies, fails or is stopped
        # ends the load.
        pending = dict(enumerate(conns))
        reports = {}
        stops = StopWatch()
        while pending:
            ready = mp.connection.wait(list(pending.values()), timeout=0.5)
            for rank, conn in list(pending.items()):
                if conn in ready:
                    try:
                        msg = conn.recv()
                    except EOFError:  # it ended without a report
                        self._died_loading(rank, placements[rank])
                    del pending[rank]
                    if "error" in msg:
                        where = placements[rank].label
                        raise WorkerError(f"worker {rank} ({where}) failed to load: {msg['error']}")
                    reports[rank] = msg
            for rank in pending:
                p = self.processes[rank]
                if not p.is_alive():
                    time.sleep(0.1)  # its last message may still be in the pipe
                    if not pending[rank].poll():
                        self._died_loading(rank, placements[rank])
                elif stops.stopped_too_long(p.pid):
                    kill_stopped(p)
                    who = f"worker {rank} ({placements[rank].label})"
                    raise WorkerError(stopped_message(who, stops.limit_s) + " while loading")
        self.reports = [reports[r] for r in range(self.n_ranks)]

    def _died_loading(self, rank, placement):
        p = self.processes[rank]
        p.join(1.0)
        code = p.exitcode
        how = "still running" if code is None else f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        raise WorkerError(f"worker {rank} ({placement.label}) died while loading ({how})")

    def placement_lines(self) -> list:
        """One line per worker: where it runs and where its memory landed."""
        from numatp.numa.topology import format_cpulist
        lines = []
        for r in self.reports:
            where = f"node {r['node']}" if r["bound"] else "virtual node"
            line = (f"worker {r['rank']} (pid {r['pid']}): {where}, cpus {format_cpulist(r['cpus'])}, "
                    f"{r['threads']} threads, {r['weight_bytes'] / 1e6:,.1f} MB weights, "
                    f"{r['kv_bytes'] / 1e6:,.1f} MB KV cache")
            if r["bound"]:
                line += f", {100 * r['weights_local']:.1f}% of weight pages"
                line += (f" and {100 * r['kv_local']:.1f}% of KV pages on node {r['node']}"
                         if "kv_local" in r else f" on node {r['node']}")
            if "gpu" in r:
                line += ", attention and KV cache on the GPU"
            lines.append(line)
        return lines

    def warm_up(self):
        pass  # each worker warmed its step up before it reported ready

    def gpu_report(self) -> dict | None:
        """Rank 0's GPU report, made at load (None without --gpu)."""
        return self.reports[0].get("gpu") if self.reports else None

    def sync_counters(self) -> dict:
        """Running totals of where the steps' time went: steps, the coordinator's time in
        them, and per rank its time on them and, of that, the time it waited for its
        peers in the all-reduces (in nanoseconds). Differences between two readings
        describe the steps in between."""
        return {"steps": self._channel.commands, "call_ns": self._channel.call_ns,
                "busy_ns": self._channel.busy_ns(), "waited_ns": self._ar.waited_ns()}

    def run(self, x, pos, base, n_logits):
        """As LocalModel.run; T <= max_tokens. The logits are a view of shared memory,
        overwritten by the next call."""
        n = x.shape[0]
        self._x[:n] = x
        self._pos[:n] = pos
        self._base[:n] = base
        self._channel.call(STEP, n, n_logits)
        return self._logits[:n_logits]

    def forward(self, x, pos0, slot=0):
        """x: (T, hidden) embeddings of tokens at pos0.. of sequence slot `slot`; returns
        the logits of the last one, as LocalModel.forward."""
        return self.run(x, *chunk_rows(pos0, x.shape[0], slot, self.ctx), 1)[0]

    def close(self):
        """Stop the workers and free the shared memory; safe to call twice."""
        if self._channel is not None:
            try:
                self._channel.close()
            finally:
                self._channel = None
        for p in self.processes:
            if p.is_alive():
                p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join(timeout=2)
        self.processes = []
        for seg in (self._ar, self._io):
            if seg is not None:
                seg.close()
        self._ar = self._io = None
        if self._lifeline is not None:
            self._lifeline.close()
            self._lifeline = None
