"""What the coordinator and its workers agree on: the commands sent over the control
channel, the shared I/O segment they go with, and the signals a worker leaves to the
coordinator.

STEP (args: token count n, first position pos0, sequence slot): run the n embeddings at
the start of the I/O segment through the model at positions pos0.. of that slot's
caches; each worker writes its vocabulary slice of the last token's logits into the
segment's logits, which the coordinator then reads whole.

The I/O segment holds float32 embeddings (max_tokens, hidden), then float32 logits
(vocab,).
"""
import signal

import numpy as np

STEP = 1

# Sent to the whole process group by a terminal (Ctrl-C, hang-up); the coordinator
# handles them and stops the workers through the control channel.
WORKER_IGNORED_SIGNALS = {signal.SIGINT, signal.SIGHUP}


def io_nbytes(max_tokens, hidden, vocab):
    return 4 * (max_tokens * hidden + vocab)


def io_views(seg, max_tokens, hidden, vocab=None):
    """(input embeddings (max_tokens, hidden), logits (vocab,)) in the I/O segment; a
    worker, which does not know the vocabulary size, leaves vocab to the segment's size."""
    if vocab is None:
        vocab = seg.size // 4 - max_tokens * hidden
    x = seg.array(np.float32, 0, max_tokens * hidden).reshape(max_tokens, hidden)
    logits = seg.array(np.float32, 4 * max_tokens * hidden, vocab)
    return x, logits
