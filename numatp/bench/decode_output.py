"""The rows of `numatp bench decode` as text: llama-bench's markdown table, CSV, a JSON
list of rows, and the one JSON object of the older `--json` (one prompt test and one
generation test) that scripts parse."""
import csv
import io
import json

from numatp.bench.decode import GB

ROW_FIELDS = ("model", "model_type", "size", "params", "active_params", "nodes", "threads",
              "test", "n_prompt", "n_gen", "repetitions", "avg_ts", "stddev_ts", "median_ts",
              "samples_ts", "load_s", "bytes_per_token", "effective_gbps", "read_gbps", "pct_of_read",
              "gpu", "n_depth", "synthetic_kv", "peak_rss", "moe_split", "step_ms", "worker_ms",
              "peer_wait_ms")


def as_json(rows) -> str:
    return json.dumps([{k: r[k] for k in ROW_FIELDS} for r in rows], indent=2)


def as_csv(rows) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=ROW_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: csv_value(r[k]) for k in ROW_FIELDS})
    return out.getvalue()


def csv_value(v):
    if v is None:
        return ""
    if isinstance(v, list):
        return " ".join(repr(x) for x in v)   # one cell; repr keeps every digit
    return v


def as_markdown(rows) -> str:
    """llama-bench's table (t/s as mean ± standard deviation), with numatp's nodes and, for
    generation tests, the effective GB/s and its share of the read bandwidth."""
    columns = [("model", "<", lambda r: r["model_type"]),
               ("size", ">", lambda r: scaled(r["size"], 1024, ("B", "KiB", "MiB", "GiB"))),
               ("params", ">", lambda r: scaled(r["params"], 1000, ("", "K", "M", "B"))),
               ("nodes", ">", lambda r: str(r["nodes"])),
               ("threads", ">", lambda r: str(r["threads"]))]
    # Rows from before --gpu and --depth (a saved -o json) have neither field.
    if any(r.get("gpu", "none") != "none" for r in rows):
        columns.append(("gpu", ">", lambda r: r["gpu"]))
    columns += [("test", ">", lambda r: r["test"]),
               ("t/s", ">", lambda r: f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f}")]
    if any(r["effective_gbps"] is not None for r in rows):
        columns.append(("GB/s", ">", lambda r: optional(r["effective_gbps"], "{:.2f}")))
    if any(r["pct_of_read"] is not None for r in rows):
        columns.append(("% of read", ">", lambda r: optional(r["pct_of_read"], "{:.0f}%")))
    if any(r.get("peer_wait_ms") for r in rows):
        columns.append(("ms/step (peer wait)", ">", step_cell))
    cells = [[get(r) for _, _, get in columns] for r in rows]
    widths = [max([len(name)] + [len(row[i]) for row in cells])
              for i, (name, _, _) in enumerate(columns)]

    def line(values):
        return "| " + " | ".join(f"{v:{align}{w}}" for v, (_, align, _), w
                                 in zip(values, columns, widths)) + " |"

    rule = "| " + " | ".join("-" * w if align == "<" else "-" * (w - 1) + ":"
                             for (_, align, _), w in zip(columns, widths)) + " |"
    table = [line([name for name, _, _ in columns]), rule] + [line(c) for c in cells]
    if any(r.get("n_depth") for r in rows):
        table.append("\n@ dN: run after filling positions 0..N-1 of the KV cache with synthetic "
                     "keys and values (--depth), not after processing a prompt")
    return "\n".join(table)


def step_cell(row) -> str:
    """A split run's time per step and each rank's wait for its peers within it:
    "6.10 (0.41/0.12)"."""
    if not row.get("peer_wait_ms"):
        return ""
    return f"{row['step_ms']:.2f} ({'/'.join(f'{w:.2f}' for w in row['peer_wait_ms'])})"


def scaled(n, base, units) -> str:
    value, unit = float(n), units[0]
    for unit in units:
        if value < base or unit == units[-1]:
            break
        value /= base
    return f"{value:.2f} {unit}".rstrip()


def optional(v, fmt) -> str:
    return "" if v is None else fmt.format(v)


def summary_object(rows) -> dict:
    """The older --json: one object for one configuration's prompt and generation test.
    prompt_tps and decode_tps are medians (as they always were; the *_mean / *_stddev
    keys give the rest), and effective_gbps is taken at the median decode speed."""
    pp = [r for r in rows if r["n_prompt"]]
    tg = [r for r in rows if r["n_gen"]]
    if len(pp) != 1 or len(tg) != 1 or len(rows) != 2:
        raise ValueError("the summary object needs exactly one pp and one tg row")
    p, g = pp[0], tg[0]
    out = {k: g[k] for k in ("model", "model_type", "size", "params", "nodes", "threads",
                             "load_s", "bytes_per_token", "gpu", "n_depth", "synthetic_kv",
                             "peak_rss", "moe_split", "step_ms", "worker_ms", "peer_wait_ms")}
    out.update(n_prompt=p["n_prompt"], n_gen=g["n_gen"], repeats=g["repetitions"],
               prompt_tps=p["median_ts"], prompt_tps_mean=p["avg_ts"],
               prompt_tps_stddev=p["stddev_ts"], prompt_tps_all=p["samples_ts"],
               decode_tps=g["median_ts"], decode_tps_mean=g["avg_ts"],
               decode_tps_stddev=g["stddev_ts"], decode_tps_all=g["samples_ts"])
    out["effective_gbps"] = g["bytes_per_token"] * g["median_ts"] / GB
    out["read_gbps"] = g["read_gbps"]
    out["pct_of_read"] = (None if g["read_gbps"] is None
                          else 100 * out["effective_gbps"] / g["read_gbps"])
    return out
