#!/usr/bin/env bash
# Decode speed as the CPUs are split into 1, 2, 4 ... workers (virtual nodes on a
# one-node machine): what the all-reduce and the split cost as workers grow.
#   bench/tp_scaling.sh MODEL_NAMES... (bench/bench_models.py names; default synth-q8_0)
# Env: THREADS (default: all CPUs), NODES (default "1 2 4"), OUT (default bench/out).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
NODES=${NODES:-"1 2 4"}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
models=("${@:-synth-q8_0}")
for name in "${models[@]}"; do
  path=$(python3 bench/bench_models.py "$name" --threads "$THREADS" | tail -n 1 | awk '{print $NF}')
  for n in $NODES; do
    echo "== $name, --nodes $n, $THREADS threads" >&2
    python3 -m numatp bench decode -m "$path" --nodes "$n" -t "$THREADS" -n 64 -p 128 -r 3 --json \
      > "$OUT/tp_${name}_nodes${n}.json"
    python3 - "$OUT/tp_${name}_nodes${n}.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['nodes']} node(s), {r['threads']} threads: decode {r['decode_tps']:.1f} tok/s "
      f"({r['effective_gbps']:.1f} GB/s, {r['pct_of_read']:.0f}% of read {r['read_gbps']:.1f}), "
      f"prompt {r['prompt_tps']:.1f} tok/s")
PY
  done
done
