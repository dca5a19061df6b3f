"""``capsim predict``: latency, throughput, utilisation and cost of one scenario."""

from __future__ import annotations

import json

import click

from capsim import engines
from capsim.cli import choices
from capsim.cli.table import render
from capsim.errors import CapsimError
from capsim.hardware import db as hwdb
from capsim.predict import DEFAULT_INPUT_LEN, DEFAULT_OUTPUT_LEN, MAX_BATCH, Query, predict
from capsim.units import format_quantity


class _Batch(click.ParamType):
    """An integer (the prediction checks it is >= 1), or 'max'."""

    name = "INTEGER|max"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == MAX_BATCH:
            return value
        try:
            return int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r}: expected a positive integer or 'max'", param, ctx)


BATCH = _Batch()


def _t(seconds: float) -> str:
    return format_quantity(seconds, "s", digits=3)


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.2f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _fetched(off: dict) -> str:
    return "experts and cached K/V (the KV cache is in host memory)" if off.get("kv_on_host") else "experts"


def _bound_line(rep: dict) -> str:
    dec = rep["phases"]["decode"]
    sc = rep["scenario"]
    off = rep.get("offload")
    if off and off["decode"]["offload_s"] > off["decode"]["device_s"]:
        where = (f"fetching {_fetched(off)} over {off['link_path']}" if off["mode"] == "gpu-fetch" else
                 f"in CPU expert compute ({off['decode']['host_bound']}-bound on host DRAM)"
                 if off["decode"]["host_bound"] == "memory" else "in CPU expert compute (compute-bound)")
        return (f"Decode is bound by the offloaded experts: {off['decode']['offload_s'] / dec['step_s']:.0%} of each "
                f"step is spent {where}.")
    share = dec["time_by_bound_s"][dec["bottleneck"]] / dec["step_s"]
    what = {
        "memory": f"reading weights and KV cache from {sc['device']} memory",
        "compute": f"in {sc['compute_dtype']} matmuls at the dense peak"
                   + (f" of the {sc['kernel_path']} path" if sc.get("kernel_path") else ""),
        "transfer": f"in collectives over {sc['collective_link']}",
        "overhead": "in kernel-launch and scheduling overhead",
    }[dec["bottleneck"]]
    return f"Decode is {dec['bottleneck']}-bound: {share:.0%} of each step is spent {what}."


def _capacity_line(c: dict) -> str:
    def lim(x):
        return "no limit known" if x is None else f"{x:,}"

    return (f"capacity: at most {lim(c['max_batch'])} sequences of {c['at_input_len']} + {c['at_output_len']} tokens, "
            f"or prompts of {lim(c['max_input_len'])} tokens at batch {c['at_batch']}")


def _collectives_line(c: dict) -> str:
    def one(name: str, key: str, d: dict) -> str:
        bw = d[key]
        return f"{name} {format_quantity(bw, 'B/s')} (bound by {d['bound_by']})" if bw is not None else ""

    parts = [one("TP all-reduce ring", "ring_bandwidth_bytes_per_s", c["tp_allreduce"]),
             one("EP all-to-all", "bandwidth_bytes_per_s", c["ep_alltoall"])]
    if "pp_hop" in c:
        parts.append(one("pipeline hop", "bandwidth_bytes_per_s", c["pp_hop"]))
    parts = [p for p in parts if p]
    return f"collectives over {c['nodes']} nodes: " + ("; ".join(parts) if parts else "none")


DENSE_NOTE = ("MBU / MFU: MoE-CAP's dense utilisation, which counts every routed expert as read and computed each "
              "step; a sparse model's step touches only its activated experts, so these exceed 100% by design. "
              "S-MBU / S-MFU count what the step uses.")


def human(rep: dict, verbose: bool = False) -> str:
    sc, pre, dec = rep["scenario"], rep["phases"]["prefill"], rep["phases"]["decode"]
    par = (f"TP{sc['tp']}" + (f" EP{sc['ep']}" if sc["ep"] > 1 else "") + (f" DP{sc['dp']}" if sc["dp"] > 1 else "")
           + (f" PP{sc['pp']}" if sc.get("pp", 1) > 1 else ""))
    weight_only = " (weight-only)" if sc["weight_only"] else ""
    nodes = sc.get("nodes", 1)
    where = f"{nodes} nodes of {sc['hardware']}" if nodes > 1 else sc["hardware"]
    lines = [
        f"{sc['model']} on {sc['devices']}x {sc['device']} ({where}, {par}), engine {sc['engine']}",
        f"weights {sc['precision']} ({sc['bits_per_weight']:.3g} bits), KV {sc['kv_precision']}, "
        f"compute {sc['compute_dtype']}{weight_only}"
        + (f" on the {sc['kernel_path']} ISA path" if sc.get("kernel_path") else "")
        + f"; batch {sc['batch']}, input {sc['input_len']}, "
        f"output {sc['output_len']} tokens",
        *([f"architecture: {'; '.join(sc['features'])}"] if sc.get("features") else []),
        "",
    ]
    ne = rep["num_experts"]
    rows = [
        ["step time", _t(pre["step_s"]), _t(dec["step_s"])],
        ["tokens/s (all sequences)", _rate(pre["tokens_per_s"]), _rate(dec["tokens_per_s"])],
        ["S-MBU", _pct(pre["s_mbu"]), _pct(dec["s_mbu"])],
        ["S-MFU", _pct(pre["s_mfu"]), _pct(dec["s_mfu"])],
    ]
    if verbose:
        rows += [["MBU (every expert counted)", _pct(pre["mbu"]), _pct(dec["mbu"])],
                 ["MFU (every expert counted)", _pct(pre["mfu"]), _pct(dec["mfu"])]]
    if ne:
        rows.append(["activated experts / layer", f"{pre['activated_experts_per_layer']:.1f} of {ne}",
                     f"{dec['activated_experts_per_layer']:.2f} of {ne}"])
    rows.append(["bound by", pre["bottleneck"], dec["bottleneck"]])
    lines.append(render(["", "prefill", "decode"], rows))
    mem = rep["memory_bytes"]["device"]
    cap = format_quantity(mem["capacity"], "B") if mem["capacity"] else "unknown"
    cost = rep["cost_usd_per_million_tokens"]
    c = rep["cost"]
    cost_s = (f"${cost:,.2f} per 1M output tokens at ${c['usd_per_h']:,.2f}/h ({c['basis']}; 'capsim cap cost' "
              "itemises it)" if cost is not None else f"unknown ({c['detail']})")
    lines += [
        "",
        f"TTFT {_t(rep['ttft_s'])}   TPOT {_t(rep['tpot_s'])}   request {_t(rep['request_latency_s'])}   "
        f"{_rate(rep['decode_tokens_per_s_per_user'])} tokens/s per user   "
        f"{_rate(rep['output_tokens_per_s_total'])} output tokens/s over the request",
        f"memory per device {format_quantity(mem['total'], 'B')} of {cap} "
        f"(weights {format_quantity(mem['weights'], 'B')}, KV {format_quantity(mem['kv_cache'], 'B')}"
        + (f", of which linear-attention state {format_quantity(mem['linear_state'], 'B')}"
           if "linear_state" in mem else "") + ")"
        + ("" if rep["fits"] else "  DOES NOT FIT"),
        _capacity_line(rep["capacity"]),
        *([_collectives_line(rep["collectives"])] if nodes > 1 else []),
        f"cost {cost_s}",
        _bound_line(rep),
        *([f"ideal bound ({rep['ideal_bound']['engine']}, every kernel at the datasheet peaks): TTFT "
           f"{_t(rep['ideal_bound']['ttft_s'])}, TPOT {_t(rep['ideal_bound']['tpot_s'])}; the forecast reaches "
           f"{rep['ideal_bound']['tpot_s'] / rep['tpot_s']:.0%} of its decode rate"] if rep.get("ideal_bound") else []),
    ]
    if rep.get("spread"):
        sp = rep["spread"]
        lines.append(f"routing: {sc['routing']} [{sc.get('routing_source', '')}]")
        lines.append(
            f"over the batch compositions: TPOT p10 {_t(sp['tpot_s']['p10'])}, p50 "
            f"{_t(sp['tpot_s']['p50'])}, p90 {_t(sp['tpot_s']['p90'])}; activated experts per layer p10-p90 "
            f"{sp['activated_experts_per_layer']['p10']:.1f}-{sp['activated_experts_per_layer']['p90']:.1f}"
            + (" (synthetic trace)" if sc.get("trace_synthetic") and sc.get("routing_kind") == "trace" else ""))
    if rep.get("offload"):
        off = rep["offload"]
        dec_off = off["decode"]
        lines.append(
            f"offload ({off['mode']}): {off['experts_resident_per_layer']} of {off['num_experts']} experts per layer "
            f"resident, the rest in {off['expert_tier']}; decode hit rate {_pct(off['hit_rate_decode'])} "
            f"({off['hit_rate_source']}); per step {_t(dec_off['device_s'])} on the device, {_t(dec_off['offload_s'])} "
            + (f"fetching {_fetched(off)} over " + off["link_path"] if off["mode"] == "gpu-fetch" else
               f"on the CPU ({dec_off['host_bound']}-bound)"))
    lines += [f"note: {n}" for n in sc["notes"]]
    if verbose:
        lines.append(f"note: {DENSE_NOTE}")
    return "\n".join(lines)


def socket_layout_of(sockets, layout, devices, tp, dp) -> tuple:
    """--sockets / --socket-layout as devices, tp and dp (a socket is a device of a CPU system)."""
    if sockets is None:
        if layout is not None:
            raise CapsimError("--socket-layout: needs --sockets N")
        return devices, tp, dp
    if sockets < 1 or (devices is not None and devices != sockets):
        raise CapsimError(f"--sockets {sockets}: expected a positive count equal to --devices when both are given")
    if layout == "replica":
        if (tp or 1) != 1 or (dp or sockets) != sockets:
            raise CapsimError("--socket-layout replica: one instance per socket means --tp 1 --dp SOCKETS")
        return sockets, 1, sockets
    return sockets, tp, dp


@click.command("predict")
@click.option("--model", "-m", required=True, shell_complete=choices.complete_models,
              help="Catalogue id or alias ('capsim model list'), or a config.json / checkpoint folder.")
@click.option("--hardware", "-H", required=True, shell_complete=choices.complete_hardware,
              help="System or device id ('capsim hw list'), e.g. dgx-h100, h100, mi300x, rtx-4090.")
@click.option("--devices", type=int, default=None,
              help="Devices to use, per node with --nodes [default: all of a system's, 1 for a device].")
@click.option("--nodes", type=int, default=1, show_default=True,
              help="Copies of a system joined by its scale-out link (InfiniBand / RoCE NICs, one non-blocking "
                   "switch); --devices counts per node, so the devices used are nodes x devices.")
@click.option("--engine", default=engines.DEFAULT_ENGINE, show_default=True, shell_complete=choices.complete_engines,
              help=f"Engine profile: {choices.ENGINES_HELP}.")
@click.option("--precision", default=None, shell_complete=choices.complete_precisions,
              help=f"Weight format: {choices.PRECISIONS_HELP} [default: the checkpoint's].")
@click.option("--kv-precision", default=None, shell_complete=choices.complete_kv_precisions,
              help=f"KV-cache format: {choices.KV_HELP} [default: bf16].")
@click.option("--compute-dtype", default=None, help="Force the matmul dtype [default: the best the device offers for the weight format].")
@click.option("--batch", type=BATCH, default="1", show_default=True,
              help="Concurrent sequences, or 'max': the most that fit in device memory at the input + output "
                   "lengths (an engine at maximum load).")
@click.option("--input-len", type=int, default=DEFAULT_INPUT_LEN, show_default=True, help="Prompt tokens per sequence.")
@click.option("--output-len", type=int, default=DEFAULT_OUTPUT_LEN, show_default=True, help="Generated tokens per sequence.")
@click.option("--tp", type=int, default=None,
              help="Tensor-parallel size [default: all devices of a stage that lie in one node].")
@click.option("--ep", type=int, default=None, help="Expert-parallel size: 1 or the number of devices [default: 1].")
@click.option("--pp", type=int, default=1, show_default=True,
              help="Pipeline-parallel stages; --tp / --ep / --dp apply inside a stage of devices / pp devices.")
@click.option("--dp", type=int, default=None,
              help="Attention data-parallel groups inside a stage [default: stage devices / tp]; tp x dp x pp must "
                   "equal the devices used.")
@click.option("--routing", default="real", show_default=True, metavar="uniform|real|PATH",
              help="Routing replayed: 'real' (the model's real trace, else a model fitted to its published counts, "
                   "else the prior fitted across real models; scenario.routing names which), 'uniform' (independent "
                   "uniform top-k), or a trace folder / routing model file (traces/README.md).")
@click.option("--trace", default=None, help="Replay this routing trace folder (the same as --routing PATH).")
@click.option("--trace-samples", type=int, default=200, show_default=True, help="Batch compositions drawn from the trace.")
@click.option("--trace-any-model", is_flag=True, help="Replay a trace recorded on a model with a different config.")
@click.option("--usd-per-hour", type=float, default=None, help="Price of the devices used, overriding the database.")
@click.option("--no-memory-check", is_flag=True, help="Predict even when the scenario does not fit in memory.")
@click.option("--allow-dense", is_flag=True, help="Accept a local config.json without routed experts.")
@click.option("--offload", type=click.Choice(["gpu-fetch", "cpu"]), default=None,
              help="Keep only --expert-cache experts per layer on the device; misses are fetched over the host link "
                   "(gpu-fetch, MoE-Infinity) or computed by the CPU from DRAM (cpu, KTransformers / llama.cpp -ot).")
@click.option("--expert-cache", type=int, default=None,
              help="With --offload: routed experts per MoE layer resident on each device [default: as many as fit].")
@click.option("--cache-policy", type=click.Choice(["lru", "lfu", "static"]), default="lru", show_default=True,
              help="With --offload and --trace: the cache policy replayed over the trace.")
@click.option("--expert-tier", type=click.Choice(["dram", "ssd"]), default="dram", show_default=True,
              help="With --offload: where the non-resident experts live.")
@click.option("--host-sockets", type=int, default=None,
              help="With --offload cpu: CPU sockets computing experts [default: all of the system's].")
@click.option("--sockets", type=int, default=None,
              help="A CPU system: sockets the engine runs on (the same as --devices) [default: 1].")
@click.option("--socket-layout", type=click.Choice(["tp", "replica", "span"]), default=None,
              help="With --sockets > 1: one instance tensor-parallel over the sockets, its all-reduces over the "
                   "socket link (SGLang's CPU backend, multi-NUMA TP); one instance per socket, each with every "
                   "weight in its own DRAM (llama.cpp's NUMA advice); or one instance whose threads span two "
                   "sockets with pages interleaved, half of each socket's reads crossing the socket link "
                   "(llama.cpp --numa distribute) [default: tp].")
@click.option("--threads", type=int, default=None,
              help="A CPU: threads per socket the engine computes on [default: one per core].")
@click.option("--spec-tokens", type=int, default=0, show_default=True,
              help="Speculative decoding / multi-token prediction (DeepSeek MTP, EAGLE): draft tokens per decode step, "
                   "verified in one pass.")
@click.option("--spec-acceptance", type=float, default=0.0, show_default=True,
              help="With --spec-tokens: the chance each draft token is accepted (0-1); a step keeps "
                   "(1 - a^(k+1)) / (1 - a) tokens on average.")
@click.option("--ep-dispatch", type=click.Choice(["bf16", "fp8"]), default="bf16", show_default=True,
              help="Format of the expert-parallel dispatch: the activations' (bf16) or DeepEP's FP8 (1 byte per "
                   "element + a scale per 128); the combine stays bf16.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (SI units).")
@click.option("--verbose", "-v", is_flag=True,
              help="Also show the dense MBU / MFU (every expert counted; in --json always) and what they count.")
@click.pass_context
def predict_cmd(ctx: click.Context, model, hardware, devices, nodes, engine, precision, kv_precision, compute_dtype, batch,
                input_len, output_len, tp, ep, pp, dp, routing, trace, trace_samples, trace_any_model, usd_per_hour, no_memory_check,
                allow_dense, offload, expert_cache, cache_policy, expert_tier, host_sockets, sockets, socket_layout,
                threads, spec_tokens, spec_acceptance, ep_dispatch, as_json, verbose) -> None:
    """Predict TTFT, TPOT, throughput, S-MBU / S-MFU, memory and cost of serving MODEL on HARDWARE."""
    devices, tp, dp = socket_layout_of(sockets, socket_layout, devices, tp, dp)
    db = hwdb.load(ctx.obj.get("hardware_db") if ctx.obj else None, lazy=True)  # read only if not cached
    q = Query(model=model, hardware=hardware, devices=devices, nodes=nodes, engine=engine, precision=precision,
              kv_precision=kv_precision, compute_dtype=compute_dtype, batch=batch, input_len=input_len,
              output_len=output_len, tp=tp, ep=ep, pp=pp, dp=dp, routing=routing, trace=trace, trace_samples=trace_samples, trace_any_model=trace_any_model, usd_per_h=usd_per_hour,
              check_memory=not no_memory_check, allow_dense=allow_dense, offload=offload, expert_cache=expert_cache,
              cache_policy=cache_policy, expert_tier=expert_tier, host_sockets=host_sockets, spec_tokens=spec_tokens,
              spec_acceptance=spec_acceptance, ep_dispatch=ep_dispatch,
              socket_layout="span" if socket_layout == "span" else None, threads=threads)
    rep = predict(q, db)
    click.echo(json.dumps(rep, indent=2) if as_json else human(rep, verbose))
