"""`numatp bench decode`: llama-bench's shape (pp and tg rows over every combination of the
lists, an unmeasured warm-up before each test, mean ± standard deviation), its three output
formats, and the one-object --json that scripts parse. Speeds themselves are not asserted
(shared, noisy hosts): only that they exist and are positive."""
import csv
import io
import json
import math
import re
import subprocess
import sys

import pytest

import numatp
from models import STORIES
from numatp.api import LLM
from numatp.bench import decode
from numatp.bench.decode import count_label, describe as model_columns
from numatp.bench.decode_output import ROW_FIELDS, as_markdown
from numatp.parallel.group import resolve_nodes

WARM_LINE = "after 1 unmeasured warm-up"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "numatp", "bench", "decode", "-m", str(STORIES),
                           *args], capture_output=True, text=True, timeout=600)


def effective_threads(nodes, threads):
    return sum(len(p.cpus) for p in resolve_nodes(nodes, threads))


def test_sample_stats():
    s = decode.sample_stats([2.0, 4.0, 9.0])
    assert s["avg_ts"] == pytest.approx(5.0)
    # Sample standard deviation, n - 1 in the denominator: ((3^2 + 1^2 + 4^2) / 2) ** 0.5
    assert s["stddev_ts"] == pytest.approx(math.sqrt(13))
    assert s["median_ts"] == 4.0
    assert s["samples_ts"] == [2.0, 4.0, 9.0]
    assert decode.sample_stats([10, 12, 14, 16])["median_ts"] == 13.0
    one = decode.sample_stats([7.5])
    assert (one["avg_ts"], one["stddev_ts"], one["median_ts"]) == (7.5, 0.0, 7.5)


def test_plan_tests_in_llama_bench_order_and_zero_means_none():
    tests = decode.plan_tests([128, 0, 512], [0, 64])
    assert [t.name for t in tests] == ["pp128", "pp512", "tg64"]
    assert decode.plan_tests([0], [0]) == []


class Recorder(decode.Progress):
    def __init__(self):
        self.events = []

    def test_started(self, label, warmup, repeats):
        self.events.append(("started", label))

    def warmed_up(self, label):
        self.events.append(("warm-up", label))

    def sampled(self, label, index, tps):
        self.events.append(("sample", label))


@pytest.mark.parametrize("warmup", [True, False])
def test_warm_up_runs_once_per_test_and_is_not_a_sample(monkeypatch, warmup):
    runs = []
    generate_ids = LLM.generate_ids

    def counted(self, prompt_ids, max_tokens=128, *args, **kwargs):
        runs.append((len(prompt_ids), max_tokens))
        return generate_ids(self, prompt_ids, max_tokens, *args, **kwargs)

    monkeypatch.setattr(LLM, "generate_ids", counted)
    progress = Recorder()
    rows = decode.run([STORIES], ["1"], [1], [8], [4], repeats=2, warmup=warmup, read_bytes=0,
                      progress=progress)
    assert [r["test"] for r in rows] == ["pp8", "tg4"]
    per_test = 3 if warmup else 2
    # pp: 8 prompt tokens and none generated; tg: a one-token prompt, then 4 decode steps.
    assert runs == [(8, 0)] * per_test + [(1, 5)] * per_test
    for r in rows:
        assert r["repetitions"] == 2 and len(r["samples_ts"]) == 2
        assert all(s > 0 for s in r["samples_ts"])
    pp, tg = (r["test"] + ", 1 node, 1 thread" for r in rows)
    warm = [("warm-up", pp)] if warmup else []
    assert progress.events[:4 if warmup else 3] == [("started", pp)] + warm + [("sample", pp)] * 2
    assert progress.events.count(("warm-up", tg)) == int(warmup)


def test_rows_of_every_combination_with_the_threads_that_ran():
    rows = decode.run([STORIES], ["1"], [1, 2, 1], [4, 8], [0, 3], repeats=1, read_bytes=0)
    want = [(t, name) for t in (1, 2, 1) for name in ("pp4", "pp8", "tg3")]
    assert [(r["threads"], r["test"]) for r in rows] == \
        [(effective_threads("1", t), name) for t, name in want]
    for r in rows:
        assert r["nodes"] == 1 and r["model"] == str(STORIES)
        assert r["model_type"].startswith("llama ") and r["params"] > 0 and r["size"] > 0
        assert (r["n_prompt"], r["n_gen"]) == ((int(r["test"][2:]), 0) if r["test"][:2] == "pp"
                                               else (0, int(r["test"][2:])))
        tg = r["n_gen"] > 0
        assert (r["effective_gbps"] is not None) == tg
        assert r["read_gbps"] is None and r["pct_of_read"] is None


def check_rows(rows, repeats):
    for r in rows:
        assert set(r) == set(ROW_FIELDS)
        assert len(r["samples_ts"]) == repeats and all(s > 0 for s in r["samples_ts"])
        assert r["peak_rss"] >= r["size"] and r["moe_split"] is None   # a dense model
        assert r["avg_ts"] == pytest.approx(sum(r["samples_ts"]) / repeats)
        if r["n_gen"]:
            assert r["effective_gbps"] > 0 and r["read_gbps"] > 0 and r["pct_of_read"] > 0
        else:
            assert r["effective_gbps"] is None and r["pct_of_read"] is None
        check_step_times(r)


def check_step_times(r):
    """A split run's steps: each worker's time lies within the coordinator's, its wait
    for peers within its own time; a run in this process has no such figures."""
    if r["nodes"] == 1:
        assert (r["step_ms"], r["worker_ms"], r["peer_wait_ms"]) == (None, None, None)
        return
    assert len(r["worker_ms"]) == len(r["peer_wait_ms"]) == r["nodes"]
    for busy, wait in zip(r["worker_ms"], r["peer_wait_ms"]):
        assert 0 <= wait <= busy <= r["step_ms"]


def test_cli_json_rows_of_every_combination():
    r = run_cli("-p", "8,16", "-n", "4", "-t", "1,2", "--nodes", "1", "--nodes", "2", "-r", "2",
                "-o", "json", "--read-mb", "1")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)          # stdout holds the result and nothing else
    assert isinstance(rows, list)
    want = [(n, effective_threads(str(n), t), test) for n in (1, 2) for t in (1, 2)
            for test in ("pp8", "pp16", "tg4")]
    assert [(x["nodes"], x["threads"], x["test"]) for x in rows] == want
    check_rows(rows, 2)
    assert r.stderr.count(WARM_LINE) == len(want)


def test_cli_csv():
    r = run_cli("-p", "8", "-n", "4,6", "--nodes", "1", "-r", "3", "-o", "csv", "--read-mb", "1")
    assert r.returncode == 0, r.stderr
    reader = csv.DictReader(io.StringIO(r.stdout))
    assert tuple(reader.fieldnames) == ROW_FIELDS
    rows = list(reader)
    assert [x["test"] for x in rows] == ["pp8", "tg4", "tg6"]
    for x in rows:
        samples = [float(v) for v in x["samples_ts"].split()]
        assert len(samples) == 3 and float(x["avg_ts"]) == pytest.approx(sum(samples) / 3)
        assert (x["pct_of_read"] == "") == (x["test"] == "pp8")


def test_cli_markdown_is_the_default():
    r = run_cli("-p", "8", "-n", "4", "--nodes", "1", "-r", "2", "--read-mb", "1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and all(x.startswith("| ") and x.endswith(" |") for x in lines)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["model", "size", "params", "nodes", "threads", "test", "t/s", "GB/s",
                      "% of read"]
    assert set(lines[1]) <= set("|-: ")
    cells = [[c.strip() for c in x.strip("|").split("|")] for x in lines[2:]]
    assert [c[5] for c in cells] == ["pp8", "tg4"]
    assert all(re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", c[6]) for c in cells)
    assert cells[0][7:] == ["", ""] and re.fullmatch(r"\d+%", cells[1][8])
    assert r.stderr.count(WARM_LINE) == 2


def test_markdown_of_given_rows():
    row = {"model_type": "llama 135M Q4_1", "size": 3 * 2**30, "params": 6_740_000_000,
           "nodes": 2, "threads": 8, "test": "tg128", "avg_ts": 9.521, "stddev_ts": 0.034,
           "effective_gbps": 33.9, "pct_of_read": 71.4}
    lines = as_markdown([row, row | {"test": "pp512", "effective_gbps": None,
                                     "pct_of_read": None}]).splitlines()
    cells = [[c.strip() for c in x.strip("|").split("|")] for x in lines]
    assert cells[2] == ["llama 135M Q4_1", "3.00 GiB", "6.74 B", "2", "8", "tg128",
                        "9.52 ± 0.03", "33.90", "71%"]
    assert cells[3][5:] == ["pp512", "9.52 ± 0.03", "", ""]
    assert len({len(x) for x in lines}) == 1     # columns line up
    # a split run's time per step, with each rank's wait for its peers
    split = row | {"step_ms": 105.03, "worker_ms": [104.9, 104.8], "peer_wait_ms": [0.412, 3.5]}
    lines = as_markdown([split, row | {"nodes": 1}]).splitlines()
    cells = [[c.strip() for c in x.strip("|").split("|")] for x in lines]
    assert cells[0][-1] == "ms/step (peer wait)"
    assert cells[2][-1] == "105.03 (0.41/3.50)" and cells[3][-1] == ""


def test_cli_json_keeps_the_one_object_scripts_parse():
    r = run_cli("-t", "1", "--nodes", "1", "-p", "8", "-n", "4", "-r", "2", "--json",
                "--read-mb", "1")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert isinstance(d, dict)
    assert d["nodes"] == 1 and d["threads"] == effective_threads("1", 1)
    assert (d["n_prompt"], d["n_gen"], d["repeats"]) == (8, 4, 2)
    for key in ("prompt", "decode"):
        samples = d[f"{key}_tps_all"]
        assert len(samples) == 2
        assert d[f"{key}_tps"] == pytest.approx(sum(samples) / 2)          # the median of two
        assert d[f"{key}_tps_mean"] == pytest.approx(sum(samples) / 2)
        assert d[f"{key}_tps_stddev"] == pytest.approx(abs(samples[0] - samples[1]) / math.sqrt(2))
    assert d["effective_gbps"] == pytest.approx(d["bytes_per_token"] * d["decode_tps"] / 1e9)
    assert d["pct_of_read"] == pytest.approx(100 * d["effective_gbps"] / d["read_gbps"])
    assert r.stderr.count(WARM_LINE) == 2


@pytest.mark.parametrize("args", [
    ["-p", "8,16", "--json"], ["-t", "1,2", "--json"], ["--nodes", "1", "--nodes", "2", "--json"],
    ["-p", "0", "--json"], ["--json", "-o", "json"], ["-o", "yaml"], ["-p", "x"], ["-p", "8,"],
    ["-p", "-1"], ["-t", "0"], ["-p", "0", "-n", "0"], ["-r", "0"], ["--read-mb", "-1"],
    ["--read-mb", str(2**40)], ["--moe-split", "layers"]])
def test_cli_rejects_bad_values_in_one_line(args):
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("numatp: error: ") and len(r.stderr.splitlines()) == 1
    assert r.stdout == ""



def test_a_model_that_fails_to_load_gives_one_line(tmp_path):
    # The progress says nothing before the load succeeds: its line would make two.
    r = subprocess.run([sys.executable, "-m", "numatp", "bench", "decode", "-m",
                        str(tmp_path / "missing.gguf")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.startswith("numatp: error: ") and len(r.stderr.splitlines()) == 1
    assert "missing.gguf" in r.stderr and r.stdout == ""


def test_a_moe_model_is_labelled_with_its_active_parameters(tmp_path):
    """As llama-bench labels Qwen3-30B-A3B "qwen3moe 30B.A3B": total and active parameters
    (the experts counted at expert_used_count / expert_count)."""
    from models import moe_model
    with numatp.load(moe_model("qwen3moe-q8_0", tmp_path), nodes=1) as llm:
        cols = model_columns(llm)
        experts = sum(math.prod(t.shape) for n, t in llm.gguf.tensors.items() if "_exps." in n)
        assert cols["params"] - cols["active_params"] == experts - experts * 2 // 8
        assert cols["model_type"] == (f"qwen3moe {count_label(cols['params'])}"
                                      f".A{count_label(cols['active_params'])} Q8_0")


def test_a_moe_model_over_two_nodes_is_measured_with_the_split_asked_for(tmp_path):
    """--moe-split reaches the workers (whole experts each: the file's experts split in two)
    and the rows say which split ran; peak_rss adds the workers' peaks to this process's
    (which only grows, so the second configuration's must exceed the first's)."""
    from models import moe_model
    path = moe_model("qwen3moe-q8_0", tmp_path)
    r = subprocess.run([sys.executable, "-m", "numatp", "bench", "decode", "-m", str(path),
                        "--nodes", "1", "--nodes", "2", "-p", "4", "-n", "2", "-r", "1",
                        "--read-mb", "0", "--moe-split", "experts", "-o", "json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["nodes"], x["moe_split"]) for x in rows] == [(1, None)] * 2 + [(2, "experts")] * 2
    one, two = rows[0]["peak_rss"], rows[2]["peak_rss"]
    assert one >= rows[0]["size"] and two > one


def test_synthetic_kv_fills_exactly_the_first_positions():
    """-d's stand-in for a long prompt: positions 0..n-1 of every cache get values, in
    whatever layout the cache is declared (the keys in tiles of positions: the last tile
    whole), and nothing after them does."""
    from numatp.model.config import from_gguf
    from numatp.model.gguf_file import GGUFFile
    from numatp.parallel.local import LocalModel
    g = GGUFFile(str(STORIES))
    m = LocalModel(g, from_gguf(g), 100)
    m.fill_synthetic_kv(40)
    keys, values = m.state.caches
    assert (values[:, :, :40] != 0).all() and not values[:, :, 40:].any()
    # 40 positions are tiles 0, 1 and half of 2
    assert (keys[:, :, :2] != 0).all() and (keys[:, :, 2, :, :8] != 0).all()
    assert not keys[:, :, 3:].any()
