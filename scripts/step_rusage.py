"""Where a measured prefill step's time goes: user vs kernel CPU time and fresh pages faulted in.

Builds the run file's model (random weights, the same config `capsim measure` used), runs prefill steps
of batch x length tokens on 1 thread and prints, per step, wall time, user and kernel (system) CPU time
and minor page faults (as bytes of 4 KiB pages) from getrusage(2), plus the peak resident set.

    python scripts/step_rusage.py validation/measured/cpu/olmoe-like.json --batch 64 --length 1024 --steps 2

Used for validation/FAULTS.md. Needs torch and transformers (measurement side, not the prediction path).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]  # the repository (run files name shape files from it)

PAGE_BYTES = 4096  # x86-64 base page (minor faults count base pages)


@click.command()
@click.argument("run_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch", type=click.IntRange(min=1), required=True, help="Sequences per prefill step.")
@click.option("--length", type=click.IntRange(min=1), required=True, help="Prompt tokens per sequence.")
@click.option("--steps", type=click.IntRange(min=1), default=2, show_default=True, help="Steps to run (the first is warm-up).")
def main(run_file: Path, batch: int, length: int, steps: int) -> None:
    import torch

    from capsim.traces.hf_model import load_hf_model

    torch.set_num_threads(1)
    # the model `capsim measure` ran: the run's shape file, random weights, seed 0
    model, _, _ = load_hf_model(ROOT / json.loads(run_file.read_text())["model"]["source"], random_init=True)
    config = model.config
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    print("step  wall_s  user_s  sys_s  minor_fault_GB  maxrss_GB")
    with torch.inference_mode():
        for i in range(steps):
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            model(ids, use_cache=True, logits_to_keep=1)
            wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
            print(f"{i:4d}  {wall:6.2f}  {r1.ru_utime - r0.ru_utime:6.2f}  {r1.ru_stime - r0.ru_stime:5.2f}"
                  f"  {(r1.ru_minflt - r0.ru_minflt) * PAGE_BYTES / 1e9:14.2f}  {r1.ru_maxrss * 1024 / 1e9:9.2f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
