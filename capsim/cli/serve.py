"""``capsim serve``: latency percentiles and throughput of an engine under a request load."""

from __future__ import annotations

import json
import math

import click

from capsim import engines
from capsim.cli import choices
from capsim.errors import CapsimError
from capsim.hardware import db as hwdb
from capsim.units import format_quantity, seconds_flag


class _Rate(click.ParamType):
    """Requests per second: a positive number, or 'inf' (every request at once)."""

    name = "FLOAT|inf"

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r}: expected requests per second (a positive number) or inf", param, ctx)
        if math.isnan(x) or x <= 0:
            self.fail(f"{value!r}: expected requests per second (a positive number) or inf", param, ctx)
        return x


def _t(s: float | None) -> str:
    return "-" if s is None else format_quantity(s, "s", digits=3)


def human(rep: dict) -> str:
    sc, wl = rep["scenario"], rep["workload"]
    rate = wl["request_rate_per_s"]
    load = (f"{wl['num_requests']} requests at {'once' if math.isinf(rate) else f'{rate:g}/s'}"
            + (f", at most {wl['concurrency']} in flight" if wl["concurrency"] else "") + f"; {wl['lengths']}")
    lines = [f"{sc['model']} on {sc['devices']}x {sc['device']} ({sc['hardware']}), engine {sc['engine']}", load, "",
             f"{'':<6}{'mean':>11}{'p50':>11}{'p90':>11}{'p99':>11}"]
    for k, name in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "ITL"), ("e2e_s", "E2E")):
        st = rep[k]
        lines.append(f"{name:<6}" + "".join(f"{_t(st[p]):>11}" for p in ("mean", "p50", "p90", "p99")))
    bs = rep["batch_size"]
    lines += ["", f"{rep['request_throughput_per_s']:.3g} requests/s, {rep['output_tokens_per_s']:,.0f} output tokens/s, "
              f"{rep['total_tokens_per_s']:,.0f} tokens/s over {_t(rep['duration_s'])}; goodput "
              f"{rep['goodput_requests_per_s']:.3g} requests/s",
              f"running sequences per step: mean {bs['mean']:.1f}, max {bs['max']}; preemptions {rep['preemptions']}; "
              f"KV cache {rep['scheduler']['kv_cache_tokens']:,} tokens; front end "
              f"{_t(rep['scheduler']['intake_s_per_request'])} per request"]
    return "\n".join(lines)


@click.command("serve")
@click.option("--model", "-m", required=True, shell_complete=choices.complete_models,
              help="Catalogue id or alias ('capsim model list'), or a config.json / checkpoint folder.")
@click.option("--hardware", "-H", required=True, shell_complete=choices.complete_hardware,
              help="System or device id ('capsim hw list').")
@click.option("--devices", type=int, default=None, help="Devices to use, per node with --nodes.")
@click.option("--nodes", type=int, default=1, show_default=True, help="Copies of a system over its scale-out link.")
@click.option("--tp", type=int, default=None, help="Tensor-parallel size [default: the devices of a node].")
@click.option("--ep", type=int, default=None, help="Expert-parallel size: 1 or the number of devices.")
@click.option("--dp", type=int, default=None, help="Attention data-parallel groups (requests spread evenly, lockstep).")
@click.option("--pp", type=int, default=1, show_default=True, help="Pipeline stages (1 only, for now).")
@click.option("--precision", default=None, shell_complete=choices.complete_precisions,
              help=f"Weight format: {choices.PRECISIONS_HELP}.")
@click.option("--kv-precision", default=None, help=f"KV-cache format: {choices.KV_HELP} [default: bf16].")
@click.option("--engine", default=engines.DEFAULT_ENGINE, show_default=True, shell_complete=choices.complete_engines,
              help=f"Engine profile (its scheduler too): {choices.ENGINES_HELP}.")
@click.option("--concurrency", type=int, default=None,
              help="At most this many requests in flight (the benchmark's --max-concurrency).")
@click.option("--request-rate", type=_Rate(), default=None,
              help="Requests per second, Poisson unless --burstiness says otherwise; inf: all at once.")
@click.option("--burstiness", type=float, default=1.0, show_default=True,
              help="Shape of the gamma-distributed gaps between requests (1: Poisson; lower: burstier).")
@click.option("--num-requests", type=int, required=True, help="Requests to send.")
@click.option("--input-len", type=int, default=None, help="Prompt tokens per request (without --dataset).")
@click.option("--output-len", type=int, default=None, help="Output tokens per request (without --dataset).")
@click.option("--dataset", default=None, metavar="sharegpt|FILE",
              help="Lengths from the ShareGPT distribution of vLLM's and SGLang's benchmarks, or a JSONL / CSV "
                   "file with input_len and output_len.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the arrivals and lengths.")
@click.option("--slo-ttft", default=None, help="Goodput SLO on TTFT, e.g. 500ms.")
@click.option("--slo-tpot", default=None, help="Goodput SLO on TPOT, e.g. 50ms.")
@click.option("--max-num-seqs", type=int, default=None, help="Override the engine's running-sequence limit.")
@click.option("--max-num-batched-tokens", type=int, default=None, help="Override the engine's tokens per step.")
@click.option("--routing", default="real", show_default=True, metavar="uniform|real|PATH",
              help="Routing replayed for each step's tokens (as capsim predict).")
@click.option("--prefill-devices", type=int, default=None,
              help="Prefill/decode disaggregation: this many of the devices run a prefill instance (TP over them), the "
                   "rest a decode instance; each prompt's K/V crosses the devices' link between them.")
@click.option("--frontend-intake", default=None, metavar="TIME",
              help="Front-end (API server) CPU time per request, shared by the requests in intake, e.g. 5ms; 0: the "
                   "engine alone [default: the engine profile's frontend.intake_s_per_request].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (SI units).")
@click.pass_context
def serve_cmd(ctx, model, hardware, devices, nodes, tp, ep, dp, pp, precision, kv_precision, engine, concurrency,
              request_rate, burstiness, num_requests, input_len, output_len, dataset, seed, slo_ttft, slo_tpot,
              max_num_seqs, max_num_batched_tokens, routing, prefill_devices, frontend_intake, as_json) -> None:
    """Simulate serving MODEL on HARDWARE under a request load: continuous batching, chunked prefill, KV-cache
    preemption; TTFT / TPOT / ITL / E2E percentiles, throughput and goodput."""
    from capsim.predict import Query
    from capsim.scenario import resolve
    from capsim.serve import workload
    from capsim.serve.run import serve

    if concurrency is None and request_rate is None:
        raise CapsimError("--concurrency or --request-rate: one of them is needed (a load to serve)")
    if dataset is not None and (input_len is not None or output_len is not None):
        raise CapsimError("--dataset: lengths come from it; drop --input-len / --output-len")
    for flag, v in (("--max-num-seqs", max_num_seqs), ("--max-num-batched-tokens", max_num_batched_tokens)):
        if v is not None and v < 1:
            raise CapsimError(f"{flag} {v}: expected a positive whole number")
    if num_requests is not None and num_requests > 10_000_000:
        raise CapsimError(f"--num-requests {num_requests}: at most 10,000,000 in one run")
    ttft, tpot = seconds_flag("--slo-ttft", slo_ttft), seconds_flag("--slo-tpot", slo_tpot)
    intake = seconds_flag("--frontend-intake", frontend_intake, zero_ok=True)
    w = workload.build(num_requests, request_rate=math.inf if request_rate is None else request_rate,
                       concurrency=concurrency, burstiness=burstiness, input_len=input_len, output_len=output_len,
                       dataset=dataset, seed=seed)
    db = hwdb.load(ctx.obj.get("hardware_db") if ctx.obj else None, lazy=True)
    q = Query(model=model, hardware=hardware, devices=devices, nodes=nodes, engine=engine, precision=precision,
              kv_precision=kv_precision, batch=1, input_len=int(w.input_len.max()), output_len=int(w.output_len.max()),
              tp=tp, ep=ep, pp=pp, dp=dp, routing=routing, check_memory=False)
    sc = resolve(q, db)
    if prefill_devices is not None:
        rep = _disaggregated(q, sc, db, w, prefill_devices, max_num_seqs, max_num_batched_tokens, ttft, tpot, intake)
    else:
        rep = serve(sc, w, max_num_seqs=max_num_seqs, max_batched_tokens=max_num_batched_tokens, slo_ttft_s=ttft,
                    slo_tpot_s=tpot, intake_s=intake)
    rep["scenario"] = dict(sc.describe())
    if as_json or prefill_devices is not None:
        if not as_json:
            click.echo(human(rep))
            d = rep["disaggregation"]
            click.echo(f"disaggregated: {d['prefill_devices']} prefill + {d['decode_devices']} decode devices; K/V "
                       f"transfer mean {_t(d['kv_transfer_s']['mean'])} per request")
            return
        click.echo(json.dumps(rep, indent=2, default=float))
        return
    text = human(rep)
    if not (request_rate is None or math.isinf(request_rate)) or concurrency:  # the same load at x0.5 and x1.5
        points = []
        for f in (0.5, 1.0, 1.5):
            if f == 1.0:
                r = rep
            else:
                w2 = workload.build(num_requests, request_rate=math.inf if request_rate is None else request_rate * f,
                                    concurrency=None if concurrency is None else max(1, round(concurrency * f)),
                                    burstiness=burstiness, input_len=input_len, output_len=output_len,
                                    dataset=dataset, seed=seed)
                r = serve(sc, w2, max_num_seqs=max_num_seqs, max_batched_tokens=max_num_batched_tokens, intake_s=intake)
            load = (f"{request_rate * f:g}/s" if request_rate is not None and not math.isinf(request_rate)
                    else f"{max(1, round(concurrency * f))} in flight")
            points.append(f"{load} {_t(r['ttft_s']['p99'])} / {_t(r['tpot_s']['p99'])}")
        text += "\np99 TTFT / TPOT vs load: " + " | ".join(points)
    click.echo(text)


def _disaggregated(q, sc, db, w, prefill_devices: int, max_num_seqs, max_batched_tokens, ttft, tpot,
                   intake) -> dict:
    """--prefill-devices P: P devices (TP over them) prefill, the other N - P decode (TP over them); the K/V of a
    prompt crosses the devices' link, min(P, N - P) device pairs in parallel (capsim.serve.run)."""
    from dataclasses import replace

    from capsim.scenario import resolve
    from capsim.serve.run import serve_disaggregated

    n = sc.n
    if not 1 <= prefill_devices < n:
        raise CapsimError(f"--prefill-devices {prefill_devices}: expected 1 to {n - 1} of the {n} devices")
    if w.concurrency is not None:
        raise CapsimError("--prefill-devices: a concurrency limit over two instances is not modelled yet; use "
                          "--request-rate")
    d = n - prefill_devices
    try:
        sc_p = resolve(replace(q, devices=prefill_devices, tp=prefill_devices, dp=None, ep=None), db)
        sc_d = resolve(replace(q, devices=d, tp=d, dp=None, ep=None), db)
    except CapsimError as err:
        raise CapsimError(f"--prefill-devices {prefill_devices}: {prefill_devices} prefill and {d} decode devices: "
                          f"{err}") from None
    link = sc.target.ring_bandwidth_bytes_per_s
    if not math.isfinite(link):
        raise CapsimError(f"--prefill-devices: {sc.target.hardware_id} has no link between its devices in the database")
    return serve_disaggregated(sc_p, sc_d, w, link * min(prefill_devices, d), max_num_seqs=max_num_seqs,
                               max_batched_tokens=max_batched_tokens, slo_ttft_s=ttft, slo_tpot_s=tpot,
                               intake_s=intake)
