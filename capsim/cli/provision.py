"""``capsim provision``: the cheapest systems that serve a model within throughput, latency and accuracy limits."""

from __future__ import annotations

import json
import math

import click

from capsim import checks, engines
from capsim.checks import MAX_SEQUENCES, MAX_TOKENS, MAX_USD
from capsim.cli import choices
from capsim.cli import progress as bars
from capsim.cli.oneline import CapsimCommand
from capsim.cli.table import render
from capsim.errors import CapsimError
from capsim.hardware import db as hwdb
from capsim.units import seconds_flag

DEFAULT_INPUT_LEN = 1024  # tokens: a chat prompt with history
DEFAULT_OUTPUT_LEN = 256
DEFAULT_MAX_NODES = 4
# Node counts tried one by one (each a layout): 256 nodes of an 8-GPU system are 2,048 GPUs, beyond one inference
# deployment; more would only multiply the search.
MAX_PROVISION_NODES = 256
DEFAULT_MAX_BATCH = 4096
DEFAULT_TOP = 10


def _pairs(flag: str, items: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for text in items:
        name, sep, value = text.partition("=")
        try:
            v = float(value.replace(",", "").lstrip("$"))
        except ValueError:
            sep = ""
        if not sep or not name.strip() or not 0 < v <= MAX_USD:
            raise CapsimError(f"{flag} {text}: expected NAME=USD with a positive, finite amount")
        out[name.strip()] = v
    return out


def _check_names(db, model: str, engine: str, precisions: list[str], hardware: tuple[str, ...],
                 given: dict[str, float], req) -> None:
    """Every name the search would try exists, before it starts (a misspelt one is bad input, not a row of
    'layouts that cannot run')."""
    from capsim import engines, precision
    from capsim.cap import accuracy
    from capsim.model.catalogue import load_spec

    load_spec(model, allow_dense=True)
    engines.load(engine)
    for p in precisions:
        precision.get(p)
    if any(not part.strip() for v in hardware for part in v.split(",")):
        raise CapsimError(f"--hardware {','.join(hardware)!r}: an empty id; expected system or device ids")
    for name in given:
        try:
            hwdb.resolve_id(db, name)
        except CapsimError as err:
            raise CapsimError(f"--usd-per-hour {name}={given[name]:g}: {err}") from None
    if req.benchmark is not None:
        names = {accuracy.normalise(r.benchmark) for r in accuracy.load_table()[0]}
        if accuracy.normalise(req.benchmark) not in names:
            raise CapsimError(f"--benchmark {req.benchmark!r}: no such benchmark in the accuracy table "
                              "('capsim cap accuracy' lists them)")


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for text in values for v in text.split(",") if v.strip()]


def _ms(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x * 1e3:,.0f} ms" if x >= 0.1 else f"{x * 1e3:.1f} ms"


def _usd(x: float | None) -> str:
    return "unpriced" if x is None else f"${x:,.2f}"


def _limit(c) -> str:
    if c.binding == "max_batch":
        return "none up to --max-batch"
    if math.isinf(c.binding_ratio):
        if c.qualifies:
            return f"{c.binding} (does not fit at the next batch)"
        return "accuracy (no published score at this precision)" if c.binding == "accuracy" else f"{c.binding} (cannot run)"
    return f"{c.binding} ({c.binding_ratio:.0%} of limit at the next batch)" if c.qualifies else (
        f"{c.binding} ({c.binding_ratio:.2f}x the limit)")


def _rows(cands, qualifying: bool) -> list[list[str]]:
    rows = []
    for i, c in enumerate(cands, 1):
        cap = f"{c.max_tokens_per_s:,.0f} (b={c.max_batch})" if c.max_tokens_per_s else "-"
        rows.append([str(i), c.layout.label(), _usd(c.usd_per_h), c.price.basis, str(c.batch),
                     f"{c.tokens_per_s:,.0f}", _ms(c.ttft_s), _ms(c.tpot_s), f"{c.memory_use:.0%}", cap,
                     "-" if c.usd_per_million_tokens is None else f"${c.usd_per_million_tokens:,.3f}", _limit(c)])
    return rows


HEAD = ["#", "system", "$/h", "basis", "batch", "tok/s", "TTFT", "TPOT", "mem", "capacity tok/s",
        "$/1M tok", "binding constraint"]


def human(res, top: int) -> str:
    w, req = res.workload, res.requirements
    lines = [f"{w.model}, prompt {w.input_len} + output {w.output_len} tokens, engine {w.engine}: "
             f"{req.describe()}",
             f"{res.layouts} layouts x {res.points // max(res.layouts, 1)} batch sizes searched in {res.seconds:.2f} s"]
    if res.ranked:
        lines += ["", f"cheapest that qualify ({len(res.ranked)}):", render(HEAD, _rows(res.ranked[:top], True))]
    if res.unpriced:
        lines += ["", f"qualify but have no price ({len(res.unpriced)}; give one with --usd-per-hour HW=USD or "
                  "--price PART=USD):", render(HEAD, _rows(res.unpriced[:top], True))]
    if not res.ranked and not res.unpriced:
        lines += ["", "NO candidate meets every limit. Closest (the constraint that binds, and by how much):",
                  render(HEAD, _rows(res.closest[:top], False))]
    if res.errors:
        lines += ["", f"layouts that cannot run ({sum(res.errors.values())}):"]
        lines += [f"  {n} x {e}" for e, n in sorted(res.errors.items(), key=lambda kv: -kv[1])[:8]]
    lines += ["", "TTFT (arrival): one prompt prefilled alone after the decode step in flight; capacity: output "
              "tokens/s at the largest batch within the limits; mem: device memory needed / capacity."]
    return "\n".join(lines)


def as_dict(res, top: int, plot: str | None) -> dict:
    req = res.requirements
    return {
        "model": res.workload.model, "input_len": res.workload.input_len, "output_len": res.workload.output_len,
        "engine": res.workload.engine,
        "requirements": {"output_tokens_per_s": req.tokens_per_s, "users": req.users, "ttft_s": req.ttft_s,
                         "tpot_s": req.tpot_s, "min_accuracy": req.min_accuracy, "benchmark": req.benchmark,
                         "ttft_mode": req.ttft_mode},
        "qualifying": [c.row() for c in res.ranked[:top]],
        "qualifying_unpriced": [c.row() for c in res.unpriced[:top]],
        "closest": [] if res.ranked or res.unpriced else [c.row() for c in res.closest[:top]],
        "found": bool(res.ranked or res.unpriced),
        "layouts_searched": res.layouts, "operating_points": res.points, "seconds": res.seconds,
        "layouts_failed": [{"reason": e, "count": n} for e, n in res.errors.items()], "plot": plot,
    }


@click.command("provision", cls=CapsimCommand)
@click.option("--model", "-m", required=True, shell_complete=choices.complete_models,
              help="Model id, alias or config.json path.")
@click.option("--hardware", "-H", multiple=True, metavar="IDS", shell_complete=choices.complete_hardware,
              help="Systems or devices to consider (repeat or comma-separate) [every system in the database].")
@click.option("--users", type=int, default=None, help="Concurrent users (sequences decoded together) to serve.")
@click.option("--tokens-per-s", type=float, default=None, help="Output tokens/s to serve over all users.")
@click.option("--ttft", default=None, metavar="TIME", help="Time-to-first-token limit, e.g. 2s or 500ms.")
@click.option("--tpot", default=None, metavar="TIME", help="Time-per-output-token limit, e.g. 50ms.")
@click.option("--min-accuracy", type=float, default=None, help="Lowest published score accepted (fraction).")
@click.option("--benchmark", default=None, help="Benchmark of --min-accuracy (see 'capsim cap accuracy').")
@click.option("--accuracy-any-precision", is_flag=True,
              help="Accept a score published for another weight format of the model (said in the output).")
@click.option("--input-len", type=int, default=DEFAULT_INPUT_LEN, show_default=True, help="Prompt tokens.")
@click.option("--output-len", type=int, default=DEFAULT_OUTPUT_LEN, show_default=True, help="Output tokens.")
@click.option("--precision", "precisions", multiple=True, metavar="FORMATS",
              shell_complete=choices.complete_precisions,
              help=f"Weight formats to try (repeat or comma-separate): {choices.PRECISIONS_HELP} [the checkpoint's "
                   "own].")
@click.option("--offload", "offloads", multiple=True, metavar="MODES", default=("none", "cpu"), show_default=True,
              help="Expert placements to try: none, cpu (experts computed on the host), gpu-fetch.")
@click.option("--engine", default=engines.DEFAULT_ENGINE, show_default=True, shell_complete=choices.complete_engines,
              help=f"Engine profile: {choices.ENGINES_HELP}.")
@click.option("--routing", default="real", show_default=True, metavar="uniform|real|PATH",
              help="Routing replayed (as capsim predict --routing): the model's real routing data by default.")
@click.option("--max-nodes", type=int, default=DEFAULT_MAX_NODES, show_default=True,
              help="Most copies of a system joined by its scale-out link.")
@click.option("--max-batch", type=int, default=DEFAULT_MAX_BATCH, show_default=True,
              help="Largest batch tried (powers of two up to it, plus --users).")
@click.option("--ttft-mode", type=click.Choice(["arrival", "batch"]), default="arrival", show_default=True,
              help="arrival: one new prompt prefilled after the step in flight; batch: all prompts at once.")
@click.option("--cost-basis", type=click.Choice(["auto", "cloud", "owned"]), default="auto", show_default=True,
              help="auto: the listed cloud price where there is one, else owned (capex + energy).")
@click.option("--usd-per-hour", "usd_per_hour", multiple=True, metavar="HW=USD",
              help="Price per hour of one whole system (or one device) that overrides the database.")
@click.option("--price", "prices", multiple=True, metavar="NAME=USD", help="Unit price of a part (owned basis).")
@click.option("--utilisation", type=float, default=None, help="Fraction of hours spent serving (default 1).")
@click.option("--top", type=int, default=DEFAULT_TOP, show_default=True, help="Rows shown per table.")
@click.option("--plot", default=None, metavar="FILE", help="Write the cost-throughput Pareto plot (.png or .svg).")
@click.option("--request-rate", type=float, default=None,
              help="Serve this many requests/s (Poisson) with capsim serve and hold --slo-ttft-p99 / --slo-tpot-p99 "
                   "instead of the static limits.")
@click.option("--num-requests", type=int, default=1000, show_default=True, help="With --request-rate: requests sent.")
@click.option("--slo-ttft-p99", default=None, metavar="TIME", help="With --request-rate: p99 TTFT limit, e.g. 500ms.")
@click.option("--slo-tpot-p99", default=None, metavar="TIME", help="With --request-rate: p99 TPOT limit, e.g. 50ms.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (SI units).")
@bars.option()
@click.pass_context
def provision_cmd(ctx, model, hardware, users, tokens_per_s, ttft, tpot, min_accuracy, benchmark,
                  accuracy_any_precision, input_len, output_len, precisions, offloads, engine, routing, max_nodes,
                  max_batch, ttft_mode, cost_basis, usd_per_hour, prices, utilisation, top, plot, request_rate,
                  num_requests, slo_ttft_p99, slo_tpot_p99, as_json, progress) -> None:
    """The cheapest hardware that serves MODEL within the limits: a ranked table with each candidate's binding
    constraint, and a cost-throughput Pareto plot.

    Every system (or those named with --hardware) is tried with its device counts, up to --max-nodes nodes,
    TP/EP splits, weight formats and expert placements, over a grid of batch sizes. When no candidate meets
    every limit, the closest are listed with the constraint that binds.

    Example: capsim provision -m deepseek-v3 --users 1000 --tpot 50ms --ttft 2s -H dgx-h200,dgx-h100

    Exit codes: 0 an answer (also when no candidate qualifies: the closest are listed); 2 bad input.
    """
    from capsim.cap import assumptions as cap_assumptions
    from capsim.cap.hourly import Pricer
    from capsim.provision.candidates import enumerate_layouts, system_ids
    from capsim.provision.evaluate import Workload
    from capsim.provision.requirements import Requirements
    from capsim.provision.search import search

    if request_rate is not None:
        _under_load(ctx, model, hardware, input_len, output_len, precisions, engine, routing, max_nodes, cost_basis,
                    usd_per_hour, prices, utilisation, top, request_rate, num_requests, slo_ttft_p99, slo_tpot_p99,
                    as_json, progress)
        return
    req = Requirements(tokens_per_s=tokens_per_s, users=users, ttft_s=seconds_flag("--ttft", ttft),
                       tpot_s=seconds_flag("--tpot", tpot), min_accuracy=min_accuracy, benchmark=benchmark,
                       ttft_mode=ttft_mode).check()
    for flag, v, high in (("--input-len", input_len, MAX_TOKENS), ("--output-len", output_len, MAX_TOKENS),
                          ("--top", top, None), ("--max-batch", max_batch, MAX_SEQUENCES),
                          ("--max-nodes", max_nodes, MAX_PROVISION_NODES)):
        checks.integer(v, flag, low=1, high=high)
    if utilisation is not None:
        checks.number(utilisation, "--utilisation", positive=True, high=1.0)
    if plot is not None:
        from capsim import atomic, outputs

        atomic.figure_format(plot, "--plot")
        outputs.check_output(plot, "figure", "--plot")
    db = hwdb.load(ctx.obj.get("hardware_db") if ctx.obj else None)
    _check_names(db, model, engine, _split(precisions), hardware, _pairs("--usd-per-hour", usd_per_hour), req)
    a = cap_assumptions.load(db).with_overrides(flags={"utilisation": "--utilisation"}, utilisation=utilisation)
    pricer = Pricer(db, a, cost_basis, _pairs("--price", prices), _pairs("--usd-per-hour", usd_per_hour))
    layouts = enumerate_layouts(db, _split(hardware) or system_ids(db), _split(precisions) or [None], max_nodes,
                                _split(offloads))
    with bars.Progress(len(layouts), "searching", enabled=bars.wanted(progress, as_json), unit="layouts") as bar:
        res = search(layouts, Workload(model, input_len, output_len, engine, routing), req, db, pricer, max_batch,
                     accuracy_any_precision, progress=bar.update)
    if plot is not None:
        from capsim.provision.plot import pareto_plot

        pareto_plot(res, plot)
    click.echo(json.dumps(as_dict(res, top, plot), indent=2) if as_json else human(res, top))
    if plot is not None and not as_json:
        click.echo(f"plot: {plot}")


def _under_load(ctx, model, hardware, input_len, output_len, precisions, engine, routing, max_nodes, cost_basis,
                usd_per_hour, prices, utilisation, top, request_rate, num_requests, slo_ttft_p99, slo_tpot_p99,
                as_json, progress) -> None:
    """``--request-rate``: every layout served under the load with capsim serve (capsim.provision.load)."""
    from capsim.cap import assumptions as cap_assumptions
    from capsim.cap.hourly import Pricer
    from capsim.provision.candidates import enumerate_layouts, system_ids
    from capsim.provision.load import LoadQuery, human, search_under_load

    checks.number(request_rate, "--request-rate", positive=True, high=None)
    checks.integer(num_requests, "--num-requests", low=1, high=MAX_SEQUENCES)
    for flag, v in (("--input-len", input_len), ("--output-len", output_len)):
        checks.integer(v, flag, low=1, high=MAX_TOKENS)
    q = LoadQuery(model, input_len, output_len, engine, routing, request_rate, num_requests,
                  seconds_flag("--slo-ttft-p99", slo_ttft_p99), seconds_flag("--slo-tpot-p99", slo_tpot_p99)).check()
    db = hwdb.load(ctx.obj.get("hardware_db") if ctx.obj else None)
    a = cap_assumptions.load(db).with_overrides(flags={"utilisation": "--utilisation"}, utilisation=utilisation)
    pricer = Pricer(db, a, cost_basis, _pairs("--price", prices), _pairs("--usd-per-hour", usd_per_hour))
    layouts = enumerate_layouts(db, _split(hardware) or system_ids(db), _split(precisions) or [None], max_nodes,
                                ["none"])
    with bars.Progress(len(layouts), "serving", enabled=bars.wanted(progress, as_json), unit="layouts") as bar:
        res = search_under_load(layouts, q, db, pricer, progress=bar.update)
    click.echo(json.dumps(res, indent=2, default=float) if as_json else human(res, top))
