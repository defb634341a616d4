"""The thread team (numatp/quant/team.py, numatp/forward/team.py) that runs one-token
steps: its jobs give the parallel regions' logits bit for bit, since every item is
computed whole by one thread with the same code; its threads sleep when parked and end
at close.

Where else the team is checked: on this 2-CPU machine every single-process one-token
step runs on a team of 2, so tests/test_forward.py's one-token steps against the prompt
path (regions) and tests/test_reduce_units.py's decode steps of one process (a team,
six reduce units per row-split matrix: team_linear_units, quantized and F16) against 2-4
worker processes (one thread each: regions) compare the two bit for bit too."""
import numatp  # noqa: F401  (sets the Numba environment first)

import threading
import time
from pathlib import Path

import numpy as np
import pytest

import synth
from test_forward import Runner
from numatp.quant.team import PARK, SESSION

STORIES = Path(__file__).parent / "data" / "stories260K.gguf"
IDS = [3, 17, 99, 4, 250, 8, 61]


def one_token_logits(path, team_on, monkeypatch, ids=IDS):
    """The logits after each of ids, fed one at a time, and whether a team ran them."""
    monkeypatch.setattr("numatp.forward.team.ENABLED", team_on)
    r = Runner(path)
    try:
        return r.logits_each(ids), r.model.state._team is not None
    finally:
        r.model.close()


def assert_team_is_the_regions(path, monkeypatch):
    with_team, used = one_token_logits(path, True, monkeypatch)
    assert used
    regions, used = one_token_logits(path, False, monkeypatch)
    assert not used
    assert np.array_equal(with_team.view(np.uint32), regions.view(np.uint32))


def test_mixed_families_on_the_team_are_the_regions(tmp_path, monkeypatch):
    """Q/K/V and gate/up of two activation forms (Q8_0's groups of 32, Q4_K's of 256):
    no one job covers them, so each product is a job of its own, and the silu runs in
    the calling thread."""
    path = synth.write_model(tmp_path / "m.gguf", arch="qwen3", qtype="Q8_0", hidden=256,
                             ffn=512, n_heads=8, n_kv_heads=2, seed=3,
                             tensor_types={"attn_v": "Q4_K", "ffn_up": "Q4_K"})
    assert_team_is_the_regions(path, monkeypatch)


def test_float_weights_on_the_team_are_the_regions(monkeypatch):
    """F32 matrices: the float matvec's chunks of rows as jobs."""
    assert_team_is_the_regions(STORIES, monkeypatch)


def test_threads_sleep_when_parked_and_end_at_close(monkeypatch):
    monkeypatch.setattr("numatp.forward.team.ENABLED", True)
    before = threading.active_count()
    r = Runner(STORIES)
    r.logits_each(IDS[:2])
    team = r.model.state._team
    assert team is not None and threading.active_count() == before + 1
    # a prompt chunk (parallel regions) parks the team first
    r.model.forward(r.embed(IDS), 2)
    assert team.ctl[PARK] == 1 and team.ctl[SESSION] % 2 == 0
    time.sleep(0.2)
    start = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - start < 0.1   # no thread spins
    # woken again by the next one-token step
    r.logits_each(IDS[:1])
    r.model.close()
    assert threading.active_count() == before
    r.model.close()   # twice is fine
