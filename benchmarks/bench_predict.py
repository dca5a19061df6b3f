"""How fast is capsim? The speed checks of the issue's acceptance item, in one command.

The issue asks for "cold ``capsim predict`` wall time (median of several runs;
target under 0.5 s on this 2-core machine, no torch in ``sys.modules``), and
in-process vectorised scenarios per second (target at least 100,000)". This script
measures exactly that, plus the in-process latency of one prediction:

1. cold ``capsim predict``: the installed console script run as a fresh process
   ``--runs`` times (after one untimed run that warms the OS file cache);
2. no torch / transformers: a fresh process runs ``capsim.predict.predict`` and the
   ``capsim predict`` command, then lists which of them ended up in ``sys.modules``;
3. vectorised scenarios per second: ``simulate_request`` + ``memory_use`` +
   ``utilisation`` (both phases) over ``--scenarios`` random scenarios on real devices
   of the hardware database, best of 3 after a warm-up; outputs must be finite and > 0;
4. one ``predict(Query(...), db)`` call in process (database loaded once).

Usage: ``python benchmarks/bench_predict.py [--runs 7] [--scenarios 1000000] [--json] [--strict]``.
Exit code 0, or 1 with ``--strict`` when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from capsim.cli.table import render
from capsim.collectives import link_latency_s
from capsim.hardware import db as hwdb
from capsim.predict import Query, predict, resolve
from capsim.sim.memory import memory_use
from capsim.sim.metrics import utilisation
from capsim.sim.request import simulate_request

# Targets, from the acceptance item (see the module docstring).
COLD_PREDICT_TARGET_S = 0.5
SCENARIOS_PER_S_TARGET = 100_000
FORBIDDEN_MODULES = ("torch", "transformers")

COLD_CASES = (["-m", "mixtral", "-H", "dgx-h100"],
              ["-m", "deepseek-v3", "-H", "dgx-h200", "--batch", "16", "--json"])
DEVICES = ("h100", "h200-sxm-141gb", "a100-sxm4-80gb", "mi300x", "rtx-4090")
DEVICE_COUNTS = (1, 2, 4, 8)  # n = tp
# (model, label, expert parallelism): one EP mode per call, because step_costs refuses a call
# that mixes ep=1 and ep=n rows when n > 1 (see benchmarks/README.md).
VECTOR_MODELS = (("mixtral", "Mixtral-8x7B, TP=n", False), ("deepseek-v3", "DeepSeek-V3, TP=EP=n", True))
SPOT_CHECKS = 5  # scenarios recomputed one by one with predict() and compared

NO_TORCH_CODE = f"""
import contextlib, io, json, sys
from capsim.hardware.db import load
from capsim.predict import Query, predict
predict(Query(model="mixtral", hardware="dgx-h100"), load())
sys.argv = ["capsim", "predict", "-m", "deepseek-v3", "-H", "dgx-h200", "--json"]
from capsim.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main()
    except SystemExit as e:
        assert not e.code, e.code
print(json.dumps([m for m in {FORBIDDEN_MODULES!r} if m in sys.modules]))
"""


def row(name: str, result: str, target: str = "-", passed: bool | None = None, **values) -> dict:
    return {"benchmark": name, "result": result, "target": target, "passed": passed, **values}


def capsim_command() -> list[str]:
    """The console script beside this interpreter, else on PATH, else ``python -m capsim.cli.main``."""
    script = Path(sys.executable).with_name("capsim")
    found = str(script) if script.exists() else shutil.which("capsim")
    return [found] if found else [sys.executable, "-m", "capsim.cli.main"]


def cold_predict(args: list[str], runs: int) -> dict:
    cmd = capsim_command() + ["predict", *args]
    subprocess.run(cmd, capture_output=True, check=True)  # untimed: warms the OS file cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return row(f"cold `capsim predict {' '.join(args)}`",
               f"median {med:.3f} s (min {min(times):.3f}, max {max(times):.3f}, {runs} runs)",
               f"< {COLD_PREDICT_TARGET_S} s", med < COLD_PREDICT_TARGET_S, seconds=times)


def no_torch() -> dict:
    out = subprocess.run([sys.executable, "-c", NO_TORCH_CODE], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    return row("torch / transformers imported by predict + CLI", ", ".join(loaded) or "neither",
               "neither", not loaded, loaded=loaded)


def scenarios(model: str, use_ep: bool, count: int, db) -> tuple[dict, dict, list[Query]]:
    """``count`` random scenarios on the devices x counts of DEVICES x DEVICE_COUNTS (fixed seed)."""
    queries = [Query(model=model, hardware=d, devices=n, ep=n if use_ep else 1, check_memory=False)
               for d in DEVICES for n in DEVICE_COUNTS]
    combos = [resolve(q, db) for q in queries]
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(combos), count)

    def col(get) -> np.ndarray:
        return np.array([float(get(r)) for r in combos])[pick]

    t = lambda r: r["target"]  # noqa: E731
    kw = dict(batch=rng.integers(1, 257, count), input_len=rng.integers(128, 8193, count),
              output_len=rng.integers(16, 2049, count), kv_bytes_per_element=combos[0]["kv_bytes"],
              tp=col(lambda r: r["tp"]), ep=col(lambda r: r["ep"]), n=col(lambda r: t(r).n_devices))
    hw = dict(peak_flop_per_s={k: col(lambda r, k=k: r["peaks"][k]) for k in ("matmul", "attention", "vector")},
              bandwidth_bytes_per_s=col(lambda r: t(r).memory_bandwidth_bytes_per_s),
              ring_bandwidth_bytes_per_s=col(lambda r: t(r).ring_bandwidth_bytes_per_s),
              alltoall_bandwidth_bytes_per_s=col(lambda r: t(r).alltoall_bandwidth_bytes_per_s),
              capacity_bytes=col(lambda r: t(r).memory_capacity_bytes),
              link_latency_s=col(lambda r: sum(link_latency_s(r).values())))
    spot = [replace(queries[pick[i]], batch=int(kw["batch"][i]), input_len=int(kw["input_len"][i]),
                    output_len=int(kw["output_len"][i])) for i in range(min(SPOT_CHECKS, count))]
    return kw, dict(hw, shape=combos[0]["shape"], profile=combos[0]["profile"]), spot


def run_all(kw: dict, hw: dict) -> list[np.ndarray]:
    """Everything ``predict`` computes per scenario, on whole arrays; returns the outputs to check."""
    s, prof = hw["shape"], hw["profile"]
    res = simulate_request(s, **kw, peak_flop_per_s=hw["peak_flop_per_s"], profile=prof,
                           bandwidth_bytes_per_s=hw["bandwidth_bytes_per_s"],
                           ring_bandwidth_bytes_per_s=hw["ring_bandwidth_bytes_per_s"],
                           alltoall_bandwidth_bytes_per_s=hw["alltoall_bandwidth_bytes_per_s"])
    mem = memory_use(s, **kw, capacity_bytes=hw["capacity_bytes"], reserve_fraction=prof.memory_reserve_fraction)
    util_kw = dict(bandwidth_bytes_per_s=hw["bandwidth_bytes_per_s"], peak_flop_per_s=hw["peak_flop_per_s"])
    u_pre = utilisation(res.prefill, res.prefill_timing, **util_kw)
    u_dec = utilisation(res.decode, res.decode_timing, **util_kw)
    ttft, tpot = res.ttft_s + hw["link_latency_s"], res.tpot_s + hw["link_latency_s"]  # as collectives.with_link_latency
    request = ttft + np.maximum(kw["output_len"] - 1, 0) * tpot
    return [ttft, tpot, request, mem.total, u_pre["s_mbu"], u_pre["s_mfu"],
            u_dec["s_mbu"], u_dec["s_mfu"], u_dec["mbu"], u_dec["mfu"]]


def vectorised(model: str, label: str, use_ep: bool, count: int, db) -> dict:
    kw, hw, spot = scenarios(model, use_ep, count, db)
    run_all(kw, hw)  # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        outs = run_all(kw, hw)
        best = min(best, time.perf_counter() - t0)
    for x in outs:  # the benchmark must not pass on garbage
        assert x.shape == (count,) and np.all(np.isfinite(x)) and np.all(x > 0), x
    assert np.all(outs[2] >= outs[0])  # request latency includes TTFT
    for i, q in enumerate(spot):  # and the arrays agree with one-by-one predictions
        one = predict(q, db)
        assert np.allclose([outs[0][i], outs[1][i]], [one["ttft_s"], one["tpot_s"]], rtol=1e-9), q
    rate = count / best
    return row(f"vectorised scenarios/s, {label}",
               f"{rate:,.0f}/s ({count:,} in {best:.3f} s, best of 3)", f">= {SCENARIOS_PER_S_TARGET:,}/s",
               rate >= SCENARIOS_PER_S_TARGET, scenarios_per_s=rate)


def in_process(db, calls: int = 50) -> dict:
    q = Query(model="mixtral", hardware="dgx-h100")
    predict(q, db)  # warm-up: catalogue and engine caches
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        predict(q, db)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return row("in-process predict(Query(mixtral, dgx-h100))", f"median {1e3 * med:.2f} ms ({calls} calls)",
               seconds=med)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="cold runs per command (default 7)")
    ap.add_argument("--scenarios", type=int, default=1_000_000, help="vectorised scenarios (default 1,000,000)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    a = ap.parse_args()
    db = hwdb.load()
    rows = [cold_predict(c, a.runs) for c in COLD_CASES] + [no_torch()]
    rows += [vectorised(m, label, use_ep, a.scenarios, db) for m, label, use_ep in VECTOR_MODELS]
    rows.append(in_process(db))
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
