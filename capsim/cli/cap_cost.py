"""``capsim cap cost``: capex, $/h, $/1M output tokens and J/token of a system, with every part and assumption."""

from __future__ import annotations

import json

import click

from capsim import engines
from capsim.cap import assumptions as cap_assumptions
from capsim.cap.report import CAPEX_FROM, cost_report
from capsim.cli import choices
from capsim.cli.oneline import CapsimCommand
from capsim.cli.table import render
from capsim.errors import CapsimError
from capsim.hardware import db as hwdb

FLAGS = {"lifetime_s": "--lifetime-years", "utilisation": "--utilisation", "pue": "--pue",
         "usd_per_kwh": "--usd-per-kwh", "idle_power_fraction": "--idle-fraction",
         "dram_usd_per_byte": "--dram-usd-per-gb", "ssd_usd_per_byte": "--ssd-usd-per-tb",
         "standard_host_dram_bytes_per_accelerator": "--standard-host-dram-gib"}


def _prices(items: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for text in items:
        name, sep, usd = text.partition("=")
        try:
            out[name.strip()] = float(usd.replace(",", "").lstrip("$"))
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise CapsimError(f"--price {text}: expected NAME=USD (a component name or item id, and a unit price)")
    return out


def _rate_from_prediction(ctx, model, hardware, devices, batch, input_len, output_len, precision, engine, db):
    from capsim.predict import Query, predict

    q = Query(model=model, hardware=hardware, devices=devices, batch=batch, input_len=input_len,
              output_len=output_len, precision=precision, engine=engine)
    rep = predict(q, db)
    tokens = batch * output_len / rep["request_latency_s"]
    sc = rep["scenario"]
    return tokens, {"model": sc["model"], "precision": sc["precision"], "engine": sc["engine"], "batch": batch,
                    "input_len": input_len, "output_len": output_len, "request_latency_s": rep["request_latency_s"],
                    "output_tokens_per_s": tokens,
                    "basis": "batch x output_len / request latency (prefill + decode), capsim predict"}


def _usd(x: float | None) -> str:
    if x is None:
        return "unknown"
    return f"${x:,.0f}" if x >= 1000 else f"${x:,.2f}" if x >= 0.01 else f"${x:.3g}"


def _cloud_lines(rep: dict) -> list[str]:
    """The cloud price (used on --cloud, else shown as what --cloud would use), its source and date; the system's
    own instance price when it is the alternative."""
    used, inst = rep["cloud_prices"]["used"], rep["cloud_prices"]["instance"]
    if used is None:
        return []
    on = rep["cost_basis"]["basis"] == "cloud"
    head = "cloud price" if on else "cloud (--cloud)"
    if used["basis"] == "per-device":
        what = (f"{used['devices']:g} x {_usd(used['per_device_usd_per_h'])}/h per GPU ({used['item']}; host share "
                f"included) = {_usd(used['usd_per_h'])}/h")
    else:
        what = f"{_usd(used['usd_per_h'])}/h for the whole instance (the system's own price)"
    lines = [f"{head:<20}{what}",
             f"  source            {used['source']}: {used['source_title']} <{used['source_url']}>",
             f"  price date        {used['price_date'] or 'undated'} (from the {used['price_date_from']})"]
    if inst is not None and used["basis"] != "instance":
        lines.append(f"  not used          the system's instance price {_usd(inst['usd_per_h'])}/h ({inst['source']}, "
                     f"{inst['price_date'] or 'undated'}): another provider and date, not like with like")
    return lines


def _human(rep: dict) -> str:
    cap, pw, basis = rep["capex"], rep["power"], rep["cost_basis"]
    lines = [f"{rep['hardware']} ({rep['kind']}, {rep['devices']} devices), {rep['output_tokens_per_s']:,.1f} "
             "output tokens/s" + (f" predicted for {rep['prediction']['model']}" if rep.get("prediction") else "")]
    capex = _usd(cap["usd"]) if cap["usd"] is not None else (
        f"unknown: priced parts sum to {_usd(cap['parts_priced_usd'])}, no price for "
        + ", ".join(cap["unpriced_parts"]))
    lines.append(f"capex               {capex} [{cap['basis']}]")
    if rep["usd_per_h"] is None:
        lines.append(f"$/hour              unknown ({basis['missing']})")
    elif basis["basis"] == "cloud":
        lines.append(f"$/hour              {_usd(rep['usd_per_h'])} (cloud price {_usd(basis['usd_per_h_listed'])}/h "
                     f"/ utilisation; source {basis['source']}, {basis['price_date'] or 'undated'})")
    else:
        lines.append(f"$/hour              {_usd(rep['usd_per_h'])} (capital {_usd(basis['usd_per_h_capital'])} + "
                     f"energy {_usd(basis['usd_per_h_energy'])} per hour of serving)")
    lines += _cloud_lines(rep)
    lines.append(f"$/1M output tokens  {_usd(rep['usd_per_million_output_tokens'])}")
    lines.append(f"J/output token      {rep['joules_per_output_token']:.3g} J at the facility (PUE and idle hours "
                 f"included); {rep['joules_per_output_token_it']:.3g} J at the IT equipment while serving")
    lines.append(f"power               {pw['max_w'] / 1e3:.3g} kW full load ({pw['basis']}), "
                 f"{pw['average_w'] / 1e3:.3g} kW lifetime average")
    rows = [[p["name"], p["role"], p["item"] or "-", str(p["count"]), _usd(p["unit_usd"]), _usd(p["total_usd"]),
             p["price_basis"] + (f" [{p['price_source']}]" if p["price_source"] else ""),
             f"{p['unit_power_w']:g} W" if p["unit_power_w"] is not None else "-"] for p in rep["parts"]]
    lines += ["", "parts", render(["name", "role", "item", "count", "unit", "total", "price (source)", "TDP"], rows)]
    arows = [[k, f"{v['value']:.6g}" if isinstance(v["value"], float) else str(v["value"]), v.get("unit", ""),
              v["source"], v.get("as_published", v.get("note", ""))[:70]] for k, v in rep["assumptions"].items()]
    lines += ["", "assumptions", render(["name", "value", "unit", "source", "as published"], arows)]
    srcs = {v["source"]: (v.get("title"), v.get("url")) for v in rep["assumptions"].values() if v.get("title")}
    srcs |= {k: (v["title"], v["url"]) for k, v in rep["sources"].items()}
    lines += ["", "sources:"] + [f"  {k}: {t} <{u}>" for k, (t, u) in sorted(srcs.items())]
    if rep["notes"]:
        lines += ["", "notes:"] + [f"  {n}" for n in rep["notes"]]
    return "\n".join(lines)


@click.command("cost", cls=CapsimCommand)
@click.option("--hardware", "-H", required=True, shell_complete=choices.complete_hardware,
              help="System, accelerator or CPU id (or alias).")
@click.option("--devices", type=int, default=None, help="Devices used (bare device: how many; system: pro-rated).")
@click.option("--tokens-per-s", type=float, default=None, help="Output tokens/s produced (or give --model).")
@click.option("--model", "-m", default=None, help="Predict the tokens/s with capsim predict for this model.")
@click.option("--batch", type=int, default=1, show_default=True, help="With --model: sequences per batch.")
@click.option("--input-len", type=int, default=512, show_default=True, help="With --model: prompt tokens.")
@click.option("--output-len", type=int, default=128, show_default=True, help="With --model: output tokens.")
@click.option("--precision", default=None, shell_complete=choices.complete_precisions,
              help=f"With --model: weight format, {choices.PRECISIONS_HELP} (default: the checkpoint's).")
@click.option("--engine", default=engines.DEFAULT_ENGINE, show_default=True, shell_complete=choices.complete_engines,
              help=f"With --model: engine profile, {choices.ENGINES_HELP}.")
@click.option("--lifetime-years", type=float, default=None, help="Capital write-off period (default 5, sourced).")
@click.option("--utilisation", type=float, default=None, help="Fraction of the lifetime spent serving (default 1).")
@click.option("--pue", type=float, default=None, help="Facility power / IT power (default 1.58, sourced).")
@click.option("--usd-per-kwh", type=float, default=None, help="Electricity price (default 0.1194, sourced).")
@click.option("--idle-fraction", type=float, default=None, help="Idle draw / full-load draw (default 0.5).")
@click.option("--dram-usd-per-gb", type=float, default=None, help="DRAM price per GB (1e9 bytes).")
@click.option("--ssd-usd-per-tb", type=float, default=None, help="Price per TB (1e12 bytes) of drives with no price.")
@click.option("--standard-host-dram-gib", type=float, default=None,
              help="Host DRAM per GPU up to which a system is priced per GPU on --cloud (default 256, AWS p5).")
@click.option("--price", "prices", multiple=True, metavar="NAME=USD", help="Unit price of a part (component or item id).")
@click.option("--capex-from", type=click.Choice(CAPEX_FROM), default="auto", show_default=True,
              help="auto: the system's own purchase price when it has one, else the sum of its parts.")
@click.option("--cloud", is_flag=True, help="Cost from the on-demand cloud price (GPUs x per-GPU price with the host "
              "share, else the system's instance price) instead of ownership.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (SI units).")
@click.pass_context
def cost_cmd(ctx, hardware, devices, tokens_per_s, model, batch, input_len, output_len, precision, engine,
             lifetime_years, utilisation, pue, usd_per_kwh, idle_fraction, dram_usd_per_gb, ssd_usd_per_tb,
             standard_host_dram_gib, prices, capex_from, cloud, as_json) -> None:
    """Capex, $/hour, $/1M output tokens and J/token, every part priced and every assumption sourced.

    Owned: $/h = (capex / lifetime_h + P_avg[kW] x PUE x $/kWh) / utilisation, with P_avg = P_max x (idle +
    (1 - idle) x utilisation). Cloud: cloud $/h / utilisation, where cloud $/h = GPUs x the GPU's per-GPU
    on-demand price (host share included) for a bare device or a standard host (host DRAM per GPU <= 256 GiB),
    else the system's own instance price. $/1M tokens = $/h / (tokens/s x 3600) x 1e6.
    A part without a price is listed, never counted as $0; give it one with --price NAME=USD.
    """
    if (tokens_per_s is None) == (model is None):
        raise CapsimError("give one of --tokens-per-s RATE or --model MODEL (to predict the rate)")
    db = hwdb.load(ctx.obj.get("hardware_db") if ctx.obj else None)
    a = cap_assumptions.load(db).with_overrides(
        flags=FLAGS, lifetime_s=None if lifetime_years is None else lifetime_years * cap_assumptions.SECONDS_PER_YEAR,
        utilisation=utilisation, pue=pue, usd_per_kwh=usd_per_kwh, idle_power_fraction=idle_fraction,
        dram_usd_per_byte=None if dram_usd_per_gb is None else dram_usd_per_gb / 1e9,
        ssd_usd_per_byte=None if ssd_usd_per_tb is None else ssd_usd_per_tb / 1e12,
        standard_host_dram_bytes_per_accelerator=None if standard_host_dram_gib is None
        else standard_host_dram_gib * 2**30)
    prediction = None
    if model is not None:
        tokens_per_s, prediction = _rate_from_prediction(ctx, model, hardware, devices, batch, input_len, output_len,
                                                         precision, engine, db)
    rep = cost_report(db, hardware, a, tokens_per_s, devices=devices, cloud=cloud, prices=_prices(prices),
                      capex_from=capex_from)
    rep["prediction"] = prediction
    click.echo(json.dumps(rep, indent=2) if as_json else _human(rep))
