"""``capsim trace collect``: record expert routing from a real Hugging Face MoE model.

torch and transformers are imported only when the command runs (capsim.traces.collect), so
``capsim --help`` and the prediction path work without them.
"""

from __future__ import annotations

import json
import sys

import click

from capsim.cli import progress as bars


@click.command("collect")
@click.option("--model", "model", required=True, type=click.Path(),
              help="Model folder (config.json + weights, tokenizer if any) or a config.json file (with --random-init).")
@click.option("--prompts", required=True, type=click.Path(),
              help="Text file, one prompt per line (blank lines skipped), or .jsonl with a \"prompt\" or \"text\" field.")
@click.option("--max-new-tokens", type=int, required=True, help="Tokens generated per prompt (greedy).")
@click.option("--batch-size", type=int, default=1, show_default=True, help="Prompts per batch (left-padded).")
@click.option("--out", required=True, type=click.Path(), help="Trace folder to write (e.g. traces/NAME).")
@click.option("--random-init", is_flag=True,
              help="Random weights from the config (seeded) instead of the checkpoint's weights.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random initialisation.")
@click.option("--max-prompt-tokens", type=int, default=256, show_default=True,
              help="Prompts are truncated to their first N tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print the written trace's meta.json.")
@bars.option()
def collect_cmd(model: str, prompts: str, max_new_tokens: int, batch_size: int, out: str, random_init: bool,
                seed: int, max_prompt_tokens: int, as_json: bool, progress: bool | None) -> None:
    """Run prefill and greedy decode with the KV cache on PROMPTS and record, per token and MoE layer,
    the top-k expert ids and routing weights (prefill/decode and sequence marked).

    Finished batches are kept in OUT.partial/; rerunning the same command resumes. OUT is replaced
    only when the whole trace is written, so an interrupted run leaves the previous one intact."""
    from capsim.traces.collect import collect

    with bars.Progress(None, "collecting", enabled=bars.wanted(progress, as_json), unit="batches") as bar:
        res = collect(model, prompts, max_new_tokens, batch_size, out, random_init=random_init, seed=seed,
                      max_prompt_tokens=max_prompt_tokens, command=list(sys.argv), on_progress=bar.set)
    if as_json:
        click.echo(json.dumps(res.meta, indent=1))
        return
    m = res.meta
    resumed = f", {len(res.resumed_batches)} batch(es) resumed" if res.resumed_batches else ""
    click.echo(f"wrote {res.path}: {m['tokens']} tokens ({m['prefill_tokens']} prefill, {m['decode_tokens']} "
               f"decode) from {m['sequences']} sequences, {m['moe_layers']} MoE layers, top-{m['top_k']} of "
               f"{m['num_experts']} experts{resumed}")
