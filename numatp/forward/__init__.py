"""The transformer step over one shard: my query/KV heads, my FFN rows, my vocabulary
rows. The same code runs a single-process model (one shard holding everything) and every
rank of a tensor-parallel group; it does not know how many ranks there are, only that the
partial sums after attn_output and ffn_down go through the reduce, which returns at once
for a single shard.

Each family of architectures (Arch.family) has its own step, one jitted call for all
layers (the per-token Python work is O(1)), built from the shared blocks of blocks.py: a
model compiles only its family's step and the blocks that step calls. A new family is a
module with its step, and blocks of its own where the shared ones do not do, registered
in STEPS; the existing steps stay as they are.

Every step is called as step(kernels, arena, index, dims, eps, rope_cs, kv_cache, x, pos,
base, logits, group, team):
    kernels   the KernelSet of the shard's matrix types (what the chain compiles for)
    arena, index, dims   the shard's weights, where each is, its sizes (layout.py)
    eps       float32 RMSNorm epsilon
    rope_cs   (cos, sin) from rope_tables
    kv_cache  (keys, values) of the layers, as the architecture's cache declares them: one
              region of ctx rows per sequence slot along the position axis
    x         (T, hidden) float32 embeddings of the tokens (overwritten)
    pos, base int64 (T,): row t is at position pos[t] of the sequence whose cache region
              starts at row base[t]; it writes its keys and values at base[t] + pos[t]
              and attends to base[t] .. base[t] + pos[t]. A prompt chunk of slot s is
              pos = pos0 + arange(T), base = s * ctx; a batched decode has one row per
              sequence, each at its own position and base
    logits    float32 (k, this shard's vocabulary rows): the logits of the last k rows
              (k = 1 for a prompt chunk, T for a batched decode); rows before those
              leave the last layer after its keys and values are written
    group     (ctl, data, rank, n_ranks) of the all-reduce (numatp/shm/allreduce.py)
    team      the control array of a thread team (numatp/quant/team.py) that runs the
              step's products and attention, or NO_TEAM (empty): parallel regions
and returns 0, or the reduce's non-zero status.

Only the steps are cache=True: a cached caller linking a callee that was itself loaded
from the cache crashed.
"""
from numatp.forward import dense, moe, team  # noqa: F401 (team: ShardState's)
from numatp.forward.blocks import rope_tables  # noqa: F401

STEPS = {"dense": dense.step, "moe": moe.step}
