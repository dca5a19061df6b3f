"""Which tensors an eager transformers prefill allocates afresh: every allocation at or above glibc's mmap
threshold (32 MiB), by the aten op that made it and its width in fp32 elements per token.

Builds the run file's model (random weights), runs one warm-up prefill of batch x length tokens and one
under the torch profiler (profile_memory=True), and counts the self allocations of each op. Their total is
what the kernel faults in afresh per step (compare `scripts/step_rusage.py`'s minor faults).

    python scripts/alloc_inventory.py validation/measured/cpu/mixtral-like.json --batch 16 --length 1024

Used for validation/FAULTS.md. Needs torch and transformers (measurement side, not the prediction path).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]  # the repository (run files name shape files from it)

MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc DEFAULT_MMAP_THRESHOLD_MAX on 64-bit (mallopt(3))
FP32_BYTES = 4


@click.command()
@click.argument("run_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch", type=click.IntRange(min=1), required=True, help="Sequences per prefill step.")
@click.option("--length", type=click.IntRange(min=1), required=True, help="Prompt tokens per sequence.")
def main(run_file: Path, batch: int, length: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from capsim.traces.hf_model import load_hf_model

    torch.set_num_threads(1)
    # the model `capsim measure` ran: the run's shape file, random weights, seed 0
    model, _, _ = load_hf_model(ROOT / json.loads(run_file.read_text())["model"]["source"], random_init=True)
    config = model.config
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(ids, use_cache=True, logits_to_keep=1)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(ids, use_cache=True, logits_to_keep=1)
    tokens = batch * length
    counts: collections.Counter = collections.Counter()
    total = 0
    for e in prof.events():
        nbytes = e.self_cpu_memory_usage
        if nbytes >= MMAP_THRESHOLD_BYTES:
            counts[(e.name, round(nbytes / (tokens * FP32_BYTES), 2))] += 1
            total += nbytes
    print(f"{'op':40s} {'width (fp32 elements / token)':>30s} {'count':>6s}")
    for (name, width), n in sorted(counts.items(), key=lambda kv: -kv[0][1] * kv[1]):
        print(f"{name:40s} {width:30.2f} {n:6d}")
    print(f"fresh bytes per step: {total / 1e9:.2f} GB ({tokens} tokens, {config.num_hidden_layers} layers)")


if __name__ == "__main__":
    main()
