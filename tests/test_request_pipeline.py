"""The one request pipeline: nothing else composes a step's time, the pipeline stages are priced as derived by
hand, and predict, sweep, provision and validation give the same numbers for the same scenario."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from capsim.hardware import db as hwdb
from capsim.predict import Query, predict
from capsim.provision.candidates import Layout
from capsim.provision.evaluate import Workload, curve
from capsim.scenario import resolve
from capsim.sweep import grid as G
from capsim.sweep.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
DB = hwdb.load()
TRACE = "traces/tiny-olmoe-stdlib"
TRACE_MODEL = "traces/models/tiny-olmoe-stdlib/config.json"


def _calls(tree: ast.AST, name: str) -> int:
    return sum(1 for node in ast.walk(tree) if isinstance(node, ast.Call) and (
        getattr(node.func, "id", None) == name or getattr(node.func, "attr", None) == name))


def _sources():
    for folder in ("capsim", "benchmarks", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if any(part.startswith(".") for part in path.relative_to(ROOT).parts):  # benchmarks/.venv-genz etc.
                continue
            yield path.relative_to(ROOT).as_posix(), path.read_text()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        yield path.relative_to(ROOT).as_posix(), "\n".join(line for line in code.splitlines()
                                                            if not line.lstrip().startswith(("%", "!")))


def test_only_the_request_pipeline_calls_step_time():
    callers = {path for path, text in _sources() if _calls(ast.parse(text), "step_time")}
    assert callers == {"capsim/sim/request.py"}


def test_the_data_flow_reads_from_the_file_names():
    # config -> model spec -> scenario -> sim/request -> metrics -> report
    for path in ("capsim/model/spec.py", "capsim/scenario.py", "capsim/sim/request.py", "capsim/sim/metrics.py",
                 "capsim/report.py", "capsim/predict.py"):
        assert (ROOT / path).is_file(), path
    tree = ast.parse((ROOT / "capsim/predict.py").read_text())
    called = {getattr(n.func, "id", None) or getattr(n.func, "attr", None) for n in ast.walk(tree)
              if isinstance(n, ast.Call)}
    assert {"resolve", "simulate", "request_metrics"} <= called


def test_no_module_over_400_lines():
    long = {p.relative_to(ROOT).as_posix(): n for p in (ROOT / "capsim").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


# ------------------------------------------------------------------------------------- pipeline stages


def _hop_s(tokens: int, rep: dict) -> float:
    """pp - 1 = 3 hops of a micro-batch's hidden states (Mixtral: 4096 wide, bf16) between the stages."""
    return 3 * tokens * 4096 * 2 / rep["collectives"]["pp_hop"]["bandwidth_bytes_per_s"]


def test_one_sequence_through_four_stages_costs_the_model_once_plus_the_hops():
    # Mixtral on dgx-h100, TP2 in each of 4 stages of 2 GPUs (stage 1 = GPUs 0-1, the same pair --tp 2 uses).
    # Batch 1: one micro-batch (m = min(B, pp) = 1) passes the 4 stages in turn: TTFT = (m + pp - 1) = 4 stage
    # times = the whole model on one stage group (W, the --devices 2 --tp 2 TTFT) plus 3 hops of its 512
    # prompt tokens. Decode: a token every max(m, pp) = 4 stage times = W_dec, plus 3 hops of 1 token.
    q = Query(model="mixtral", hardware="dgx-h100", tp=2, batch=1)
    alone = predict(replace(q, devices=2), DB)
    pp4 = predict(replace(q, pp=4), DB)
    assert pp4["ttft_s"] == pytest.approx(alone["ttft_s"] + _hop_s(512, pp4), rel=1e-9)
    assert pp4["tpot_s"] == pytest.approx(alone["tpot_s"] + _hop_s(1, pp4), rel=1e-9)
    assert pp4["ttft_s"] < 1.1 * alone["ttft_s"]  # not (2 pp - 1) / pp = 1.75 x


def test_prefill_fills_and_drains_the_pipeline_with_m_micro_batches():
    # Batch 8 over pp = 4: m = 4 micro-batches of 2 sequences: TTFT = W(2) x (4 + 4 - 1) / 4 + 3 hops of
    # 2 x 512 tokens (GPipe, Huang et al. arXiv:1811.06965); decode: max(4, 4) / 4 = W_dec(2) + 3 hops of 2.
    q = Query(model="mixtral", hardware="dgx-h100", tp=2)
    w = predict(replace(q, devices=2, batch=2), DB)
    pp4 = predict(replace(q, pp=4, batch=8), DB)
    assert pp4["ttft_s"] == pytest.approx(w["ttft_s"] * 7 / 4 + _hop_s(2 * 512, pp4), rel=1e-9)
    assert pp4["tpot_s"] == pytest.approx(w["tpot_s"] + _hop_s(2, pp4), rel=1e-9)
    # Batch 2 over pp = 4: m = 2 micro-batches of 1: prefill (2 + 3) / 4 stage-group times; in decode each
    # micro-batch waits for the 4 stages, so a token every 4 stage times: W_dec(1), not 2 / 4 of it
    one = predict(replace(q, devices=2, batch=1), DB)
    two = predict(replace(q, pp=4, batch=2), DB)
    assert two["ttft_s"] == pytest.approx(one["ttft_s"] * 5 / 4 + _hop_s(512, two), rel=1e-9)
    assert two["tpot_s"] == pytest.approx(one["tpot_s"] + _hop_s(1, two), rel=1e-9)
    assert two["decode_tokens_per_s"] == pytest.approx(2 / two["tpot_s"])


# ------------------------------------------------------------------------------------- parity

PARITY = [  # (query, what it exercises); uniform routing where the test is the pipeline's parity alone
    (Query(model="mixtral", hardware="dgx-h100", devices=4, batch=16, routing="uniform"), "TP4"),
    (Query(model="qwen3-235b", hardware="dgx-h100", precision="fp8", tp=1, dp=8, ep=8, batch=64, routing="uniform"),
     "DP8 + EP8"),
    (Query(model="mixtral", hardware="dgx-h100", tp=2, pp=4, batch=3, engine="trt-llm", routing="uniform"),
     "PP4, a fitted engine"),
    (Query(model="deepseek-v3", hardware="ktransformers-testbed", precision="gguf-q4_k_m", offload="cpu",
           expert_cache=0, engine="ktransformers", batch=2, routing="uniform"), "CPU experts"),
    (Query(model="mixtral", hardware="workstation-rtx-4090", precision="int4", offload="gpu-fetch", batch=4,
           routing="uniform"), "gpu-fetch, as many experts as fit"),
    (Query(model=TRACE_MODEL, hardware="workstation-rtx-4090", offload="gpu-fetch", expert_cache=4,
           cache_policy="lfu", trace=TRACE, batch=4), "gpu-fetch with an LFU cache replayed over a trace"),
    (Query(model=TRACE_MODEL, hardware="rtx-4090", trace=TRACE, batch=16), "trace replay"),
    (Query(model="qwen3-235b", hardware="dgx-h100", precision="fp8", tp=1, dp=8, ep=8, batch=64),
     "DP8 + EP8, real routing (the prior)"),
]
# A replayed routing: the sweep prices the mean of MEAN_SAMPLES compositions, predict each of its 200 and takes
# the mean time; they differ by the sampling error of the mean and the step's curvature (measured <= 1%).
REPLAY_REL = 0.02
SWEPT = ("ttft_s", "tpot_s", "request_latency_s", "decode_tokens_per_s", "s_mbu", "s_mfu", "mbu", "mfu",
         "activated_experts_per_layer", "output_tokens_per_s_total")


def _sweep_row(q: Query) -> pd.Series:
    off = q.offload or G.NONE
    frame = pd.DataFrame({
        "model": [q.model], "hardware": [q.hardware], "devices": [q.devices or G.AUTO], "nodes": [q.nodes],
        "precision": [q.precision or "native"], "kv_precision": ["auto"], "engine": [q.engine], "tp": [q.tp or 0],
        "ep": [q.ep or 1], "pp": [q.pp], "dp": [q.dp or 0], "offload": [off],
        "expert_cache": [G.AUTO_CACHE if q.expert_cache is None else q.expert_cache], "expert_tier": [q.expert_tier],
        "cache_policy": [q.cache_policy], "trace": [q.trace or q.routing], "batch": [q.batch],
        "input_len": [q.input_len], "output_len": [q.output_len]})
    return evaluate(frame, DB).iloc[0]


@pytest.mark.parametrize("q, what", PARITY, ids=[w for _, w in PARITY])
def test_sweep_row_equals_predict(q, what):
    rep = predict(replace(q, check_memory=False), DB)
    row = _sweep_row(q)
    assert pd.isna(row["error"]), row["error"]
    rel = 1e-12 if q.routing == "uniform" and q.trace is None else REPLAY_REL
    for key in SWEPT:
        assert row[key] == pytest.approx(rep[key], rel=rel), key
    assert row["memory_per_device_bytes"] == pytest.approx(rep["memory_bytes"]["device"]["total"], rel=1e-12)
    cost = rep["cost_usd_per_million_tokens"]
    assert (pd.isna(row["usd_per_million_output_tokens"]) if cost is None
            else row["usd_per_million_output_tokens"] == pytest.approx(cost, rel=rel))
    if q.offload:
        assert row["experts_resident_per_layer"] == rep["offload"]["experts_resident_per_layer"]
        assert row["hit_rate_decode"] == pytest.approx(rep["offload"]["hit_rate_decode"], rel=1e-12)


@pytest.mark.parametrize("offload", ["cpu", "gpu-fetch"])
def test_provision_curve_with_offloaded_experts_equals_predict(offload):
    lay = Layout(hardware="workstation-rtx-4090", devices=1, nodes=1, tp=1, ep=1, precision="int4", offload=offload)
    grid = np.array([1, 2, 4, 8])
    c = curve(lay, Workload("mixtral", 512, 128, routing="uniform"), grid, DB)
    assert c.error is None
    for i, b in enumerate(grid):
        rep = predict(Query(model="mixtral", hardware="workstation-rtx-4090", precision="int4", offload=offload,
                            batch=int(b), check_memory=False, routing="uniform"), DB)
        assert c.tpot_s[i] == pytest.approx(rep["tpot_s"], rel=1e-12)
        assert c.ttft_batch_s[i] == pytest.approx(rep["ttft_s"], rel=1e-12)
        assert c.memory_bytes[i] == pytest.approx(rep["memory_bytes"]["device"]["total"], rel=1e-12)


def test_a_measured_prefill_case_equals_predict_on_the_probed_cpu():
    # The validation prices a measured prefill pass with the same pipeline predict uses: the olmoe-like shape at
    # batch 4 x 128 tokens on the probed CPU, hf-eager, fp32, uniform routing (the case's measured routing
    # removed), equals predict's TTFT for that config on that hardware.
    from capsim.validation.cases import cases_from_run, predict_case

    vdb = hwdb.load(ROOT / "validation" / "hardware")
    case = next(c for c in cases_from_run(ROOT / "validation/measured/cpu/olmoe-like.json")
                if c.phase == "prefill" and (c.batch, c.length) == (4, 128))
    target = resolve(Query(model="olmoe", hardware="local-cpu-1t"), vdb).target
    from capsim import engines

    pred = predict_case(replace(case, activated=None), target, engines.load("hf-eager"), "fp32")
    rep = predict(Query(model=str(ROOT / "validation/measured/shapes/olmoe-like.json"), hardware="local-cpu-1t",
                        engine="hf-eager", precision="fp32", kv_precision="fp32", compute_dtype="fp32", batch=4,
                        input_len=128, output_len=1, check_memory=False, routing="uniform"), vdb)
    assert pred == pytest.approx(rep["ttft_s"], rel=1e-12)  # the case prices uniform routing (activated=None)


def test_a_published_row_is_predict():
    from capsim.validation.published import load_rows, predict_row

    rows = load_rows(ROOT / "validation/published/published_measurements.csv",
                     ROOT / "validation/published/scenarios.yaml")
    row = next(r for r in rows if r.id == "PM045")
    sc = {k: v for k, v in row.scenario.items() if k != "assumptions"}
    assert predict_row(row, DB) == predict(Query(**sc), DB)["output_tokens_per_s_total"]


def test_capacity_search_equals_plain_bisection():
    # The interpolated search (capsim.capacity) against a plain binary search over [1, 2^24], for models with
    # full attention (GQA, MLA) and with windowed layers (gpt-oss: the KV cache bends), with and without stages.
    from capsim import capacity

    def bisect(ok):
        if not ok(1):
            return 0
        if ok(capacity.SEARCH_LIMIT):
            return None
        lo, hi = 1, capacity.SEARCH_LIMIT
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return lo

    for model, hw, kw in (("mixtral", "dgx-h100", {}), ("deepseek-v3", "dgx-h200", {}),
                          ("gpt-oss-120b", "dgx-h100", {"tp": 2, "pp": 2}), ("qwen3-30b", "dgx-h100", {"tp": 1})):
        sc = resolve(Query(model=model, hardware=hw, batch=33, input_len=2048, output_len=512, **kw), DB)
        cap = float(sc.target.memory_capacity_bytes)
        lim = capacity.limits(sc)
        assert lim["max_batch"] == bisect(
            lambda b, sc=sc, cap=cap: float(capacity.per_device(sc, b, 2048, 512).total) <= cap), model
        assert lim["max_input_len"] == bisect(
            lambda i, sc=sc, cap=cap: float(capacity.per_device(sc, 33, i, 512).total) <= cap), model
