"""A peer tool installed in a throwaway virtual environment of the benchmark's own (never in capsim's).

``ensure(venv, spec)`` creates ``venv`` with ``python -m venv`` and ``pip install spec`` (``torch==2.13.0``
first if the spec would pull torch: an unpinned torch downloads gigabytes of CUDA packages), or reuses it
when its stamp file says the same spec was installed. ``run(venv, code, *args)`` runs Python code there and
returns the JSON object its last output line holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

TORCH_SPEC = "torch==2.13.0"  # the local CPU wheel; never an unpinned torch


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)


def ensure(venv: Path, spec: str, reinstall: bool = False) -> str:
    """Create or reuse the virtual environment; returns a note on what was done."""
    stamp = venv / ".bench-installed"
    if stamp.exists() and stamp.read_text().strip() == spec and not reinstall:
        return f"reused {venv.name}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
    dry = _pip(venv, "install", "--dry-run", spec)
    if dry.returncode:
        raise RuntimeError(f"pip cannot resolve {spec}: {dry.stderr.strip().splitlines()[-1:]}")
    would = " ".join(line for line in dry.stdout.splitlines() if line.startswith("Would install"))
    if " torch-" in f" {would.split('install', 1)[-1]}":
        done = _pip(venv, "install", TORCH_SPEC)  # before anything that depends on torch
        if done.returncode:
            raise RuntimeError(f"pip install {TORCH_SPEC} failed: {done.stderr.strip().splitlines()[-1:]}")
    done = _pip(venv, "install", spec)
    if done.returncode:
        raise RuntimeError(f"pip install {spec} failed: {done.stderr.strip().splitlines()[-1:]}")
    stamp.write_text(spec + "\n")
    return f"created {venv.name} in {time.perf_counter() - t0:.0f} s"


def run(venv: Path, code: str, *args: str, timeout: float = 1800) -> dict:
    """Run ``code`` with the venv's Python; the JSON object on its last line of output."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    p = subprocess.run([str(venv / "bin" / "python"), "-c", code, *args], capture_output=True, text=True, env=env,
                       timeout=timeout)
    if p.returncode:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"peer run failed (exit {p.returncode}): {tail}")
    return json.loads(p.stdout.strip().splitlines()[-1])
