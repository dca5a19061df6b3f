"""Measure llama.cpp on random-initialised MoE models: the ground truth for capsim's `llama.cpp` CPU profile.

A self-contained runner, NOT part of capsim's prediction path (nothing in capsim imports it; it needs torch,
transformers and a llama.cpp build). Run it from the repository root with capsim's own venv, or through
``capsim measure --engine llama.cpp``:

    .venv/bin/python capsim/measure/llama_cpp.py --llama-dir DIR          # DIR: a llama.cpp source tree, built

Building llama.cpp: the source vendored in PyPI's llama-cpp-python sdist (validation/measured/llama.cpp/README.md):
``cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF`` and
``cmake --build build --target llama-bench llama-quantize llama-batched-bench``.

Per shape (capsim.measure.moe_shapes): a random-initialised model (seed 0, bf16, transformers' save_pretrained)
with a small byte-level BPE tokenizer trained offline (llama.cpp's BPE vocab needs merges; the converter pads the
vocabulary to the model's), converted to GGUF with the tree's own ``convert_hf_to_gguf.py`` (its pre-tokenizer
check only knows published tokenizers, so ours is declared "qwen2": the tokenizer is never used, llama-bench feeds
random token ids), quantised with ``llama-quantize`` per quantisation, then timed with ``llama-bench`` (prefill
pp<P> and decode tg<N> at batch 1, ``-o json``, ``-r`` repeats) and ``llama-batched-bench`` (decode of B sequences
at once after a prompt of P tokens each). One JSON per shape (format capsim-llama-cpp-run) with every command,
the llama.cpp commit, the machine's CPU model and ISA flags.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))
from capsim.measure.moe_shapes import SHAPES, loadavg, machine, shape_config, utc_now  # noqa: E402

FORMAT = "capsim-llama-cpp-run"
VERSION = 1
DEFAULT_OUT = REPO / "validation" / "measured" / "llama.cpp"
# Shapes whose converter path is byte-level BPE (Mixtral's is SentencePiece: not built here)
DEFAULT_SHAPES = ("qwen3-moe-like", "olmoe-like", "deepseek-like")
PRE_TOKENIZER = "qwen2"  # a name llama.cpp knows; never exercised (random token ids)
# llama.cpp reads DeepSeek-V2 without a query LoRA only for the published "lite" layer counts
# (src/models/deepseek2.cpp: is_lite = n_layer == 27 || n_layer == 26 || ...): the 3-layer deepseek-like shape
# gets DeepSeek-V2's query LoRA, scaled to its hidden size (1536 / 5120 x 768 = 230, rounded up to 256); the
# run file keeps the config it ran
OVERRIDES = {"deepseek-like": {"q_lora_rank": 256}}


def run(cmd: list[str], log: list[dict[str, Any]], **kw) -> subprocess.CompletedProcess:
    t = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    log.append({"cmd": [str(c) for c in cmd], "rc": r.returncode, "wall_s": round(time.monotonic() - t, 3)})
    if r.returncode:
        raise RuntimeError(f"{cmd[0]} exited {r.returncode}: {r.stderr[-2000:]}")
    return r


def config_of(name: str) -> dict[str, Any]:
    return {**shape_config(name), **OVERRIDES.get(name, {})}


def build_model(name: str, folder: Path) -> int:
    """Random-init bf16 model of the shape + a byte-level BPE tokenizer; returns the parameter count."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    cfg = config_of(name)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [" ".join(f"w{i % 97} t{i % 53} x{i % 31}" for i in range(j, j + 50)) for j in range(0, 5000, 50)]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>").save_pretrained(folder)
    return int(sum(p.numel() for p in model.parameters()))


def convert(llama: Path, hf: Path, out: Path, log: list) -> None:
    code = (f"import sys; sys.path[:0] = [{str(llama / 'gguf-py')!r}, {str(llama)!r}]\n"
            "import convert_hf_to_gguf as c, conversion.base as cb\n"
            f"cb.TextModel.get_vocab_base_pre = lambda self, tokenizer: {PRE_TOKENIZER!r}\n"
            f"sys.argv = ['convert_hf_to_gguf.py', {str(hf)!r}, '--outfile', {str(out)!r}, '--outtype', 'bf16']\n"
            "c.main()\n")
    run([sys.executable, "-c", code], log)


def bench(binary: Path, model: Path, prompts: list[int], gen: int, threads: int, repeats: int, log: list) -> list[dict]:
    r = run([str(binary), "-m", str(model), "-p", ",".join(map(str, prompts)), "-n", str(gen), "-t", str(threads),
             "-r", str(repeats), "-o", "json"], log)
    keep = ("n_prompt", "n_gen", "n_batch", "n_ubatch", "n_threads", "type_k", "avg_ns", "stddev_ns", "avg_ts",
            "stddev_ts", "samples_ns", "build_commit", "build_number", "cpu_info", "backends", "model_size",
            "model_n_params", "model_type")
    return [{k: t.get(k) for k in keep} for t in json.loads(r.stdout)]


ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)"
                 r"\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|")


def batched(binary: Path, model: Path, prompt: int, gen: int, batches: list[int], threads: int, log: list) -> list[dict]:
    ctx = max(batches) * (prompt + gen) + 64
    r = run([str(binary), "-m", str(model), "-c", str(ctx), "-b", "2048", "-ub", "512", "-npp", str(prompt),
             "-ntg", str(gen), "-npl", ",".join(map(str, batches)), "-t", str(threads)], log)
    keys = ("pp", "tg", "b", "n_kv", "t_pp_s", "s_pp_tps", "t_tg_s", "s_tg_tps", "t_s", "s_tps")
    rows = [dict(zip(keys, (float(x) for x in m.groups()), strict=True))
            for m in (ROW.match(line.strip()) for line in r.stdout.splitlines()) if m]
    if not rows:
        raise RuntimeError(f"llama-batched-bench printed no result table: {r.stdout[-1000:]}")
    return rows


def commit(llama: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(llama), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def run_shape(name: str, a: argparse.Namespace) -> dict[str, Any]:
    llama, binaries = Path(a.llama_dir), Path(a.llama_dir) / "build" / "bin"
    log: list[dict[str, Any]] = []
    out: dict[str, Any] = {"format": FORMAT, "version": VERSION, "shape": name, "engine": "llama.cpp",
                           "date": utc_now(), "command": [sys.executable, *sys.argv], "config": config_of(name),
                           "machine": machine(), "llama_cpp_commit": commit(llama), "threads": a.threads,
                           "repeats": a.repeats, "loadavg_before": loadavg(), "quants": {}}
    with tempfile.TemporaryDirectory(prefix=f"capsim-llama-{name}-") as tmp:
        hf, bf16 = Path(tmp) / "hf", Path(tmp) / "model-bf16.gguf"
        out["params"] = build_model(name, hf)
        convert(llama, hf, bf16, log)
        for q in a.quants.split(","):
            gguf = Path(tmp) / f"model-{q}.gguf"
            run([str(binaries / "llama-quantize"), str(bf16), str(gguf), q, str(a.threads)], log)
            print(f"{name} {q}: bench (load {loadavg()})", flush=True)
            out["quants"][q] = {
                "file_bytes": gguf.stat().st_size,
                "bench": bench(binaries / "llama-bench", gguf, [int(p) for p in a.prompts.split(",")], a.gen,
                               a.threads, a.repeats, log),
                "batched": batched(binaries / "llama-batched-bench", gguf, a.batched_prompt, a.gen,
                                   [int(b) for b in a.batches.split(",")], a.threads, log),
            }
    out["commands"], out["loadavg_after"] = log, loadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-dir", required=True, help="a llama.cpp source tree with build/bin/llama-bench etc.")
    ap.add_argument("--shapes", default=",".join(DEFAULT_SHAPES))
    ap.add_argument("--quants", default="Q8_0,Q4_K_M")
    ap.add_argument("--prompts", default="128,512", help="llama-bench prompt lengths (prefill, batch 1)")
    ap.add_argument("--gen", type=int, default=32, help="tokens generated (llama-bench tg, batched-bench ntg)")
    ap.add_argument("--batches", default="1,2,4,8,16", help="llama-batched-bench sequences decoded at once")
    ap.add_argument("--batched-prompt", type=int, default=128, help="llama-batched-bench prompt tokens per sequence")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-dir", default=str(DEFAULT_OUT))
    a = ap.parse_args(argv)
    bad = [s for s in a.shapes.split(",") if s not in SHAPES]
    if bad:
        print(f"unknown shape {bad[0]!r}; known: {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in a.shapes.split(","):
        result = run_shape(name, a)
        path = out_dir / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(path)
        print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
