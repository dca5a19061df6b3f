"""The llama.cpp runner (capsim/measure/llama_cpp.py; run by `capsim measure --engine llama.cpp`) and its committed
campaign: the batched-bench table is parsed exactly, the runner stays off the prediction path, the run files carry
the machine, the llama.cpp commit and every command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import capsim
from capsim.measure import llama_cpp

REPO = Path(__file__).resolve().parents[1]
RUNS = sorted((REPO / "validation" / "measured" / "llama.cpp").glob("*.json"))

# llama-batched-bench's table as it printed it on this machine (olmoe-like, Q4_K_M, 2 threads)
TABLE = """
|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|    64 |      8 |    1 |     72 |    0.043 |  1500.16 |    0.034 |   233.12 |    0.077 |   935.32 |
|    64 |      8 |    2 |    144 |    0.083 |  1535.40 |    0.063 |   252.08 |    0.147 |   980.68 |
"""


def test_batched_bench_rows_are_parsed_exactly():
    rows = [m.groups() for m in (llama_cpp.ROW.match(line.strip()) for line in TABLE.splitlines()) if m]
    assert len(rows) == 2  # the header and the rule are not rows
    assert rows[1] == ("64", "8", "2", "144", "0.083", "1535.40", "0.063", "252.08", "0.147", "980.68")
    # the parsed columns keep their meaning: S_TG = B x TG / T_TG, 2 x 8 / 0.063 = 254 (T_TG rounded to ms)
    pp, tg, b, n_kv, t_pp, s_pp, t_tg, s_tg = (float(x) for x in rows[1][:8])
    assert b * tg / t_tg == pytest.approx(s_tg, rel=0.01) and b * pp / t_pp == pytest.approx(s_pp, rel=0.01)
    assert n_kv == b * (pp + tg)


def test_runner_not_imported_by_capsim():
    pkg = Path(capsim.__file__).parent
    for src in pkg.rglob("*.py"):
        if src.name not in ("llama_cpp.py",):
            text = src.read_text(encoding="utf-8")
            assert "from capsim.measure.llama_cpp" not in text and "measure import llama_cpp" not in text, src


@pytest.mark.skipif(not RUNS, reason="no committed llama.cpp campaign")
@pytest.mark.parametrize("path", RUNS, ids=[p.stem for p in RUNS])
def test_committed_runs_are_complete(path):
    run = json.loads(path.read_text())
    assert run["format"] == llama_cpp.FORMAT and run["engine"] == "llama.cpp"
    assert run["machine"]["cpu_model"] and "avx2" in run["machine"]["isa"]
    assert run["llama_cpp_commit"] and run["commands"] and all(c["rc"] == 0 for c in run["commands"])
    for q, res in run["quants"].items():
        prompts = {t["n_prompt"] for t in res["bench"] if t["n_gen"] == 0}
        assert prompts == {128, 512}, q  # llama-bench: pp128, pp512 at batch 1
        assert any(t["n_gen"] == 32 and t["n_prompt"] == 0 for t in res["bench"]), q  # tg32
        assert [int(r["b"]) for r in res["batched"]] == [1, 2, 4, 8, 16], q
        for r in res["batched"]:
            assert r["s_tg_tps"] > 0 and r["s_pp_tps"] > 0


@pytest.mark.skipif(not RUNS, reason="no committed llama.cpp campaign")
def test_cases_are_the_campaign_points():
    from capsim.validation import llama_cpp as v

    cases = v.load_cases(REPO / "validation")
    # per shape and quantisation: pp128, pp512 (prefill), tg32 (decode), batched B = 1, 2, 4, 8, 16:
    # 3 shapes x 2 quantisations x (2 + 1 + 5) = 48
    assert len(cases) == 48
    c = next(c for c in cases if c.id == "olmoe-like/Q4_K_M/batched/b4/128")
    # 4 sequences at the mean context of 32 steps after 128 prompt tokens: 128 + 16 cached, 145 keys each
    assert (c.work.tokens, c.work.seqs, c.work.kv_read_tokens, c.work.pairs) == (4, 4, 4 * 144.0, 4 * 145.0)
    run = json.loads((REPO / "validation" / "measured" / "llama.cpp" / "olmoe-like.json").read_text())
    row = next(r for r in run["quants"]["Q4_K_M"]["batched"] if r["b"] == 4)
    assert c.measured_s == pytest.approx(row["t_tg_s"] / 32)  # one step of the 32 decoded together
    pre = next(c for c in cases if c.id == "olmoe-like/Q4_K_M/prefill/b1/512")
    assert pre.work.pairs == 512 * 513 / 2  # causal attention over one 512-token prompt


@pytest.mark.skipif(not RUNS, reason="no committed llama.cpp campaign")
def test_the_committed_report_is_the_shipped_profile_on_the_campaign():
    import re

    import numpy as np

    from capsim import engines
    from capsim.hardware import db as hwdb
    from capsim.hardware.target import resolve_target
    from capsim.validation import llama_cpp as v

    target = resolve_target(hwdb.load(REPO / "validation" / v.HARDWARE_DB), v.HARDWARE)
    cases = v.load_cases(REPO / "validation")
    prof = engines.load(v.ENGINE)
    med = float(np.median([abs(v.predict(c, target, prof) / c.measured_s - 1) for c in cases]))
    stated = re.search(r"^\| all \| 48 \| ([0-9.]+)% \|", (REPO / "validation" / "LLAMA_CPP.md").read_text(), re.M)
    assert stated, "no 'all' row in validation/LLAMA_CPP.md: capsim validate --llama-cpp --report validation/LLAMA_CPP.md"
    assert med * 100 == pytest.approx(float(stated.group(1)), abs=0.05)
