"""``capsim trace stats`` and ``capsim trace synth``: analyse a routing trace, write a synthetic one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from capsim import checks
from capsim.atomic import save_figure
from capsim.cli.oneline import CapsimCommand
from capsim.cli.table import render
from capsim.errors import CapsimError


def _fmt(x: Any, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


# ----------------------------------------------------------------------------- stats


def _human(s: dict[str, Any]) -> str:
    info = s["trace"]
    lines = []
    synth = ""
    if info["synthetic"]:
        spec = info.get("synthetic_spec") or {}
        extra = f", s={spec['zipf_s']:.4g}" if "zipf_s" in spec else ""
        synth = f"  SYNTHETIC ({spec.get('generator', '?')}{extra})"
    lines.append(f"trace {info['path']}: {info['model_id']}, {info['num_experts']} experts, top-{info['top_k']}, "
                 f"{info['moe_layers']} MoE layers{synth}")
    lines.append(f"tokens {info['tokens']} (prefill {info['prefill_tokens']}, decode {info['decode_tokens']}), "
                 f"{info['sequences']} sequences")
    pop = s["popularity"]
    uniform_share = 1.0 / info["num_experts"]
    lines.append(f"popularity: hottest expert carries {_fmt(pop['top_share_mean'] * 100)}% of a layer's routed "
                 f"tokens on average (uniform {_fmt(uniform_share * 100)}%); "
                 f"{pop['experts_never_used']} (layer, expert) pairs never used")
    imb = s["load_imbalance"]["all"]
    lines.append(f"load imbalance, max/mean tokens per expert over the trace: mean over layers "
                 f"{_fmt(imb['experts']['mean'], 2)}, worst {_fmt(imb['experts']['max'], 2)}"
                 + (f" (layer {imb['experts']['worst_layer']})" if imb["experts"]["worst_layer"] is not None else ""))
    if imb["ep"]:
        parts = [f"ep={ep} {_fmt(v['mean'], 3)} (worst {_fmt(v['max'], 3)})" for ep, v in imb["ep"].items()]
        lines.append("max/mean tokens per EP rank, mean over layers: " + ", ".join(parts))
    aff = s["affinity"]
    if aff["mi_bits"]:
        noise = [x for x in aff["mi_noise_bits"] if x is not None]
        lines.append(f"cross-layer affinity (layer l -> l+1): mutual information {_fmt(aff['mean_mi_bits'], 3)} bits "
                     f"(noise floor ~{_fmt(max(noise) if noise else None, 3)}), normalised "
                     f"{_fmt(aff['mean_nmi'], 3)}, top-pair lift {_fmt(aff['mean_top_lift'], 2)}")
    dec, pre = s["activated_experts"]["decode"], s["activated_experts"]["prefill"]
    steps = s["decode_step_imbalance"]
    ep_show = [ep for ep in steps["ep"]][-1:] if steps["ep"] else []
    lines.append("")
    lines.append(f"activated experts per layer vs batch size (mean over layers; {s['samples']} random batches each;"
                 " decode: B sequences at one decode step)")
    headers = ["batch", "decode mean", "p10-p90", "uniform", "max/mean tok per active expert"]
    headers += [f"ep={ep} max/mean act/rank" for ep in ep_show]
    headers += ["prefill mean", "prefill tokens", "uniform"]
    pre_at = {b: i for i, b in enumerate(pre["batch_sizes"])}
    sizes = sorted(set(dec["batch_sizes"]) | set(pre["batch_sizes"]))
    dec_at = {b: i for i, b in enumerate(dec["batch_sizes"])}
    rows = []
    for b in sizes:
        row = [str(b)]
        if b in dec_at:
            i = dec_at[b]
            row += [_fmt(dec["mean"][i]), f"{_fmt(dec['p10'][i])}-{_fmt(dec['p90'][i])}", _fmt(dec["uniform"][i]),
                    _fmt(steps["experts"][i], 2)]
            row += [_fmt(steps["ep"][ep]["activated"][i], 2) for ep in ep_show]
        else:
            row += ["-"] * (4 + len(ep_show))
        if b in pre_at:
            j = pre_at[b]
            row += [_fmt(pre["mean"][j]), _fmt(pre["tokens"][j], 0), _fmt(pre["uniform"][j])]
        else:
            row += ["-"] * 3
        rows.append(row)
    lines.append(render(headers, rows) if rows else "(no sequences with decode or prefill tokens)")
    return "\n".join(lines)


def _save_atomic(fig, path: Path) -> None:
    save_figure(fig, path, dpi=120, bbox_inches="tight")


MAX_SAMPLES = 1 << 16  # random batches per batch size: the sampling error of a mean is 0.4% at 65,536

PLOT_FILES = ("popularity.png", "activated_experts.png", "load_imbalance.png")


def check_plot_folder(folder: str | Path) -> Path:
    """``--plot DIR``: a folder (new or existing) whose plot files are new or capsim's; one-line error otherwise."""
    from capsim import outputs

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CapsimError(f"--plot {folder}: exists and is not a folder")
    for name in PLOT_FILES:
        outputs.check_output(folder / name, "figure", "--plot")
    return folder


def write_plots(s: dict[str, Any], folder: str | Path) -> list[Path]:
    """popularity.png, activated_experts.png, load_imbalance.png from a :func:`summary` dict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    folder = check_plot_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CapsimError(f"--plot {folder}: cannot create the folder ({err.strerror})") from None
    info = s["trace"]
    e = info["num_experts"]
    title = f"{info['model_id']}{' (synthetic)' if info['synthetic'] else ''}"
    written = []

    fig, ax = plt.subplots(figsize=(min(14, 4 + e / 16), min(10, 2 + info["moe_layers"] / 8)))
    share = np.array(s["popularity"]["share"]["all"], float).reshape(info["moe_layers"], e) * e
    im = ax.imshow(share, aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(im, ax=ax, label="share of routed tokens x E (1 = uniform)")
    ax.set(xlabel="expert", ylabel="MoE layer", title=f"expert popularity: {title}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # experts and layers are whole numbers
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    written.append(folder / PLOT_FILES[0])
    _save_atomic(fig, written[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, colour in (("decode", "C0"), ("prefill", "C1")):
        c = s["activated_experts"][name]
        if not c["batch_sizes"]:
            continue
        b = np.array(c["batch_sizes"])
        ax.plot(b, c["mean"], "o-", color=colour, label=f"{name} (trace)")
        ax.fill_between(b, c["p10"], c["p90"], color=colour, alpha=0.2, label=f"{name} p10-p90")
        ax.plot(b, c["uniform"], "--", color=colour, label=f"{name} uniform routing")
    ax.axhline(e, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:,.0f}" if x >= 1 else f"{x:g}"))  # 1, 2, 4
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="batch size (sequences)", ylabel="activated experts per layer", ylim=(0, e * 1.05),
           title=f"activated experts vs batch: {title}")
    ax.legend(fontsize=8)
    written.append(folder / PLOT_FILES[1])
    _save_atomic(fig, written[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    imb = s["load_imbalance"]["all"]
    layers = np.arange(info["moe_layers"])
    nan = float("nan")
    mark = {"marker": "o", "markersize": 3} if len(layers) <= 64 else {}  # the layers are discrete
    ax.plot(layers, [nan if x is None else x for x in imb["experts"]["per_layer"]], label="per expert", **mark)
    for ep, v in imb["ep"].items():
        ax.plot(layers, [nan if x is None else x for x in v["per_layer"]], label=f"per rank, ep={ep}", **mark)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="MoE layer", ylabel="max / mean tokens", title=f"load imbalance over the trace: {title}")
    ax.legend(fontsize=8)
    written.append(folder / PLOT_FILES[2])
    _save_atomic(fig, written[-1])
    plt.close(fig)
    return written


@click.command("stats", cls=CapsimCommand)
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the full summary as JSON.")
@click.option("--plot", "plot_dir", default=None, metavar="DIR",
              help="Write popularity.png, activated_experts.png and load_imbalance.png into DIR.")
@click.option("--ep", "ep", type=int, multiple=True, metavar="N",
              help="Expert-parallel size(s) for the per-rank imbalance (repeatable; default 2, 4, 8 where they "
                   "divide the experts).")
@click.option("--samples", type=click.IntRange(min=1, max=MAX_SAMPLES), default=200, show_default=True,
              help="Random batches per batch size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the batch sampling.")
def stats_cmd(path: str, as_json: bool, plot_dir: str | None, ep: tuple[int, ...], samples: int, seed: int) -> None:
    """Expert popularity, load imbalance, activated experts vs batch size and cross-layer affinity of a trace."""
    from capsim.traces import stats
    from capsim.traces.format import open_trace

    if plot_dir is not None:
        check_plot_folder(plot_dir)
    trace = open_trace(path, verify=True)
    if trace.expert_ids.ndim != 3:
        raise CapsimError(f"{path}/expert_ids.npy: expected (tokens, moe_layers, top_k), got shape "
                          f"{tuple(trace.expert_ids.shape)}")
    e = trace.num_experts
    for n in ep:
        if n < 1 or e % n:
            raise CapsimError(f"--ep {n}: must divide the trace's {e} experts")
    s = stats.summary(trace, samples=samples, seed=seed, ep_sizes=list(ep) if ep else None)
    if plot_dir is not None:
        written = write_plots(s, plot_dir)
        s["plots"] = [str(p) for p in written]
    if as_json:
        click.echo(json.dumps(s, indent=1, allow_nan=False))
        return
    click.echo(_human(s))
    if plot_dir is not None:
        click.echo(f"\nplots: {', '.join(s['plots'])}")


# ----------------------------------------------------------------------------- synth


def _model_defaults(model: str, have_all: bool) -> tuple[str, dict[str, int]]:
    """(model id, {experts, top_k, layers}) from the catalogue; a free-form id when all sizes are given."""
    from capsim.model.catalogue import load_spec

    try:
        spec, info = load_spec(model)
    except CapsimError:
        if have_all:
            return model, {}
        raise
    if not spec.num_experts:
        raise CapsimError(f"--model {model}: {info['id']} is dense (no routed experts) and cannot be traced")
    return info["id"], {"experts": spec.num_experts, "top_k": spec.top_k, "layers": spec.num_moe_layers}


MAX_ZIPF_S = 100.0  # Zipf exponent: at 100 the hottest expert already takes all but 1e-30 of the tokens
MAX_SYNTH_BYTES = 8e9  # a synthetic trace held in memory while it is made: about a third of this machine's 24 GB


@click.command("synth", cls=CapsimCommand)
@click.option("--out", required=True, metavar="PATH", help="Trace folder to write (replaced atomically).")
@click.option("--experts", type=int, default=None, help="Routed experts per layer (default: from --model).")
@click.option("--top-k", "top_k", type=int, default=None, help="Experts per token (default: from --model).")
@click.option("--layers", type=int, default=None, help="MoE layers (default: from --model).")
@click.option("--sequences", type=int, default=64, show_default=True)
@click.option("--prompt-len", type=int, default=128, show_default=True, help="Prefill tokens per sequence.")
@click.option("--decode-len", type=int, default=128, show_default=True, help="Decode tokens per sequence.")
@click.option("--kind", type=click.Choice(["uniform", "zipf", "fitted"]), default=None,
              help="Routing: uniform, Zipf popularity, or Zipf fitted to --fit-activated at --fit-batch "
                   "(default: fitted if --fit-activated is given, zipf if --zipf-s is, else uniform).")
@click.option("--zipf-s", type=float, default=None, help="Zipf exponent for --kind zipf (default 1.0).")
@click.option("--fit-batch", type=int, default=None, help="Batch size of the fitting target (e.g. 16).")
@click.option("--fit-activated", type=float, default=None,
              help="Activated experts per layer to reproduce at --fit-batch (e.g. 57.7).")
@click.option("--model", default=None, help="Model id for the meta; a catalogue model also sets the defaults.")
@click.option("--seed", type=int, default=0, show_default=True)
def synth_cmd(out: str, experts: int | None, top_k: int | None, layers: int | None, sequences: int,
              prompt_len: int, decode_len: int, kind: str | None, zipf_s: float | None, fit_batch: int | None,
              fit_activated: float | None, model: str | None, seed: int) -> None:
    """Write a synthetic routing trace (meta marks it synthetic). --out must be new, an empty folder or a
    capsim trace (replaced): nothing else is ever removed."""
    from capsim.traces.format import check_destination, write_trace
    from capsim.traces.synthetic import synthetic_trace

    check_destination(out)
    model_id = "synthetic"
    if model is not None:
        model_id, defaults = _model_defaults(model, None not in (experts, top_k, layers))
        experts = experts if experts is not None else defaults.get("experts")
        top_k = top_k if top_k is not None else defaults.get("top_k")
        layers = layers if layers is not None else defaults.get("layers")
    for flag, v in (("--experts", experts), ("--top-k", top_k), ("--layers", layers)):
        if v is None:
            raise CapsimError(f"{flag} is required (or --model naming a catalogue model)")
    assert experts is not None and top_k is not None and layers is not None
    if not 1 <= experts <= 65536:
        raise CapsimError(f"--experts {experts}: must be in [1, 65536]")
    if not 1 <= top_k <= experts:
        raise CapsimError(f"--top-k {top_k}: must be in [1, --experts {experts}]")
    for flag, v, low in (("--layers", layers, 1), ("--sequences", sequences, 1), ("--prompt-len", prompt_len, 0),
                         ("--decode-len", decode_len, 0)):
        if v < low:
            raise CapsimError(f"{flag} {v}: must be >= {low}")
    if prompt_len + decode_len < 1:
        raise CapsimError("--prompt-len and --decode-len are both 0: the trace would have no tokens")
    tokens = sequences * (prompt_len + decode_len)
    size = tokens * (layers * top_k * (3 if experts <= 256 else 4) + 9)  # ids, fp16 weights, sequence, position, phase
    if size > MAX_SYNTH_BYTES:
        raise CapsimError(f"--sequences {sequences} x (--prompt-len {prompt_len} + --decode-len {decode_len}) = "
                          f"{tokens:,} tokens x --layers {layers} x --top-k {top_k}: the trace would take "
                          f"{size / 1e9:,.1f} GB (limit {MAX_SYNTH_BYTES / 1e9:.0f} GB); ask for fewer")
    fitting = fit_batch is not None or fit_activated is not None
    if kind is None:
        kind = "fitted" if fitting else "zipf" if zipf_s is not None else "uniform"
    if zipf_s is not None and kind != "zipf":
        raise CapsimError(f"--zipf-s applies to --kind zipf only (kind is {kind})")
    if fitting and kind != "fitted":
        raise CapsimError(f"--fit-batch/--fit-activated apply to --kind fitted only (kind is {kind})")
    if zipf_s is not None:
        checks.number(zipf_s, "--zipf-s", low=0.0, high=MAX_ZIPF_S)
    if fit_activated is not None:
        checks.number(fit_activated, "--fit-activated", positive=True, high=None)
    if kind == "fitted":
        if fit_batch is None or fit_activated is None:
            raise CapsimError("--kind fitted needs both --fit-batch and --fit-activated")
        if fit_batch < 2:
            raise CapsimError(f"--fit-batch {fit_batch}: must be >= 2 (one token always activates top-k experts)")
        if not top_k < fit_activated <= experts:
            raise CapsimError(f"--fit-activated {fit_activated:g}: outside (top-k, experts] = ({top_k}, {experts}]")
    from capsim import atomic

    try:
        with atomic.lock(out, "--out"):
            arrays, meta = synthetic_trace(kind, num_experts=experts, top_k=top_k, moe_layers=layers,
                                           sequences=sequences, prompt_len=prompt_len, decode_len=decode_len,
                                           seed=seed, model_id=model_id, zipf_s=1.0 if zipf_s is None else zipf_s,
                                           fit_batch=fit_batch, fit_activated=fit_activated)
            path = write_trace(out, arrays, meta)
    except ValueError as err:  # the fit's target out of reach (the other checks ran above)
        raise CapsimError(f"--fit-activated {fit_activated:g}: {err}" if kind == "fitted" else str(err)) from None
    except OSError as err:
        raise CapsimError(f"--out {out}: cannot write ({err.strerror or err})") from None
    spec = meta["synthetic_spec"]
    extra = f", s={spec['zipf_s']:.4g}" if "zipf_s" in spec else ""
    if "fit" in spec:
        extra += (f" (predicts {spec['fit']['predicted_activated']:.1f} activated experts at batch "
                  f"{spec['fit']['batch']}; uniform {spec['fit']['uniform_activated']:.1f})")
    click.echo(f"wrote {path}: synthetic {kind}{extra}, {meta['model_id']}, {experts} experts, top-{top_k}, "
               f"{layers} layers, {sequences} sequences x ({prompt_len} prompt + {decode_len} decode) tokens")
