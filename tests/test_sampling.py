"""NaN and infinite logits. A model whose weights hold a NaN produces NaN logits: that
is a NumatpError naming the cause and the position (the CLI: one line, exit 1), not
numpy's "Probabilities contain NaN" from the sampler nor, greedily, token 0 of NaN
logits passed off as text. And no valid sampling parameter turns a valid model's
finite logits into NaN: the repetition penalty saturates instead of overflowing.
"""
import gguf
import numpy as np
import pytest

import numatp
from numatp.errors import NumatpError
from numatp.sampling import Sampler, SamplingParams
from robust import error_line, run_main
from synth import write_model

NAN_ERROR = r"the model produced NaN logits at position \d+ \(a NaN or Inf in its weights\?\)"
EXTREME_PENALTIES = [1e-300, 5e-324, 1e-30, 1e30, 1e300, 1.7e308]


@pytest.fixture(scope="module")
def valid_model(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("sampling") / "valid.gguf", qtype="F32")


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory):
    """A valid model but for one NaN in its final norm: every logit comes out NaN."""
    path = write_model(tmp_path_factory.mktemp("sampling") / "nan.gguf", qtype="F32")
    reader = gguf.GGUFReader(str(path), "r+")
    norm = next(t for t in reader.tensors if t.name == "output_norm.weight")
    norm.data[3] = np.nan
    reader.data.flush()
    del reader, norm
    return path


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_nan_weights_are_named(nan_model, temperature):
    with numatp.load(nan_model, nodes=1) as llm:
        with pytest.raises(NumatpError, match=NAN_ERROR):
            list(llm.generate("the robot", max_tokens=4, temperature=temperature, seed=1))


def test_nan_weights_in_the_cli(nan_model, monkeypatch, capsys):
    code, out, err = run_main(["generate", "the robot", "-m", nan_model, "-n", 4], monkeypatch,
                              capsys)
    assert code == 1
    assert "NaN logits at position" in error_line(err)


@pytest.mark.parametrize("logit", [np.nan, np.inf])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_sampler_refuses_non_finite_logits(logit, temperature):
    logits = np.linspace(-3, 3, 100).astype(np.float32)
    logits[[10, 57]] = logit
    what = "NaN" if np.isnan(logit) else "infinite"
    with pytest.raises(NumatpError, match=f"produced {what} logits at position 2 "):
        Sampler(SamplingParams(temperature=temperature, seed=0))(logits, [1, 2, 3])


@pytest.mark.parametrize("penalty", EXTREME_PENALTIES)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_extreme_repeat_penalty_keeps_sampling_finite(penalty, temperature):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(300) * 5).astype(np.float32)
    history = list(range(0, 300, 7))
    sampler = Sampler(SamplingParams(temperature=temperature, repeat_penalty=penalty,
                                     repeat_last_n=len(history), seed=1))
    for _ in range(20):
        tok = sampler(logits, history)
        if penalty < 1:  # favours the repeated tokens that the model already likes
            assert tok in history and logits[tok] > 0
        else:            # keeps them down, wherever they were
            assert tok not in history


@pytest.mark.parametrize("penalty", [1e-300, 1e300])
def test_extreme_repeat_penalty_on_a_valid_model(valid_model, penalty):
    with numatp.load(valid_model, nodes=1) as llm:
        for temperature in (0.0, 0.8):
            text = "".join(llm.generate("the robot", max_tokens=16, temperature=temperature,
                                        repeat_penalty=penalty, seed=1))
            assert llm.stats.n_gen == 16 and text
