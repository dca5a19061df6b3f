"""Which routing a prediction replays: ``--routing uniform | real | PATH`` (default ``real``).

``real`` takes the best information shipped for the model, in this order:

1. **trace**: a token-level trace of the model's real routing under ``traces/routing/`` (packaged as
   ``capsim/_data/routing``), matched by model id and config hash;
2. **fitted**: a routing model fitted to published counts of the model (``traces/routing/fitted/*.json``,
   :mod:`capsim.traces.fitted`), drawn into a synthetic token-level trace;
3. **prior**: for a model with no data, the prior fitted across the real models (``traces/routing/prior.json``,
   :mod:`capsim.traces.prior`), drawn for the model's experts, top-k and MoE layers.

A drawn trace is written once into capsim's cache folder (named by the hash of the routing model, the shape
and the draw's size), or a temporary folder when the cache is off, and replayed like any trace
(:mod:`capsim.routing`). ``PATH`` is a trace folder or a routing model file. ``uniform`` is the expected
distinct experts of independent uniform top-k choices (:mod:`capsim.sim.experts`).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsim.errors import CapsimError

UNIFORM, REAL = "uniform", "real"
CHOICES = (UNIFORM, REAL)
UNIFORM_LABEL = "uniform (expected distinct experts)"
# A drawn trace: enough sequences for a decode batch of 256 distinct sequences (larger batches reuse them, with
# a note), prompts long enough that a prefill of many prompts is not one prompt repeated.
DRAW_SEQUENCES = 256
DRAW_PROMPT_LEN = 128
DRAW_DECODE_LEN = 32
DRAW_SEED = 20261207
DRAW_VERSION = 1  # bump when fitted.sample_trace changes what it draws


@dataclass(frozen=True)
class RoutingChoice:
    kind: str  # "uniform", "trace", "fitted" or "prior"
    trace: str | None  # the trace folder replayed (None: uniform)
    label: str  # the report's scenario.routing
    source: str  # where the routing comes from (file, repository, licence)
    model_file: str | None = None  # a fitted or prior model drawn into ``trace``
    asked: tuple = ()  # choose()'s arguments: a draw removed from the cache is drawn again

    def describe(self) -> dict[str, Any]:
        return {"routing": self.label, "routing_kind": self.kind, "routing_source": self.source}


def folder() -> Path:
    from capsim import data

    return data.path("routing")


def _shipped_traces() -> list[Path]:
    from capsim.traces.format import is_trace

    return sorted(p for p in folder().iterdir() if p.is_dir() and is_trace(p))


def _fitted_files() -> list[Path]:
    where = folder() / "fitted"
    return sorted(where.glob("*.json")) if where.is_dir() else []


def _meta(path: Path) -> dict[str, Any]:
    return json.loads((path / "meta.json").read_text())


def choose(routing: str, trace: str | None, model_id: str, config_hash: str | None, num_experts: int, top_k: int,
           moe_layers: int) -> RoutingChoice:
    """The routing of a scenario (``trace``: an explicit ``--trace``, which wins)."""
    asked = (routing, trace, model_id, config_hash, num_experts, top_k, moe_layers)
    out = _choose(*asked)
    return out if out.model_file is None else RoutingChoice(out.kind, out.trace, out.label, out.source,
                                                             out.model_file, asked)


def _choose(routing: str, trace: str | None, model_id: str, config_hash: str | None, num_experts: int, top_k: int,
            moe_layers: int) -> RoutingChoice:
    if trace is not None:
        return RoutingChoice("trace", trace, f"trace replay: {trace}", trace)
    if routing == UNIFORM or num_experts == 0:
        return RoutingChoice("uniform", None, UNIFORM_LABEL, "independent uniform top-k choices")
    if routing != REAL:
        return _from_path(routing, model_id, config_hash, num_experts, top_k, moe_layers)
    for p in _shipped_traces():
        m = _meta(p)
        if m.get("model_id") == model_id and (config_hash is None or m.get("config_hash") in (None, config_hash)):
            prov = m.get("provenance", {})
            src = f"{prov.get('repository', p.name)} ({prov.get('licence', 'licence not stated')})"
            return RoutingChoice("trace", str(p), f"real trace: {p.name} ({m.get('sequences')} sequences, "
                                 f"{m.get('tokens'):,} tokens)", src)
    from capsim.traces import fitted

    for f in _fitted_files():
        fm = fitted.load(f)
        if fm.model_id == model_id and (fm.num_experts, fm.top_k, fm.moe_layers) == (num_experts, top_k,
                                                                                        moe_layers):
            return _drawn(fm, f, model_id, config_hash, "fitted")
    from capsim.traces import prior

    pm, where = prior.model_for(model_id, num_experts, top_k, moe_layers)
    return _drawn(pm, where, model_id, config_hash, "prior")


def _from_path(path: str, model_id: str, config_hash: str | None, e: int, k: int, layers: int) -> RoutingChoice:
    from capsim.traces import fitted
    from capsim.traces.format import is_trace

    p = Path(path)
    if p.is_dir() and is_trace(p):
        return RoutingChoice("trace", str(p), f"trace replay: {p}", str(p))
    if not p.is_file():
        raise CapsimError(f"--routing {path}: expected 'uniform', 'real', a trace folder or a routing model "
                          "file (.json)")
    fm = fitted.load(p)
    if (fm.num_experts, fm.top_k) != (e, k):
        raise CapsimError(f"--routing {path}: a model of {fm.num_experts} experts top-{fm.top_k}, the model has "
                          f"{e} top-{k}")
    if fm.moe_layers != layers:
        fm = fitted.RoutingModel(fm.model_id, e, k, layers, fm.kind,
                                 {i: v for i, v in fm.popularity.items() if i < layers} or fm.popularity,
                                 fm.sequence_concentration, fm.meta)
    return _drawn(fm, p, model_id, config_hash, fm.kind)


def _drawn(fm, where: Path | str, model_id: str, config_hash: str | None, kind: str) -> RoutingChoice:
    from capsim.traces import prior

    c = fm.sequence_concentration
    note = ""
    if c is None:
        c = prior.concentration(fm.num_experts)
        note = f"; sequence concentration from the prior ({c:.3g})"
    path = materialise(fm, c, model_id, config_hash)
    srcs = fm.meta.get("sources") or []
    src = "; ".join(f"{s.get('repository') or s.get('url')} {s.get('path', '')} ({s.get('licence', '?')})".strip()
                    for s in srcs if isinstance(s, dict)) or str(where)
    label = {"fitted": f"fitted to published counts: {Path(where).name}{note}",
             "prior": f"prior across real models ({Path(where).name}): no routing data for {model_id}"}.get(
        kind, f"routing model {where}{note}")
    return RoutingChoice(kind, str(path), label, src, str(where))


def _draw_key(fm, c: float, model_id: str, config_hash: str | None) -> str:
    from capsim.traces import fitted

    body = json.dumps([fitted.to_json(fm), c, model_id, config_hash, DRAW_SEQUENCES, DRAW_PROMPT_LEN,
                       DRAW_DECODE_LEN, DRAW_SEED, DRAW_VERSION], sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


_TEMP: dict[str, Path] = {}


def materialise(fm, c: float, model_id: str, config_hash: str | None) -> Path:
    """The folder of the trace drawn from routing model ``fm`` (drawn and written on first use)."""
    from capsim.scenario_cache import folder as cache_folder
    from capsim.traces import fitted
    from capsim.traces.format import is_trace, write_trace

    key = _draw_key(fm, c, model_id, config_hash)
    base = cache_folder()
    if base is None:
        if key not in _TEMP:  # removed when the process ends: a run without the cache leaves nothing behind
            _TEMP[key] = Path(tempfile.mkdtemp(prefix="capsim-routing-"))
            atexit.register(shutil.rmtree, _TEMP[key], ignore_errors=True)
        base = _TEMP[key]
    path = base / "routing" / f"{model_id.replace('/', '__')}-{key}"
    if is_trace(path):
        return path
    arrays, meta = fitted.sample_trace(fm, sequences=DRAW_SEQUENCES, prompt_len=DRAW_PROMPT_LEN,
                                       decode_len=DRAW_DECODE_LEN, seed=DRAW_SEED, concentration=c)
    meta = dict(meta, model_id=model_id, **({"config_hash": config_hash} if config_hash else {}))
    try:
        write_trace(path, arrays, meta)
    except OSError as err:
        raise CapsimError(f"cannot write the drawn routing trace to {path}: {err.strerror or err}") from None
    return path


def trace_of(choice: RoutingChoice | None) -> str | None:
    """The trace folder to replay, drawn again if a cached draw was removed."""
    if choice is None or choice.trace is None:
        return None
    if choice.model_file is not None and choice.asked and not Path(choice.trace, "meta.json").is_file():
        return choose(*choice.asked).trace
    return choice.trace
