"""The scheduler: one thread owns the model and runs the requests' sequences in its slots.

Requests wait in a bounded queue (submit() raises QueueFull beyond it). Between two decode
steps the engine admits waiting requests into free slots: the prompt is prefilled into
the free slot whose cached sequence shares the longest prefix with it (a follow-up turn of
a chat finds its history there), and the first token is sampled from the prefill's
logits at once. Then one decode call runs the last token of every active slot through
the model together, and each row is sampled with its own request's sampler (its own
seed and parameters), so a request gets the tokens it would get alone.

Each generated token goes through the request's chunk maker (numatp.completions: text
deltas that never split a UTF-8 character or show part of a stop string, logprobs) and
the chunks are handed to the request's `send` callback, from this thread. A request ends
by an end-of-generation token, a stop string, its max_tokens or a full context; a
cancelled one (its client went away) leaves its slot before the next step.
"""
import collections
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

from numatp.batching import common_prefix
from numatp.completions import finish_reason, usage
from numatp.errors import NumatpError
from numatp.sampling import Sampler


class QueueFull(Exception):
    """More requests wait than the queue holds."""


class ShuttingDown(Exception):
    """The server is stopping: no new requests."""


@dataclass(eq=False)
class Job:
    """A request to run: `request` (numatp.completions.Request) and `send(chunks, end)`,
    called from the engine's thread with each list of chunks, and once more at the end
    with end set: None when the request finished (its last chunks came with the end), or
    the exception that ended it."""
    request: object
    send: object
    label: str = ""           # for the log line: what it is, from whom
    # Set by the engine.
    id: int = 0
    slot: int | None = None
    sampler: Sampler | None = None
    history: list = field(default_factory=list)
    n_generated: int = 0
    n_cached: int = 0
    next_token: int | None = None
    submitted: float = 0.0
    waited: bool = False                # it found every slot taken
    slot_freed: tuple | None = None     # (decode steps so far, time) when its slot freed
    first_token_wait: tuple | None = None   # (decode steps, seconds) from then to its first token
    cancelled: bool = False


class Engine:
    """Runs Jobs on llm.slots. queue_size: how many may wait for a slot; more are refused."""

    def __init__(self, llm, queue_size, log=None):
        self.llm = llm
        self.slots = llm.slots
        self.queue_size = queue_size
        self.log = log or (lambda line: print(f"numatp: {line}", file=sys.stderr, flush=True))
        self._cond = threading.Condition()
        self._waiting = collections.deque()
        self._active = {}           # slot -> Job
        self._stopping = False
        self._next_id = 1
        self._slot_freed = (0, 0.0)   # (decode steps so far, time) when a slot last freed
        self._last_used = [0] * llm.slots.n   # per slot, the admission count when last taken
        self._uses = 0
        self._eog = llm.tokenizer.eog_ids
        # Counters (read by /health and the measurements; written by the engine thread).
        self.steps = 0              # decode calls
        self.rows = 0               # tokens they decoded
        self.decode_seconds = 0.0
        self.completed = 0
        self.cancelled = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="numatp-engine", daemon=True)
        self._thread.start()

    # --- from the HTTP side (any thread) -----------------------------------------------
    def submit(self, job):
        with self._cond:
            if self._stopping:
                raise ShuttingDown()
            free = self.slots.n - len(self._active)
            if len(self._waiting) >= self.queue_size + free:
                raise QueueFull()
            job.id, self._next_id = self._next_id, self._next_id + 1
            job.submitted = time.perf_counter()
            job.waited = free <= len(self._waiting)
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job):
        """The client went away: the job leaves its slot (or the queue) before the next
        decode step; nothing more is sent."""
        with self._cond:
            job.cancelled = True
            self._cond.notify()

    def status(self) -> dict:
        with self._cond:
            return {"slots_total": self.slots.n, "slots_processing": len(self._active),
                    "slots_idle": self.slots.n - len(self._active),
                    "requests_waiting": len(self._waiting),
                    "requests_completed": self.completed, "requests_cancelled": self.cancelled,
                    "requests_failed": self.failed, "decode_steps": self.steps,
                    "decoded_tokens": self.rows,
                    "decode_seconds": round(self.decode_seconds, 6)}

    def begin_stop(self):
        """End every request (each gets ShuttingDown) and the engine's thread, after the
        step it is in; returns at once (a signal handler calls it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def stop(self):
        """begin_stop(), and wait for the engine's thread to end."""
        self.begin_stop()
        self._thread.join()

    # --- the engine's thread -------------------------------------------------------------
    def _run(self):
        try:
            while True:
                with self._cond:
                    while not (self._stopping or self._waiting or self._active):
                        self._cond.wait()
                    if self._stopping:
                        break
                    self._drop_cancelled()
                    admitted = []
                    while self._waiting and len(self._active) < self.slots.n:
                        job = self._waiting.popleft()
                        job.slot = self._pick_slot(job.request.ids)
                        if job.waited:
                            job.slot_freed = self._slot_freed
                        self._active[job.slot] = job
                        admitted.append(job)
                for job in admitted:
                    self._guarded(job, self._start, job)
                active = [j for j in list(self._active.values()) if j.next_token is not None]
                if active:
                    self._decode(active)
        except BaseException as e:   # a bug here must not leave clients waiting forever
            self.log(f"the engine stopped: {type(e).__name__}: {e}")
            traceback.print_exc()
            with self._cond:
                self._stopping = True
        finally:
            with self._cond:
                ending = list(self._active.values()) + list(self._waiting)
                self._active.clear()
                self._waiting.clear()
            for job in ending:
                self._send(job, [], ShuttingDown())

    def _drop_cancelled(self):
        for job in [j for j in self._waiting if j.cancelled]:
            self._waiting.remove(job)
            self._ended(job, "cancelled while waiting")
        for slot, job in list(self._active.items()):
            if job.cancelled:
                self._free(job)
                self._ended(job, f"cancelled after {job.n_generated} tokens")

    def _free(self, job):
        """(Holding the lock.)"""
        if self._active.get(job.slot) is job:
            del self._active[job.slot]
            self._slot_freed = (self.steps, time.perf_counter())

    def _pick_slot(self, ids):
        """The free slot whose cached sequence shares the longest prefix with `ids`, if
        that covers at least half the prompt (a follow-up turn of a chat finds its
        history); else the one used longest ago: a prompt that shares only its first
        tokens (BOS, a common system message) would overwrite another conversation's
        history for little gain."""
        free = [s for s in range(self.slots.n) if s not in self._active]
        shared = {s: common_prefix(self.slots.tokens(s), ids) for s in free}
        best = max(free, key=lambda s: (shared[s], -self._last_used[s]))
        if 2 * shared[best] >= len(ids):
            slot = best
        else:
            slot = min(free, key=lambda s: self._last_used[s])
        self._uses += 1
        self._last_used[slot] = self._uses
        return slot

    def _start(self, job):
        request = job.request
        job.sampler = Sampler(request.params)
        job.history = list(request.ids)
        logits = self.slots.prefill(job.slot, request.ids)
        job.n_cached = len(request.ids) - self.slots.last_processed(job.slot)
        self._send(job, request.chunks.opening())
        self._advance(job, logits)

    def _decode(self, jobs):
        t0 = time.perf_counter()
        try:
            rows = self.slots.decode([(j.slot, j.next_token) for j in jobs])
        except NumatpError as e:
            for job in jobs:
                self._fail(job, e)
            return
        self.decode_seconds += time.perf_counter() - t0
        self.steps += 1
        self.rows += len(jobs)
        for job, logits in zip(jobs, rows):
            self._guarded(job, self._advance, job, logits)

    def _advance(self, job, logits):
        """Sample the job's next token from `logits`; send its text; end the job or keep
        the token for the next decode step."""
        request = job.request
        job.next_token = None
        if job.slot_freed is not None and job.first_token_wait is None:
            steps, at = job.slot_freed
            job.first_token_wait = (self.steps - steps, time.perf_counter() - at)
        if request.max_tokens is not None and job.n_generated >= request.max_tokens:
            return self._finish(job, "length")
        token = job.sampler(logits, job.history)
        if token in self._eog:
            return self._finish(job, "eos")
        job.n_generated += 1
        job.history.append(token)
        self._send(job, request.chunks.feed(token, logits))
        if request.chunks.stopped:
            return self._finish(job, "stop")
        if request.max_tokens is not None and job.n_generated >= request.max_tokens:
            return self._finish(job, "length")
        if len(job.history) > self.llm.ctx:   # no position left for this token
            return self._finish(job, "context")
        job.next_token = token

    def _finish(self, job, stop_reason):
        request = job.request
        chunks = request.chunks.closing(
            finish_reason(stop_reason), usage(len(request.ids), job.n_cached, job.n_generated))
        with self._cond:
            self._free(job)
            self.completed += 1
        self._send(job, chunks, end=None)
        waited = ("" if job.first_token_wait is None else
                  ", waited for a slot: first token {} decode steps ({:.1f} ms) after it "
                  "freed".format(job.first_token_wait[0], job.first_token_wait[1] * 1e3))
        self.log(f"request {job.id}{job.label}: prompt {len(request.ids)} tokens "
                 f"({job.n_cached} cached), {job.n_generated} generated, {stop_reason}, "
                 f"{time.perf_counter() - job.submitted:.2f} s{waited}")

    def _ended(self, job, why):
        self.cancelled += 1
        self.log(f"request {job.id}{job.label}: {why}")

    def _guarded(self, job, step, *args):
        """A request's own failure (a bad prompt that got this far, NaN logits) ends it,
        not the engine."""
        try:
            step(*args)
        except NumatpError as e:
            self._fail(job, e)

    def _fail(self, job, error):
        with self._cond:
            self._free(job)
            self.failed += 1
        self.log(f"request {job.id}{job.label}: failed: {error}")
        self._send(job, [], error)

    def _send(self, job, chunks, end=False):
        """end False: more to come; None: the job finished; an exception: it failed."""
        if job.cancelled:
            return
        job.send(chunks, end)
