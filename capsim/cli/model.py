"""``capsim model``: the shipped catalogue of MoE model shapes."""

from __future__ import annotations

import json

import click

from capsim.cli.table import render
from capsim.model.catalogue import entries, load_spec
from capsim.precision import PRECISIONS
from capsim.sim.shape import shape_of, weight_bytes


def _b(n: float) -> str:
    return f"{n / 1e9:.2f}B"


@click.group("model")
def model() -> None:
    """The model catalogue (shapes from Hugging Face config.json files)."""


@model.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(as_json: bool) -> None:
    """List catalogue models with their parameter counts."""
    es = list(entries().values())
    if as_json:
        keys = ("id", "aliases", "native_precision", "total_params", "active_params", "published")
        out = [{k: e[k] for k in keys} | {"num_experts": e["spec"]["num_experts"], "top_k": e["spec"]["top_k"]}
               for e in es]
        click.echo(json.dumps(out, indent=2))
        return
    rows = []
    for e in es:
        sp = e["spec"]
        experts = f"{sp['num_experts']} top-{sp['top_k']}" if sp["num_experts"] else "dense"
        rows.append([e["id"], ", ".join(e["aliases"][:2]), _b(e["total_params"]), _b(e["active_params"]), experts,
                     e["native_precision"]])
    click.echo(render(["id", "aliases", "total", "active", "experts", "checkpoint"], rows))
    click.echo(f"\n{len(es)} models. 'capsim model show ID' gives the shape and where it comes from.")


@model.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_cmd(name: str, as_json: bool) -> None:
    """Show one model (id, alias, or a local config.json / checkpoint folder)."""
    spec, info = load_spec(name)
    e = entries().get(info["id"], {})
    prec = PRECISIONS[info["native_precision"]]
    weights = weight_bytes(shape_of(spec, prec))
    a = spec.attention
    kv_layers = spec.layers - spec.num_linear_layers  # linear-attention layers keep a state, not K/V per token
    state = spec.num_linear_layers * spec.linear_attention.state_elements() if spec.linear_attention else 0
    if as_json:
        out = {"id": info["id"], "source": info["source"], "native_precision": prec.name,
               "total_params": spec.total_params, "active_params": spec.active_params,
               "params_breakdown": spec.params_breakdown(), "weight_bytes_native": weights,
               "kv_elements_per_token": a.kv_elements_per_token() * kv_layers,
               "linear_state_elements_per_sequence": state, "features": spec.features(),
               "published": e.get("published"), "aliases": e.get("aliases", []), "spec": e.get("spec")}
        if not e:
            from dataclasses import asdict

            out["spec"] = asdict(spec)
        click.echo(json.dumps(out, indent=2))
        return
    moe = f"{spec.num_experts} routed experts, top-{spec.top_k}, expert FFN {spec.expert_intermediate}"
    if spec.shared_intermediate:
        moe += f", shared expert(s) {spec.shared_intermediate} wide"
    attn = (f"MLA (kv_lora_rank {a.kv_lora_rank}, rope {a.qk_rope_head_dim}, q_lora_rank {a.q_lora_rank})"
            if a.kind == "mla" else f"GQA {a.num_heads} heads / {a.num_kv_heads} KV heads x {a.head_dim}")
    lines = [
        f"{info['id']}   (from {info['source']})",
        f"aliases: {', '.join(e.get('aliases', [])) or '-'}",
        f"layers {spec.layers} ({spec.num_moe_layers} MoE), hidden {spec.hidden}, vocab {spec.vocab}",
        f"attention: {attn}; KV cache {a.kv_elements_per_token() * kv_layers:,} elements per token"
        + (f" ({kv_layers} layers) + linear-attention state {state:,} elements per sequence" if state else ""),
        f"features: {'; '.join(spec.features())}",
        f"FFN: {moe if spec.num_experts else f'dense {spec.dense_intermediate}'}",
        f"parameters: {_b(spec.total_params)} total, {_b(spec.active_params)} active per token",
    ]
    pub = e.get("published") or {}
    if pub.get("total_params"):
        lines.append(f"published: {_b(pub['total_params'])} total, "
                     f"{_b(pub['active_params']) if pub.get('active_params') else '-'} active ({pub.get('source')})")
    lines.append(f"weights at the checkpoint's {prec.name}: {sum(weights.values()) / 1e9:.1f} GB")
    lines.append("")
    rows = [[k, f"{v:,}"] for k, v in spec.params_breakdown().items()]
    lines.append(render(["component", "parameters"], rows))
    click.echo("\n".join(lines))
