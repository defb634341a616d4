"""The command line as a llama.cpp user would try it: -h and --version, llama.cpp flags
numatp does not have, --ignore-eos, and warnings for --chat without a template and for
more nodes than CPUs."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
import typer

import numatp
from numatp.chat import CHATML_TEMPLATE
from numatp.cli.llamacpp_flags import llamacpp_flag_note
from numatp.cli.main import app
from numatp.parallel.group import Placement, shared_cpus_warning
from numatp.sampling import SamplingParams
from models import STORIES
from robust import error_line, run_main
from synth import write_model

REPO = Path(__file__).resolve().parents[1]


def command_paths(command, prefix=()):
    """The argument prefix of every command and group, the app itself included."""
    yield list(prefix)
    for name, sub in getattr(command, "commands", {}).items():
        yield from command_paths(sub, (*prefix, name))


@pytest.mark.parametrize("path", list(command_paths(typer.main.get_command(app))),
                         ids=lambda p: " ".join(p) or "numatp")
def test_dash_h_is_help_everywhere(path, monkeypatch, capsys):
    long = run_main([*path, "--help"], monkeypatch, capsys)
    short = run_main([*path, "-h"], monkeypatch, capsys)
    assert short == long and short[0] == 0 and "Usage:" in short[1], short


def test_version(monkeypatch, capsys):
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^version = "(.*)"$', pyproject, flags=re.M).group(1) == numatp.__version__
    assert run_main(["--version"], monkeypatch, capsys) == (0, f"numatp {numatp.__version__}\n", "")


NO_GPU = ("numatp offloads attention and the KV cache, not layers: use --gpu attn (the FFN and "
          "experts stay on the CPU, as llama.cpp's -ngl 99 -ot exps=CPU)")


@pytest.mark.parametrize("args, line", [
    (["generate", "hi", "-ngl", "99"], f"-ngl: {NO_GPU}"),
    (["generate", "hi", "--n-gpu-layers=99"], f"--n-gpu-layers: {NO_GPU}"),
    (["bench", "decode", "-ngl", "99"], f"-ngl: {NO_GPU}"),
    (["generate", "hi", "-cnv"], "-cnv: use `numatp chat` (or generate --chat for one turn)"),
    (["chat", "-sys", "Be brief."], "-sys: use --system (with chat, or generate --chat)"),
    (["topology", "-hf", "org/model-GGUF"], "-hf: only the commands that load a model take it: "
                                            "generate, chat, serve, info and bench decode"),
    (["generate", "hi", "-m", "a.gguf", "-hf", "org/model-GGUF"],
     "give the model once: with -m or with -hf"),
    (["chat", "-m", "a.gguf", "-hf", "org/model-GGUF"],
     "give the model once: with -m or with -hf"),
    (["generate", "hi", "--numa", "distribute"],
     "--numa: numatp always places each worker's memory on its node; see --nodes"),
    (["generate", "hi", "-no-cnv"], "-no-cnv: numatp generate continues one prompt and has no "
                                    "conversation mode to turn off; leave the flag out"),
])
def test_llamacpp_flags_get_the_numatp_equivalent(args, line, monkeypatch, capsys):
    code, out, err = run_main(args, monkeypatch, capsys)
    assert (code, error_line(err)) == (2, line)


def test_llamacpp_flag_check_leaves_what_follows_double_dash_alone():
    assert llamacpp_flag_note(["generate", "--", "-ngl"]) is None
    assert llamacpp_flag_note(["generate", "-n", "16", "hi"]) is None


@pytest.mark.parametrize("args", [["generate", "hi", "-hf", "o/r"], ["info", "--hf-repo=o/r"],
                                  ["serve", "-hf", "o/r", "--parallel", "2"],
                                  ["bench", "decode", "-hfr", "o/r:Q8_0"]])
def test_hf_flag_is_left_to_the_commands_that_take_it(args):
    assert llamacpp_flag_note(args) is None


# ---- generation ----------------------------------------------------------------------

def generate_json(args, monkeypatch, capsys):
    code, out, err = run_main(["generate", "--json", "--temp", "0", "--nodes", "1", *args],
                              monkeypatch, capsys)
    assert code == 0, err
    return json.loads(out), err


def test_ignore_eos_generates_past_the_end_of_generation_token(tmp_path, monkeypatch, capsys):
    """stories260K never ends "Once upon a time" within its context, so a copy whose EOS
    token is the fourth token of that greedy continuation stands in for a model that
    ends its reply there."""
    with numatp.load(STORIES, nodes=1) as llm:
        greedy = list(llm.generate_ids(llm.prompt_ids("Once upon a time"), 8,
                                       SamplingParams(temperature=0)))
    end = next(i for i in range(3, 8) if greedy[i] not in greedy[:i])
    model = tmp_path / "ends.gguf"
    shutil.copy(STORIES, model)
    reader = gguf.GGUFReader(str(model), "r+")
    field = reader.fields["tokenizer.ggml.eos_token_id"]
    field.parts[field.data[0]][0] = greedy[end]
    reader.data.flush()
    del reader

    args = ["Once upon a time", "-m", str(model), "-n", "8"]
    stops, _ = generate_json(args, monkeypatch, capsys)
    assert (stops["tokens"], stops["stop_reason"]) == (greedy[:end], "eos")
    goes_on, _ = generate_json([*args, "--ignore-eos"], monkeypatch, capsys)
    assert (goes_on["tokens"], goes_on["stop_reason"]) == (greedy, "length")


def warnings_in(err):
    return [line for line in err.splitlines() if line.startswith("numatp: warning: ")]


def test_chat_without_a_template_warns_and_uses_chatml(tmp_path, monkeypatch, capsys):
    result, err = generate_json(["Hi", "-m", str(STORIES), "--chat", "-n", "2"],
                                monkeypatch, capsys)
    assert warnings_in(err) == ["numatp: warning: the model has no chat template; --chat uses "
                                "ChatML, which it may not have been trained on"]
    assert result["n_gen"] == 2
    with numatp.load(STORIES, nodes=1) as llm:
        assert result["prompt_tokens"] == llm.tokenizer.encode(
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")

    templated = write_model(tmp_path / "chat.gguf", qtype="F32", n_layers=1, vocab=300,
                            chat_template=CHATML_TEMPLATE)
    _, err = generate_json(["Hi", "-m", str(templated), "--chat", "-n", "2"], monkeypatch, capsys)
    assert warnings_in(err) == []


def test_more_nodes_than_cpus_warns():
    """Two nodes for a process allowed on one CPU: the virtual nodes share it."""
    cpu = min(os.sched_getaffinity(0))
    r = subprocess.run([sys.executable, "-m", "numatp", "generate", "Once", "-m", str(STORIES),
                        "--nodes", "2", "-n", "2", "--temp", "0"], capture_output=True, text=True,
                       timeout=600, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert r.returncode == 0, r.stderr
    assert warnings_in(r.stderr) == ["numatp: warning: --nodes 2 is more than the 1 CPU in use, "
                                     "so the virtual nodes share CPUs (slower; meant for testing)"]


def test_shared_cpus_warning_only_when_nodes_share():
    one_each = [Placement(-1, (0,), False), Placement(-1, (1,), False)]
    shared = [Placement(-1, (c,), False) for c in (0, 1, 2, 0)]
    assert shared_cpus_warning(one_each) is None
    assert shared_cpus_warning(shared) == (
        "warning: --nodes 4 is more than the 3 CPUs in use, so the virtual nodes share CPUs "
        "(slower; meant for testing)")
