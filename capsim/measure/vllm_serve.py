"""Measure vLLM's CPU build serving under load: the ground truth for ``capsim serve --engine vllm-cpu``.

A self-contained runner, NOT part of capsim's prediction path (nothing in capsim imports it). It needs vLLM, so
run it with the engine's own virtual environment (validation/measured/vllm-cpu/README.md says how it is made),
from the repository root:

    benchmarks/.venv-vllm/bin/python capsim/measure/vllm_serve.py            # the default grid, ~6 min here

It writes a random-initialised model of a shape (as capsim/measure/vllm_cpu.py does: seed 0, bf16, a WordLevel
tokenizer over the whole vocabulary) to a temporary folder, starts vLLM's OpenAI-compatible server on it on
loopback (``python -m vllm.entrypoints.openai.api_server``, prefix caching off, the scheduler limits given
below), waits for /health, then drives it with vLLM's own serving benchmark (``vllm.benchmarks.serve``, the
code behind ``vllm bench serve``; the ``vllm`` console script refuses to start under the ``vllm-cpu``
distribution name) on the random dataset with fixed lengths and ``--ignore-eos``, one run per grid point: fixed
concurrencies (``--max-concurrency``, every request released at once) and Poisson request rates. Every
statistic the benchmark saves is kept. The server is stopped at the end, or when a run overruns
``--max-run-s``; the whole load stays on 127.0.0.1. One JSON goes to
``validation/measured/vllm-serve/<shape>.json`` (``"format": "capsim-vllm-serve-run"``), or ``<name>.json`` with
``--name``; an existing file is never replaced (a further pass over the grid is a repetition, with its own name).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

FORMAT = "capsim-vllm-serve-run"
VERSION = 1
REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "validation" / "measured" / "vllm-serve"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from capsim.measure.moe_shapes import loadavg, machine, utc_now  # noqa: E402

# (kind, value, input_len, output_len, num_prompts): concurrency runs release every request at once and keep at
# most `value` in flight; rate runs send Poisson arrivals at `value` requests/s
GRID = [("concurrency", c, i, 32, n) for i in (128, 512) for c, n in ((1, 8), (4, 24), (16, 48))] + \
       [("rate", r, i, 32, 32) for i in (128, 512) for r in (0.5, 1.0, 2.0)]
SERVER_ARGS = {"max_num_seqs": 64, "max_num_batched_tokens": 4096, "max_model_len": 600, "kv_gib": 2}
BENCH = "import sys; from vllm.benchmarks.serve import add_cli_args, main; " \
        "from vllm.utils.argparse_utils import FlexibleArgumentParser as P; p = P(); add_cli_args(p); " \
        "main(p.parse_args(sys.argv[1:]))"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(port: int, proc: subprocess.Popen, timeout_s: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(2)
    raise RuntimeError(f"the server was not ready after {timeout_s} s")


def _bench(folder: Path, port: int, kind: str, value: float, i: int, o: int, n: int, out_dir: Path, k: int,
           max_run_s: float) -> tuple[dict[str, Any], list[str]]:
    name = f"run{k:02d}.json"
    args = ["--backend", "vllm", "--host", "127.0.0.1", "--port", str(port), "--model", str(folder),
            "--tokenizer", str(folder), "--dataset-name", "random", "--random-input-len", str(i),
            "--random-output-len", str(o), "--num-prompts", str(n), "--ignore-eos", "--seed", "0",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99", "--disable-tqdm",
            "--save-result", "--result-dir", str(out_dir), "--result-filename", name]
    args += (["--max-concurrency", str(int(value)), "--request-rate", "inf"] if kind == "concurrency"
             else ["--request-rate", str(value)])
    cmd = [sys.executable, "-c", BENCH, *args]
    subprocess.run(cmd, check=True, timeout=max_run_s, capture_output=True, text=True)
    return json.loads((out_dir / name).read_text()), ["python -m vllm.benchmarks.serve", *args]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="olmoe-like")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--max-run-s", type=float, default=240.0)
    ap.add_argument("--only", default=None, help="comma-separated run indices of the grid (default: all)")
    ap.add_argument("--name", default=None, help="output file stem (default: the shape); a further pass over the "
                    "grid is another file, e.g. --name olmoe-like-rep2")
    a = ap.parse_args()
    target = a.out / f"{a.name or a.shape}.json"
    if target.exists():
        sys.exit(f"{target}: exists; a further pass needs its own --name (passes are repetitions, none is replaced)")
    import vllm

    from capsim.measure.vllm_cpu import build_model

    runs, t_start, load_before = [], time.time(), loadavg()
    with tempfile.TemporaryDirectory(prefix=f"capsim-vllm-serve-{a.shape}-") as tmp:
        folder, results = Path(tmp) / "model", Path(tmp) / "results"
        folder.mkdir()
        results.mkdir()
        built = build_model(a.shape, folder)
        port = _free_port()
        server = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--host",
                  "127.0.0.1", "--port", str(port), "--dtype", "bfloat16", "--seed", "0", "--no-enable-prefix-caching",
                  "--max-model-len", str(SERVER_ARGS["max_model_len"]), "--max-num-seqs", str(SERVER_ARGS["max_num_seqs"]),
                  "--max-num-batched-tokens", str(SERVER_ARGS["max_num_batched_tokens"]),
                  "--kv-cache-memory-bytes", str(SERVER_ARGS["kv_gib"] * 1024**3)]
        log = open(Path(tmp) / "server.log", "w")
        proc = subprocess.Popen(server, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            ready_s = _wait_ready(port, proc, 600)
            only = None if a.only is None else {int(x) for x in a.only.split(",")}
            for k, (kind, value, i, o, n) in enumerate(GRID):
                if only is not None and k not in only:
                    continue
                la = loadavg()
                t0 = time.perf_counter()
                res, cmd = _bench(folder, port, kind, value, i, o, n, results, k, a.max_run_s)
                keep = {key: v for key, v in res.items() if not isinstance(v, list)}
                runs.append({"index": k, "kind": kind, "value": value, "input_len": i, "output_len": o,
                             "num_prompts": n, "wall_s": time.perf_counter() - t0, "loadavg_1m_before": la[0],
                             "command": " ".join(cmd), "result": keep})
                print(f"[{k:2d}] {kind} {value}: {i}/{o} x{n}: ttft mean {res['mean_ttft_ms']:.0f} ms p99 "
                      f"{res['p99_ttft_ms']:.0f} ms, tpot mean {res['mean_tpot_ms']:.1f} ms, "
                      f"{res['output_throughput']:.1f} tok/s", flush=True)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
        server_log_tail = (Path(tmp) / "server.log").read_text(errors="replace").splitlines()[-40:]
    out = {"format": FORMAT, "version": VERSION, "shape": a.shape, "engine": "vllm", "date": utc_now(),
           "command": " ".join(["benchmarks/.venv-vllm/bin/python", "capsim/measure/vllm_serve.py", *sys.argv[1:]]),
           "config": built["config"], "params": built["torch_params"],
           "weights": "random (torch.manual_seed(0), transformers from_config), bf16",
           "machine": machine(), "versions": {"vllm": vllm.__version__, "vllm_distribution": "vllm-cpu"},
           "server": " ".join(["python -m vllm.entrypoints.openai.api_server", *server[3:]]).replace(str(folder), "MODEL"),
           "server_args": SERVER_ARGS, "server_ready_s": ready_s, "server_log_tail": server_log_tail,
           "loadavg_before": load_before, "loadavg_after": loadavg(), "total_s": time.time() - t_start, "runs": runs}
    text = json.dumps(out, indent=1).replace(str(folder), "MODEL")
    a.out.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"wrote {target}: {len(runs)} runs")


if __name__ == "__main__":
    main()
