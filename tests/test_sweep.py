"""`capsim sweep`: grid expansion, one-line errors, equality with predict(), files, error rows, Dask."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from capsim.cli.main import cli
from capsim.errors import CapsimError
from capsim.hardware import db as hwdb
from capsim.predict import Query, predict
from capsim.sweep import grid as G
from capsim.sweep.evaluate import COLUMNS, combine, evaluate
from capsim.sweep.io import read_results, write_results
from capsim.sweep.run import run_sweep


@pytest.fixture(scope="module")
def db():
    return hwdb.load()


@pytest.fixture(scope="module")
def mixed(db) -> tuple[G.Grid, pd.DataFrame]:
    """Valid and invalid layouts, a bare device, weight-only fp8 on an A100, pipeline stages."""
    g = G.build({"models": ["mixtral", "deepseek-v3"], "hardware": ["dgx-h100", "h100", "dgx-a100"],
                 "devices": [1, 8], "precisions": ["native", "fp8"], "ep": [1, "all", 3], "pp": [1, 2],
                 "batch": "1..64:x4", "input_len": [512, 3000], "output_len": [1, 129], "traces": ["uniform"]})
    return g, run_sweep(g, db)  # uniform routing: rows equal predict exactly (real routing: test_api, 2%)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, *needles) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr
    assert "Traceback" not in result.output
    assert err.startswith("capsim: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_expansion_is_the_exact_cartesian_product():
    g = G.build({"models": "mixtral,qwen3-30b", "hardware": ["dgx-h100"], "devices": [2, 4, "all"],
                 "precisions": ["bf16", "fp8", "int4"], "tp": ["auto", 2], "ep": [1, "all"],
                 "batch": "1..256:x2", "input_len": "128..1024:+128", "output_len": ["16,32", 64]})
    # axis lengths: models 2, hardware 1, devices 3, nodes 1, precisions 3, kv 1, engines 1, tp 2, ep 2, pp 1,
    # dp, offload, expert_cache, expert_tier, cache_policy, traces 1 each (defaults),
    # batch 9 (1, 2, ..., 256), input 8 (128, 256, ..., 1024), output 3
    assert g.shape == (2, 1, 3, 1, 3, 1, 1, 2, 2, 1, 1, 1, 1, 1, 1, 1, 9, 8, 3)
    assert g.size == 2 * 3 * 3 * 2 * 2 * 9 * 8 * 3 == 15_552
    assert g.configurations == 2 * 3 * 3 * 2 * 2 == 72
    f = G.expand(g)
    assert len(f) == g.size and not f.duplicated().any()
    assert f["batch"].unique().tolist() == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert f["input_len"].unique().tolist() == list(range(128, 1025, 128))
    assert f["devices"].unique().tolist() == [2, 4, G.AUTO] and f["tp"].unique().tolist() == [G.AUTO, 2]
    assert f.iloc[0]["model"] == "mixtral" and f.iloc[-1]["model"] == "qwen3-30b"  # first axis slowest
    assert (f["output_len"].iloc[:3].tolist(), f["input_len"].iloc[:4].tolist()) == ([16, 32, 64], [128] * 3 + [256])
    part = G.expand(g, 1000, 5000)
    pd.testing.assert_frame_equal(part, f.iloc[1000:5000])


def test_unknown_key_is_a_one_line_error_naming_file_key_and_allowed_keys(tmp_path):
    p = tmp_path / "grid.yaml"
    p.write_text("models: [mixtral]\nhardware: [h100]\nbatches: [1, 2]\n")
    err = one_line_error(run("sweep", p), str(p), "'batches'", "did you mean batch",
                         "allowed keys: models, hardware, devices")
    assert "output_len" in err


@pytest.mark.parametrize("text, needles", [
    ("models: [mixtrl]\nhardware: [h100]\n", ["models", "unknown model", "mixtral"]),
    ("models: [mixtral]\nhardware: [h10000]\n", ["hardware", "unknown hardware id"]),
    ("models: [mixtral]\nhardware: [h100]\nbatch: 1..x\n", ["batch", "'1..x'", "A..B:xF"]),
    ("models: [mixtral]\nhardware: [h100]\nbatch: [4, 0]\n", ["batch", "expected an integer >= 1"]),
    ("models: [mixtral]\nhardware: [h100]\nbatch: [4, 1..8]\n", ["batch", "repeated value(s) 4"]),
    ("models: [mixtral]\n", ["no hardware given"]),
    ("- mixtral\n", ["expected a mapping"]),
    ("models: [mixtral\n", ["malformed YAML at line"]),
])
def test_bad_grids_are_one_line_errors(tmp_path, text, needles):
    p = tmp_path / "g.yaml"
    p.write_text(text)
    one_line_error(run("sweep", p), *needles)


def test_bad_flags_and_limits(tmp_path):
    one_line_error(run("sweep", tmp_path / "none.yaml"), "none.yaml", "no such grid file")
    one_line_error(run("sweep", "-m", "mixtral", "-H", "h100", "--ep", "most"), "--ep", "'all'")
    one_line_error(run("sweep", "-m", "mixtral", "-H", "h100", "--batch", "1..1000", "--max-scenarios", "999"),
                   "1,000 scenarios", "--max-scenarios 999")
    one_line_error(run("sweep", "-m", "mixtral", "-H", "h100", "--out", tmp_path / "r.xlsx"), "unknown format")
    one_line_error(run("sweep", "-m", "mixtral", "-H", "h100", "--out", tmp_path / "no" / "r.csv"), "no folder")


def _query(row) -> Query:
    return Query(model=row["model"], hardware=row["hardware"], devices=int(row["devices"]), nodes=int(row["nodes"]),
                 precision=row["precision"], tp=int(row["tp"]), ep=int(row["ep"]), pp=int(row["pp"]),
                 batch=int(row["batch"]), input_len=int(row["input_len"]), output_len=int(row["output_len"]),
                 check_memory=False, routing="uniform" if row["trace"] in ("uniform", G.NONE) else row["trace"])


def test_rows_equal_predict(db, mixed):
    g, out = mixed
    ok = out[out["error"].isna()]
    rng = np.random.default_rng(7)
    picks = list(rng.choice(len(ok), 10, replace=False))
    # and one row of each kind worth checking: pipeline, expert parallel, weight-only fp8, a bare device
    for sel in (ok["pp"] == 2, ok["ep"] == 8, ok["compute_dtype"].astype(str) != ok["precision"].astype(str),
                ok["hardware"] == "h100"):
        picks.append(int(np.flatnonzero(sel.to_numpy(bool))[-1]))
    for i in picks:
        row = ok.iloc[i]
        p = predict(_query(row), db)
        want = {k: p[k] for k in ("ttft_s", "tpot_s", "request_latency_s", "prefill_tokens_per_s",
                                   "decode_tokens_per_s", "decode_tokens_per_s_per_user", "s_mbu", "s_mfu", "mbu",
                                   "mfu", "activated_experts_per_layer")}
        want["memory_per_device_bytes"] = p["memory_bytes"]["device"]["total"]
        want["kv_cache_per_device_bytes"] = p["memory_bytes"]["device"]["kv_cache"]
        for k, v in want.items():
            assert math.isclose(row[k], v, rel_tol=1e-9), (k, row[k], v, row.to_dict())
        assert bool(row["fits"]) == p["fits"]
        assert (row["bottleneck_prefill"], row["bottleneck_decode"]) == (p["bottleneck"]["prefill"],
                                                                         p["bottleneck"]["decode"])
        sc = p["scenario"]
        assert (row["model_id"], row["device"], row["compute_dtype"], row["devices_total"], row["dp"]) == (
            sc["model"], sc["device"], sc["compute_dtype"], sc["devices"], sc["dp"])


def test_multinode_rows_equal_predict(db):
    g = G.build({"models": ["deepseek-v3", "mixtral"], "hardware": ["dgx-h100"], "nodes": [2], "precisions": ["fp8"],
                 "ep": ["all"], "pp": [1, 2], "batch": [3, 256], "input_len": [1000], "output_len": [1, 200],
                 "traces": ["uniform"]})
    out = run_sweep(g, db)
    bad = out["error"].notna()
    # Mixtral's 8 experts do not split over EP16 (pp 1); over EP8 (a stage of 8 with pp 2) they do
    assert (bad == ((out["model"] == "mixtral") & (out["pp"] == 1))).all()
    assert out.loc[bad, "error"].astype(str).str.startswith("--ep 16: 8 routed experts").all()
    assert set(out.loc[~bad, "devices_total"]) == {16} and set(out.loc[~bad, "ep"]) == {8, 16}
    for _, row in out[~bad].iterrows():
        p = predict(_query(row), db)
        for k in ("ttft_s", "tpot_s", "request_latency_s", "s_mbu", "s_mfu", "mbu", "mfu"):
            assert math.isclose(row[k], p[k], rel_tol=1e-9), (k, row.to_dict())
        assert math.isclose(row["memory_per_device_bytes"], p["memory_bytes"]["device"]["total"], rel_tol=1e-9)


def test_cost_columns(db):
    # Cloud prices like with like (capsim.cap.parts): GPUs used x the GPU's per-GPU on-demand price, host share
    # included (hardware_db/accelerators: H100 SXM 3.29 USD/h, B200 6.79 USD/h); N nodes cost N times one node.
    # $/1M output tokens = $/h / (batch x output_len / request latency x 3600 s/h) x 1e6.
    g = G.build({"models": ["mixtral"], "hardware": ["dgx-h100", "dgx-b200"], "devices": [4, 8], "nodes": [1, 2],
                 "batch": [8], "input_len": [512], "output_len": [128]})
    out = run_sweep(g, db)
    per_gpu = {"dgx-h100": 3.29, "dgx-b200": 6.79}
    for _, row in out.iterrows():
        assert not isinstance(row["error"], str), row["error"]
        per_h = per_gpu[row["hardware"]] * row["devices"] * row["nodes"]
        assert math.isclose(row["usd_per_h"], per_h, rel_tol=1e-12)
        tokens_per_s = 8 * 128 / row["request_latency_s"]
        assert math.isclose(row["usd_per_million_output_tokens"], per_h / (tokens_per_s * 3600) * 1e6, rel_tol=1e-12)


def test_invalid_layouts_are_error_rows(mixed):
    g, out = mixed
    assert len(out) == g.size and list(out.columns) == list(COLUMNS)
    bad = out[out["error"].notna()]
    ep3 = out[(out["ep"] == 3).fillna(False)]
    assert len(ep3) and ep3["error"].notna().all()
    assert ep3["error"].astype(str).str.contains("--ep 3|--pp 2: expected a positive divisor of the 1").all()
    assert bad["ttft_s"].isna().all() and bad["fits"].isna().all() and bad["model_id"].isna().all()
    pp_on_one = out[(out["pp"] == 2) & (out["devices"] == 1)]
    assert pp_on_one["error"].astype(str).str.contains("--pp 2").all()
    good = out[out["error"].isna()]
    assert len(good) and good[["ttft_s", "tpot_s", "s_mbu"]].gt(0).all().all()
    assert set(good["ep"].unique()) == {1, 4, 8}  # 'all': every device of the stage (4 with pp 2)
    assert (good["decode_tokens_per_s"] == good["batch"] / good["tpot_s"]).all()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_files_round_trip_through_the_cli(tmp_path, db, suffix):
    grid = tmp_path / "grid.yaml"
    grid.write_text("models: [mixtral]\nhardware: [dgx-h100]\ndevices: [2, 8]\nep: [1, 3]\nbatch: 1..16:x2\n"
                    "output_len: [64, 128]\n")
    out = tmp_path / f"results{suffix}"
    r = run("sweep", grid, "--out", out, "--batch", "1,4,32")  # the flag replaces the file's batch axis
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.stdout and "24 scenarios (4 configurations)" in r.stdout
    back = read_results(out)
    want = run_sweep(G.load(grid, {"batch": ["1,4,32"]}), db)
    pd.testing.assert_frame_equal(back, want, check_exact=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_write_is_atomic(tmp_path, db, monkeypatch):
    out = tmp_path / "r.csv"
    frame = run_sweep(G.build({"models": ["mixtral"], "hardware": ["h100"]}), db)
    write_results(frame, out)  # a previous sweep's results (capsim replaces only its own kind of file)
    previous = out.read_text()

    def broken(self, path, **kw):
        with open(path, "w") as f:
            f.write("half a fi")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(CapsimError, match="r.csv: cannot write it \\(disk full\\)"):
        write_results(frame, out)
    assert out.read_text() == previous and os.listdir(tmp_path) == ["r.csv"]


def test_json_summary_and_flags_only():
    r = run("sweep", "-m", "mixtral", "-H", "dgx-h100", "--devices", "4,8", "--batch", "1..64:x2", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["scenarios"], s["ok"], s["errors"], s["configurations"]) == (14, 14, 0, 2)
    assert s["best"][0]["batch"] == 64 and s["best"][0]["devices"] == 8 and s["out"] is None


def test_any_chunking_gives_the_same_frame(db, mixed):
    g, out = mixed
    f = G.expand(g).sample(frac=1.0, random_state=3)  # configurations no longer contiguous
    shuffled = combine([evaluate(f.iloc[a:a + 500], db) for a in range(0, len(f), 500)])
    pd.testing.assert_frame_equal(shuffled, combine([evaluate(f, db)]), check_exact=True)
    back = shuffled.set_axis(f.index).sort_index()
    pd.testing.assert_frame_equal(combine([back]), out, check_exact=True, check_categorical=False)


def test_dask_local_cluster_equals_local(db, mixed):
    pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'capsim[sweep]')")
    from distributed import LocalCluster

    from capsim.sweep.dask_run import run_on_cluster

    g, out = mixed
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        remote = run_sweep(g, db, scheduler=cluster.scheduler_address, chunk_rows=700)
        pd.testing.assert_frame_equal(remote, out, check_exact=True)
        frame = G.expand(g).iloc[::-1]  # a scenario frame, scattered chunk by chunk
        pd.testing.assert_frame_equal(run_on_cluster(frame, db, cluster.scheduler_address),
                                      combine([evaluate(frame, db)]), check_exact=True)
        r = run("sweep", "-m", "mixtral", "-H", "dgx-h100", "--batch", "1..8", "--scheduler",
                cluster.scheduler_address, "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["ok"] == 8


def test_unreachable_scheduler_is_a_one_line_error():
    pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'capsim[sweep]')")
    one_line_error(run("sweep", "-m", "mixtral", "-H", "h100", "--scheduler", "tcp://127.0.0.1:9",
                       "--connect-timeout", "1"),
                   "--scheduler tcp://127.0.0.1:9", "cannot reach")
