"""How fast is ``capsim sweep``, and how does it compare with genz-llm on the same Mixtral-8x7B cases?

The issue's acceptance item: "A benchmark prints scenarios per second for ``capsim sweep``
(target at least 100,000 per second on this 2-core machine) and, side by side in the same
run, the per-scenario time of genz-llm (installed only in the benchmark's own environment)
on the same Mixtral-8x7B cases: capsim at least 100x faster per scenario." This script:

1. sweeps a grid of 1,048,576 scenarios in process (:data:`BIG_GRID`: 4 models x 4 systems x
   2 device counts x 2 precisions x 32 batch sizes x 32 prompt x 16 output lengths) with
   ``capsim.sweep.run.run_sweep`` (expand, resolve every configuration, evaluate, assemble the
   result frame): best of 3 after a warm-up;
2. runs the same grid once as a fresh ``capsim sweep GRID.yaml --out results.parquet`` process
   (interpreter start, database load and the Parquet write included);
3. times capsim on :data:`GENZ_CASES` (Mixtral-8x7B, bf16, one 8-GPU H100 node in TP8; 4 batch
   sizes x 3 prompt x 2 output lengths = 24 scenarios), one sweep call, best of 5;
4. creates (or reuses) ``benchmarks/.venv-genz`` with ``python -m venv`` and
   ``pip install genz-llm==0.0.16`` (torch==2.13.0 first if genz-llm ever pulls torch), and times
   there GenZ's ``prefill_moddeling`` + ``decode_moddeling`` (model ``mixtral_8x7b``, system
   ``H100_GPU``, ``bits="bf16"``, ``tensor_parallel=8``, ``Bb=1``) on the same 24 cases after one
   untimed call; its import time is not counted.

It prints capsim's and GenZ's per-scenario times and their ratio (target >= 100x), and the
median ratio of the two tools' TTFT and TPOT as a check that both model the same cases. When
GenZ cannot be installed or run, its rows say why and capsim's rows are still printed.

Usage: ``python benchmarks/bench_sweep.py [--no-genz] [--reinstall-genz] [--json] [--strict]``.
Exit code 0, or 1 with ``--strict`` when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import peer_venv  # noqa: E402  (benchmarks/peer_venv.py, beside this script)
import yaml

from capsim.cli.sweep import DEFAULT_MAX_SCENARIOS
from capsim.cli.table import render
from capsim.hardware import db as hwdb
from capsim.sweep import grid as G
from capsim.sweep.run import run_sweep

HERE = Path(__file__).resolve().parent
SCENARIOS_PER_S_TARGET = 100_000
# A sweep at the default --max-scenarios must fit beside a notebook on a 24 GB laptop-class machine (issue 19:
# the old default let a sweep take 10.6 GB).
MEMORY_AT_DEFAULT_TARGET = 2e9  # B
SPEEDUP_TARGET = 100
GENZ_SPEC = "genz-llm==0.0.16"
GENZ_VENV = HERE / ".venv-genz"

BIG_GRID = {
    "models": ["mixtral", "deepseek-v3", "qwen3-30b", "olmoe"],
    "hardware": ["dgx-h100", "dgx-h200", "dgx-a100", "server-8x-mi300x"],
    "devices": [4, 8], "precisions": ["bf16", "fp8"],
    "batch": "1..256:+8", "input_len": "128..8192:+256", "output_len": "16..2048:+128",
}
GENZ_CASES = {"batch": [1, 8, 32, 128], "input_len": [128, 512, 2048], "output_len": [128, 512]}
CAPSIM_GENZ_GRID = {"models": ["mixtral"], "hardware": ["dgx-h100"], "devices": [8], "tp": [8],
                    "precisions": ["bf16"], **{k: v for k, v in GENZ_CASES.items()}}

GENZ_RUNNER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
cases = json.loads(sys.argv[1])
t0 = time.perf_counter()
import GenZ
from GenZ import decode_moddeling, prefill_moddeling
import_s = time.perf_counter() - t0
common = dict(model="mixtral_8x7b", system_name="H100_GPU", bits="bf16", tensor_parallel=8)

def one(b, i, o):
    pre = prefill_moddeling(batch_size=b, input_tokens=i, **common)
    dec = decode_moddeling(batch_size=b, input_tokens=i, output_tokens=o, Bb=1, **common)
    return pre["Latency"] / 1e3, dec["Latency"] / 1e3  # ms -> s

one(*cases[0])  # untimed warm-up
out, times = [], []
for b, i, o in cases:
    t = time.perf_counter()
    ttft, tpot = one(b, i, o)
    times.append(time.perf_counter() - t)
    out.append({"batch": b, "input_len": i, "output_len": o, "ttft_s": ttft, "tpot_s": tpot})
import importlib.metadata as md
print(json.dumps({"version": md.version("genz-llm"), "import_s": import_s, "seconds": times, "cases": out}))
"""


def row(name: str, result: str, target: str = "-", passed: bool | None = None, **values) -> dict:
    return {"benchmark": name, "result": result, "target": target, "passed": passed, **values}


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def big_sweep(db) -> tuple[dict, float]:
    grid = G.build(BIG_GRID, source="BIG_GRID")
    run_sweep(grid, db)  # warm-up
    seconds, frame = best_of(lambda: run_sweep(grid, db), 3)
    n = len(frame)
    assert n == grid.size and frame["error"].isna().all(), frame["error"].value_counts()
    for c in ("ttft_s", "tpot_s", "request_latency_s", "s_mbu", "s_mfu", "memory_per_device_bytes"):
        x = frame[c].to_numpy()
        assert np.all(np.isfinite(x)) and np.all(x > 0), c  # the benchmark must not pass on garbage
    rate = n / seconds
    fits = int(frame["fits"].sum())
    del frame
    label = (f"`capsim sweep` in process: {n:,} scenarios ({grid.configurations} configurations; "
             f"{fits:,} fit in memory)")
    return row(label, f"{rate:,.0f}/s ({seconds:.2f} s, best of 3)", f">= {SCENARIOS_PER_S_TARGET:,}/s",
               rate >= SCENARIOS_PER_S_TARGET, scenarios_per_s=rate, seconds=seconds, scenarios=n), rate


def cli_sweep() -> dict:
    grid = G.build(BIG_GRID)
    capsim = Path(sys.executable).with_name("capsim")
    cmd = [str(capsim)] if capsim.exists() else [sys.executable, "-m", "capsim.cli.main"]
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "grid.yaml"
        spec.write_text(yaml.safe_dump(BIG_GRID))
        out = Path(tmp) / "results.parquet"
        t0 = time.perf_counter()
        subprocess.run([*cmd, "sweep", str(spec), "--out", str(out), "--no-progress"], check=True,
                       capture_output=True)
        seconds = time.perf_counter() - t0
        size = out.stat().st_size
    rate = grid.size / seconds
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB; the first child run
    per = peak / grid.size  # includes the interpreter and database (~180 MB), so an upper bound per scenario
    at_default = per * DEFAULT_MAX_SCENARIOS
    return [row("`capsim sweep grid.yaml --out results.parquet`: the same grid, fresh process",
                f"{rate:,.0f}/s ({seconds:.2f} s wall, {size / 1e6:.0f} MB Parquet)",
                f">= {SCENARIOS_PER_S_TARGET:,}/s", rate >= SCENARIOS_PER_S_TARGET, scenarios_per_s=rate,
                seconds=seconds),
            row("peak memory of that process (max RSS)",
                f"{peak / 1e6:,.0f} MB ({per:,.0f} B per scenario; x {DEFAULT_MAX_SCENARIOS:,} = "
                f"{at_default / 1e9:.1f} GB at the default --max-scenarios)",
                f"<= {MEMORY_AT_DEFAULT_TARGET / 1e9:.0f} GB at the default", at_default <= MEMORY_AT_DEFAULT_TARGET,
                peak_bytes=peak, bytes_per_scenario=per)]


def cases() -> list[tuple[int, int, int]]:
    return [(b, i, o) for b in GENZ_CASES["batch"] for i in GENZ_CASES["input_len"] for o in GENZ_CASES["output_len"]]


def capsim_cases(db):
    grid = G.build(CAPSIM_GENZ_GRID)
    seconds, frame = best_of(lambda: run_sweep(grid, db), 5)
    assert frame["error"].isna().all()
    return seconds / len(frame), frame


def genz_rows(db, rate: float, use_genz: bool, reinstall: bool) -> list[dict]:
    per_capsim, frame = capsim_cases(db)
    n = len(frame)
    rows = [row(f"capsim per scenario, the {n} Mixtral-8x7B cases (H100 x8, TP8, bf16), one sweep call",
                f"{per_capsim * 1e6:,.1f} us ({n} in {per_capsim * n * 1e3:.2f} ms incl. resolve, best of 5)",
                seconds_per_scenario=per_capsim),
            row("capsim per scenario at sweep scale (the 1,048,576-scenario grid)", f"{1e6 / rate:.2f} us",
                seconds_per_scenario=1 / rate)]
    if not use_genz:
        return rows + [row("genz-llm", "not run (--no-genz)")]
    try:
        note = peer_venv.ensure(GENZ_VENV, GENZ_SPEC, reinstall)
        g = peer_venv.run(GENZ_VENV, GENZ_RUNNER, json.dumps(cases()))
    except (RuntimeError, OSError, subprocess.SubprocessError, json.JSONDecodeError) as err:
        return rows + [row("genz-llm", f"NOT RUN: {err}", passed=None, error=str(err)),
                       row("speed-up, GenZ / capsim per scenario", "n/a (GenZ did not run)",
                           f">= {SPEEDUP_TARGET}x", None)]
    per_genz = statistics.fmean(g["seconds"])
    ratio_same, ratio_scale = per_genz / per_capsim, per_genz * rate
    ours = {(r.batch, r.input_len, r.output_len): r for r in frame.itertuples()}
    ttft = statistics.median(c["ttft_s"] / ours[(c["batch"], c["input_len"], c["output_len"])].ttft_s
                             for c in g["cases"])
    tpot = statistics.median(c["tpot_s"] / ours[(c["batch"], c["input_len"], c["output_len"])].tpot_s
                             for c in g["cases"])
    return rows + [
        row(f"genz-llm {g['version']} per scenario, the same {len(g['cases'])} cases "
            "(prefill_moddeling + decode_moddeling)",
            f"{per_genz * 1e3:,.1f} ms (median {statistics.median(g['seconds']) * 1e3:.1f} ms; import "
            f"{g['import_s']:.1f} s not counted; {note})", seconds_per_scenario=per_genz, genz=g),
        row("speed-up, GenZ / capsim per scenario, same cases", f"{ratio_same:,.0f}x", f">= {SPEEDUP_TARGET}x",
            ratio_same >= SPEEDUP_TARGET, ratio=ratio_same),
        row("speed-up, GenZ / capsim per scenario at sweep scale", f"{ratio_scale:,.0f}x", f">= {SPEEDUP_TARGET}x",
            ratio_scale >= SPEEDUP_TARGET, ratio=ratio_scale),
        row("same cases, GenZ / capsim (median ratio)", f"TTFT {ttft:.2f}, TPOT {tpot:.2f}", ttft_ratio=ttft,
            tpot_ratio=tpot),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-genz", action="store_true", help="skip the genz-llm comparison")
    ap.add_argument("--reinstall-genz", action="store_true", help="recreate benchmarks/.venv-genz")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    a = ap.parse_args()
    db = hwdb.load()
    big, rate = big_sweep(db)
    rows = [big, *cli_sweep(), *genz_rows(db, rate, not a.no_genz, a.reinstall_genz)]
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"capsim sweep benchmark: Python {sys.version.split()[0]}, numpy {np.__version__}, "
              f"{os.cpu_count()} CPUs")
        verdict = {True: "pass", False: "FAIL", None: "info"}
        print(render(["benchmark", "result", "target", "pass/fail"],
                     [[r["benchmark"], r["result"], r["target"], verdict[r["passed"]]] for r in rows]))
    return int(a.strict and any(r["passed"] is False for r in rows))


if __name__ == "__main__":
    sys.exit(main())
