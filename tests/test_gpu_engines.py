"""GPU serving engines: the corpus loads, the cross-validation bookkeeping is exact, a profile's domain is
enforced, and predict prints the ideal bound beside the forecast."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from badinput import refused

from capsim import api, engines
from capsim.validation import gpu
from capsim.validation.published import PublishedRow

REPO = Path(__file__).resolve().parents[1]


def _row(rid: str, source: str, batch: int = 8, nodes: int = 1) -> PublishedRow:
    return PublishedRow(id=rid, source=source, metric="tpot_mean", value_si=0.01, value=10.0, unit="ms",
                        engine_text="vLLM", scenario={"engine": "vllm", "batch": batch, "nodes": nodes},
                        unsupported=None)


def test_corpus_loads_with_unique_ids_and_a_source_per_row():
    rows = gpu.load_corpus(REPO / "validation")
    # the floor: >= 120 published rows, >= 10 models and >= 6 GPU kinds among those capsim expresses
    assert len(rows) >= 120 and len({r.id for r in rows}) == len(rows)
    expressed = [r.scenario for r in rows if r.scenario is not None]
    assert len({s["model"] for s in expressed}) >= 10
    gpus = ("a100", "h100", "gh200", "h200", "b200", "l40s", "mi300x", "rtx-pro-6000")  # gh200 before h200
    kinds = {next((g for g in gpus if g in s["hardware"]), s["hardware"]) for s in expressed}
    assert len(kinds) >= 6, kinds
    assert all(r.source.strip() and "http" in r.source for r in rows)
    engines_used = {r.scenario["engine"] for r in rows if r.scenario is not None}
    assert engines_used <= set(gpu.ENGINES)


def test_source_key_groups_rows_of_one_page():
    a = _row("A", "https://github.com/vllm-project/vllm/pull/17530 (table 2, row 3)")
    b = _row("B", "https://github.com/vllm-project/vllm/pull/17530#issuecomment-1 comment")
    c = _row("C", "https://lmsys.org/blog/2025-05-05-large-scale-ep/?x=1 Table 1")
    assert gpu.source_key(a) == gpu.source_key(b) == "https://github.com/vllm-project/vllm/pull/17530"
    assert gpu.source_key(c) == "https://lmsys.org/blog/2025-05-05-large-scale-ep/"


def test_regimes():
    assert gpu.regime(_row("a", "u", batch=1)) == "latency-bound"
    assert gpu.regime(_row("b", "u", batch=4)) == "latency-bound"  # LATENCY_BATCH = 4
    assert gpu.regime(_row("c", "u", batch=64)) == "throughput-bound"
    assert gpu.regime(_row("d", "u", batch=64, nodes=2)) == "multi-node"


def test_summary_arithmetic():
    rows = [_row("a", "u", 1), _row("b", "u", 64), _row("c", "u", 64)]
    s = gpu.summary({"a": 0.1, "b": -0.5, "c": 0.2}, rows)
    # all: |errors| 0.1, 0.5, 0.2 -> median 0.2; within 25%: 2 of 3; worst by log ratio: -50% (a factor of 2)
    assert s["all"]["median_abs"] == pytest.approx(0.2) and s["all"]["within_25"] == pytest.approx(2 / 3)
    assert s["all"]["worst_row"] == "b" and s["all"]["worst_factor"] == pytest.approx(2.0)
    assert s["throughput-bound"]["rows"] == 2 and s["latency-bound"]["median_abs"] == pytest.approx(0.1)


@pytest.mark.parametrize("engine, needle", [("hf-eager", "a CPU engine"), ("vllm-cpu", "a CPU engine"), ("moe-infinity", "an expert-offload engine"),
                                            ("ktransformers", "an expert-offload engine")])
def test_cpu_and_offload_profiles_are_refused_on_a_gpu_without_offload(engine, needle, tmp_path):
    line = refused(["predict", "-m", "mixtral", "-H", "dgx-h100", "--devices", "2", "--engine", engine], tmp_path,
                   f"--engine {engine}")
    assert needle in line


def test_a_profile_outside_its_fitted_devices_warns():
    rep = api.predict("mixtral", "dgx-h100", devices=2, engine="llama.cpp", routing="uniform")
    assert any("llama.cpp" in n and "not on an accelerator" in n for n in rep["scenario"]["notes"])
    assert engines.load("llama.cpp").domain_fitted_devices == ("cpu",)


def test_ideal_bound_is_the_roofline_of_the_same_scenario():
    rep = api.predict("mixtral", "dgx-h100", devices=2, batch=8, engine="trt-llm", routing="uniform")
    ideal = api.predict("mixtral", "dgx-h100", devices=2, batch=8, engine="roofline", routing="uniform")
    assert rep["ideal_bound"]["engine"] == "roofline" and ideal["ideal_bound"] is None
    for k in ("ttft_s", "tpot_s", "output_tokens_per_s_total"):
        assert rep["ideal_bound"][k] == pytest.approx(ideal[k], rel=1e-12)
    assert rep["tpot_s"] >= rep["ideal_bound"]["tpot_s"] and math.isfinite(rep["tpot_s"])


def test_the_committed_fit_is_the_corpus_and_its_report():
    """CI re-checks the committed fit: each GPU profile was fitted to exactly the corpus's supported rows of its
    engine, and predicting them now gives the in-sample median error validation/GPU.md states."""
    import re

    import numpy as np

    from capsim.hardware import db as hwdb
    from capsim.validation.published import predict_row

    rows = [r for r in gpu.load_corpus(REPO / "validation") if r.scenario is not None]
    report = (REPO / "validation" / "GPU.md").read_text()
    db = hwdb.load()
    for engine in gpu.ENGINES:
        mine = [r for r in rows if r.scenario["engine"] == engine]
        prof = engines.load(engine)
        assert set(prof.fitted_cases) == {r.id for r in mine}, f"{engine}: refit with capsim validate --gpu --fit"
        med = float(np.median([abs(predict_row(r, db, prof) / r.value_si - 1) for r in mine]))
        stated = re.search(rf"^\| {re.escape(engine)} \| all \| {len(mine)} \| source \| [0-9.]+% \| [0-9]+% \| .* \| "
                           rf"([0-9.]+)% \|$", report, re.M)
        assert stated, f"{engine}: no 'all' row in validation/GPU.md"
        assert med * 100 == pytest.approx(float(stated.group(1)), abs=0.05)
