"""Choosing the next token from logits, with llama.cpp's sampler chain and defaults:
repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw. Temperature 0 is
greedy. The same seed gives the same tokens.

Every valid parameter gives finite arithmetic: a penalty as extreme as 1e-300 saturates
the penalized logits at the float32 limits instead of overflowing them to inf (inf - inf
is NaN in the softmax). Logits that are NaN or infinite can then only come from the model
(a NaN or Inf in its weights): that is a NumatpError naming the position, not a token."""
import math
from dataclasses import dataclass

import numpy as np

from numatp.errors import NumatpError, UsageError

_F32_MAX = float(np.finfo(np.float32).max)


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def validate(self):
        def bad(name, value, rule):
            raise UsageError(f"invalid {name} {value!r}: {rule}")
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                bad(name.replace("_", "-"), value, "must be a finite number")
        for name in ("top_k", "repeat_last_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                bad(name.replace("_", "-"), value, "must be an integer")
        if self.temperature < 0:
            bad("temperature", self.temperature, "must be >= 0")
        if not 0 < self.top_p <= 1:
            bad("top-p", self.top_p, "must be in (0, 1]")
        if not 0 <= self.min_p <= 1:
            bad("min-p", self.min_p, "must be in [0, 1]")
        if self.repeat_penalty <= 0:
            bad("repeat-penalty", self.repeat_penalty, "must be > 0")
        if self.top_k < 0:
            bad("top-k", self.top_k, "must be >= 0 (0 disables it)")
        if self.repeat_last_n < 0:
            bad("repeat-last-n", self.repeat_last_n, "must be >= 0")
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
            bad("seed", seed, "must be an integer in [0, 2^64)")
        return self


class Sampler:
    def __init__(self, params: SamplingParams):
        self.p = params.validate()
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history) -> int:
        """The next token after `history` (the prompt and the tokens so far), whose last
        token's logits these are."""
        p = self.p
        if p.repeat_penalty != 1.0 and p.repeat_last_n and len(history):
            logits = logits.copy()
            recent = np.unique(np.asarray(history[-p.repeat_last_n:], dtype=np.int64))
            vals = logits[recent].astype(np.float64)
            with np.errstate(over="ignore", divide="ignore"):  # inf is clipped just below
                penalized = np.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
            logits[recent] = np.clip(penalized, -_F32_MAX, _F32_MAX)
        if p.temperature == 0:
            # argmax stops at the first NaN, so checking its pick checks them all.
            tok = int(np.argmax(logits))
            _check_finite(logits[tok], history)
            return tok
        _check_finite(logits.max(), history)
        ids = np.arange(logits.shape[0])
        if 0 < p.top_k < logits.shape[0]:
            ids = np.argpartition(-logits, p.top_k - 1)[:p.top_k]
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        z = logits[ids].astype(np.float64)
        probs = np.exp(z - z[0])
        probs /= probs.sum()
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1
            ids, z, probs = ids[:keep], z[:keep], probs[:keep]
        if p.min_p > 0:
            keep = max(1, int(np.count_nonzero(probs >= p.min_p * probs[0])))
            ids, z = ids[:keep], z[:keep]
        w = np.exp((z - z[0]) / p.temperature)
        return int(ids[self.rng.choice(len(ids), p=w / w.sum())])


def _check_finite(top, history):
    """`top` is NaN if any logit is, and infinite if the largest is."""
    if not math.isfinite(top):
        what = "NaN" if math.isnan(top) else "infinite"
        raise NumatpError(f"the model produced {what} logits at position {len(history) - 1} "
                          "(a NaN or Inf in its weights?)")
