"""The README's decode S-MBU against batch (capsim predict with an engine, the ideal bound beside it), and its
shape checked against a published batch sweep: S-MBU implied by published TPOTs.

S-MBU = bytes a decode step must read / (TPOT x peak bandwidth), so for the same scenario the S-MBU a measured
TPOT implies is capsim's S-MBU x capsim's TPOT / the measured TPOT (the bytes are the model's and the routing's,
not the engine's). The sweep: SemiAnalysis InferenceX issue 870, DeepSeek-R1 FP8 on 8x H200, SGLang v0.5.7,
TP8, 1k/1k, mean TPOT at concurrency 8, 16, 32, 64 (validation/published/gpu/sglang.csv rows GS022, GS024,
GS026, GS028, verbatim with the URL there).

    .venv/bin/python scripts/smbu_vs_batch.py      # prints two Markdown tables
"""

from __future__ import annotations

from pathlib import Path

from capsim.hardware import db as hwdb
from capsim.predict import Query, predict
from capsim.validation.gpu import load_corpus

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 8, 32, 128, 256)
CASES = (("Mixtral-8x7B, 2x H100 (TP2)", dict(model="mixtral-8x7b", hardware="h100-sxm5-80gb", devices=2)),
         ("Qwen3-30B-A3B, 1x H100", dict(model="qwen3-30b", hardware="h100-sxm5-80gb", devices=1)))
SWEEP = ("GS022", "GS024", "GS026", "GS028")


def engine_table(db, engine: str = "vllm") -> str:
    lines = ["| model, hardware | " + " | ".join(f"batch {b}" if i == 0 else str(b) for i, b in enumerate(BATCHES))
             + " |", "|---|" + "---|" * len(BATCHES)]
    for name, q in CASES:
        cells = []
        for b in BATCHES:
            r = predict(Query(**q, engine=engine, batch=b, check_memory=False), db)  # vLLM chunks the prefill
            cells.append(f"{r['s_mbu']:.2f} ({r['ideal_bound']['s_mbu']:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(db) -> str:
    rows = {r.id: r for r in load_corpus(REPO / "validation")}
    lines = ["| concurrency | published TPOT (ms) | S-MBU implied by it | capsim sglang S-MBU | capsim TPOT (ms) |",
             "|---|---|---|---|---|"]
    for rid in SWEEP:
        row = rows[rid]
        sc = {k: v for k, v in row.scenario.items() if k != "assumptions"}
        r = predict(Query(**sc, check_memory=False), db)
        implied = r["s_mbu"] * r["tpot_s"] / row.value_si
        lines.append(f"| {sc['batch']} | {row.value:g} | {implied:.3f} | {r['s_mbu']:.3f} | {r['tpot_s'] * 1e3:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    db = hwdb.load()
    print(engine_table(db))
    print()
    print(sweep_table(db))
