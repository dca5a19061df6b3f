"""The sweep grid: axes read from a YAML file and / or flags, checked, expanded into a scenario frame.

A grid names, per axis, the values to try; the scenarios are the cartesian product
of all axes (so their number is the product of the axis lengths)::

    models: [mixtral, deepseek-v3]          # catalogue ids / aliases, or config.json paths
    hardware: [dgx-h100, h100]              # system or device ids ('capsim hw list')
    devices: [2, 4, 8]                      # per node; 'all' = all of a system's (1 for a device)
    precisions: [bf16, fp8]                 # 'native' = the checkpoint's own
    batch: 1..256:x2                        # 1, 2, 4, ..., 256
    input_len: [512, 2048]
    output_len: 128..1024:+128              # 128, 256, ..., 1024
    tp: [auto]                              # 'auto' = all devices of a stage inside one node
    ep: [1, all]                            # 'all' = every device of a stage
    dp: [auto]                              # 'auto' = a stage's devices / tp
    offload: [none, cpu]                    # expert offload: none, gpu-fetch, cpu
    expert_cache: [auto, 0, 8]              # resident experts per MoE layer ('auto': as many as fit)
    expert_tier: [dram]                     # where offloaded experts live: dram, ssd
    cache_policy: [lru]                     # lru, lfu, static (replayed over a trace)
    traces: [none, traces/tiny-olmoe-stdlib]  # routing trace folders ('none': uniform routing)

An integer axis takes an integer, a list, or a string of comma-separated items, each
``N``, ``A..B`` (every integer), ``A..B:+S`` (step S) or ``A..B:xF`` (times F). The
frame has one categorical column per text axis and an int64 column per number axis;
``devices``, ``tp``, ``ep`` and ``dp`` hold :data:`AUTO` (0) for their word, ``expert_cache``
:data:`AUTO_CACHE` (-1: 0 is a cache size). The categorical
axes come first and vary slowest, so the scenarios of one configuration (model,
hardware, layout, ...) are contiguous rows: :mod:`capsim.sweep.evaluate` runs each
configuration's batch x input x output block as one vectorised call.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from capsim import engines
from capsim.checks import MAX_DEVICES, MAX_EXPERTS, MAX_SEQUENCES, MAX_TOKENS
from capsim.errors import CapsimError

AUTO = 0  # devices 'all', tp 'auto', ep 'all', dp 'auto' in the scenario frame
AUTO_CACHE = -1  # expert_cache 'auto' (as many as fit): 0 resident experts is a placement of its own
NONE = "none"  # offload 'none' (every expert on the device), traces 'none' (uniform routing)
OFFLOADS = (NONE, "gpu-fetch", "cpu")


@dataclass(frozen=True)
class Axis:
    key: str  # the YAML key
    column: str  # the scenario-frame column
    kind: str  # "text" or "int"
    default: tuple
    word: str | None = None  # int axes: the word standing for ``auto`` ("all", "auto")
    minimum: int = 1
    help: str = ""
    auto: int = AUTO  # the value the word stands for
    maximum: int = MAX_DEVICES  # capsim.checks: the bound that keeps the work a value sizes real


AXES: tuple[Axis, ...] = (
    Axis("models", "model", "text", (), help="catalogue ids or aliases, or config.json paths"),
    Axis("hardware", "hardware", "text", (), help="system or device ids"),
    Axis("devices", "devices", "int", (AUTO,), word="all", help="devices per node ('all': a system's)"),
    Axis("nodes", "nodes", "int", (1,), help="copies of a system over its scale-out link"),
    Axis("precisions", "precision", "text", ("native",), help="weight formats ('native': the checkpoint's)"),
    Axis("kv_precisions", "kv_precision", "text", ("auto",), help="KV-cache formats ('auto': bf16)"),
    Axis("engines", "engine", "text", (engines.DEFAULT_ENGINE,), help="engine profiles"),
    Axis("tp", "tp", "int", (AUTO,), word="auto", help="tensor-parallel sizes ('auto': a node's devices)"),
    Axis("ep", "ep", "int", (1,), word="all", help="expert-parallel sizes ('all': every device of a stage)"),
    Axis("pp", "pp", "int", (1,), help="pipeline stages"),
    Axis("dp", "dp", "int", (AUTO,), word="auto", help="attention data-parallel groups per stage ('auto': stage "
         "devices / tp)"),
    Axis("offload", "offload", "text", (NONE,), help="expert offload: none, gpu-fetch or cpu"),
    Axis("expert_cache", "expert_cache", "int", (AUTO_CACHE,), word="auto", minimum=0, auto=AUTO_CACHE,
         maximum=MAX_EXPERTS, help="offload: resident experts per MoE layer ('auto': as many as fit)"),
    Axis("expert_tier", "expert_tier", "text", ("dram",), help="offload: where the other experts live (dram, ssd)"),
    Axis("cache_policy", "cache_policy", "text", ("lru",), help="offload with a trace: lru, lfu or static"),
    Axis("traces", "trace", "text", ("real",),
         help="routing: 'real' (the model's real trace, fitted model or prior), 'uniform' (or 'none'), a trace "
              "folder or a routing model file"),
    Axis("batch", "batch", "int", (1,), help="concurrent sequences", maximum=MAX_SEQUENCES),
    Axis("input_len", "input_len", "int", (512,), help="prompt tokens per sequence", maximum=MAX_TOKENS),
    Axis("output_len", "output_len", "int", (128,), help="generated tokens per sequence", maximum=MAX_TOKENS),
)
BY_KEY = {a.key: a for a in AXES}
ALLOWED_KEYS = tuple(a.key for a in AXES)
REQUIRED = ("models", "hardware")
CONFIG_COLUMNS = tuple(a.column for a in AXES[:-3])  # what changes the Shape, hardware, layout, profile, routing
NUMERIC_COLUMNS = ("batch", "input_len", "output_len")  # evaluated together, one numpy call per configuration
MAX_AXIS_VALUES = 1_000_000
_RANGE = re.compile(r"^(\d+)\s*\.\.\s*(\d+)(?:\s*:\s*([x+*])\s*(\d+))?$")


@dataclass(frozen=True)
class Grid:
    """The values of every axis, in AXES order (defaults filled in)."""

    axes: dict[str, tuple] = field(default_factory=dict)
    source: str = "flags"  # the file it was read from, for messages
    origins: dict[str, str] = field(default_factory=dict)  # axis key -> where its values came from (flag or file)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.axes[a.key]) for a in AXES)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def configurations(self) -> int:
        return math.prod(self.shape[: len(CONFIG_COLUMNS)])


def _int_item(text: str, axis: Axis, where: str) -> list[int]:
    t = text.strip().lower()
    if axis.word and t == axis.word:
        return [axis.auto]
    if re.fullmatch(r"[+-]?\d+", t):
        return [_check_int(int(t), axis, where)]
    m = _RANGE.match(t)
    if not m:
        word = f", '{axis.word}'" if axis.word else ""
        raise CapsimError(f"{text!r}: expected an integer, A..B, A..B:+S or A..B:xF{word}", where=where)
    a, b, op, k = int(m[1]), int(m[2]), m[3], int(m[4] or 1)
    if a > b:
        raise CapsimError(f"{text!r}: the range is empty ({a} > {b})", where=where)
    if op in ("x", "*"):
        if k < 2 or a < 1:
            raise CapsimError(f"{text!r}: a geometric range needs a start >= 1 and a factor >= 2", where=where)
        out = []
        while a <= b and len(out) <= MAX_AXIS_VALUES:
            out.append(a)
            a *= k
    else:
        if k < 1:
            raise CapsimError(f"{text!r}: the step must be >= 1", where=where)
        if (b - a) // k >= MAX_AXIS_VALUES:
            raise CapsimError(f"{text!r}: more than {MAX_AXIS_VALUES:,} values", where=where)
        out = list(range(a, b + 1, k))
    return [_check_int(v, axis, where) for v in out]


def _check_int(v: int, axis: Axis, where: str) -> int:
    if v < axis.minimum:
        word = f" or '{axis.word}'" if axis.word else ""
        raise CapsimError(f"{v}: expected an integer >= {axis.minimum}{word}", where=where)
    if v > axis.maximum:
        raise CapsimError(f"{v}: expected an integer <= {axis.maximum}", where=where)
    return v


def parse_values(raw: Any, axis: Axis, where: str) -> tuple:
    """One axis's values from YAML (scalar, list, comma string) or a flag's strings."""
    items = raw if isinstance(raw, list | tuple) else [raw]
    out: list = []
    for item in items:
        if isinstance(item, bool) or item is None or isinstance(item, dict | list | float):
            raise CapsimError(f"{item!r}: expected {'text' if axis.kind == 'text' else 'an integer'}"
                              " (or a list of them)", where=where)
        if axis.kind == "text":
            parts = [p.strip() for p in str(item).split(",")]
            if any(not p for p in parts):
                raise CapsimError(f"{item!r}: empty name", where=where)
            out += parts
        elif isinstance(item, int):
            out.append(_check_int(item, axis, where))
        else:
            for part in str(item).split(","):
                out += _int_item(part, axis, where)
    if not out:
        raise CapsimError("no values (give at least one)", where=where)
    dup = sorted(str(v) for v, k in Counter(out).items() if k > 1)
    if dup:
        raise CapsimError(f"repeated value(s) {', '.join(dup[:5])}: each scenario would be evaluated twice",
                          where=where)
    return tuple(out)


def read_yaml(path: str | Path) -> dict[str, Any]:
    from capsim import checks

    data = checks.read_yaml(path, "grid file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CapsimError(f"expected a mapping of axis keys ({', '.join(ALLOWED_KEYS)})", where=str(path))
    return data


def build(data: dict[str, Any] | None = None, flags: dict[str, Any] | None = None, source: str = "flags") -> Grid:
    """A Grid from a YAML mapping (read from ``source``) with ``flags`` (axis key -> raw values) replacing
    its axes. Unknown keys, missing required axes and malformed values are one-line CapsimErrors."""
    data = dict(data or {})
    for key in data:
        if key not in BY_KEY:
            close = difflib.get_close_matches(str(key), ALLOWED_KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise CapsimError(f"unknown key {key!r}{hint}; allowed keys: {', '.join(ALLOWED_KEYS)}", where=source)
    axes: dict[str, tuple] = {}
    origins: dict[str, str] = {}
    for axis in AXES:
        flag = (flags or {}).get(axis.key)
        if flag is not None and len(flag):
            origins[axis.key] = f"--{axis.column.replace('_', '-')}"
            axes[axis.key] = parse_values(list(flag), axis, origins[axis.key])
        elif axis.key in data:
            origins[axis.key] = f"{source}: {axis.key}"
            axes[axis.key] = parse_values(data[axis.key], axis, origins[axis.key])
        elif axis.key in REQUIRED:
            raise CapsimError(f"no {axis.key} given (a '{axis.key}:' list in the grid file or "
                              f"--{axis.column} flags)", where=source)
        else:
            axes[axis.key] = axis.default
    return Grid(axes, source, origins)


def load(path: str | Path | None, flags: dict[str, Any] | None = None) -> Grid:
    """The grid of a YAML file (or of flags alone when ``path`` is None), flags replacing its axes."""
    if path is None:
        return build({}, flags)
    return build(read_yaml(path), flags, str(path))


def check_names(grid: Grid, db) -> None:
    """Every model, hardware, precision and engine name exists (a one-line error naming the axis otherwise).
    Layouts are not checked here: a layout a configuration cannot take becomes an ``error`` row."""
    from capsim import engines, precision
    from capsim.hardware.db import HardwareDB, resolve_id
    from capsim.model.catalogue import load_spec
    from capsim.placement import POLICIES, TIERS
    from capsim.traces import fitted
    from capsim.traces.format import open_trace

    pool = HardwareDB({k: v for k, v in db.items.items() if v.kind in ("system", "accelerator", "cpu")})
    checks = {
        "models": lambda v: load_spec(v, allow_dense=True),
        "hardware": lambda v: resolve_id(pool, v, None),
        "precisions": lambda v: v == "native" or precision.get(v),
        "kv_precisions": lambda v: v == "auto" or precision.kv_bytes(v),
        "engines": engines.load,
        "offload": lambda v: _one_of(v, OFFLOADS),
        "expert_tier": lambda v: _one_of(v, TIERS),
        "cache_policy": lambda v: _one_of(v, POLICIES),
        "traces": lambda v: v in (NONE, "uniform", "real") or (str(v).endswith(".json") and fitted.load(v))
        or open_trace(v),
    }
    for key, check in checks.items():
        for value in grid.axes[key]:
            try:
                check(value)
            except CapsimError as err:
                msg = re.sub(r"^--[\w-]+ ", "", str(err))
                raise CapsimError(msg, where=grid.origins.get(key, f"{grid.source}: {key}")) from None


def _one_of(value: str, allowed: tuple[str, ...]) -> bool:
    if value not in allowed:
        raise CapsimError(f"{value!r}: expected one of {', '.join(allowed)}")
    return True


def expand(grid: Grid, start: int = 0, stop: int | None = None) -> pd.DataFrame:
    """Rows ``start:stop`` of the cartesian product (all rows by default), first axis slowest."""
    total = grid.size
    stop = total if stop is None else min(stop, total)
    start = max(0, min(start, stop))
    row = np.arange(start, stop, dtype=np.int64)
    cols: dict[str, Any] = {}
    stride = total
    for axis, n in zip(AXES, grid.shape, strict=True):
        stride //= n
        codes = (row // stride) % n
        values = grid.axes[axis.key]
        if axis.kind == "text":
            cols[axis.column] = pd.Categorical.from_codes(codes.astype(np.int32), categories=pd.Index(values))
        else:
            cols[axis.column] = np.asarray(values, dtype=np.int64)[codes]
    return pd.DataFrame(cols, index=pd.RangeIndex(start, stop))
