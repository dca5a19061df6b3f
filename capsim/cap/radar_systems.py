"""The systems of a CAP radar diagram: read from a YAML file and/or ``--system`` flags, then evaluated.

A system is a model served on hardware with an engine, a precision, a placement and a workload. Its three
raw CAP values come from:

* performance: :func:`capsim.predict.predict` (``tpot_s``, ``decode_tokens_per_s``);
* cost: the capital cost of the devices the prediction uses, :func:`capsim.cap.report.cost_report`
  ``["capex"]["usd"]`` (a system used in part is pro-rated as ``capsim cap cost --devices`` does; nodes
  multiply it), or ``capex_usd`` stated in the entry;
* accuracy: the cited table of published scores (:func:`capsim.cap.accuracy.score`) for the benchmark at
  the precision the prediction uses, or ``accuracy`` stated in the entry with its source.

Nothing is made up: an unpriced part or a missing published score is a one-line error naming the system.

File format (top-level keys ``benchmark``, ``defaults``, ``systems``; a full example with sources is
examples/cap_radar/qwen3-30b-a3b.yaml)::

    benchmark: gsm8k                   # accuracy benchmark (capsim/catalogue/accuracy.yaml); --benchmark wins
    defaults: {model: qwen3-30b-a3b, batch: 1}   # keys shared by every system (all but name)
    systems:                           # two or more mappings of SYSTEM_KEYS
      - {name: 2x A100, hardware: dgx-a100, devices: 2, engine: trt-llm}   # name default: "HARDWARE (ENGINE)"
      - name: 4090 + CPU experts
        hardware: workstation-rtx-4090
        engine: ktransformers
        offload: cpu                   # placement: cpu | gpu-fetch (capsim predict --offload)
        prices: {dram: 170}            # a part's unit price (like --price, this system only)
        accuracy: {value: 0.800, source: "where it was read"}    # instead of the table
        capex_usd: {value: 2768, source: "a quote"}               # instead of pricing the parts

A ``--system`` flag holds the same keys as ``KEY=VAL`` pairs separated by commas (``accuracy_source=`` and
``capex_source=`` for the sources, ``price.NAME=USD`` for prices; values cannot contain commas there).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from capsim import engines
from capsim.errors import CapsimError

TOP_KEYS = ("benchmark", "defaults", "systems")
INT_KEYS = ("devices", "nodes", "batch", "input_len", "output_len", "expert_cache", "tp", "ep", "pp")
SYSTEM_KEYS = ("name", "model", "hardware", "devices", "nodes", "engine", "precision", "kv_precision", "batch",
               "input_len", "output_len", "offload", "expert_cache", "tp", "ep", "pp", "capex_usd", "capex_source",
               "prices", "accuracy", "accuracy_source")
REQUIRED = ("model", "hardware")
PRICE_PREFIX = "price."  # --system price.NAME=USD
MIN_SYSTEMS = 2  # a radar compares systems: min-max needs two
POWER_NOTE = "no power figure"  # cost_report notes about power: the radar uses capex only
PREDICT_PRICE_NOTE = "price and power pro-rated"  # predict's own cost note; cost_report's capex note replaces it


@dataclass(frozen=True)
class System:
    model: str
    hardware: str
    where: str  # "FILE: systems[i]" or "--system N", for error messages
    name: str = ""
    devices: int | None = None
    nodes: int = 1
    engine: str = engines.DEFAULT_ENGINE
    precision: str | None = None
    kv_precision: str | None = None
    batch: int = 1
    input_len: int = 512  # capsim.predict.DEFAULT_INPUT_LEN (the peers' comparison point)
    output_len: int = 128  # capsim.predict.DEFAULT_OUTPUT_LEN
    offload: str | None = None
    expert_cache: int | None = None
    tp: int | None = None
    ep: int | None = None
    pp: int = 1
    capex_usd: float | None = None
    capex_source: str | None = None
    prices: dict[str, float] = field(default_factory=dict)
    accuracy: float | None = None
    accuracy_source: str | None = None


@dataclass(frozen=True)
class Evaluated:
    system: System
    tpot_s: float
    decode_tokens_per_s: float
    capex_usd: float
    capex_basis: str
    capex_source: str | None
    accuracy: float
    accuracy_source: str
    accuracy_note: str | None
    scenario: dict[str, Any]
    notes: list[str]


def _unknown(key: str, allowed: tuple[str, ...], where: str) -> CapsimError:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return CapsimError(f"unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}", where=where)


def _number(key: str, value: Any, where: str) -> float:
    try:
        x = float(str(value).replace(",", "").lstrip("$")) if not isinstance(value, bool) else math.nan
    except ValueError:
        x = math.nan
    if not math.isfinite(x):
        raise CapsimError(f"{key}: {value!r} is not a number", where=where)
    return x


def _typed(key: str, value: Any, where: str) -> Any:
    if key in INT_KEYS:
        if isinstance(value, str) and value.strip().lstrip("+").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CapsimError(f"{key}: {value!r} is not an integer >= 1", where=where)
        return value
    if key == "accuracy":
        x = _number(key, value, where)
        if not 0 <= x <= 1:
            raise CapsimError(f"accuracy: {value!r} is not a fraction in [0, 1] (0.911 for 91.1%)", where=where)
        return x
    if key == "capex_usd":
        x = _number(key, value, where)
        if not x > 0:
            raise CapsimError(f"capex_usd: {value!r} is not a positive price in USD", where=where)
        return x
    if key == "prices":
        if not isinstance(value, dict):
            raise CapsimError("prices: expected a mapping of part name (or item id) to unit price in USD", where=where)
        out = {str(k): _number(f"prices.{k}", v, where) for k, v in value.items()}
        for k, x in out.items():
            if x < 0:
                raise CapsimError(f"prices.{k}: {x:g} is not a price >= 0 in USD", where=where)
        return out
    if not isinstance(value, str | int | float) or isinstance(value, bool) or not str(value).strip():
        raise CapsimError(f"{key}: {value!r} is not a text value", where=where)
    return str(value).strip()


def _sourced(entry: dict[str, Any], key: str, source_key: str, where: str) -> dict[str, Any]:
    """``accuracy: {value, source}`` (and ``capex_usd: {value, source}``) -> the flat keys."""
    value = entry.get(key)
    if not isinstance(value, dict):
        return entry
    extra = sorted(set(value) - {"value", "source"})
    if extra or "value" not in value:
        raise CapsimError(f"{key}: expected {{value: NUMBER, source: TEXT}}" + (f", not {extra[0]!r}" if extra else ""),
                          where=where)
    out = {k: v for k, v in entry.items() if k != key} | {key: value["value"]}
    if "source" in value:
        out[source_key] = value["source"]
    return out


def build(entry: dict[str, Any], where: str, defaults: dict[str, Any] | None = None) -> System:
    """One validated System from a mapping of SYSTEM_KEYS (``defaults`` fill what the entry leaves out)."""
    if not isinstance(entry, dict):
        raise CapsimError(f"expected a mapping of system keys ({', '.join(SYSTEM_KEYS)})", where=where)
    merged = dict(defaults or {}) | entry
    for key in ("accuracy", "capex_usd"):
        merged = _sourced(merged, key, f"{key.split('_')[0]}_source", where)
    for key in merged:
        if key not in SYSTEM_KEYS:
            raise _unknown(key, SYSTEM_KEYS, where)
    missing = [k for k in REQUIRED if merged.get(k) is None]
    if missing:
        raise CapsimError(f"missing {' and '.join(missing)} (required keys: {', '.join(REQUIRED)})", where=where)
    values = {k: _typed(k, v, where) for k, v in merged.items() if v is not None}
    if "accuracy" in values and "accuracy_source" not in values:
        raise CapsimError("accuracy given without its source: write accuracy: {value: FRACTION, source: TEXT} "
                          "(or accuracy_source=TEXT with --system)", where=where)
    values.setdefault("name", f"{values['hardware']} ({values.get('engine', 'roofline')})")
    known = {f.name for f in fields(System)}
    return System(where=where, **{k: v for k, v in values.items() if k in known})


def parse_flag(text: str, index: int) -> System:
    """``--system KEY=VAL,KEY=VAL,...`` (``price.NAME=USD`` for a part price)."""
    where = f"--system {text}"
    entry: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CapsimError(f"{item.strip()!r}: expected KEY=VAL pairs separated by commas "
                              f"(keys: {', '.join(SYSTEM_KEYS)})", where=f"--system {index}")
        if key.startswith(PRICE_PREFIX):
            entry.setdefault("prices", {})[key[len(PRICE_PREFIX):]] = value
        elif key == "prices":
            raise CapsimError("use price.NAME=USD for a part's price in --system", where=where)
        else:
            entry[key] = value
    return build(entry, where)


def read_file(path: str | Path) -> tuple[str | None, list[System]]:
    """The benchmark (or None) and the systems of a systems YAML file."""
    from capsim import checks

    p = Path(path)
    data = checks.read_yaml(p, "systems file")
    if not isinstance(data, dict):
        raise CapsimError(f"expected a mapping with keys {', '.join(TOP_KEYS)}", where=str(p))
    for key in data:
        if key not in TOP_KEYS:
            raise _unknown(key, TOP_KEYS, str(p))
    systems, defaults = data.get("systems"), data.get("defaults") or {}
    if not isinstance(systems, list):
        raise CapsimError("'systems:' must be a list of mappings (one per system)", where=str(p))
    if not isinstance(defaults, dict):
        raise CapsimError("'defaults:' must be a mapping of system keys", where=str(p))
    for key in defaults:
        if key not in SYSTEM_KEYS or key == "name":
            raise _unknown(key, tuple(k for k in SYSTEM_KEYS if k != "name"), f"{p}: defaults")
    bench = data.get("benchmark")
    if bench is not None and (not isinstance(bench, str) or not bench.strip()):
        raise CapsimError(f"benchmark: {bench!r} is not a benchmark name", where=str(p))
    return bench, [build(e, f"{p}: systems[{i}]", defaults) for i, e in enumerate(systems)]


def check_systems(systems: list[System]) -> None:
    if len(systems) < MIN_SYSTEMS:
        raise CapsimError(f"{len(systems)} system given: a CAP radar compares at least {MIN_SYSTEMS} systems "
                          "(entries under 'systems:' in SYSTEMS.yaml and/or --system flags)")
    seen: dict[str, str] = {}
    for s in systems:
        if s.name in seen:
            raise CapsimError(f"name {s.name!r} is also the name of {seen[s.name]}; give each system its own "
                              "name:", where=s.where)
        seen[s.name] = s.where


def _query(s: System):
    from capsim.predict import Query

    return Query(model=s.model, hardware=s.hardware, devices=s.devices, engine=s.engine, precision=s.precision,
                 kv_precision=s.kv_precision, batch=s.batch, input_len=s.input_len, output_len=s.output_len,
                 tp=s.tp, ep=s.ep, pp=s.pp, nodes=s.nodes, offload=s.offload, expert_cache=s.expert_cache)


def _capex(s: System, sc: dict[str, Any], tokens_per_s: float, db, a, prices: dict[str, float],
           used: set[str]) -> tuple[float, str, str | None, list[str]]:
    """(USD, basis, source, notes) of the devices the prediction used, times its nodes."""
    if s.capex_usd is not None:
        return s.capex_usd, "capex_usd given in the system entry", s.capex_source or "(no source given)", []
    from capsim.cap.parts import hardware_parts
    from capsim.cap.report import cost_report

    devices = sc["devices_per_node"]
    parts = hardware_parts(db, s.hardware, a, devices).parts
    names = {p.name for p in parts} | {p.item for p in parts if p.item}
    mine = {k: v for k, v in prices.items() if k in names}
    used |= set(mine)
    try:
        rep = cost_report(db, s.hardware, a, tokens_per_s, devices=devices, prices=mine | s.prices)
    except CapsimError as err:
        raise CapsimError(f"({s.name}) {err}", where=s.where) from None
    cap = rep["capex"]
    if cap["usd"] is None:
        raise CapsimError(f"({s.name}) capex of {rep['hardware']} unknown: no price for "
                          f"{', '.join(cap['unpriced_parts'])}; give capex_usd: USD in the system entry, or a price "
                          "for each part with --price NAME=USD (prices: {NAME: USD} in the entry)", where=s.where)
    nodes = sc["nodes"]
    notes = [n for n in rep["notes"] if not n.startswith(POWER_NOTE)] + ([f"capex x {nodes} nodes"] if nodes > 1 else [])
    return cap["usd"] * nodes, cap["basis"], cap["source"], notes


def _accuracy(s: System, sc: dict[str, Any], benchmark: str | None,
              any_precision: bool) -> tuple[float, str, str | None]:
    """(fraction, source, note) of the model on ``benchmark`` at the precision the prediction used."""
    if s.accuracy is not None:
        return s.accuracy, str(s.accuracy_source), None
    prec = sc["precision"]
    if benchmark is None:
        raise CapsimError(f"({s.name}) no benchmark for the accuracy of {sc['model']} at {prec}: give --benchmark "
                          "NAME (or benchmark: in SYSTEMS.yaml), or accuracy: {value, source} in the entry",
                          where=s.where)
    from capsim.cap import accuracy

    res = accuracy.score(s.model, benchmark, prec, allow_other_precision=any_precision)
    if res.value is None:
        other = sorted({r.precision for r in res.alternatives})
        hint = f", or --any-precision to use the {other[0]} score" if other else ""
        raise CapsimError(f"({s.name}) no published score for {res.model} on {benchmark} at {prec} in "
                          f"{accuracy.TABLE.name}; give accuracy: {{value: FRACTION, source: TEXT}} in the system "
                          f"entry{hint}", where=s.where)
    return res.value, res.score.source, res.reason


def evaluate(systems: list[System], db, benchmark: str | None, prices: dict[str, float] | None = None,
             any_precision: bool = False, assumptions=None) -> list[Evaluated]:
    """Performance, capex and accuracy of every system (CapsimError naming the system when one is unknown)."""
    from capsim.cap import assumptions as cap_assumptions
    from capsim.predict import predict

    check_systems(systems)
    a = assumptions or cap_assumptions.load(db)
    prices, used, out = dict(prices or {}), set(), []
    for s in systems:
        try:
            rep = predict(_query(s), db)
        except CapsimError as err:
            raise CapsimError(f"({s.name}) {err}", where=s.where) from None
        sc = rep["scenario"]
        capex, basis, src, notes = _capex(s, sc, rep["decode_tokens_per_s"], db, a, prices, used)
        acc, acc_src, acc_note = _accuracy(s, sc, benchmark, any_precision)
        predicted = [n for n in sc.get("notes", []) if PREDICT_PRICE_NOTE not in n]  # capex notes say it
        out.append(Evaluated(s, rep["tpot_s"], rep["decode_tokens_per_s"], capex, basis, src, acc, acc_src,
                             acc_note, sc, predicted + notes))
    unused = sorted(set(prices) - used)
    if unused:
        raise CapsimError(f"--price {unused[0]}={prices[unused[0]]:g}: no system priced from its parts has a part "
                          f"named {unused[0]!r}")
    return out
