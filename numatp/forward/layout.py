"""How a shard is handed to a step: where each tensor is in its arena (the index) and
the sizes of its share of the model (the dims vector). numatp/parallel/shard.py writes
both; the blocks read them. Plain numbers, no Numba: the loader imports this too."""

# Columns of the index: one row per slot (numatp/model/slots.py). A slot the shard has
# no tensor for keeps offset -1. A matrix of input columns split into reduce units
# (numatp/parallel/plan.py) has UNITS of them, the u-th from block UNIT0 + u to block
# UNIT0 + u + 1 of its columns; any other has one, all its blocks.
OFFSET, QTYPE, ROWS, COLS, NBYTES, PAD, UNITS, UNIT0 = range(8)
MAX_UNITS = 6   # the units of numatp/parallel/plan.py's IDENTICAL_RANKS
INDEX_COLS = UNIT0 + MAX_UNITS + 1

# Fields of the int64 dims vector: the model's sizes, and the heads, FFN rows and
# vocabulary rows of this shard (q0/kv0: its first query and KV head); for experts, how
# many there are and are chosen per token, the experts [e0, e1) this shard holds, its rows
# of each, and whether the chosen ones' weights are rescaled to sum to 1.
(D_LAYERS, D_HIDDEN, D_HEAD_DIM, D_NQ, D_NKV, D_Q0, D_KV0, D_GROUP, D_FFN, D_VOCAB,
 D_ROPE_DIM, D_ROPE_NEOX, D_CTX, D_EXPERTS, D_EXPERTS_USED, D_E0, D_E1, D_EXPERT_FFN,
 D_EXPERT_NORM) = range(19)
N_DIMS = 19
