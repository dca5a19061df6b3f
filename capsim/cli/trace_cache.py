"""``capsim trace cache``: hit rates of expert caches (LRU, LFU, static hot set) replayed over a trace."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
import numpy as np

from capsim.atomic import save_figure
from capsim.cli.oneline import CapsimCommand
from capsim.cli.table import render
from capsim.errors import CapsimError
from capsim.offload.cache import POLICIES, simulate
from capsim.offload.steps import decode_steps

_PLOT_DPI = 120  # same resolution as the `capsim trace stats` plots


def _capacities(text: str) -> list[int]:
    try:
        caps = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise CapsimError(f"--capacity {text}: expected integers separated by commas, e.g. 8,16,32") from None
    if not caps:
        raise CapsimError(f"--capacity {text!r}: expected at least one capacity")
    return sorted(set(caps))


def _policies(text: str) -> list[str]:
    if text == "all":
        return list(POLICIES)
    if text not in POLICIES:
        raise CapsimError(f"--policy {text}: expected one of {', '.join(POLICIES)} or all")
    return [text]


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _save_plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    """Hit rate vs capacity, one line per policy, written to a temporary sibling then renamed into place."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy in dict.fromkeys(r["policy"] for r in results):
        rows = [r for r in results if r["policy"] == policy]
        ax.plot([r["capacity"] for r in rows], [np.nan if r["hit_rate"] is None else r["hit_rate"] for r in rows],
                "o-", label=policy)
    ax.set(xlabel="cache capacity (experts per MoE layer)", ylabel="hit rate", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    try:
        save_figure(fig, path.with_suffix(".png") if not path.suffix else path, dpi=_PLOT_DPI, bbox_inches="tight")
    except OSError as err:
        raise CapsimError(f"--plot {path}: cannot write ({err.strerror or err})") from None
    finally:
        plt.close(fig)


def _human(s: dict[str, Any]) -> str:
    lines = [f"trace {s['trace']}: {s['moe_layers']} MoE layers x {s['num_experts']} experts; batch {s['batch']}, "
             f"{s['steps']} decode steps replayed ({s['warmup_steps']} warm-up steps not counted)"]
    rows = []
    for r in s["results"]:
        per_layer = np.array([np.nan if x is None else x for x in r["hit_rate_per_layer"]], dtype=float)
        stats = [np.nanmin(per_layer), np.nanmedian(per_layer), np.nanmax(per_layer)] \
            if np.isfinite(per_layer).any() else [None] * 3
        rows.append([str(r["capacity"]), r["policy"], *("-" if x is None else f"{x:.3f}"
                                                        for x in (r["hit_rate"], *stats))])
    lines.append(render(["capacity", "policy", "hit rate", "layer min", "layer median", "layer max"], rows))
    if s.get("plot"):
        lines.append(f"\nplot: {s['plot']}")
    return "\n".join(lines)


@click.command("cache", cls=CapsimCommand)
@click.argument("path", metavar="TRACE")
@click.option("--batch", type=int, required=True, help="Sequences decoded side by side (one token each a step).")
@click.option("--capacity", "capacity_text", required=True, metavar="C[,C2,...]",
              help="Experts cached in GPU memory per MoE layer; several separated by commas.")
@click.option("--policy", default="all", show_default=True, metavar="lru|lfu|static|all",
              help="Cache policy; all replays each of them.")
@click.option("--steps", type=int, default=None, help="Replay only the first N decode steps.")
@click.option("--warmup-steps", "warmup_steps", type=int, default=0, show_default=True,
              help="First steps that fill the cache but are not counted.")
@click.option("--json", "as_json", is_flag=True, help="Print the results, per layer too, as JSON.")
@click.option("--plot", "plot_path", default=None, metavar="PATH", help="Write a PNG of hit rate vs capacity.")
def cache_cmd(path: str, batch: int, capacity_text: str, policy: str, steps: int | None, warmup_steps: int,
              as_json: bool, plot_path: str | None) -> None:
    """Hit rate of a per-layer expert cache replayed over a trace's decode steps (rules: capsim/offload)."""
    from capsim.traces.format import open_trace

    capacities, policies = _capacities(capacity_text), _policies(policy)
    if warmup_steps < 0:
        raise CapsimError(f"--warmup-steps {warmup_steps}: must be >= 0")
    trace = open_trace(path, verify=True)
    e = trace.num_experts
    bad = [c for c in capacities if not 0 <= c <= e]
    if bad:
        raise CapsimError(f"--capacity {bad[0]}: expected 0..{e} experts per layer")
    touched = decode_steps(trace, batch, steps)
    results = []
    for pol in policies:
        for cap in capacities:
            st = simulate(touched, cap, pol, warmup_steps=warmup_steps)
            results.append({"policy": pol, "capacity": cap, "hit_rate": _num(st.hit_rate),
                            "hit_rate_per_layer": [_num(x) for x in st.hit_rate_per_layer],
                            "requests_per_layer": st.requests.tolist(), "hits_per_layer": st.hits.tolist(),
                            "misses_per_layer": st.misses.tolist()})
    s = {"trace": str(trace.path), "model_id": trace.meta.get("model_id"), "num_experts": e,
         "moe_layers": int(touched.shape[1]), "batch": batch, "steps": int(len(touched)),
         "warmup_steps": warmup_steps, "results": results}
    if plot_path is not None:
        _save_plot(results, Path(plot_path), f"expert cache hit rate: {s['model_id']}, batch {batch}")
        s["plot"] = plot_path
    click.echo(json.dumps(s, indent=1, allow_nan=False) if as_json else _human(s))
