"""Several sequences on one model: `LLM(path, parallel=N).slots`.

Each of the N slots is a sequence with a KV cache region of its own (ctx tokens). A
server prefills a new prompt into a free slot, then decodes all its active slots
together: `decode([(slot, token), ...])` appends one token to each and returns the
logits of every row.

    llm = numatp.LLM(path, parallel=4)
    a = llm.slots.prefill(0, ids_a)          # logits (vocab,) after the last prompt token
    b = llm.slots.prefill(1, ids_b)
    rows = llm.slots.decode([(0, int(a.argmax())), (1, int(b.argmax()))])  # (2, vocab)

Prompt reuse is per slot: a prefill processes only what follows the longest prefix it
shares with the slot's cached sequence (at least its last 2 tokens, as LLM's prompt
reuse does); last_processed(slot) says how many tokens it ran.

Each row's logits are bitwise those of its sequence run alone (on as many nodes): the
step treats every row alike whatever else is in the batch, and the kernels sum each row
in the same order for one token or many (numatp/quant/floats.py, kernels.py).

Slot 0 is also the sequence of LLM's single-sequence API (generate, logits, the
completions): a caller driving the slots should not run those at the same time. The
methods here are not meant to be called from several threads at once (one scheduler
drives them); each model step is still serialised with the single-sequence API's and
with close().
"""
import operator

import numpy as np

from numatp.errors import ContextError, NumatpError, UsageError

# Prompt tokens per forward call: each call streams every weight once from memory and
# enters each parallel region once, so larger chunks spread that over more tokens; 128
# tokens of activations (int8) still sit in a core's L2 cache next to its weights.
PREFILL_CHUNK = 128


class SequenceSlots:
    """The N sequences of a model; see the module's docstring."""

    def __init__(self, llm, n):
        self._llm = llm
        self.n = n
        # Per slot, the tokens whose keys and values fill its cache region from position
        # 0, in order.
        self._seqs = [[] for _ in range(n)]
        self._processed = [0] * n

    def tokens(self, slot) -> list:
        """The slot's cached sequence (a copy)."""
        return list(self._seqs[self._slot(slot)])

    def clear(self, slot):
        """Forget the slot's sequence: its next prompt is processed from position 0."""
        del self._seqs[self._slot(slot)][:]

    def last_processed(self, slot) -> int:
        """How many tokens the slot's last prefill ran through the model (the rest of its
        prompt was reused from the cache)."""
        return self._processed[self._slot(slot)]

    def prefill(self, slot, ids) -> np.ndarray:
        """Make `ids` the slot's sequence; returns the logits (float32, vocab) after its
        last token. Only the part after the prefix shared with the slot's cached sequence
        is processed (last_processed says how much). Raises NumatpError (UsageError,
        ContextError) for a bad slot, bad ids or a prompt longer than the context."""
        slot = self._slot(slot)
        ids = self._llm._checked_ids(ids)
        reuse = reusable(self._seqs[slot], ids)
        self._processed[slot] = len(ids) - reuse
        logits = None
        for start, end in chunks(reuse, len(ids)):
            logits = self.run(slot, ids[start:end], start)
        return np.array(logits, dtype=np.float32)

    def decode(self, pairs) -> np.ndarray:
        """Append token t to slot s's sequence, for each (s, t) in pairs (distinct slots),
        at that slot's next position; returns the logits after each, (len(pairs), vocab)
        float32, row i for pairs[i]. All rows go through the weights in one step (the
        batched kernels); each row's logits are bitwise those of its sequence decoded
        alone (the kernels sum each row in the same order whatever the batch)."""
        pairs = self._checked_pairs(pairs)
        llm = self._llm
        slots = [s for s, _ in pairs]
        toks = [t for _, t in pairs]
        x = llm.token_embeddings(toks)
        pos = np.array([len(self._seqs[s]) for s in slots], dtype=np.int64)
        base = np.array(slots, dtype=np.int64) * llm.ctx
        with llm._step:
            if llm.model is None:
                raise NumatpError("this model is closed")
            logits = np.array(llm.model.run(x, pos, base, len(pairs)), dtype=np.float32)
        for s, t in pairs:
            self._seqs[s].append(t)
        return logits

    # --- the parts ---------------------------------------------------------------------
    def run(self, slot, ids, pos0):
        """Run `ids` at positions pos0.. of the slot (which must follow what its cache
        holds or replace part of it); returns the logits after the last (a view,
        overwritten by the next step)."""
        llm = self._llm
        # The jitted step does not check bounds: a position past the cache region would
        # write into the next slot's, or outside the cache.
        if pos0 + len(ids) > llm.ctx:
            raise ContextError(f"position {pos0 + len(ids) - 1} is past the context of "
                               f"{llm.ctx} tokens")
        x = llm.token_embeddings(ids)
        seq = self._seqs[slot]
        with llm._step:
            if llm.model is None:
                raise NumatpError("this model is closed")
            # Until the step has finished, nothing from pos0 on is known to be there.
            del seq[pos0:]
            logits = llm.model.forward(x, pos0, slot)
            seq.extend(ids)
            return logits

    def _slot(self, slot):
        try:
            s = operator.index(slot)
        except TypeError:
            raise UsageError(f"a slot is an integer, not {type(slot).__name__}") from None
        if not 0 <= s < self.n:
            raise UsageError(f"slot {s} out of range [0, {self.n})")
        return s

    def _checked_pairs(self, pairs) -> list:
        vocab, ctx = self._llm.config.vocab, self._llm.ctx
        checked, seen = [], set()
        for pair in pairs:
            try:
                slot, tok = pair
                tok = operator.index(tok)
            except (TypeError, ValueError):
                raise UsageError(f"decode takes (slot, token id) pairs, got {pair!r}") from None
            slot = self._slot(slot)
            if slot in seen:
                raise UsageError(f"slot {slot} appears twice in one decode step")
            seen.add(slot)
            if not 0 <= tok < vocab:
                raise UsageError(f"token id {tok} out of range [0, {vocab})")
            if len(self._seqs[slot]) >= ctx:
                raise ContextError(f"slot {slot} is full: its sequence fills the context of "
                                   f"{ctx} tokens")
            checked.append((slot, tok))
        if not checked:
            raise UsageError("decode needs at least one (slot, token id) pair")
        return checked


def reusable(cached, ids) -> int:
    """How many leading tokens of `ids` a cache holding `cached` can skip: their common
    prefix, but at least the last 2 tokens are run (see LLM for why 2)."""
    return min(common_prefix(cached, ids), len(ids) - min(len(ids), 2))


def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if differ.size else n


def chunks(start, end):
    """(first, last + 1) of the forward passes over positions start..end-1: up to
    PREFILL_CHUNK tokens each, and a lone token only where there is just one (see LLM:
    the results do not depend on it; the rule is kept as it was)."""
    pos = start
    while pos < end:
        size = min(PREFILL_CHUNK, end - pos)
        if end - pos - size == 1 and size > 1:
            size -= 1
        yield pos, pos + size
        pos += size
