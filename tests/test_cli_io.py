"""What the CLI reads and writes, when it is not what it expects: an empty --nodes
list, bytes that are not UTF-8 in an argument, -p, --system, a prompt file or stdin, a
prompt stream without end, standard output full, closed, or a pipe nobody reads, and a
cache directory that cannot be written. Each is one line and a non-zero exit (or, for
the kernel cache, a working run that says why it compiles again), never a traceback.

Undecodable arguments, closed descriptors and full devices only exist between real
processes, so most cases run `numatp` as a subprocess."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import numatp
from numatp.errors import UsageError
from robust import error_line, run_main
from synth import write_model
from test_bad_input import load_here

BAD = b"caf\xe9 \xff"   # Latin-1, not UTF-8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("io") / "small.gguf", qtype="F32",
                       n_layers=1, vocab=300)


def numatp_run(*args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=None):
    """`python -m numatp ARGS` (bytes arguments kept as bytes): (exit code, stdout, stderr)."""
    argv = [a if isinstance(a, bytes) else str(a) for a in args]
    r = subprocess.run([sys.executable, "-m", "numatp", *argv], stdin=stdin, stdout=stdout,
                       stderr=subprocess.PIPE, timeout=300, env=env)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


@pytest.mark.parametrize("nodes", [",", " , ", ",,"])
def test_empty_node_list(model, monkeypatch, capsys, nodes):
    code, out, err = run_main(["generate", "hi", "-m", model, "--nodes", nodes], monkeypatch, capsys)
    message = f"invalid --nodes {nodes!r}: use auto, a count N, or a list like 0,1"
    assert (code, error_line(err)) == (2, message)
    with pytest.raises(UsageError) as e:
        numatp.load(model, nodes=nodes)
    assert str(e.value) == message
    with pytest.raises(UsageError, match="invalid --nodes"):
        numatp.load(model, nodes=[])


@pytest.mark.parametrize("args, what", [
    ([BAD], "the prompt argument is not UTF-8 text (character 3)"),
    (["-p", BAD], "the -p prompt is not UTF-8 text (character 3)"),
    (["hi", "--chat", "--system", BAD], "--system is not UTF-8 text (character 3)"),
])
def test_argument_that_is_not_utf8(model, args, what):
    code, out, err = numatp_run("generate", *args, "-m", model, "-n", 2)
    assert (code, out) == (2, b"")
    assert error_line(err) == what


def test_prompt_file_and_stdin_that_are_not_utf8(model, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(BAD)
    code, out, err = numatp_run("generate", "-f", path, "-m", model, "-n", 2)
    assert (code, error_line(err)) == (2, f"prompt file {path} is not UTF-8 text (byte 3)")
    with open(path, "rb") as stdin:
        code, out, err = numatp_run("generate", "-m", model, "-n", 2, stdin=stdin)
    assert (code, error_line(err)) == (2, "standard input is not UTF-8 text (byte 3)")


def test_library_text_that_is_not_unicode(model):
    """The same text in a program: Python's surrogateescape turned the bytes into lone
    surrogates, which the tokenizer cannot take."""
    text = BAD.decode("utf-8", "surrogateescape")
    with load_here(model) as llm:
        for call in (lambda: llm.tokenize(text), lambda: next(llm.generate(text, max_tokens=1))):
            with pytest.raises(UsageError, match="not valid UTF-8: undecodable bytes at character 3"):
                call()


def test_prompt_stream_without_end(model):
    with open("/dev/zero", "rb") as zeros:
        code, out, err = numatp_run("generate", "-m", model, "-n", 2, stdin=zeros)
    assert (code, error_line(err)) == (2, "standard input is longer than 256 MiB, more than any "
                                          "context can hold")
    code, out, err = numatp_run("generate", "-f", "/dev/zero", "-m", model, "-n", 2)
    assert code == 2 and "prompt file /dev/zero is longer than 256 MiB" in error_line(err)


@pytest.mark.parametrize("command", [["generate", "Once", "-n", 4, "--temp", 0],
                                     ["generate", "Once", "-n", 4, "--json"],
                                     ["info"]], ids=["generate", "json", "info"])
def test_output_to_a_full_device(model, command):
    args = command[:1] + (["-m", model] if command[0] == "generate" else [model]) + command[1:]
    with open("/dev/full", "wb") as full:
        code, _, err = numatp_run(*args, stdout=full)
    assert code == 1
    assert error_line(err) == "cannot write to standard output: No space left on device"


@pytest.mark.parametrize("command", [["generate", "Once", "-n", 4], ["info"]])
def test_output_closed(model, command):
    args = command[:1] + (["-m", model] if command[0] == "generate" else [model]) + command[1:]
    r = subprocess.run([sys.executable, "-m", "numatp", *map(str, args)], stdin=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=300, preexec_fn=lambda: os.close(1))
    assert r.returncode == 1
    assert error_line(r.stderr.decode()) == "standard output is closed"


@pytest.mark.parametrize("command", [["generate", "Once", "-n", 64, "--temp", 0], ["info"]])
def test_output_to_a_pipe_nobody_reads(model, command):
    args = command[:1] + (["-m", model] if command[0] == "generate" else [model]) + command[1:]
    p = subprocess.Popen([sys.executable, "-m", "numatp", *map(str, args)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()   # before numatp has imported anything, so before it writes
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 1
    assert error_line(err) == "cannot write to standard output: Broken pipe"


@pytest.fixture
def unwritable_cache(tmp_path):
    """NUMATP_CACHE under a regular file: no one, root included, can create it."""
    (tmp_path / "file").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["NUMATP_CACHE"] = str(tmp_path / "file" / "cache")
    return env


def test_unwritable_cache_for_the_default_model(unwritable_cache):
    code, out, err = numatp_run("generate", "hi", env=unwritable_cache)
    assert code == 1
    assert error_line(err) == (f"cannot create the model cache {unwritable_cache['NUMATP_CACHE']}: "
                               "Not a directory (set NUMATP_CACHE to a writable directory)")


def test_unwritable_cache_for_kernels_falls_back(unwritable_cache, model, monkeypatch, tmp_path):
    """The kernels go to a private temporary directory removed at exit, and the
    first-run notice says why they compile."""
    script = ("import os, numatp._env as e; print(e.CACHE_PROBLEM); print(os.environ['NUMBA_CACHE_DIR']); "
              "print(oct(os.stat(os.environ['NUMBA_CACHE_DIR']).st_mode & 0o777))")
    r = subprocess.run([sys.executable, "-c", script], env=unwritable_cache, capture_output=True,
                       text=True, timeout=120, check=True)
    problem, fallback, mode = r.stdout.splitlines()
    cache = unwritable_cache["NUMATP_CACHE"]
    assert problem == f"cannot keep compiled kernels in {cache}/numba: Not a directory"
    assert mode == "0o700" and not Path(fallback).exists()
    monkeypatch.setattr("numatp._env.CACHE_PROBLEM", problem)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "empty"))   # nothing compiled there
    notices = []
    load_here(model, announce=notices.append).close()
    assert len(notices) == 1 and notices[0].startswith(problem + "; compiling the kernels for F32")


@pytest.mark.slow
def test_unwritable_cache_end_to_end(unwritable_cache, model):
    """A whole run compiles into the temporary cache (a minute here), writes nothing next
    to the package's sources (where Numba falls back to on its own) and leaves nothing."""
    package = Path(numatp.__file__).parent
    before = set(package.rglob("*.nbi"))
    code, out, err = numatp_run("generate", "Once", "-m", model, "-n", 3, "--temp", 0,
                                env=unwritable_cache)
    assert code == 0, err
    assert "cannot keep compiled kernels" in err and "Traceback" not in err
    assert set(package.rglob("*.nbi")) == before
