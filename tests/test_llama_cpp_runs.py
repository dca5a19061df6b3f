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
    # S_TG = B x TG / T_TG: 2 x 8 / 0.063 = 254 (the table rounds T_TG to ms)
    assert 2 * 8 / 0.063 == pytest.approx(252.08, rel=0.01)


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
