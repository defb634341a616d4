"""The llama.cpp comparison's bookkeeping (bench/compare_llamacpp.py, bench/bench_models.py):
pairing of rounds, ratios, the report, and the streamed synthetic model's tensor list.
No engine runs here; the benchmark itself is a script."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import compare_llamacpp as cmp  # noqa: E402
import bench_models as models  # noqa: E402
import synth  # noqa: E402


def run(engine, rnd, decode, tokens=(1, 2, 3), **extra):
    r = {"engine": engine, "round": rnd, "decode_tps": decode, "pp128_tps": 100.0, "pp512_tps": 90.0,
         "ttft_process_s": 2.0, "ttft_loaded_s": 0.5, "tokens": list(tokens)}
    r.update(extra)
    return r


def test_agreement_counts_the_common_prefix():
    assert cmp.agreement([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert cmp.agreement([1, 2], [1, 2, 3]) == 2
    assert cmp.agreement([], [1]) == 0


def test_summary_pairs_runs_of_the_same_round():
    runs = [run("numatp", 0, 10.0), run("llamacpp", 0, 20.0),
            run("llamacpp", 1, 10.0), run("numatp", 1, 30.0, tokens=(1, 5, 3)),
            run("numatp", 2, 99.0)]                  # no partner: in the median, not in a ratio
    s = cmp.summarize("m", runs, cmp.ENGINES)
    d = s["metrics"]["decode_tps"]
    assert d["numatp"] == 30.0 and d["llamacpp"] == 15.0
    assert d["ratios"] == [0.5, 3.0]
    assert d["ratio"] == pytest.approx(1.75)
    assert s["tokens_agree"] == [3, 1]
    assert s["errors"] == []


def test_errors_are_reported_and_leave_no_ratio():
    runs = [run("numatp", 0, 10.0), {"engine": "llamacpp", "round": 0, "error": "boom"}]
    s = cmp.summarize("m", runs, cmp.ENGINES)
    assert s["metrics"]["decode_tps"]["ratio"] is None
    assert s["errors"] == ["llama.cpp: boom"]
    meta = {"date": "d", "cpu": "c", "threads": 2, "rounds": 1, "warmup": True, "n_gen": 64,
            "numatp_commit": "x", "llama_cpp_version": "0.3", "notes": []}
    table = cmp.markdown([s], meta)
    assert "| m | decode (64 tokens) tok/s | 10.0 | - | - |  |" in table
    assert "llama.cpp: boom" in table


@pytest.mark.parametrize("family", ["llama", "qwen3moe"])
def test_streamed_tensors_match_the_test_models(family):
    # bench/bench_models.py streams the synthetic model itself; its tensors must be the ones
    # tests/synth.py defines (names, order, shapes), or llama.cpp would see another model.
    moe = dict(arch="qwen3moe", n_experts=4, n_experts_used=2, expert_ffn=64, head_dim=32)
    spec = synth.ModelSpec(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=128, vocab=512,
                           **(moe if family == "qwen3moe" else {}))
    expected = [(name, w.shape) for name, w in synth.intended_weights(spec).items()]
    assert [(name, shape) for name, shape, _ in models._tensors(spec)] == expected


def test_unknown_model_is_a_clear_error():
    with pytest.raises(models.NumatpError, match="unknown benchmark model"):
        models.model_path("no-such-model")
