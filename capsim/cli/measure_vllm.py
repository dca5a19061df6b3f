"""``capsim measure --engine vllm``: vLLM's CPU build timed on random-initialised MoE shapes, by the runner
capsim/measure/vllm_cpu.py in vLLM's own venv (vllm-cpu pins its own transformers; capsim never imports vllm).
Each shape's run file (format capsim-vllm-cpu-run v1: the points, the engine's settings, the machine's CPU model
and ISA flags, the thread binding) goes to the --out folder; ``capsim validate --vllm-cpu`` predicts them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from capsim.errors import CapsimError

DEFAULT_PYTHON = Path("benchmarks/.venv-vllm/bin/python")  # the README's install (validation/measured/vllm-cpu/)
RUNNER = Path(__file__).resolve().parents[1] / "measure" / "vllm_cpu.py"  # in the package: a wheel has it
SHAPES = ("qwen3-moe-like", "mixtral-like", "olmoe-like", "deepseek-like")


def command(python: Path, shapes: str | None, batches, prompt_lens, output_len: int, repeats: int, out: Path,
            runner: Path) -> list[str]:
    """The runner's command line for these settings."""
    return [str(python), str(runner), "--shapes", shapes or ",".join(SHAPES),
            "--batches", ",".join(str(b) for b in batches), "--prompts", ",".join(str(p) for p in prompt_lens),
            "--output-len", str(output_len), "--repeats", str(repeats), "--out-dir", str(out)]


def check(python: Path, shapes: str | None, out: Path | None) -> None:
    if shapes is not None:
        bad = [s for s in shapes.split(",") if s not in SHAPES]
        if bad:
            raise CapsimError(f"--shapes: unknown shape {bad[0]!r} (expected a comma list of {', '.join(SHAPES)})")
    if out is None:
        raise CapsimError("--out: required with --engine vllm (a folder for one run file per shape)")
    if out.exists() and not out.is_dir():
        raise CapsimError(f"--out: {out} is a file; with --engine vllm it names a folder")
    if not python.is_file():
        raise CapsimError(f"--vllm-python: {python} not found; install vllm-cpu in its own venv first "
                          "(validation/measured/vllm-cpu/README.md, 'How')")


def measure_vllm(vllm_python, shapes, batches, prompt_lens, output_len, repeats, out) -> None:
    python = Path(vllm_python) if vllm_python else DEFAULT_PYTHON
    out = None if out is None else Path(out)
    check(python, shapes, out)
    runner = RUNNER
    out.mkdir(parents=True, exist_ok=True)
    rc = subprocess.run(command(python, shapes, batches, prompt_lens, output_len, repeats, out, runner)).returncode
    if rc:
        raise SystemExit(rc)
