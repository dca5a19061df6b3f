"""Measure vLLM's official CPU build on random-initialised MoE models: the ground truth for capsim's `vllm` profile.

A self-contained runner, NOT part of capsim's prediction path (nothing in capsim imports it). It needs vLLM, so
run it with the engine's own virtual environment, from the repository root:

    benchmarks/.venv-vllm/bin/python capsim/measure/vllm_cpu.py                  # all shapes
    benchmarks/.venv-vllm/bin/python capsim/measure/vllm_cpu.py --shapes mixtral-like --batches 1,4,16

For each shape it writes a random-initialised model (seed 0, bf16, saved with transformers' save_pretrained,
plus a WordLevel tokenizer covering the whole vocabulary, built offline) to a temporary folder, starts
``vllm.LLM`` on it (V1 engine; prefix caching off so repeated points do not hit the cache), and times
``LLM.generate`` on fixed random prompt token ids (distinct per request and per repeat) with
``SamplingParams(max_tokens=O, ignore_eos=True, temperature=0)`` over a grid of batch sizes and prompt lengths.
Per point it records the end-to-end wall time of the generate call (median of the repeats) and, from the
engine core's per-request timestamps (``RequestOutput.metrics``, ``disable_log_stats=False``), TTFT and TPOT.
Each shape runs in its own child process (the engine core is a spawned process; a fresh process per shape
frees its memory). One JSON per shape goes to ``validation/measured/vllm-cpu/<shape>.json`` with
``"format": "capsim-vllm-cpu-run"``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FORMAT = "capsim-vllm-cpu-run"
VERSION = 1
REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "validation" / "measured" / "vllm-cpu"

if str(REPO) not in sys.path:  # run as a script (python capsim/measure/vllm_cpu.py): the shared shapes
    sys.path.insert(0, str(REPO))
from capsim.measure.moe_shapes import DEFAULT_SHAPES, SHAPES, loadavg, machine, shape_config, utc_now  # noqa: E402

__all__ = ["DEFAULT_SHAPES", "SHAPES", "loadavg", "machine", "shape_config", "utc_now"]


# ---------------------------------------------------------------------------------------------------- child


def build_model(name: str, folder: Path) -> dict[str, Any]:
    """Random-init model of the shape in bf16 (seed 0) + a WordLevel tokenizer over the full vocabulary."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    cfg_dict = shape_config(name)
    model_type = cfg_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg_dict)
    config.torch_dtype = torch.bfloat16
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    vocab = config.vocab_size
    words = {"<unk>": 0, "<s>": 1, "</s>": 2}
    words.update({f"w{i}": i for i in range(3, vocab)})
    tok = Tokenizer(WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    return {"torch_params": n_params, "config": json.loads((folder / "config.json").read_text())}


def engine_processes() -> list[dict[str, Any]]:
    """The engine's child processes: name, thread count, and the distinct CPU sets their threads are bound to."""
    out = []
    try:
        import psutil
    except ImportError:
        return out
    for child in psutil.Process().children(recursive=True):
        try:
            sets = set()
            for t in child.threads():
                try:
                    sets.add(",".join(str(c) for c in sorted(os.sched_getaffinity(t.id))))
                except OSError:
                    pass
            out.append({"name": child.name(), "cmd": " ".join(child.cmdline()[:1]), "threads": child.num_threads(),
                        "thread_cpu_sets": sorted(sets)})
        except psutil.Error:
            continue
    return out


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def request_timing(outputs: list[Any], out_len: int) -> dict[str, float]:
    """TTFT / TPOT from the engine core's monotonic per-request timestamps (RequestStateStats)."""
    ttft, tpot, first, last, queued = [], [], [], [], []
    for o in outputs:
        m = o.metrics
        if m is None or not getattr(m, "first_token_ts", 0) or not getattr(m, "queued_ts", 0):
            return {}
        ttft.append(m.first_token_ts - m.queued_ts)
        n = len(o.outputs[0].token_ids)
        if n > 1:
            tpot.append((m.last_token_ts - m.first_token_ts) / (n - 1))
        first.append(m.first_token_ts)
        last.append(m.last_token_ts)
        queued.append(m.queued_ts)
    res = {
        "ttft_median_s": _median(ttft), "ttft_max_s": max(ttft), "ttft_min_s": min(ttft),
        # engine time from the first request queued to the last first token: all prefills of the batch
        "prefill_phase_s": max(first) - min(queued),
        "engine_s": max(last) - min(queued),
    }
    if tpot:
        res["tpot_median_s"] = _median(tpot)
        res["tpot_max_s"] = max(tpot)
        # decode phase: once every request has its first token, one step makes one token for each
        res["decode_phase_s"] = max(last) - max(first)
    return res


def run_shape(args: argparse.Namespace) -> None:
    import random

    import torch
    import vllm
    from vllm import LLM, SamplingParams

    name = args.shape
    t_start = time.time()
    load_before = loadavg()
    batches = [int(b) for b in args.batches.split(",")]
    prompts = [int(p) for p in args.prompts.split(",")]
    out_len = args.output_len
    with tempfile.TemporaryDirectory(prefix=f"capsim-vllm-{name}-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        built = build_model(name, folder)
        build_s = time.perf_counter() - t0
        vocab = built["config"]["vocab_size"]
        max_len = max(prompts) + out_len + 16
        t0 = time.perf_counter()
        llm_kwargs = dict(
            model=str(folder), dtype="bfloat16", seed=0, max_model_len=max_len, max_num_seqs=max(batches),
            enable_prefix_caching=False, disable_log_stats=False, kv_cache_memory_bytes=args.kv_gib * 1024**3,
        )
        llm = LLM(**llm_kwargs)
        startup_s = time.perf_counter() - t0
        procs = engine_processes()
        rng = random.Random(0)

        def gen(batch: int, prompt: int, max_tokens: int) -> tuple[float, list[Any]]:
            token_lists = [[rng.randrange(3, vocab) for _ in range(prompt)] for _ in range(batch)]
            sp = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0, detokenize=False)
            t = time.perf_counter()
            outs = llm.generate([{"prompt_token_ids": ids} for ids in token_lists], sp, use_tqdm=False)
            dt = time.perf_counter() - t
            assert all(len(o.outputs[0].token_ids) == max_tokens for o in outs), "short output"
            return dt, outs

        t0 = time.perf_counter()
        for p in prompts:  # warm-up: compile / first-touch per prompt length, small and a mid batch
            gen(1, p, out_len)
            gen(min(8, max(batches)), p, 4)
        warmup_s = time.perf_counter() - t0

        points, skipped = [], []
        for p in prompts:
            stop = False
            for b in batches:
                if stop:
                    skipped.append({"batch": b, "prompt_len": p, "why": f"previous batch over {args.max_point_s} s"})
                    continue
                la = loadavg()
                runs = []
                for r in range(args.repeats):
                    dt, outs = gen(b, p, out_len)
                    runs.append({"e2e_s": dt, **request_timing(outs, out_len)})
                    if r == 0 and dt > args.slow_s:
                        break  # slow point: one run only (recorded as repeats=1)
                pt: dict[str, Any] = {"batch": b, "prompt_len": p, "output_len": out_len, "repeats": len(runs),
                                      "loadavg_1m_before": la[0] if la else None}
                for key in runs[0]:
                    vals = [run[key] for run in runs if key in run]
                    pt[key] = _median(vals)
                pt["e2e_samples_s"] = [run["e2e_s"] for run in runs]
                pt["output_tok_per_s"] = b * out_len / pt["e2e_s"]
                points.append(pt)
                print(f"[{name}] b={b:3d} p={p:4d}: e2e {pt['e2e_s']:.3f} s  ttft {pt.get('ttft_median_s', 0):.3f}"
                      f"  tpot {pt.get('tpot_median_s', 0) * 1e3:.1f} ms  (x{len(runs)}, load {la[:1]})",
                      flush=True)
                if pt["e2e_s"] > args.max_point_s:
                    stop = True
        cfg = llm.llm_engine.vllm_config if hasattr(llm, "llm_engine") else None
        engine_cfg = {}
        if cfg is not None:
            sc, cc = cfg.scheduler_config, cfg.cache_config
            engine_cfg = {
                "max_num_batched_tokens": getattr(sc, "max_num_batched_tokens", None),
                "max_num_seqs": getattr(sc, "max_num_seqs", None),
                "enable_chunked_prefill": getattr(sc, "enable_chunked_prefill", None),
                "enable_prefix_caching": getattr(cc, "enable_prefix_caching", None),
                "block_size": getattr(cc, "block_size", None),
                "compilation_mode": str(getattr(cfg.compilation_config, "mode", None)),
            }
        llm = None  # shut the engine down (the child process ends after this shape anyway)
    doc = {
        "format": FORMAT, "version": VERSION, "shape": name, "engine": "vllm",
        "date": utc_now(),
        "command": " ".join(["benchmarks/.venv-vllm/bin/python", "capsim/measure/vllm_cpu.py", "--shapes", name,
                             "--batches", args.batches, "--prompts", args.prompts, "--output-len", str(out_len),
                             "--repeats", str(args.repeats), "--max-point-s", str(args.max_point_s),
                             "--slow-s", str(args.slow_s)]),
        "config": built["config"],
        "params": built["torch_params"],
        "weights": "random (torch.manual_seed(0), transformers from_config), bf16",
        "machine": machine(),
        "versions": {"vllm": vllm.__version__, "torch": torch.__version__,
                     "transformers": _version("transformers"), "tokenizers": _version("tokenizers"),
                     "vllm_distribution": _dist_name(), "python": platform.python_version()},
        "threads": {"torch_num_threads_frontend": torch.get_num_threads(),
                    "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto (default)"),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "engine_processes": procs,
                    "note": ("vLLM's CPU auto binding on this 2-core machine (log: local_world_size=1, "
                             "reserve_cpu_num=1, core ids=[0], reserved_cpus=[1]) runs the model worker's "
                             "OpenMP compute on ONE core (core 0, 1 thread) and leaves core 1 to the frontend "
                             "and engine-core processes")},
        "engine_args": {k: v for k, v in llm_kwargs.items() if k != "model"},
        "engine_config": engine_cfg,
        "sampling": {"max_tokens": out_len, "ignore_eos": True, "temperature": 0, "detokenize": False},
        "method": ("LLM.generate on a batch of fresh random prompt token ids (all submitted at once); e2e_s is the "
                   "wall time of the call, median over repeats; ttft/tpot from RequestOutput.metrics engine-core "
                   "timestamps (ttft = first_token_ts - queued_ts, tpot = (last_token_ts - first_token_ts)/(n-1)), "
                   "median over the batch's requests, then median over repeats"),
        "timing_s": {"build_model": build_s, "engine_startup": startup_s, "warmup": warmup_s,
                     "total": time.time() - t_start},
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "points": points, "skipped": skipped,
    }
    out = Path(args.out_dir) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}", flush=True)


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _dist_name() -> str | None:
    from importlib import metadata

    for d in ("vllm-cpu", "vllm"):
        try:
            return f"{d}=={metadata.version(d)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help="comma list of " + ", ".join(SHAPES))
    ap.add_argument("--batches", default="1,2,4,8,16,32,64")
    ap.add_argument("--prompts", default="128,512")
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-point-s", type=float, default=30.0, help="skip larger batches after a point this slow")
    ap.add_argument("--slow-s", type=float, default=8.0, help="a first run slower than this is the only run")
    ap.add_argument("--kv-gib", type=int, default=2)
    ap.add_argument("--out-dir", default=str(DEFAULT_OUT))
    ap.add_argument("--shape", help=argparse.SUPPRESS)  # child mode: one shape in this process
    args = ap.parse_args(argv)
    if args.shape:
        run_shape(args)
        return 0
    rc = 0
    for name in args.shapes.split(","):
        if name not in SHAPES:
            print(f"unknown shape {name!r}; known: {', '.join(SHAPES)}", file=sys.stderr)
            return 2
    for name in args.shapes.split(","):
        cmd = [sys.executable, __file__, "--shape", name] + [a for a in (argv or sys.argv[1:])]
        print(f"== {name}: load {loadavg()}", flush=True)
        r = subprocess.run(cmd)
        if r.returncode:
            print(f"{name}: child exited {r.returncode}", file=sys.stderr)
            rc = r.returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
