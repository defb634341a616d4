"""Models by name from the Hugging Face Hub (hf://OWNER/REPO/FILE.gguf, -hf OWNER/REPO[:QUANT]):
the real huggingface_hub client downloads from a stand-in Hub on loopback (tests/hub_server.py)
that HF_ENDPOINT points to."""
import fcntl
import glob
import hashlib
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import time

import pytest

import numatp
from numatp.errors import NumatpError
from numatp.hub import pick_gguf

from hub_server import StandInHub
from models import STORIES
from synth import write_model

TOKEN = "hf_standin_secret"
SHAPE = dict(qtype="F32", n_layers=1, vocab=300)   # 12 tensors
CHUNK = 10 << 20   # huggingface_hub writes what it receives in pieces of 10 MiB


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hubfiles")
    single = write_model(d / "tiny.gguf", **SHAPE)
    first = write_model(d / "tiny-F32.gguf", **SHAPE, split_tensors=5)
    splits = {f"split/{p.name}": p.read_bytes() for p in sorted(d.glob("tiny-F32-*.gguf"))}
    big = hashlib.shake_256(b"numatp").digest(CHUNK + (2 << 20))
    return {"single": single, "first": first, "splits": splits, "big": big,
            "stories": STORIES.read_bytes()}


@pytest.fixture()
def hub(files):
    data = files["stories"]
    repos = {
        "owner/tiny-GGUF": {"README.md": b"# tiny\n", "tiny-Q8_0.gguf": data,
                            "mmproj-tiny-Q4_K_M.gguf": data, "tiny-Q4_K_M.gguf": data},
        "owner/split-GGUF": {"README.md": b"# split\n", **files["splits"]},
        "owner/big": {"big.gguf": files["big"]},
        "owner/gated-GGUF": {"gated-Q8_0.gguf": data},
    }
    with StandInHub(repos, gated={"owner/gated-GGUF": TOKEN}) as server:
        yield server


@pytest.fixture()
def env(hub, tmp_path):
    """The environment of a numatp run that uses the stand-in Hub and a fresh cache."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    e.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"),
             HF_HUB_CACHE=str(tmp_path / "hub-cache"), HF_TOKEN=TOKEN, HF_HUB_DISABLE_TELEMETRY="1")
    return e


def numatp_run(*args, env):
    r = subprocess.run([sys.executable, "-m", "numatp", *map(str, args)], env=env,
                       capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def generate(model_args, env):
    code, out, err = numatp_run("generate", "Once upon a time", *model_args, "-n", "8",
                                "--temp", "0", "--nodes", "1", "--json", env=env)
    assert code == 0, err
    return json.loads(out)


def error_of(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("numatp: error: "), stderr
    return lines[0].removeprefix("numatp: error: ")


def test_hf_url_downloads_into_the_hub_cache_and_generates(hub, env):
    local = generate(["-m", STORIES], env)
    got = generate(["-m", "hf://owner/tiny-GGUF/tiny-Q8_0.gguf"], env)
    assert got["tokens"] == local["tokens"] and len(local["tokens"]) == 8
    assert got["model"].startswith(env["HF_HUB_CACHE"] + "/models--owner--tiny-GGUF/snapshots/")
    fetched = hub.gets("tiny-Q8_0.gguf")
    assert len(fetched) == 1
    # HF_TOKEN goes with every request, as a bearer token.
    assert {h.get("authorization") for _, _, h in hub.requests} == {f"Bearer {TOKEN}"}
    # From the cache, with the Hub out of reach.
    asked = len(hub.requests)
    again = generate(["-m", "hf://owner/tiny-GGUF/tiny-Q8_0.gguf"], {**env, "HF_HUB_OFFLINE": "1"})
    assert again["tokens"] == local["tokens"] and len(hub.requests) == asked


def test_a_download_shows_huggingface_hubs_progress_bar_on_a_terminal(hub, env):
    controller, terminal = pty.openpty()
    # A terminal of 0 columns, as a new pty is, would get a bar of 0 characters.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with subprocess.Popen([sys.executable, "-m", "numatp", "info",
                           "hf://owner/tiny-GGUF/tiny-Q8_0.gguf"],
                          env=env, stdout=subprocess.DEVNULL, stderr=terminal) as run:
        os.close(terminal)
        shown = b""
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:   # EIO: the program has exited and closed the terminal
                break
            if not data:
                break
            shown += data
    os.close(controller)
    assert run.returncode == 0, shown
    assert re.search(rb"tiny-Q8_0\.gguf: *100%", shown), shown


def test_hf_repo_picks_the_quant_as_llama_cpp_does(hub, env):
    local = generate(["-m", STORIES], env)
    got = generate(["-hf", "owner/tiny-GGUF:Q8_0"], env)
    assert got["tokens"] == local["tokens"] and got["model"].endswith("/tiny-Q8_0.gguf")
    for args, chosen in [(["-hf", "owner/tiny-GGUF"], "tiny-Q4_K_M.gguf"),
                         (["--hf-repo", "owner/tiny-GGUF:q8_0"], "tiny-Q8_0.gguf"),
                         (["hf://owner/tiny-GGUF:Q4_K_M"], "tiny-Q4_K_M.gguf")]:
        code, out, err = numatp_run("info", *args, "--json", env=env)
        assert code == 0, err
        assert json.loads(out)["path"].endswith("/" + chosen)
    # Offline, the choice is made among the files in the cache.
    asked = len(hub.requests)
    code, out, err = numatp_run("info", "-hf", "owner/tiny-GGUF:Q8_0", "--json",
                                env={**env, "HF_HUB_OFFLINE": "1"})
    assert code == 0, err
    assert json.loads(out)["path"].endswith("/tiny-Q8_0.gguf") and len(hub.requests) == asked
    code, _, err = numatp_run("info", "-hf", "owner/tiny-GGUF:Q2_K", env=env)
    assert code == 1
    assert error_of(err) == ("hf://owner/tiny-GGUF:Q2_K: no Q2_K GGUF file in the repository "
                             "(GGUF files: tiny-Q8_0.gguf, mmproj-tiny-Q4_K_M.gguf, tiny-Q4_K_M.gguf)")


@pytest.mark.parametrize("files_, quant, chosen", [
    (["a/m-Q8_0.gguf", "a/m-Q4_K_M.gguf"], None, "a/m-Q4_K_M.gguf"),
    (["m-Q8_0.gguf", "m-q4_0.gguf"], None, "m-Q8_0.gguf"),
    (["x.txt", "m-IQ4_XS.gguf", "m-Q6_K.gguf"], None, "m-IQ4_XS.gguf"),
    (["mmproj-Q8_0.gguf", "m-q8_0.gguf"], "Q8_0", "m-q8_0.gguf"),
    (["m.Q5_K_M.gguf", "m-Q5_K_S.gguf"], "q5_k_m", "m.Q5_K_M.gguf"),
    (["m-Q4_K_M-00002-of-00002.gguf", "m-Q4_K_M-00001-of-00002.gguf"], "Q4_K_M",
     "m-Q4_K_M-00001-of-00002.gguf"),
    (["imatrix.gguf", "m-BF16.gguf"], None, "m-BF16.gguf"),
])
def test_pick_gguf(files_, quant, chosen):
    assert pick_gguf(files_, quant, "hf://o/r") == chosen


def test_pick_gguf_without_a_model():
    with pytest.raises(NumatpError, match=r"^hf://o/r: no GGUF model file in the repository "
                                          r"\(GGUF files: mmproj-F16.gguf\)$"):
        pick_gguf(["README.md", "mmproj-F16.gguf"], None, "hf://o/r")


def test_interrupted_download_resumes(files, hub, env):
    hub.cut_once["big.gguf"] = CHUNK + (1 << 20)
    code = "from numatp.hub import resolve; print(resolve('hf://owner/big/big.gguf'))"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    with open(r.stdout.strip(), "rb") as f:
        assert f.read() == files["big"]
    first, second = hub.gets("big.gguf")
    assert "range" not in first and second["range"] == f"bytes={CHUNK}-"


def test_ctrl_c_during_a_download_ends_in_one_line_and_the_next_run_completes(files, hub, env):
    hub.stall_once["big.gguf"] = CHUNK + (1 << 20)
    run = subprocess.Popen([sys.executable, "-m", "numatp", "info", "hf://owner/big/big.gguf"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    blobs = os.path.join(env["HF_HUB_CACHE"], "models--owner--big", "blobs")
    _wait_for_partial_download(blobs, CHUNK, run)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and err.strip() == "numatp: interrupted"
    # huggingface_hub (since its pull request 4228) writes a partial file of each process's
    # own and removes it when that process gives up: the next run starts over.
    assert not glob.glob(os.path.join(blobs, "*.incomplete"))
    code = "from numatp.hub import resolve; print(resolve('hf://owner/big/big.gguf'))"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    with open(r.stdout.strip(), "rb") as f:
        assert f.read() == files["big"]
    assert not glob.glob(os.path.join(blobs, "*.incomplete"))


def _wait_for_partial_download(blobs, size, run):
    """The path of huggingface_hub's .incomplete file once it holds `size` bytes."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert run.poll() is None, run.stderr.read()
        partial = glob.glob(os.path.join(blobs, "*.incomplete"))
        if partial and os.path.getsize(partial[0]) >= size:
            return partial[0]
        time.sleep(0.05)
    run.kill()
    raise AssertionError("the download did not write its first chunk")


@pytest.mark.parametrize("ref, error", [
    ("hf://owner/nothing/x.gguf", "hf://owner/nothing/x.gguf: no such repository on the Hub (or it "
                                  "is private: set HF_TOKEN)"),
    ("hf://owner/tiny-GGUF/missing.gguf", "hf://owner/tiny-GGUF/missing.gguf: no such file in the "
                                          "repository ({url}/owner/tiny-GGUF/resolve/main/missing.gguf)"),
    ("hf://owner/nothing", "hf://owner/nothing: no such repository on the Hub (or it is private: "
                           "set HF_TOKEN)"),
    ("hf://owner", "hf://owner: give hf://OWNER/REPO/FILE.gguf or hf://OWNER/REPO[:QUANT]"),
])
def test_not_found_is_one_line(hub, env, ref, error):
    code, _, err = numatp_run("info", ref, env=env)
    assert code in (1, 2) and error_of(err) == error.format(url=hub.url)


GATED = ("the repository is gated: accept its terms on the Hub and set HF_TOKEN to a token "
         "of yours")


@pytest.mark.parametrize("ref", ["hf://owner/gated-GGUF/gated-Q8_0.gguf", "hf://owner/gated-GGUF"])
def test_gated_repository_needs_a_granted_token(hub, env, ref):
    no_token = {k: v for k, v in env.items() if k != "HF_TOKEN"}
    for run_env, status in [(no_token, 401), ({**env, "HF_TOKEN": "hf_not_granted"}, 403)]:
        code, _, err = numatp_run("info", ref, env=run_env)
        assert code == 1 and error_of(err) == f"{ref}: {GATED}"
    assert not hub.gets("gated-Q8_0.gguf")
    code, out, err = numatp_run("info", ref, "--json", env=env)
    assert code == 0, err
    assert json.loads(out)["path"].endswith("/gated-Q8_0.gguf")
    assert hub.gets("gated-Q8_0.gguf")[-1]["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("ref, error", [
    ("hf://owner/tiny-GGUF/tiny-Q8_0.gguf", "cannot reach the Hub, and the file is not in the "
                                           "cache (HF_HUB_OFFLINE set, or no network)"),
    ("hf://owner/tiny-GGUF:Q8_0", "HF_HUB_OFFLINE is set and the repository is not in the cache"),
])
def test_offline_and_not_in_the_cache_is_one_line(hub, env, ref, error):
    code, _, err = numatp_run("generate", "Once", "-m", ref, env={**env, "HF_HUB_OFFLINE": "1"})
    assert code == 1 and error_of(err) == f"{ref}: {error}"
    assert hub.requests == []


def test_hub_out_of_reach_is_one_line(env):
    # A socket bound but not listening: connections to it are refused at once.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        host, port = closed.getsockname()
        ref = "hf://owner/tiny-GGUF/tiny-Q8_0.gguf"
        code, _, err = numatp_run("info", ref, env={**env, "HF_ENDPOINT": f"http://{host}:{port}"})
    assert code == 1 and error_of(err) == (f"{ref}: cannot reach the Hub, and the file is not "
                                           "in the cache (HF_HUB_OFFLINE set, or no network)")


def test_split_model_downloads_every_split_and_generates_like_one_file(files, hub, env):
    local = generate(["-m", files["single"]], env)
    got = generate(["-hf", "owner/split-GGUF:F32"], env)
    assert got["tokens"] == local["tokens"]
    assert got["model"].endswith("/split/tiny-F32-00001-of-00003.gguf")
    for name in files["splits"]:
        assert len(hub.gets(name)) == 1
    by_url = generate(["-m", "hf://owner/split-GGUF/split/tiny-F32-00001-of-00003.gguf"], env)
    assert by_url["tokens"] == local["tokens"]
    code, _, err = numatp_run("info", "hf://owner/split-GGUF/split/tiny-F32-00002-of-00003.gguf",
                              env=env)
    assert code == 2 and error_of(err) == (
        "hf://owner/split-GGUF/split/tiny-F32-00002-of-00003.gguf: this is split 2 of 3 of a "
        "model; name its first split, split/tiny-F32-00001-of-00003.gguf")


def test_library_takes_hub_names(files, hub, tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    tok = numatp.load_tokenizer("hf://owner/tiny-GGUF:Q8_0")
    assert tok.encode("Once upon a time") == numatp.load_tokenizer(STORIES).encode(
        "Once upon a time")
    with numatp.load("hf://owner/split-GGUF:F32", nodes=1) as llm:
        assert llm.path.startswith(str(tmp_path / "cache"))
        assert len(llm.gguf.tensors) == 12
    assert all("authorization" not in h for _, _, h in hub.requests)


def test_bench_decode_takes_hf(hub, env):
    code, out, err = numatp_run("bench", "decode", "-hf", "owner/tiny-GGUF:Q8_0", "-p", "4", "-n", "2",
                                "-r", "1", "--no-warmup", "--read-mb", "0", "--nodes", "1",
                                "-o", "json", env=env)
    assert code == 0, err
    rows = json.loads(out)
    assert rows and all(r["model"].endswith("/tiny-Q8_0.gguf") for r in rows)


def test_info_without_a_model(env):
    code, _, err = numatp_run("info", env=env)
    assert code == 2 and error_of(err) == ("no model: give a GGUF file, a known model name, "
                                           "or -hf OWNER/REPO")
