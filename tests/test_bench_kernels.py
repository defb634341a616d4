"""`numatp bench kernels`: its matrix and read buffer stream from memory (larger than the
last-level cache), and a run reports every type and thread count asked for. Speeds are not
asserted (shared, noisy hosts): only that they exist."""
import numpy as np

from numatp.bench import kernels as K
from numatp.quant import formats as F


def test_the_default_matrix_is_four_times_a_large_last_level_cache(monkeypatch):
    monkeypatch.setattr("numatp.numa.topology.last_level_cache_bytes", lambda: 300 << 20)
    assert K.stream_bytes() == 1200 << 20
    rows, cols = K.matrix_shape(F.Q4_0, None, None)
    assert cols == K.DEFAULT_COLS and rows == (1200 << 20) // F.row_bytes(F.Q4_0, cols)
    # a small cache (or none found): 256 MB
    monkeypatch.setattr("numatp.numa.topology.last_level_cache_bytes", lambda: 32 << 20)
    assert K.stream_bytes() == K.MIN_STREAM_BYTES
    monkeypatch.setattr("numatp.numa.topology.last_level_cache_bytes", lambda: 0)
    assert K.stream_bytes() == K.MIN_STREAM_BYTES
    assert K.matrix_shape(F.Q4_0, 64, 256) == (64, 256)


def test_a_run_reports_each_type_and_thread_count(monkeypatch):
    monkeypatch.setattr(K, "stream_bytes", lambda: 1 << 20)
    r = K.run(types="Q8_0,F32", threads="1", rows=64, cols=256, repeats=2)
    assert [(k["type"], k["threads"], k["rows"], k["cols"]) for k in r["kernels"]] == \
        [("Q8_0", 1, 64, 256), ("F32", 1, 64, 256)]
    for k in r["kernels"]:
        assert k["gbps"] > 0 and k["read_gbps"] > 0 and k["pct_of_read"] > 0
    assert r["read_gbps"] > 0
    lines = K.format_report(r).splitlines()
    assert [x.split()[0] for x in lines[3:]] == ["Q8_0", "F32"]
    assert np.isfinite([k["pct_of_read"] for k in r["kernels"]]).all()
