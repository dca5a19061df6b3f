"""``capsim cap radar``: the MoE-CAP radar diagram (cost, accuracy, performance) of several systems, as PNG and
SVG, with a table of the raw values, scores and class of each system."""

from __future__ import annotations

import json

import click

from capsim.cli.oneline import CapsimCommand
from capsim.cli.table import render
from capsim.errors import CapsimError

DEFAULT_OUT = "cap_radar"


def _rows(evaluated, scores) -> list[dict]:
    out = []
    for e, s in zip(evaluated, scores, strict=True):
        sc = e.scenario
        out.append({
            "name": e.system.name, "class": s.cap_class, "scores": s.as_dict(),
            "tpot_s": e.tpot_s, "decode_tokens_per_s": e.decode_tokens_per_s,
            "capex_usd": e.capex_usd, "capex_basis": e.capex_basis, "capex_source": e.capex_source,
            "accuracy": e.accuracy, "accuracy_source": e.accuracy_source, "accuracy_note": e.accuracy_note,
            "scenario": {k: sc[k] for k in ("model", "hardware", "device", "devices", "nodes", "engine", "precision",
                                            "batch", "input_len", "output_len", "tp", "ep", "pp")}
            | {"offload": e.system.offload, "where": e.system.where},
            "notes": e.notes,
        })
    return out


def _human(rows: list[dict], basis: dict, metric: str, benchmark: str | None, files: list[str]) -> str:
    from capsim.cap.radar_plot import performance_text

    head = ["system", "class", "TPOT" if metric == "tpot" else "tokens/s", "capex", "accuracy (source)",
            "perf", "cost", "acc"]
    table = [[r["name"], r["class"], performance_text(r, metric), f"${r['capex_usd']:,.0f}",
              f"{r['accuracy']:.3f} ({r['accuracy_source']})",
              *(f"{r['scores'][a]:.1f}" for a in ("performance", "cost", "accuracy"))] for r in rows]
    perf = ("TPOT, min-max (lower is better)" if metric == "tpot" else "decode tokens/s, min-max (higher is better)")
    lines = [f"CAP radar, {benchmark or 'accuracy as stated'}: scores on [20, 100] after MoE-CAP (arXiv 2412.07067)",
             render(head, table), "",
             f"performance: {perf}; cost: capex against the 1-2-5 tick ${basis['cost_tick_max_usd']:,.0f}; "
             f"accuracy: from {basis['accuracy_min']:.3f} to 1.0",
             "class: the two axes with the highest scores (ties: performance, then cost, then accuracy)"]
    notes = [f"  {r['name']}: {n}" for r in rows for n in [*r["notes"], r["accuracy_note"]] if n]
    if notes:
        lines += ["notes:", *notes]
    lines.append("wrote " + ", ".join(files))
    return "\n".join(lines)


def _titles(rows: list[dict], benchmark: str | None) -> tuple[str, str]:
    models = sorted({r["scenario"]["model"] for r in rows})
    what = models[0] if len(models) == 1 else f"{len(models)} models"
    loads = {(r["scenario"]["batch"], r["scenario"]["input_len"], r["scenario"]["output_len"]) for r in rows}
    sub = "performance predicted by capsim"
    if len(loads) == 1:
        b, i, o = loads.pop()
        sub += f" (batch {b}, {i} prompt tokens, {o} output tokens)"
    return f"CAP radar: {what}" + (f", {benchmark}" if benchmark else ""), sub


@click.command("radar", cls=CapsimCommand,
               short_help="MoE-CAP radar diagram (PNG, SVG) of several systems, with their classes.")
@click.argument("systems_file", metavar="[SYSTEMS.yaml]", required=False, type=click.Path(dir_okay=False))
@click.option("--system", "system_flags", multiple=True, metavar="KEY=VAL,...",
              help="A system (repeatable), added to those of SYSTEMS.yaml: the keys of a systems entry as KEY=VAL "
                   "pairs separated by commas.")
@click.option("--benchmark", "-b", default=None,
              help="Accuracy benchmark in the cited table (e.g. GSM8K, MMLU) [SYSTEMS.yaml 'benchmark:'].")
@click.option("--performance", "metric", type=click.Choice(["tpot", "throughput"]), default="tpot",
              show_default=True, help="Performance axis: TPOT (lower is better) or decode tokens/s (higher).")
@click.option("--out", "-o", default=DEFAULT_OUT, show_default=True, metavar="PREFIX",
              help="Write PREFIX.png and PREFIX.svg.")
@click.option("--price", "prices", multiple=True, metavar="NAME=USD",
              help="Unit price of a part (component name or item id) of every system that has it.")
@click.option("--any-precision", is_flag=True,
              help="Accept a published score of another precision when none is published at the system's own.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (SI units: s, USD, fractions).")
@click.pass_context
def radar_cmd(ctx, systems_file, system_flags, benchmark, metric, out, prices, any_precision, as_json) -> None:
    """The MoE-CAP radar diagram of two or more systems: performance, cost and accuracy each scored on
    [20, 100], each system classed by its two best axes (performance-accuracy, performance-cost,
    cost-accuracy), drawn as PREFIX.png and PREFIX.svg with a table beside it.

    \b
      capsim cap radar examples/cap_radar/qwen3-30b-a3b.yaml --out docs/img/cap_radar
      capsim cap radar -b gsm8k --out radar \\
          --system name=A,model=qwen1.5-moe,hardware=rtx-4090,devices=2,engine=trt-llm \\
          --system name=B,model=qwen1.5-moe,hardware=cpu-server-epyc-9654,engine=llama.cpp

    \b
    SYSTEMS.yaml:
      benchmark: gsm8k                     # optional; --benchmark wins
      defaults: {model: qwen3-30b-a3b, batch: 1}   # optional: keys shared by every system
      systems:                             # two or more
        - name: A100 x2 TRT-LLM            # label [HARDWARE (ENGINE)]
          hardware: dgx-a100               # system, accelerator or CPU id ('capsim hw list')
          devices: 2                       # per node; a system used in part is pro-rated
          engine: trt-llm
        - name: 4090 + CPU experts
          hardware: workstation-rtx-4090
          engine: ktransformers
          offload: cpu                     # cpu | gpu-fetch
          prices: {dram: 170}              # a part without a price, this system only
          accuracy: {value: 0.80, source: "where it was read"}   # instead of the table

    System keys: name, model, hardware, devices, nodes, engine, precision, kv_precision, batch, input_len,
    output_len, offload, expert_cache, tp, ep, pp (as in capsim predict), capex_usd (or {value, source}),
    prices, accuracy ({value, source}). In --system: capex_source=, accuracy_source=, price.NAME=USD.

    Performance is capsim's prediction (TPOT or batch / TPOT). Capex is the purchase price of the devices the
    prediction uses (capsim cap cost), x nodes. Accuracy is the published score of the model on the benchmark
    at the system's precision (capsim cap accuracy). Scores: performance min-max over the systems; cost
    20 + 80 x (1 - capex / T), T the 1-2-5 tick at or above the largest capex; accuracy from the lowest to 1.0.
    """
    from capsim.cap import radar, radar_plot
    from capsim.cap import radar_systems as rs
    from capsim.cli.cap_cost import _prices
    from capsim.hardware import db as hwdb

    file_bench, systems = rs.read_file(systems_file) if systems_file else (None, [])
    systems += [rs.parse_flag(text, i + 1) for i, text in enumerate(system_flags)]
    if not systems_file and not system_flags:
        raise CapsimError("no systems: give SYSTEMS.yaml and/or --system KEY=VAL,... (at least 2 systems)")
    rs.check_systems(systems)
    radar_plot.destination(out)
    bench = benchmark or file_bench
    db = hwdb.load(ctx.obj.get("hardware_db") if ctx.obj else None)
    evaluated = rs.evaluate(systems, db, bench, _prices(prices), any_precision)
    perf = [e.tpot_s if metric == "tpot" else e.decode_tokens_per_s for e in evaluated]
    scores, basis = radar.radar(perf, [e.capex_usd for e in evaluated], [e.accuracy for e in evaluated], metric)
    rows = _rows(evaluated, scores)
    files = radar_plot.write(rows, basis, out, metric, bench, *_titles(rows, bench))
    if as_json:
        click.echo(json.dumps({"benchmark": bench, "performance_metric": metric, "normalisation": basis,
                               "systems": rows, "files": files}, indent=2))
    else:
        click.echo(_human(rows, basis, metric, bench, files))
