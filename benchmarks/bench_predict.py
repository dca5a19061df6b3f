"""How fast is one capsim prediction, beside llm-analysis measured in the same run?

Rows (the speed targets of the request-pipeline issue, and the earlier predict issue's):

1. cold ``capsim predict``: the console script as a fresh process, ``--runs`` times after one untimed run
   (which warms the OS file cache and capsim's scenario cache; both are what a user's second command finds);
   beside it the cold ``llm-analysis`` CLI (``python -m llm_analysis.analysis infer``) on the same scenario,
   Mixtral-8x7B bf16 on 2 H100s in TP2, prompt 512, 128 output tokens. Target: capsim faster;
2. no torch / transformers imported by predict and the CLI;
3. in-process single prediction: ``predict(Query(mixtral, dgx-h100, devices=2, batch=b))`` with b cycling over
   1..64 (so no per-request result can be reused), median of ``--calls``; beside it llm-analysis's ``infer``
   on the same scenario, median of as many calls in its own process. Target: at most 2x llm-analysis's time;
4. traced predict at batch 256: Qwen3-30B-A3B on one H200 replaying a 1,000,000-token synthetic trace (200
   sequences of 250 prompt + 250 decode tokens from the zipf generator, repeated 10 times as 2,000 sequences),
   in a fresh process with an empty capsim cache (the trace verified and its per-sequence tables built), in a
   fresh process with them kept, and in process once the trace is open (median of 9 calls at batch 248..256).
   Target for the last: under 0.1 s;
5. vectorised scenarios per second through the request pipeline (``simulate`` + ``request_metrics`` +
   ``capacity.per_device``) over ``--scenarios`` random scenarios on real devices; a few rows are checked
   against ``predict``. Target: at least 100,000/s.

llm-analysis 0.2.2 runs in ``benchmarks/.venv-llm-analysis`` (created on the first run, gitignored), with a
Mixtral config file written for it: it has no Mixtral entry and its ModelConfig takes the FFN width as a
ratio (14,336 / 4,096 = 3.5). Usage: ``python benchmarks/bench_predict.py [--runs 7] [--calls 300]
[--scenarios 1000000] [--no-peer] [--json] [--strict]``; exit 1 with ``--strict`` when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import peer_venv

from capsim.cli.table import render
from capsim.hardware import db as hwdb
from capsim.predict import Query, predict
from capsim.scenario import from_parts, resolve

HERE = Path(__file__).resolve().parent
LLMA_SPEC = "llm-analysis==0.2.2"
LLMA_VENV = HERE / ".venv-llm-analysis"
RATIO_TARGET = 2.0  # in-process prediction: at most this times llm-analysis's
TRACED_TARGET_S = 0.1
SCENARIOS_PER_S_TARGET = 100_000
FORBIDDEN_MODULES = ("torch", "transformers")
# Mixtral-8x7B-v0.1 config.json: 32 layers, 32 heads, 8 KV heads, hidden 4096, FFN 14336, 8 experts top-2
LLMA_MIXTRAL = {"name": "mixtral-8x7b", "num_layers": 32, "n_head": 32, "hidden_dim": 4096, "vocab_size": 32000,
                "max_seq_len": 32768, "num_key_value_heads": 8, "expansion_ratio": 3.5, "model_type": "mixtral",
                "moe_num_experts": 8, "moe_top_k": 2}
CAPSIM_CASE = ["-m", "mixtral", "-H", "dgx-h100", "--devices", "2"]
TRACE_SHAPE = dict(num_experts=128, top_k=8, moe_layers=48, sequences=200, prompt_len=250, decode_len=250)
TRACE_REPEATS = 10

LLMA_SERVER = """
import json, sys, time, statistics
t0 = time.perf_counter()
from llm_analysis.analysis import infer
imp = time.perf_counter() - t0
kw = dict(model_name=sys.argv[1], gpu_name="h100-sxm-80gb", tp_size=2, batch_size_per_gpu=1, seq_len=512,
          num_tokens_to_generate=128, log_level="ERROR")
r = infer(**kw)
print(json.dumps({"import_s": imp, "prefill_s": r["prefill_latency"],
                  "decode_s_per_token": r["total_decode_latency"] / 128}), flush=True)
for line in sys.stdin:  # a number of calls: time them, answer their median
    ts = []
    for i in range(int(line)):
        t = time.perf_counter(); infer(**dict(kw, batch_size_per_gpu=1 + i % 64)); ts.append(time.perf_counter() - t)
    print(json.dumps(statistics.median(ts)), flush=True)
"""
ROUNDS = 5  # in-process comparison: capsim and llm-analysis timed in turn, so that load on the machine hits both


def row(name: str, result: str, target: str = "-", passed: bool | None = None, **values) -> dict:
    return {"benchmark": name, "result": result, "target": target, "passed": passed, **values}


def capsim_command() -> list[str]:
    script = Path(sys.executable).with_name("capsim")
    found = str(script) if script.exists() else shutil.which("capsim")
    return [found] if found else [sys.executable, "-m", "capsim.cli.main"]


def _cold(cmd: list[str], runs: int, env=None) -> list[float]:
    subprocess.run(cmd, capture_output=True, check=True, env=env)  # untimed: OS file cache, capsim's cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, env=env)
        times.append(time.perf_counter() - t0)
    return times


def _ms(times) -> str:
    return f"median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}, {len(times)} runs)"


def cold_rows(runs: int, peer: Path | None, cfg: Path) -> list[dict]:
    ours = _cold(capsim_command() + ["predict", *CAPSIM_CASE], runs)
    rows = [row(f"cold `capsim predict {' '.join(CAPSIM_CASE)}`", _ms(ours), seconds=ours)]
    if peer is None:
        return rows + [row("cold llm-analysis CLI", "not run")]
    theirs = _cold([str(peer / "bin" / "python"), "-m", "llm_analysis.analysis", "infer", "--model_name", str(cfg),
                    "--gpu_name", "h100-sxm-80gb", "--tp_size", "2", "--log_level", "ERROR"], runs)
    ratio = statistics.median(ours) / statistics.median(theirs)
    return rows + [row("cold `python -m llm_analysis.analysis infer` (same scenario)", _ms(theirs), seconds=theirs),
                   row("cold CLI, capsim / llm-analysis", f"{ratio:.2f}x", "< 1x", ratio < 1, ratio=ratio)]


def no_torch() -> dict:
    code = ("import contextlib, io, json, sys\nfrom capsim.hardware.db import load\nfrom capsim.predict import Query, "
            "predict\npredict(Query(model='mixtral', hardware='dgx-h100'), load())\nsys.argv = ['capsim', 'predict', "
            "'-m', 'deepseek-v3', '-H', 'dgx-h200', '--json']\nfrom capsim.cli.main import main\nwith "
            "contextlib.redirect_stdout(io.StringIO()):\n    try:\n        main()\n    except SystemExit as e:\n"
            f"        assert not e.code, e.code\nprint(json.dumps([m for m in {FORBIDDEN_MODULES!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    return row("torch / transformers imported by predict + CLI", ", ".join(loaded) or "neither", "neither",
               not loaded, loaded=loaded)


def _capsim_block(db, base: Query, calls: int) -> float:
    times = []
    for i in range(calls):
        q = replace(base, batch=1 + i % 64)
        t0 = time.perf_counter()
        predict(q, db)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def in_process_rows(db, calls: int, peer: Path | None, cfg: Path) -> list[dict]:
    base = Query(model="mixtral", hardware="dgx-h100", devices=2)
    for b in range(1, 65):
        predict(replace(base, batch=b), db)  # warm: the scenario resolved once, as in any loop of predictions
    per = max(1, calls // ROUNDS)
    if peer is None:
        ours = statistics.median(_capsim_block(db, base, per) for _ in range(ROUNDS))
        return [row("in-process predict(Query(mixtral, dgx-h100, devices=2, batch=1..64))",
                    f"median {1e3 * ours:.3f} ms ({ROUNDS} x {per} calls)", seconds=ours)]
    server = subprocess.Popen([str(peer / "bin" / "python"), "-c", LLMA_SERVER, str(cfg)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        info = json.loads(server.stdout.readline())
        ours, theirs = [], []
        for _ in range(ROUNDS):  # in turn: capsim, then llm-analysis, the same number of calls
            ours.append(_capsim_block(db, base, per))
            server.stdin.write(f"{per}\n")
            server.stdin.flush()
            theirs.append(json.loads(server.stdout.readline()))
    finally:
        server.kill()
    o, t = statistics.median(ours), statistics.median(theirs)
    ratio = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
    return [row("in-process predict(Query(mixtral, dgx-h100, devices=2, batch=1..64))",
                f"median {1e3 * o:.3f} ms ({ROUNDS} rounds x {per} calls)", seconds=o, rounds=ours),
            row("in-process llm-analysis infer(mixtral, h100, tp 2, batch 1..64), in turn with capsim",
                f"median {1e3 * t:.3f} ms ({ROUNDS} rounds x {per} calls; import {info['import_s']:.2f} s not counted)",
                seconds=t, rounds=theirs, peer=info),
            row("in-process prediction, capsim / llm-analysis (median of the rounds' ratios)", f"{ratio:.2f}x",
                f"<= {RATIO_TARGET:g}x", ratio <= RATIO_TARGET, ratio=ratio)]


TRACED_RUNNER = """
import json, sys, time
from capsim.hardware.db import load
from capsim.predict import Query, predict
db, path = load(), sys.argv[1]
def one(b):
    q = Query(model="qwen3-30b", hardware="h200-sxm-141gb", batch=b, trace=path, trace_any_model=True)
    t = time.perf_counter(); predict(q, db); return time.perf_counter() - t
first = one(256)
print(json.dumps({"first_s": first, "again_s": [one(b) for b in range(256, 247, -1)]}))
"""


def traced_rows(tmp: Path) -> list[dict]:
    from capsim.traces.format import write_trace
    from capsim.traces.synthetic import synthetic_trace

    t0 = time.perf_counter()
    arrays, meta = synthetic_trace("zipf", seed=0, model_id="Qwen/Qwen3-30B-A3B", **TRACE_SHAPE)
    n = TRACE_SHAPE["sequences"]
    tiled = {k: np.concatenate([v] * TRACE_REPEATS) for k, v in arrays.items()}
    tiled["sequence"] = np.concatenate([arrays["sequence"] + r * n for r in range(TRACE_REPEATS)]).astype(np.uint32)
    path = write_trace(tmp / "trace", tiled, meta)
    made = time.perf_counter() - t0
    env = dict(os.environ, CAPSIM_CACHE_DIR=str(tmp / "cache"))
    runs = [json.loads(subprocess.run([sys.executable, "-c", TRACED_RUNNER, str(path)], capture_output=True, text=True,
                                      check=True, env=env).stdout.strip().splitlines()[-1]) for _ in range(2)]
    again = statistics.median(runs[1]["again_s"])
    what = f"{len(tiled['sequence']):,}-token trace (made in {made:.0f} s)"
    return [row(f"traced predict, batch 256, {what}: new process, empty cache", f"{runs[0]['first_s']:.3f} s",
                seconds=runs[0]["first_s"]),
            row("traced predict, batch 256: new process, trace tables kept", f"{runs[1]['first_s']:.3f} s",
                seconds=runs[1]["first_s"]),
            row("traced predict, batch 248..256, trace open in the process", f"median {again:.3f} s (9 calls)",
                f"< {TRACED_TARGET_S} s", again < TRACED_TARGET_S, seconds=again)]


def vectorised(db, count: int) -> dict:
    """``count`` random scenarios (Mixtral-8x7B, TP = n, on 5 devices x 4 counts) through the request pipeline as
    one call: each row's device figures are arrays (capsim.scenario.from_parts)."""
    from capsim.capacity import per_device
    from capsim.sim.metrics import request_metrics
    from capsim.sim.request import simulate

    combos = [resolve(Query(model="mixtral", hardware=d, devices=n, check_memory=False, routing="uniform"), db)
              for d in ("h100", "h200-sxm-141gb", "a100-sxm4-80gb", "mi300x", "rtx-4090") for n in (1, 2, 4, 8)]
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(combos), count)

    def col(get):
        return np.array([float(get(sc)) for sc in combos])[pick]

    sc = from_parts(combos[0].shape, profile=combos[0].profile, kv_bytes=combos[0].kv_bytes,
                    peak_flop_per_s={k: col(lambda s, k=k: s.peaks[k]) for k in ("matmul", "attention", "vector")},
                    bandwidth_bytes_per_s=col(lambda s: s.target.memory_bandwidth_bytes_per_s),
                    ring_bandwidth_bytes_per_s=col(lambda s: s.target.ring_bandwidth_bytes_per_s),
                    alltoall_bandwidth_bytes_per_s=col(lambda s: s.target.alltoall_bandwidth_bytes_per_s),
                    ring_latency_s=col(lambda s: s.target.ring_latency_s), capacity_bytes=col(
                        lambda s: s.target.memory_capacity_bytes), tp=col(lambda s: s.tp), n=col(lambda s: s.n))
    b, i, o = rng.integers(1, 257, count), rng.integers(128, 8193, count), rng.integers(16, 2049, count)

    def run():
        m = request_metrics(sc, simulate(sc, b, i, o), b, i, o)
        return m, per_device(sc, b, i, o).total

    run()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        m, mem = run()
        best = min(best, time.perf_counter() - t0)
    for k in ("ttft_s", "tpot_s", "s_mbu", "s_mfu"):
        assert np.all(np.isfinite(m[k])) and np.all(m[k] > 0), k
    for j in range(5):  # the arrays agree with one-by-one predictions
        one = predict(replace(combos[pick[j]].query, batch=int(b[j]), input_len=int(i[j]), output_len=int(o[j])), db)
        assert np.allclose([m["ttft_s"][j], m["tpot_s"][j], mem[j]],
                           [one["ttft_s"], one["tpot_s"], one["memory_bytes"]["device"]["total"]], rtol=1e-9), j
    rate = count / best
    return row("vectorised scenarios/s through the request pipeline, Mixtral-8x7B, TP=n",
               f"{rate:,.0f}/s ({count:,} in {best:.3f} s, best of 3)", f">= {SCENARIOS_PER_S_TARGET:,}/s",
               rate >= SCENARIOS_PER_S_TARGET, scenarios_per_s=rate)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="cold runs per command (default 7)")
    ap.add_argument("--calls", type=int, default=300, help="in-process calls (default 300)")
    ap.add_argument("--scenarios", type=int, default=1_000_000, help="vectorised scenarios (default 1,000,000)")
    ap.add_argument("--no-peer", action="store_true", help="do not install or run llm-analysis")
    ap.add_argument("--no-trace", action="store_true", help="skip the traced rows (the trace takes ~15 s to make)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    a = ap.parse_args()
    db = hwdb.load()
    with tempfile.TemporaryDirectory(prefix="capsim-bench-") as tmp:
        tmp = Path(tmp)
        cfg = tmp / "mixtral-8x7b.json"
        cfg.write_text(json.dumps(LLMA_MIXTRAL))
        peer, rows = None, []
        if not a.no_peer:
            try:
                note = peer_venv.ensure(LLMA_VENV, LLMA_SPEC)
                peer = LLMA_VENV
                rows.append(row(f"{LLMA_SPEC} environment", note))
            except (RuntimeError, OSError, subprocess.SubprocessError) as err:
                rows.append(row(LLMA_SPEC, f"NOT RUN: {err}"))
        rows += cold_rows(a.runs, peer, cfg) + [no_torch()] + in_process_rows(db, a.calls, peer, cfg)
        if not a.no_trace:
            rows += traced_rows(tmp)
        rows.append(vectorised(db, a.scenarios))
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"capsim benchmark: Python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} CPUs")
        verdict = {True: "pass", False: "FAIL", None: "info"}
        print(render(["benchmark", "result", "target", "pass/fail"],
                     [[r["benchmark"], r["result"], r["target"], verdict[r["passed"]]] for r in rows]))
    return int(a.strict and any(r["passed"] is False for r in rows))


if __name__ == "__main__":
    sys.exit(main())
