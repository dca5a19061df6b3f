"""``capsim measure --engine llama.cpp``: llama.cpp timed on random-initialised MoE shapes (converted to GGUF,
quantised) by the runner capsim/measure/llama_cpp.py, in capsim's own Python (it needs torch and transformers:
``pip install -e .[trace]``) against a built llama.cpp tree. One run file per shape (format capsim-llama-cpp-run
v1: llama-bench and llama-batched-bench results, every command, the llama.cpp commit, the CPU model and ISA
flags) goes to the --out folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from capsim.errors import CapsimError

RUNNER = Path(__file__).resolve().parents[1] / "measure" / "llama_cpp.py"
TOOLS = ("llama-bench", "llama-quantize", "llama-batched-bench")
SHAPES = ("qwen3-moe-like", "olmoe-like", "deepseek-like")  # byte-level BPE converter paths
QUANTS = ("Q8_0", "Q4_0", "Q4_K_M", "Q4_K_S", "Q5_K_M", "Q6_K", "IQ4_XS", "BF16", "F16")


def check(llama_dir, shapes: str | None, quants: str, out) -> Path:
    if llama_dir is None:
        raise CapsimError("--llama-dir: required with --engine llama.cpp (a built llama.cpp source tree)")
    tree = Path(llama_dir)
    missing = [t for t in TOOLS if not (tree / "build" / "bin" / t).is_file()]
    if missing:
        raise CapsimError(f"--llama-dir: {tree / 'build' / 'bin'} has no {missing[0]}; build it first "
                          "(validation/measured/llama.cpp/README.md)")
    if not (tree / "convert_hf_to_gguf.py").is_file():
        raise CapsimError(f"--llama-dir: {tree} has no convert_hf_to_gguf.py (expected a llama.cpp source tree)")
    for name in (shapes or "").split(",") if shapes else ():
        if name not in SHAPES:
            raise CapsimError(f"--shapes: unknown shape {name!r} (expected a comma list of {', '.join(SHAPES)})")
    for q in quants.split(","):
        if q not in QUANTS:
            raise CapsimError(f"--quants: {q!r} unknown (expected a comma list of {', '.join(QUANTS)})")
    if out is None:
        raise CapsimError("--out: required with --engine llama.cpp (a folder for one run file per shape)")
    if Path(out).exists() and not Path(out).is_dir():
        raise CapsimError(f"--out: {out} is a file; with --engine llama.cpp it names a folder")
    return tree


def measure_llama(llama_dir, shapes, quants, batches, prompt_lens, output_len, repeats, threads, out) -> None:
    tree = check(llama_dir, shapes, quants, out)
    cmd = [sys.executable, str(RUNNER), "--llama-dir", str(tree), "--shapes", shapes or ",".join(SHAPES),
           "--quants", quants, "--prompts", ",".join(map(str, prompt_lens)), "--gen", str(output_len),
           "--batches", ",".join(map(str, batches)), "--repeats", str(repeats), "--out-dir", str(out)]
    if threads:
        cmd += ["--threads", str(threads)]
    rc = subprocess.run(cmd).returncode
    if rc:
        raise SystemExit(rc)
