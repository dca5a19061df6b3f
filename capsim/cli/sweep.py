"""``capsim sweep``: a grid of scenarios evaluated vectorised, written to Parquet or CSV.

pandas, pyarrow and dask are imported inside the command, so that ``capsim predict`` does not pay for them.
"""

from __future__ import annotations

import json
import time

import click

from capsim.cli import choices
from capsim.cli import progress as bars
from capsim.cli.table import render
from capsim.hardware import db as hwdb
from capsim.units import format_quantity

DEFAULT_MAX_SCENARIOS = 1_048_576  # 2^20; peak RSS 1.18 GB for 2^20 scenarios (benchmarks/bench_sweep.py, 2026-12-07)
PROGRESS_FROM = 200_000  # scenarios; smaller sweeps take well under a second

AXIS_FLAGS = (  # (flag, short, grid key, help)
    ("--model", "-m", "models", "Model ids, aliases or config.json paths."),
    ("--hardware", "-H", "hardware", "System or device ids ('capsim hw list')."),
    ("--devices", None, "devices", "Devices per node, or 'all' [grid default: all of a system's, 1 for a device]."),
    ("--nodes", None, "nodes", "Copies of a system joined by its scale-out link [1]."),
    ("--precision", None, "precisions", f"Weight formats ({choices.PRECISIONS_HELP}), or 'native' [the "
     "checkpoint's]."),
    ("--kv-precision", None, "kv_precisions", f"KV-cache formats ({choices.KV_HELP}), or 'auto' [bf16]."),
    ("--engine", None, "engines", f"Engine profiles ({choices.ENGINES_HELP}) [roofline]."),
    ("--batch", None, "batch", "Concurrent sequences [1]."),
    ("--input-len", None, "input_len", "Prompt tokens per sequence [512]."),
    ("--output-len", None, "output_len", "Generated tokens per sequence [128]."),
    ("--tp", None, "tp", "Tensor-parallel sizes, or 'auto' [all devices of a stage inside a node]."),
    ("--ep", None, "ep", "Expert-parallel sizes (1 or every device of a stage), or 'all' [1]."),
    ("--pp", None, "pp", "Pipeline stages [1]."),
    ("--dp", None, "dp", "Attention data-parallel groups per stage, or 'auto' [a stage's devices / tp]."),
    ("--offload", None, "offload", "Expert offload: none, gpu-fetch or cpu [none]."),
    ("--expert-cache", None, "expert_cache", "With offload: resident experts per MoE layer, or 'auto' [as many "
     "as fit]."),
    ("--expert-tier", None, "expert_tier", "With offload: where the other experts live, dram or ssd [dram]."),
    ("--cache-policy", None, "cache_policy", "With offload and a trace: lru, lfu or static [lru]."),
    ("--trace", None, "traces", "Routing: 'real' (the model's real trace, fitted model or prior), 'uniform' (or "
                                "'none'), trace folders or routing model files [real]."),
)


COMPLETERS = {"--model": choices.complete_models, "--hardware": choices.complete_hardware,
              "--precision": choices.complete_precisions, "--kv-precision": choices.complete_kv_precisions,
              "--engine": choices.complete_engines}


def _axis_options(f):
    for flag, short, _key, text in reversed(AXIS_FLAGS):
        names = [flag, short] if short else [flag]
        f = click.option(*names, f"axis_{flag[2:].replace('-', '_')}", multiple=True, metavar="VALUES",
                         help=text, shell_complete=COMPLETERS.get(flag))(f)
    return f


def _t(x: float) -> str:
    return format_quantity(x, "s", digits=3)


def _layout(row) -> str:
    par = f"TP{row.tp}" + (f" EP{row.ep}" if row.ep > 1 else "") + (f" DP{row.dp}" if row.dp > 1 else "") + (
        f" PP{row.pp}" if row.pp > 1 else "")
    nodes = f"{row.nodes}x" if row.nodes > 1 else ""
    return f"{nodes}{row.devices}x {row.device} {par}"


def human(s: dict, seconds: float, out: str | None, configurations: int, where: str) -> str:
    rate = s["scenarios"] / seconds if seconds > 0 else float("inf")
    lines = [f"{s['scenarios']:,} scenarios ({configurations:,} configurations) evaluated {where} in {seconds:.2f} s "
             f"({rate:,.0f} scenarios/s): {s['ok']:,} predicted ({s['does_not_fit']:,} do not fit in device "
             f"memory), {s['errors']:,} errors"]
    best = s["best"]
    if len(best):
        lines += ["", f"best decode throughput per configuration that fits ({min(len(best), s['configurations_that_fit'])}"
                  f" of {s['configurations_that_fit']:,} shown):"]
        rows = [[str(r.model), str(r.hardware), _layout(r), str(r.precision), f"{r.batch:,}",
                 f"{r.input_len:,}/{r.output_len:,}", f"{r.decode_tokens_per_s:,.0f}", _t(r.tpot_s), _t(r.ttft_s),
                 f"{100 * r.s_mbu:.1f}%", format_quantity(r.memory_per_device_bytes, "B", digits=3)]
                for r in best.itertuples()]
        lines.append(render(["model", "hardware", "layout", "precision", "batch", "in/out", "decode tok/s",
                             "TPOT", "TTFT", "S-MBU", "memory/device"], rows))
    if s["error_messages"]:
        lines += ["", "errors (rows: reason):"]
        items = list(s["error_messages"].items())
        lines += [f"  {n:,}: {msg}" for msg, n in items[:5]]
        if len(items) > 5:
            lines.append(f"  ... and {len(items) - 5} other reasons")
    lines.append("")
    lines.append(f"wrote {out}" if out else "no --out FILE given: results not written")
    return "\n".join(lines)


@click.command("sweep")
@click.argument("grid_file", metavar="[GRID.yaml]", required=False)
@click.option("--out", "-o", default=None, metavar="FILE",
              help="Write every scenario's result to FILE (.parquet, .pq, .csv or .csv.gz), atomically.")
@_axis_options
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Evaluate on a Dask distributed cluster (scheduler address, e.g. tcp://10.0.0.5:8786).")
@click.option("--connect-timeout", type=float, default=10.0, show_default=True,
              help="With --scheduler: seconds to wait for the scheduler.")
@click.option("--chunk-rows", type=int, default=None,
              help="With --scheduler: scenarios per task [about 4 tasks per worker, at most 262,144].")
@click.option("--max-scenarios", type=int, default=DEFAULT_MAX_SCENARIOS, show_default=True,
              help="Refuse larger grids (the results are held in memory before writing).")
@click.option("--top", type=int, default=10, show_default=True, help="Configurations in the summary table.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar with elapsed time and time left on stderr [on for a terminal and more than "
                   "200,000 scenarios, off with --json].")
@click.option("--request-rate", "request_rates", default=None, metavar="R1,R2,...",
              help="The load axis: serve every configuration at these Poisson request rates (capsim serve) instead of "
                   "static batches; one row per configuration, lengths and rate, with p50 / p99 latencies.")
@click.option("--num-requests", type=int, default=500, show_default=True, help="With --request-rate: requests sent.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.pass_context
def sweep_cmd(ctx: click.Context, grid_file, out, scheduler, connect_timeout, chunk_rows, max_scenarios, top, progress,
              request_rates, num_requests, as_json, **axes) -> None:
    """Evaluate every combination of models x hardware x devices x precisions x engines x layouts (tp, ep,
    pp, dp) x expert placements (offload, cache) x routing (real, uniform or traces) x batch x input/output lengths,
    vectorised, and write one row per scenario.

    Axes come from GRID.yaml (keys: models, hardware, devices, nodes, precisions, kv_precisions, engines,
    tp, ep, pp, dp, offload, expert_cache, expert_tier, cache_policy, traces, batch, input_len, output_len)
    and/or flags, a flag replacing that axis of the file. A flag
    may repeat or hold a comma list; integer axes also take ranges: A..B, A..B:+STEP, A..B:xFACTOR.

    \b
      capsim sweep grid.yaml --out results.parquet
      capsim sweep -m mixtral,deepseek-v3 -H dgx-h100 --devices 4,8 --precision bf16,fp8 \\
          --batch 1..256:x2 --input-len 512,2048 --output-len 128 --out results.csv
      capsim sweep grid.yaml --scheduler tcp://127.0.0.1:8786 --out results.parquet

    Columns (SI units): the scenario (model, model_id, hardware, device, devices, nodes, devices_total, tp,
    ep, dp, pp, precision, kv_precision, compute_dtype, engine, offload, expert_cache, expert_tier,
    cache_policy, trace, batch, input_len, output_len), ttft_s, tpot_s, request_latency_s,
    prefill_tokens_per_s, decode_tokens_per_s (all sequences), decode_tokens_per_s_per_user, decode s_mbu,
    s_mfu, mbu, mfu, activated_experts_per_layer, memory_per_device_bytes (weights, kv_cache),
    memory_capacity_bytes, output_tokens_per_s_total, experts_resident_per_layer, hit_rate_decode, fits,
    bottleneck_prefill, bottleneck_decode, usd_per_h, usd_per_million_output_tokens, and error (why a
    scenario cannot run; its metrics are then empty). The numbers equal `capsim predict --no-memory-check`
    for the same scenario.
    """
    from capsim.errors import CapsimError
    from capsim.sweep import grid as G
    from capsim.sweep import io
    from capsim.sweep.run import records, run_sweep, summary

    flags = {key: _split(axes[f"axis_{flag[2:].replace('-', '_')}"]) for flag, _s, key, _h in AXIS_FLAGS}
    grid = G.load(grid_file, flags)
    if grid.size > max_scenarios:
        raise CapsimError(f"{grid.size:,} scenarios ({' x '.join(map(str, grid.shape))}) is more than "
                          f"--max-scenarios {max_scenarios:,}; narrow the grid or raise the limit",
                          where=grid.source)
    if top < 0:
        raise CapsimError(f"--top {top}: expected an integer >= 0")
    from capsim import checks

    if connect_timeout is not None:
        checks.number(connect_timeout, "--connect-timeout", positive=True, high=None)
    if chunk_rows is not None:
        checks.integer(chunk_rows, "--chunk-rows", low=1)
    if out:
        io.check_destination(out)
    db = hwdb.load(ctx.obj.get("hardware_db") if ctx.obj else None)
    G.check_names(grid, db)
    if request_rates is not None:
        _load_axis(grid, db, request_rates, num_requests, out, progress, as_json)
        return
    show = progress if progress is not None else (not as_json and grid.size >= PROGRESS_FROM)
    bar = bars.Progress(grid.size, "evaluating", enabled=show, unit="scenarios")
    t0 = time.perf_counter()
    from contextlib import nullcontext

    from capsim import atomic

    with atomic.lock(out, "--out") if out else nullcontext():  # two sweeps into one --out: the second is refused
        with bar:
            frame = run_sweep(grid, db, scheduler=scheduler, chunk_rows=chunk_rows, timeout=connect_timeout,
                              progress=bar.update if bar.active else None)
        seconds = time.perf_counter() - t0
        if out:
            io.write_results(frame, out)
    s = summary(frame, top)
    where = f"on {scheduler}" if scheduler else "here"
    if as_json:
        click.echo(json.dumps(dict(s, best=records(s["best"]), seconds=seconds, configurations=grid.configurations,
                                   scenarios_per_s=s["scenarios"] / seconds if seconds > 0 else None, out=out,
                                   grid={k: list(v) for k, v in grid.axes.items()}, columns=list(frame.columns)),
                              indent=2))
    else:
        click.echo(human(s, seconds, out, grid.configurations, where))


def _split(values: tuple[str, ...]) -> list[str] | None:
    """Repeated flags and comma lists as one list of items (None when the flag was not given)."""
    return [v for value in values for v in value.split(",")] if values else None


def _load_axis(grid, db, request_rates: str, num_requests: int, out, progress, as_json: bool) -> None:
    """``--request-rate``: every configuration served at each rate (capsim.sweep.load)."""
    import math

    from capsim import checks
    from capsim.errors import CapsimError
    from capsim.sweep import io
    from capsim.sweep.load import load_sweep, size
    from capsim.sweep.run import records

    try:
        rates = [float(r) for r in request_rates.split(",")]
    except ValueError:
        raise CapsimError(f"--request-rate {request_rates}: expected comma-separated requests per second") from None
    if not rates or any(not (r > 0) or math.isnan(r) for r in rates):
        raise CapsimError(f"--request-rate {request_rates}: expected positive requests per second (or inf)")
    checks.integer(num_requests, "--num-requests", low=1, high=10_000_000)
    runs = size(grid, rates)
    with bars.Progress(runs, "serving", enabled=progress if progress is not None else not as_json,
                       unit="runs") as bar:
        frame = load_sweep(grid, db, rates, num_requests=num_requests, progress=bar.update)
    if out:
        io.write_results(frame, out)
    ok = frame[frame["error"].isna()]
    if as_json:
        click.echo(json.dumps({"runs": len(frame), "errors": int(frame["error"].notna().sum()), "out": out,
                               "rows": records(frame)}, indent=2, default=float))
        return
    from capsim.cli.table import render

    def ms(x):
        return "-" if x != x else f"{x * 1e3:,.1f} ms"
    shown = ok.head(40)
    click.echo(render(["model", "hardware", "devices", "tp", "ep", "in/out", "req/s", "p99 TTFT", "p99 TPOT",
                       "output tok/s"],
                      [[r.model, r.hardware, str(r.devices), str(r.tp), str(r.ep), f"{r.input_len}/{r.output_len}",
                        f"{r.request_rate_per_s:g}", ms(r.ttft_p99_s), ms(r.tpot_p99_s),
                        f"{r.output_tokens_per_s:,.0f}"] for r in shown.itertuples()]))
    click.echo(f"{len(frame)} serving runs, {len(frame) - len(ok)} with an error" + (f"; written to {out}" if out else ""))
