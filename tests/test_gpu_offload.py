"""--gpu attn: every layer's attention on the GPU (numatp/gpu/, numatp/forward/offload.py)
against the CPU path.

Two backends run the same offload code: numpy in host memory (NUMATP_GPU_BACKEND=numpy,
the host stand-in, with the GPU's f16 roundings) everywhere, and CuPy on a CUDA GPU where
there is one; the CuPy tests are skipped elsewhere, saying why (no CuPy, no GPU).

Tolerance. The GPU path keeps weights, keys, values and every product's inputs and
result in f16: relative rounding u = 2^-11 = 4.9e-4, about ten roundings along one
attention block (input, weights, q/k/v, scaled q, cached k and v, scores, probabilities,
heads' output, attn_output's weights and result), so ~10u = 5e-3 of the block's output
scale, carried by the residual stream through the layers to the logits. The test models'
attention weights are F32, where the CPU path multiplies in float32 (error ~1e-7): the
difference is then the f16 path's own, and we allow 1e-2 of the largest logit magnitude
(2x the ~10u estimate; observed: 2e-3). With quantized attention weights the CPU path
itself rounds each product's activations to int8 (2^-8 per element relative to its group
of 32, or 256 for the K-quants), which on these random-weight models moves logits by ~3% of their largest: that
case is checked with 6e-2 and greedy tokens, and so is the MoE model (numatp runs
quantized experts only: their int8-rounded inputs turn the f16 path's differences into
whole int8 steps; observed 1%). Greedy tokens must be equal, except where the
CPU's two best logits are closer than the tolerance (a near tie either path may break
either way).
CuPy against the host stand-in: the same roundings in another summation order, a few f16
ulps: 5e-3 of the largest logit where the FFN multiplies in float32. The MoE model's
experts are quantized, so those ulps become whole int8 steps of the experts' inputs, as
against the CPU path: QUANT_TOL there (observed on an H200: 0.7% of the largest logit).
A decoded token on CuPy runs numatp/gpu/decode.py's fused kernels, whose roundings are the
array path's but for the attention probabilities, kept in f32 (one rounding fewer): the
bounds above hold for it as they are.
Fused kernels against the array path on the same GPU, one layer's output for the same
input and cache (FUSED_TOL): the products' f32 sums run in another order, so a rounded
result (q/k/v, a score, a head's output, attn_output's result) may land one f16 ulp (2u
relative to the element) away, and the probabilities differ by their f16 rounding (u):
~2u from attn_output's inputs (their errors add like a random walk, as the output's own
terms do), 2u from its result, u from the probabilities, ~5u = 2.4e-3 of the output's
largest magnitude; we allow 5e-3. The same bound holds for the keys and values the two
write into the cache (one rounding each, 2u at most).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import numatp
import synth
from models import MOE_MODELS, STORIES
from numatp.sampling import SamplingParams

PROMPT = [1, 100, 42, 250, 3, 19, 77, 101, 5]
N_GEN = 6
TOL = 1e-2
QUANT_TOL = 6e-2
FUSED_TOL = 5e-3
F32_ATTENTION = {"attn_q": "F32", "attn_k": "F32", "attn_v": "F32", "attn_output": "F32"}
GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu")
    moe = dict(MOE_MODELS["qwen3moe-q8_0"], tensor_types=F32_ATTENTION)
    return {
        "llama": STORIES,   # F32 throughout
        "qwen2": synth.write_model(d / "qwen2.gguf", arch="qwen2", qtype="F32", hidden=128,
                                   n_heads=8, n_kv_heads=2, ffn=256, vocab=300, seed=3),
        "qwen3": synth.write_model(d / "qwen3.gguf", arch="qwen3", qtype="F32", hidden=256,
                                   n_heads=4, n_kv_heads=2, head_dim=64, ffn=256, vocab=300,
                                   seed=5),
        "qwen3moe": synth.write_model(d / "qwen3moe.gguf", **moe),
        # a 7B's attention shape in small: heads of 128, four query heads per KV head
        "llama-hd128": synth.write_model(d / "llama128.gguf", arch="llama", qtype="F32",
                                         hidden=512, n_heads=4, n_kv_heads=1, ffn=128,
                                         vocab=300, seed=7),
        # quantized attention (Q4_K, Q6_K values), as in a Q4_K_M file
        "qwen3-q4_k": synth.write_model(d / "qwen3q.gguf", arch="qwen3", qtype="Q4_K",
                                        hidden=256, n_heads=4, n_kv_heads=2, head_dim=64,
                                        ffn=256, vocab=300, seed=5,
                                        tensor_types={"attn_v": "Q6_K"}),
    }


ARCHS = ["llama", "qwen2", "qwen3", "qwen3moe"]
TOLS = {"llama": TOL, "qwen2": TOL, "qwen3": TOL, "qwen3moe": QUANT_TOL}
STANDIN_TOLS = {"llama": 5e-3, "qwen2": 5e-3, "qwen3": 5e-3, "qwen3moe": QUANT_TOL}


def run(path, gpu=None, nodes=1, ids=PROMPT):
    """Logits after the prompt, the greedy tokens after it, and the logits before each."""
    with numatp.load(str(path), nodes=nodes, gpu=gpu) as llm:
        ids = [t % llm.config.vocab for t in ids]
        first = np.array(llm.logits(ids))
        steps = []
        for tok, logits in llm.generation(ids, N_GEN, GREEDY, stop_at_eog=False)[1]:
            steps.append((tok, np.array(logits)))
        return first, steps, llm.gpu_report()


def assert_agree(ref, got, tol):
    (ref_first, ref_steps, _), (got_first, got_steps, _) = ref, got
    scale = np.abs(ref_first).max()
    assert np.abs(got_first - ref_first).max() <= tol * scale
    for (rt, rl), (gt, gl) in zip(ref_steps, got_steps):
        if rt != gt:
            top2 = np.sort(rl)[-2:]
            assert top2[1] - top2[0] < tol * scale, (rt, gt, top2)
            return   # past a near tie the sequences go their own ways
        assert np.abs(gl - rl).max() <= tol * np.abs(rl).max()


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.setenv("NUMATP_GPU_BACKEND", "numpy")


@pytest.mark.parametrize("arch", ARCHS)
def test_standin_matches_cpu(arch, models, standin):
    ref = run(models[arch])
    got = run(models[arch], gpu="attn")
    assert_agree(ref, got, TOLS[arch])
    report = got[2]
    assert report["kv_bytes"] == report["planned"]["kv_bytes"]
    assert report["weight_bytes"] == report["planned"]["weight_bytes"]


def test_standin_matches_cpu_with_quantized_attention(models, standin):
    assert_agree(run(models["qwen3-q4_k"]), run(models["qwen3-q4_k"], gpu="attn"), QUANT_TOL)


def test_standin_over_two_ranks_matches_one(models, standin):
    # Rank 0 runs attention; rank 1 holds no attention weights and adds zero to the
    # reduce. The FFN split changes the float32 sums' order only.
    one = run(models["qwen2"], gpu="attn")
    two = run(models["qwen2"], gpu="attn", nodes=2)
    assert_agree(one, two, 1e-4)
    assert two[2]["kv_bytes"] == one[2]["kv_bytes"]


def test_shards_hold_no_attention_with_gpu(models):
    from numatp.forward.layout import OFFSET
    from numatp.gpu.budget import ATTENTION_SLOTS
    from numatp.model.config import from_gguf
    from numatp.model.gguf_file import GGUFFile
    from numatp.model.slots import LAYER_SLOTS
    from numatp.parallel.shard import build_shard, shard_plan
    g = GGUFFile(str(models["qwen2"]))
    cfg = from_gguf(g)
    for shard in shard_plan(g, cfg, 2):
        cpu = build_shard(g, cfg, shard, 64)
        gpu = build_shard(g, cfg, shard, 64, attention=False)
        for layer in range(cfg.n_layers):
            for slot in range(LAYER_SLOTS):
                e = layer * LAYER_SLOTS + slot
                held = cpu.index[e, OFFSET] >= 0 and slot not in ATTENTION_SLOTS
                assert (gpu.index[e, OFFSET] >= 0) == held, slot


def test_synthetic_depth_decodes_on_both_paths(models, standin):
    for gpu in (None, "attn"):
        with numatp.load(str(models["qwen3"]), nodes=1, gpu=gpu, ctx_size=64) as llm:
            llm.fill_synthetic_kv(40)
            logits = llm._forward([7], 40)
            assert np.isfinite(logits).all()


def test_standin_decodes_on_the_array_path(models, standin, monkeypatch):
    monkeypatch.setenv("NUMATP_GPU_DECODE", "graph")   # CUDA's path: not the stand-in's
    with numatp.load(str(models["qwen2"]), nodes=1, gpu="attn") as llm:
        assert llm.gpu_report()["decode_path"] == "xp"


def test_unknown_decode_path_is_refused(monkeypatch):
    from numatp.gpu.decode import decode_mode
    monkeypatch.setenv("NUMATP_GPU_DECODE", "fast")
    with pytest.raises(numatp.NumatpError, match="NUMATP_GPU_DECODE='fast' is not one of "
                                                 "graph, kernels, xp"):
        decode_mode()


def test_fit_check_refuses_before_loading(models, monkeypatch):
    monkeypatch.setenv("NUMATP_GPU_BACKEND", "numpy")
    monkeypatch.setenv("NUMATP_GPU_STANDIN_MEMORY", str(1 << 20))
    with pytest.raises(numatp.NumatpError, match=r"does not fit .*\(lower -c/--ctx-size\)$"):
        numatp.load(str(models["llama"]), nodes=1, gpu="attn")


def numatp_cli(*args, env=None, pre="pass"):
    code = f"import sys; {pre}; from numatp.cli.main import main; sys.argv = ['numatp', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_gpu_without_cupy_is_one_line(models):
    done = numatp_cli("generate", "hi", "-m", models["llama"], "-n", 2, "--gpu", "attn",
                      pre="sys.modules['cupy'] = None")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "numatp: error: --gpu attn: CuPy is not installed; pip install 'numatp[cuda]' "
        "(CUDA 12 drivers) or 'numatp[cuda13]' (CUDA 13 drivers)"]


def test_gpu_needs_a_known_mode(models):
    done = numatp_cli("generate", "hi", "-m", models["llama"], "--gpu", "all")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("numatp: error: invalid --gpu 'all'")


def test_generate_reports_gpu_memory(models):
    done = numatp_cli("generate", "hi", "-m", models["llama"], "-n", 3, "--temp", 0, "--gpu",
                      "attn", env={"NUMATP_GPU_BACKEND": "numpy"})
    assert done.returncode == 0, done.stderr
    lines = [l for l in done.stderr.splitlines() if l.startswith("numatp: gpu")]
    assert lines[0].startswith("numatp: gpu: host stand-in")
    assert "attention weights (f16)" in lines[1] and "KV cache (f16, 2048 tokens)" in lines[1]
    assert "round trip per layer" in lines[2]


def test_info_and_topology_show_what_gpu_attn_places(models):
    env = {"NUMATP_GPU_BACKEND": "numpy", "NUMATP_GPU_STANDIN_MEMORY": str(1 << 30)}
    info = numatp_cli("info", models["llama"], "-c", 512, env=env)
    assert info.returncode == 0, info.stderr
    assert "  --gpu attn would place there: 0.1 MB attention weights (f16) + 0.3 MB KV cache " \
           "(f16, 512 tokens)" in info.stdout and info.stdout.rstrip().endswith(": fits")
    topo = numatp_cli("topology", "-m", models["llama"], env=env)
    assert topo.returncode == 0, topo.stderr
    assert "gpu: host stand-in" in topo.stdout and "--gpu attn would place there" in topo.stdout


# ---- on a CUDA GPU -----------------------------------------------------------------------

def _no_gpu_reason():
    from numatp.gpu.device import probe
    if os.environ.get("NUMATP_GPU_BACKEND", "cupy") != "cupy":
        return "NUMATP_GPU_BACKEND is set: the CuPy tests need the real backend"
    info, why = probe()
    return None if info is not None else f"GPU tests not run: {why}"


needs_gpu = pytest.mark.skipif(_no_gpu_reason() is not None, reason=str(_no_gpu_reason()))


@needs_gpu
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_matches_cpu_and_standin(arch, models, monkeypatch):
    ref = run(models[arch])
    got = run(models[arch], gpu="attn")
    assert_agree(ref, got, TOLS[arch])
    monkeypatch.setenv("NUMATP_GPU_BACKEND", "numpy")
    assert_agree(run(models[arch], gpu="attn"), got, STANDIN_TOLS[arch])
    assert got[2]["round_trip_us"] > 0 and got[2]["pool_bytes"] > 0


@needs_gpu
def test_cuda_over_two_ranks(models):
    one = run(models["qwen3moe"], gpu="attn")
    two = run(models["qwen3moe"], gpu="attn", nodes=2)
    assert_agree(one, two, 1e-4)


@needs_gpu
def test_cuda_long_prompt_chunks(models):
    # Several 128-token chunks: the causal mask of a chunk at depth, on the GPU.
    ids = [int(t) for t in np.random.default_rng(1).integers(3, 250, 300)]
    with numatp.load(str(models["llama"]), nodes=1) as llm:
        ref = np.array(llm.logits(ids))
    with numatp.load(str(models["llama"]), nodes=1, gpu="attn") as llm:
        got = np.array(llm.logits(ids))
    assert np.abs(got - ref).max() <= TOL * np.abs(ref).max()


def _gpu_attention(path, decode, ctx):
    from numatp.gpu.attention import CupyBackend, GpuAttention
    from numatp.model.config import from_gguf
    from numatp.model.gguf_file import GGUFFile
    g = GGUFFile(str(path))
    return GpuAttention(CupyBackend(), g, from_gguf(g), ctx, max_tokens=8, decode=decode)


@needs_gpu
@pytest.mark.parametrize("arch", ["llama", "llama-hd128", "qwen2", "qwen3"])
def test_cuda_fused_decode_matches_array_path(arch, models):
    # GQA throughout (stories260K: heads of 8; llama-hd128: 4 query heads per KV head),
    # qwen2's biases, qwen3's q/k norms. A 5-token prompt chunk (the array path in all),
    # decode steps at 5..8 (the graph replayed at each position), then at 1500 and 1501
    # over synthetic keys and values: 16 splits of 96 positions, combined.
    import cupyx
    ctx = 2048
    paths = {mode: _gpu_attention(models[arch], mode, ctx) for mode in ("xp", "kernels", "graph")}
    assert {m: a.decode_path for m, a in paths.items()} == {m: m for m in paths}
    cfg = paths["xp"].cfg
    rng = np.random.default_rng(0)
    pinned = lambda: cupyx.empty_pinned((8, cfg.hidden), np.float32)  # noqa: E731
    xb, out, other_xb, other_out = pinned(), pinned(), pinned(), pinned()

    def step(pos0, T, xb=xb, out=out):
        got = {}
        for mode, a in paths.items():
            got[mode] = []
            for layer in range(cfg.n_layers):
                xb[:T] = inputs[layer]
                a(layer, xb[:T], pos0, 0, out[:T])
                got[mode].append(out[:T].copy())
        for layer in range(cfg.n_layers):
            ref = got["xp"][layer]
            for mode in ("kernels", "graph"):
                err = np.abs(got[mode][layer] - ref).max()
                assert err <= FUSED_TOL * np.abs(ref).max(), (mode, pos0, layer, err)
            # the same kernels, launched directly or replayed: the same sums, bit for bit
            assert np.array_equal(got["kernels"][layer], got["graph"][layer]), (pos0, layer)

    inputs = rng.standard_normal((cfg.n_layers, 5, cfg.hidden), dtype=np.float32)
    step(0, 5)
    for pos in range(5, 9):
        inputs = rng.standard_normal((cfg.n_layers, 1, cfg.hidden), dtype=np.float32)
        step(pos, 1)
    for name in ("k", "v"):
        ref = getattr(paths["xp"], name)[:, :, :9].get()
        for mode in ("kernels", "graph"):
            got = getattr(paths[mode], name)[:, :, :9].get()
            assert np.abs(got - ref).max() <= FUSED_TOL * np.abs(ref).max(), (mode, name)

    for a in paths.values():
        a.fill_synthetic(1500, seed=1)
    inputs = rng.standard_normal((cfg.n_layers, 1, cfg.hidden), dtype=np.float32)
    step(1500, 1, other_xb, other_out)       # other pinned buffers: the graphs are recaptured
    inputs = rng.standard_normal((cfg.n_layers, 1, cfg.hidden), dtype=np.float32)
    pageable = np.empty((8, cfg.hidden), np.float32), np.empty((8, cfg.hidden), np.float32)
    step(1501, 1, *pageable)                 # pageable buffers: the kernels without a graph
