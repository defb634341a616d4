"""Where a step finds each tensor of its shard. The shard's index has one row per slot of
each layer (layer * LAYER_SLOTS + slot) and then one per model-wide slot
(n_layers * LAYER_SLOTS + slot). An architecture's declaration says which GGUF tensor
fills which slot; the blocks of the steps (numatp/forward/) read them. All families
number their slots alike, so that the blocks they share read the same rows; a slot an
architecture has no tensor for stays empty (offset -1)."""

# Each layer. Attention and the norm before the FFN, in every family:
ATTN_NORM, WQ, WK, WV, BQ, BK, BV, Q_NORM, K_NORM, WO, FFN_NORM = range(11)
# The dense FFN:
W_GATE, W_UP, W_DOWN = range(11, 14)
# The Mixture-of-Experts FFN: the router, the stacked experts, and the gate of a shared
# expert (which itself sits in the dense FFN's slots: the dense FFN block runs it).
ROUTER, W_GATE_EXPS, W_UP_EXPS, W_DOWN_EXPS, SHARED_GATE = range(14, 19)
LAYER_SLOTS = 19

# Model-wide:
OUTPUT_NORM, OUTPUT = range(2)
MODEL_SLOTS = 2


def entry(n_layers: int, layer, slot: int) -> int:
    """The index row of a layer's slot, or (layer None) of a model-wide slot."""
    return n_layers * LAYER_SLOTS + slot if layer is None else layer * LAYER_SLOTS + slot
