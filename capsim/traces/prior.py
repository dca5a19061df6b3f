"""The routing prior for a model with no routing data, fitted across the real models capsim ships data for.

Two numbers carry from one model to another:

- **layer load CV**: the coefficient of variation of a layer's expert popularity (std / mean of the shares
  of the top-k selections over the E experts; 0 is perfectly balanced). Per real model, the median over its
  counted layers; the prior is the median over models, with the models' range as its uncertainty. A prior
  layer's shares are drawn from the symmetric Dirichlet with that CV: Var(p_e) = (1/E)(1 - 1/E)/(E a + 1),
  so CV^2 = E^2 Var = (E - 1)/(E a + 1) and a = ((E - 1)/CV^2 - 1)/E.
- **sequence concentration** c: how far one sequence's routing strays from its layer's
  (:mod:`capsim.traces.fitted`). The two models with per-sequence data gave c = 165 (DeepSeek-V2-Lite, E = 64,
  ESFT) and 225 (Mixtral-8x7B, E = 8, MMLU): close in absolute terms and 10x apart per expert, so the prior
  carries c itself (the geometric mean), not c / E.

``python -m capsim.traces.prior`` refits ``traces/routing/prior.json`` from the shipped traces and fitted
models and prints the per-model values.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from capsim.errors import CapsimError
from capsim.traces import fitted

PRIOR_FILE = "prior.json"
PRIOR_FORMAT = "capsim-routing-prior"


def _path() -> Path:
    from capsim.traces.sources import folder

    return folder() / PRIOR_FILE


_LOADED: dict[str, Any] = {}


def load() -> dict[str, Any]:
    if "prior" not in _LOADED:
        p = _path()
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as err:
            raise CapsimError(f"{p}: cannot read the routing prior ({err})") from None
        if data.get("format") != PRIOR_FORMAT:
            raise CapsimError(f"{p}: not a capsim routing prior")
        _LOADED["prior"] = data
    return _LOADED["prior"]


def concentration(num_experts: int) -> float:
    """The prior's sequence concentration c (the same for every expert count: module docstring)."""
    return float(load()["sequence_concentration"]["value"])


def dirichlet_a(num_experts: int, cv: float) -> float:
    """Symmetric Dirichlet parameter whose draws have coefficient of variation ``cv`` (module docstring)."""
    e = float(num_experts)
    a = ((e - 1.0) / (cv * cv) - 1.0) / e
    if not a > 0:
        raise CapsimError(f"routing prior: a layer load CV of {cv} is impossible with {num_experts} experts")
    return a


def model_for(model_id: str, num_experts: int, top_k: int, moe_layers: int) -> tuple[fitted.RoutingModel, Path]:
    """The prior's routing model for a shape: every layer's shares drawn (seeded by the model id)."""
    data = load()
    cv = float(data["layer_load_cv"]["value"])
    seed = int(hashlib.sha256(model_id.encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    a = dirichlet_a(num_experts, cv)
    pop = {layer: rng.dirichlet(np.full(num_experts, a)) for layer in range(moe_layers)}
    meta = {"sources": data.get("sources", []),
            "caveats": [f"no routing data for {model_id}: layer shares drawn with the prior's load CV {cv:.3g} "
                        f"(real models {data['layer_load_cv']['min']:.3g}-{data['layer_load_cv']['max']:.3g})"]}
    return fitted.RoutingModel(model_id, num_experts, top_k, moe_layers, "prior", pop,
                               concentration(num_experts), meta), _path()


# ------------------------------------------------------------------------------------------------- fitting
def layer_cv(shares: np.ndarray) -> float:
    """std / mean of one layer's shares (population std over the E experts)."""
    s = np.asarray(shares, dtype=float)
    return float(s.std() / s.mean())


def trace_facts(path: Path) -> dict[str, Any]:
    """Per-layer load CV and sequence concentration of a real token-level trace (all its tokens)."""
    from capsim.traces.format import open_trace

    t = open_trace(path, verify=True)
    ids = np.asarray(t.expert_ids)
    seq = np.asarray(t.sequence).astype(np.int64)
    _, seq = np.unique(seq, return_inverse=True)
    e, n_seq = t.num_experts, int(seq.max()) + 1
    cvs, cs = [], []
    for layer in range(ids.shape[1]):
        bins = (seq[:, None] * e + ids[:, layer, :].astype(np.int64)).ravel()
        counts = np.bincount(bins, minlength=n_seq * e).reshape(n_seq, e)
        cvs.append(layer_cv(counts.sum(axis=0) / counts.sum()))
        cs.append(fitted.fit_concentration(counts))
    return {"model_id": t.meta["model_id"], "num_experts": e, "top_k": t.top_k, "kind": "trace",
            "file": path.name, "layer_load_cv": float(np.median(cvs)),
            "sequence_concentration": float(np.median(cs)), "sources": [t.meta.get("provenance", {})]}


def fitted_facts(path: Path) -> dict[str, Any]:
    m = fitted.load(path)
    cvs = [layer_cv(p) for p in m.popularity.values()]
    return {"model_id": m.model_id, "num_experts": m.num_experts, "top_k": m.top_k, "kind": "fitted",
            "file": path.name, "layer_load_cv": float(np.median(cvs)),
            "sequence_concentration": m.sequence_concentration, "sources": m.meta.get("sources", [])}


def fit() -> dict[str, Any]:
    """The prior from every shipped trace and fitted model (medians over models, ranges as uncertainty)."""
    from capsim.traces.sources import _fitted_files, _shipped_traces

    models = [trace_facts(p) for p in _shipped_traces()] + [fitted_facts(p) for p in _fitted_files()]
    if not models:
        raise CapsimError("routing prior: no shipped routing data to fit it to")
    cv = [m["layer_load_cv"] for m in models]
    cs = [m["sequence_concentration"] for m in models if m["sequence_concentration"]]
    summary = {"value": float(np.median(cv)), "min": float(min(cv)), "max": float(max(cv))}
    conc = {"value": float(np.exp(np.mean(np.log(cs)))), "min": float(min(cs)), "max": float(max(cs))}
    return {
        "format": PRIOR_FORMAT, "version": 1,
        "layer_load_cv": {**summary, "how": "median over models of each model's median over layers of std/mean "
                                             "of the layer's selection shares"},
        "sequence_concentration": {**conc, "how": "geometric mean over the models with per-sequence data of "
                                                  "the median over layers of the fitted Dirichlet concentration c"},
        "models": [{k: v for k, v in m.items() if k != "sources"} for m in models],
        "sources": [s for m in models for s in m["sources"]],
    }


CV_BATCHES = (1, 8, 32, 128)  # decode batch sizes of the leave-one-model-out check
CV_DRAWS = 32  # prior popularity draws averaged per layer in that check


def decode_union(shares: np.ndarray, top_k: int, batch: int) -> float:
    """Expected distinct experts of a decode step of ``batch`` independent tokens routed with layer shares
    (E,): sum_e 1 - (1 - pi_e)^B with pi the inclusion probabilities (fitted.inclusion)."""
    pi = fitted.inclusion(np.asarray(shares, float), top_k)
    return float(np.sum(1.0 - (1.0 - pi) ** batch))


def _own_shares(m: dict[str, Any]) -> list[np.ndarray]:
    from capsim.traces.sources import folder

    if m["kind"] == "fitted":
        return list(fitted.load(folder() / "fitted" / m["file"]).popularity.values())
    from capsim.traces.format import open_trace

    t = open_trace(folder() / m["file"])
    ids = np.asarray(t.expert_ids)
    return [np.bincount(ids[:, layer].ravel(), minlength=t.num_experts) / ids[:, layer].size
            for layer in range(ids.shape[1])]


def cross_validate(prior_models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leave one model out: each model's decode union at CV_BATCHES from its own shares, from the prior fitted
    to the other models (CV_DRAWS drawn layers), and uniform."""
    out = []
    for m in prior_models:
        others = [o["layer_load_cv"] for o in prior_models if o is not m]
        if not others:
            continue
        e, k = m["num_experts"], m["top_k"]
        rng = np.random.default_rng(0)
        draws = rng.dirichlet(np.full(e, dirichlet_a(e, float(np.median(others)))), size=CV_DRAWS)
        own = _own_shares(m)
        row = {"model_id": m["model_id"], "prior_cv_from_others": float(np.median(others))}
        for b in CV_BATCHES:
            real = float(np.mean([decode_union(p, k, b) for p in own]))
            pri = float(np.mean([decode_union(p, k, b) for p in draws]))
            uni = float(e * (1 - (1 - k / e) ** b))
            row[f"b{b}"] = {"own": real, "prior": pri, "uniform": uni}
        out.append(row)
    return out


def main() -> int:
    from capsim import atomic

    prior = fit()
    prior["leave_one_model_out"] = cross_validate(prior["models"])
    atomic.write_text(_path(), json.dumps(prior, indent=1, default=str) + "\n")
    for m in prior["models"]:
        print(f"{m['model_id']:40s} E={m['num_experts']:3d} k={m['top_k']} CV={m['layer_load_cv']:.3f} "
              f"c={m['sequence_concentration'] or float('nan'):.3g}")
    for r in prior["leave_one_model_out"]:
        print(f"LOMO {r['model_id']:34s} prior CV {r['prior_cv_from_others']:.3f}: " + "  ".join(
            f"B={b}: own {r[f'b{b}']['own']:.2f} prior {r[f'b{b}']['prior']:.2f} uniform {r[f'b{b}']['uniform']:.2f}"
            for b in CV_BATCHES))
    print(f"prior: CV {prior['layer_load_cv']['value']:.3f}, c {prior['sequence_concentration']['value']:.3g} "
          f"-> {_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
