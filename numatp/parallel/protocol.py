"""What the coordinator and its workers agree on: the commands sent over the control
channel, the shared I/O segment they go with, and the signals a worker leaves to the
coordinator.

STEP (args: row count n, logits rows k): run the n embeddings at the start of the I/O
segment through the model, row t at position pos[t] of the sequence whose cache region
starts at row base[t] (the step's pos and base: numatp/forward/__init__.py); each worker
writes its vocabulary slice of the logits of the last k rows into the segment's logits,
which the coordinator then reads whole.

The I/O segment holds int64 positions and bases (max_tokens each), float32 embeddings
(max_tokens, hidden), then float32 logits (max_logits, vocab).
"""
import signal

import numpy as np

STEP = 1

# Sent to the whole process group by a terminal (Ctrl-C, hang-up); the coordinator
# handles them and stops the workers through the control channel.
WORKER_IGNORED_SIGNALS = {signal.SIGINT, signal.SIGHUP}


def io_nbytes(max_tokens, hidden, vocab, max_logits):
    return 16 * max_tokens + 4 * (max_tokens * hidden + max_logits * vocab)


def io_views(seg, max_tokens, hidden, vocab, max_logits):
    """(positions (max_tokens,), bases (max_tokens,), input embeddings (max_tokens,
    hidden), logits (max_logits, vocab)) in the I/O segment."""
    pos = seg.array(np.int64, 0, max_tokens)
    base = seg.array(np.int64, 8 * max_tokens, max_tokens)
    x = seg.array(np.float32, 16 * max_tokens, max_tokens * hidden).reshape(max_tokens, hidden)
    logits = seg.array(np.float32, 16 * max_tokens + 4 * max_tokens * hidden,
                       max_logits * vocab).reshape(max_logits, vocab)
    return pos, base, x, logits


def chunk_rows(pos0, n, slot, ctx):
    """(pos, base) of n tokens at positions pos0.. of sequence slot `slot`, whose cache
    region is rows [slot * ctx, (slot + 1) * ctx)."""
    return np.arange(pos0, pos0 + n, dtype=np.int64), np.full(n, slot * ctx, dtype=np.int64)
