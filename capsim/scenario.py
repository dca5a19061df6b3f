"""A scenario: every input of a prediction resolved once into one typed, frozen record.

``resolve(query, db)`` reads the data (catalogue, hardware database, engine profile), checks the
question and makes a :class:`Scenario`; capacity, placement, collectives, fit advice, the simulator, sweep,
provision and validation all take it. Nothing downstream reads a file to price a request. ``describe()``
is the report's ``scenario`` object. Resolving is memoised per configuration (the same question with
another batch or length reuses the resolved hardware and model).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from capsim import checks, engines, precision, scenario_cache
from capsim.checks import MAX_DEVICES, MAX_EXPERTS, MAX_SEQUENCES, MAX_TOKENS, MAX_USD
from capsim.errors import CapsimError
from capsim.hardware import isa, numa
from capsim.hardware.target import Target, for_layout, resolve_target, stage
from capsim.model.catalogue import load_spec
from capsim.model.spec import ModelSpec
from capsim.placement import OffloadSetup, setup_offload
from capsim.precision import Precision
from capsim.sim.peaks import ATTENTION_DTYPES, Peaks, achievable  # noqa: F401 (Peaks: re-exported)
from capsim.sim.shape import Shape, shape_of

DEFAULT_INPUT_LEN = 512  # the peers' comparison point (shared/reference/peers.md: 512 in, 128 out)
DEFAULT_OUTPUT_LEN = 128
MAX_BATCH = "max"  # Query.batch: the largest batch that fits (capsim.predict.largest_batch)
# Attention runs in the compute dtype when that is a 16- or 32-bit float; below it (fp8, int8, fp4 matmuls)
# in the best 16-bit dtype the device has (FlashAttention computes in bf16 / fp16).
UNIFORM_ROUTING = "uniform (expected distinct experts)"


@dataclass(frozen=True)
class Query:
    model: str
    hardware: str
    devices: int | None = None
    engine: str = engines.DEFAULT_ENGINE
    precision: str | None = None  # default: the checkpoint's own
    kv_precision: str | None = None  # default: bf16
    compute_dtype: str | None = None  # default: the best the device offers for the precision
    batch: int | str = 1  # or MAX_BATCH
    input_len: int = DEFAULT_INPUT_LEN
    output_len: int = DEFAULT_OUTPUT_LEN
    tp: int | None = None
    ep: int | None = None
    trace: str | None = None
    routing: str = "real"  # "uniform", "real" (the best shipped data for the model) or a trace / routing model path
    trace_samples: int = 200  # batch compositions drawn from the trace
    trace_any_model: bool = False  # replay a trace recorded on a model with another config
    usd_per_h: float | None = None
    check_memory: bool = True
    allow_dense: bool = False  # a local config.json without routed experts
    offload: str | None = None  # routed experts not all on the device: "gpu-fetch" or "cpu" (capsim.placement)
    expert_cache: int | None = None  # experts per MoE layer resident on each device (default: as many as fit)
    cache_policy: str = "lru"
    expert_tier: str = "dram"  # where the other experts live: "dram" or "ssd"
    host_sockets: int | None = None  # --offload cpu: CPU sockets computing experts (default: all of the system's)
    pp: int = 1  # pipeline stages (capsim.sim.pipeline); tp / ep / dp apply inside a stage
    dp: int | None = None  # attention data-parallel groups in a stage (default: stage devices / tp)
    nodes: int = 1  # copies of a system joined by its scale-out link; ``devices`` is then per node
    spec_tokens: int = 0  # speculative decoding / multi-token prediction: draft tokens per decode step
    spec_acceptance: float = 0.0  # the chance each draft token is accepted (given the ones before it were)
    ep_dispatch: str = "bf16"  # the EP dispatch's format: "bf16" (the activations') or "fp8" (DeepEP)
    socket_layout: str | None = None  # "span": one instance over two CPU sockets (capsim.hardware.numa)
    threads: int | None = None  # CPU threads per socket (default: one per core)


# What a request changes without changing the resolved configuration
PER_REQUEST = ("batch", "input_len", "output_len", "trace_samples", "usd_per_h", "check_memory")


@dataclass(frozen=True)
class Scenario:
    query: Query
    model_id: str
    model_source: str
    model_info: dict[str, Any]
    spec: ModelSpec | None
    shape: Shape
    precision: Precision
    kv_precision: str
    kv_bytes: float  # per cached element
    compute_dtype: str
    weight_only: bool
    profile: engines.EngineProfile
    whole: Target  # every device used, all nodes
    target: Target  # one pipeline stage's devices, collectives priced for the layout
    hop_bytes_per_s: float  # between adjacent pipeline stages (inf without pipelining)
    hop_bottleneck: str
    peaks: Peaks
    tp: int
    ep: int
    dp: int
    pp: int
    nodes: int
    offload: OffloadSetup | None = None
    routing: str = UNIFORM_ROUTING
    route: Any = None  # capsim.traces.sources.RoutingChoice (None: uniform)
    # USD per hour of the devices used at the default cost assumptions (capsim.cap.hourly), or why not
    price: Any = None
    price_error: str | None = None
    kernel_path: str = ""  # a CPU: the ISA path the matmuls run on (capsim.hardware.isa); "" elsewhere

    @property
    def n(self) -> int:
        """Devices of one pipeline stage (tp x dp)."""
        return self.target.n_devices

    @property
    def ring_call_latency_s(self) -> float:
        """Link latency of one TP all-reduce: a ring all-reduce (reduce-scatter, then all-gather) takes
        2 (tp - 1) steps, each waiting on the slowest ring hop's route."""
        tp, lat = self.tp, self.target.ring_latency_s
        if isinstance(tp, np.ndarray) or isinstance(lat, np.ndarray):  # a benchmark pricing many layouts at once
            return _scalar(np.where(np.asarray(tp) > 1, 2 * (np.asarray(tp, float) - 1) * lat, 0.0))
        return 2 * (tp - 1) * lat if tp > 1 else 0.0

    @property
    def alltoall_call_latency_s(self) -> float:
        """Link latency of one EP dispatch or combine: its messages travel at once, so it waits once on the
        longest route."""
        ep, lat = self.ep, self.target.alltoall_latency_s
        if isinstance(ep, np.ndarray) or isinstance(lat, np.ndarray):
            return _scalar(np.where((np.asarray(ep) > 1) & (self.shape.num_experts > 0), lat, 0.0))
        return lat if ep > 1 and self.shape.num_experts else 0.0

    def describe(self) -> dict[str, Any]:
        q, t, w = self.query, self.target, self.whole
        return {
            "model": self.model_id, "model_source": self.model_source, "hardware": t.hardware_id,
            "features": self.spec.features() if self.spec else [],
            "device": t.device_id, "device_role": t.device_role, "devices": w.n_devices,
            "engine": self.profile.id, "engine_version": self.profile.version, "precision": self.precision.name,
            "bits_per_weight": self.precision.bits_per_weight, "precision_scope": self.precision.scope,
            "kv_precision": self.kv_precision, "compute_dtype": self.compute_dtype, "weight_only": self.weight_only,
            "kernel_path": self.kernel_path or None, "batch": q.batch, "input_len": q.input_len, "output_len": q.output_len, "tp": self.tp, "ep": self.ep,
            "dp": self.dp, "routing": self.routing, "routing_kind": self.route.kind if self.route else "uniform",
            "routing_source": self.route.source if self.route else "independent uniform top-k choices",
            "trace": q.trace, "collective_link": t.collective_link,
            "pp": self.pp, "nodes": w.nodes, "devices_per_node": w.devices_per_node or w.n_devices,
            "spec_tokens": q.spec_tokens, "spec_acceptance": q.spec_acceptance, "ep_dispatch": q.ep_dispatch,
        }


def _scalar(x: np.ndarray):
    return float(x) if np.ndim(x) == 0 else x


# Batch compositions drawn from a trace per prediction: the sampling error of a mean falls as 1/sqrt(n), 0.4% at
# 2**16; more buys nothing and costs time and memory in proportion.
MAX_TRACE_SAMPLES = 1 << 16
# Draft tokens per step: EAGLE / MTP deployments use 1 to 7 (SGLang's --speculative-num-draft-tokens examples);
# 64 is far past any of them
MAX_SPEC_TOKENS = 64


def _check_ints(q: Query) -> None:
    """Every number of a query: type, sign and a bound (capsim.checks), before any work is sized by it."""
    for flag, value, high in (("--batch", q.batch, MAX_SEQUENCES), ("--input-len", q.input_len, MAX_TOKENS),
                              ("--output-len", q.output_len, MAX_TOKENS), ("--trace-samples", q.trace_samples,
                                                                           MAX_TRACE_SAMPLES),
                              ("--nodes", q.nodes, MAX_DEVICES), ("--pp", q.pp, MAX_DEVICES)):
        checks.integer(value, flag, low=1, high=high, strict=True)
    for flag, value in (("--tp", q.tp), ("--ep", q.ep), ("--devices", q.devices), ("--dp", q.dp),
                        ("--host-sockets", q.host_sockets)):
        if value is not None:
            checks.integer(value, flag, low=1, high=MAX_DEVICES, strict=True)
    if q.expert_cache is not None:
        checks.integer(q.expert_cache, "--expert-cache", low=0, high=MAX_EXPERTS, strict=True)
    checks.integer(q.spec_tokens, "--spec-tokens", low=0, high=MAX_SPEC_TOKENS, strict=True)
    checks.number(q.spec_acceptance, "--spec-acceptance", low=0.0, high=1.0)
    if q.ep_dispatch not in ("bf16", "fp8"):
        raise CapsimError(f"--ep-dispatch {q.ep_dispatch!r}: expected bf16 or fp8")
    if q.spec_acceptance and not q.spec_tokens:
        raise CapsimError(f"--spec-acceptance {q.spec_acceptance}: only with --spec-tokens 1 or more")
    if q.nodes * (q.devices or 1) > MAX_DEVICES:
        raise CapsimError(f"--nodes {q.nodes} x --devices {q.devices or 1}: more than {MAX_DEVICES} devices")
    if q.usd_per_h is not None:
        checks.number(q.usd_per_h, "--usd-per-hour", positive=True, high=MAX_USD)
    for flag, name in (("--model", q.model), ("--hardware", q.hardware), ("--engine", q.engine),
                       ("--precision", q.precision), ("--kv-precision", q.kv_precision),
                       ("--compute-dtype", q.compute_dtype), ("--trace", q.trace)):
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise CapsimError(f"{flag} {name!r}: expected a name")
    for flag, value, modes in (("--expert-cache", q.expert_cache, ("gpu-fetch", "cpu")),
                               ("--host-sockets", q.host_sockets, ("cpu",))):
        if value is not None and q.offload not in modes:
            raise CapsimError(f"{flag} {value}: only with --offload {' or '.join(modes)}")


def _parallelism(q: Query, target: Target, spec: ModelSpec) -> tuple[int, int]:
    n = target.n_devices
    ep = q.ep or 1
    tp = q.tp or math.gcd(n, target.devices_per_node or n)  # default: TP inside a node, DP across nodes
    if n % tp:
        raise CapsimError(f"--tp {tp}: must divide the {n} devices used (--devices)")
    heads = spec.attention.num_heads
    if heads % tp:
        raise CapsimError(f"--tp {tp}: {heads} attention heads do not split evenly over {tp} devices")
    if q.dp is not None and q.dp * tp != n:
        raise CapsimError(f"--dp {q.dp}: tp x dp x pp must equal the devices used ({tp} x {q.dp} x {q.pp} != "
                          f"{n * q.pp})")
    if ep not in (1, n):
        raise CapsimError(f"--ep {ep}: expert parallelism spans all devices here, so --ep must be 1 or {n}")
    if ep > 1 and spec.num_experts % ep:
        raise CapsimError(f"--ep {ep}: {spec.num_experts} routed experts do not split evenly over {ep} ranks")
    if ep > 1 and not spec.num_experts:
        raise CapsimError(f"--ep {ep}: the model has no routed experts")
    return tp, ep


_CACHE: dict[tuple, tuple[Any, Scenario]] = {}
_CACHE_SIZE = 256


def resolve(q: Query, db, profile: engines.EngineProfile | None = None) -> Scenario:
    """The scenario of ``q`` on the hardware database ``db``; ``profile`` replaces the engine profile named by
    ``q.engine`` (fitting tries parameter values). One-line CapsimErrors name the flag that is wrong."""
    _check_ints(q)
    key = (tuple(getattr(q, f.name) for f in fields(Query) if f.name not in PER_REQUEST), id(db), profile,
           _model_stamp(q.model))
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is db:
        sc = hit[1]
    else:
        disk = scenario_cache.key(q, db, PER_REQUEST) if profile is None else None
        sc = scenario_cache.get(disk)
        if sc is None:
            sc = _resolve(q, db, profile)
            scenario_cache.put(disk, sc)
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = (db, sc)
    if sc.query is q:
        return sc
    out = copy.copy(sc)  # the same configuration, this request's lengths (a frozen record: set once, here)
    object.__setattr__(out, "query", q)
    return out


def _model_stamp(model: str) -> tuple:
    """A local config file's modification time and size (a catalogue name: nothing), so that an edited file
    is read again."""
    import os

    for path in (model, os.path.join(model, "config.json")):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not os.path.isdir(path):
            return (path, st.st_mtime_ns, st.st_size)
    return ()


def _resolve(q: Query, db, profile: engines.EngineProfile | None) -> Scenario:
    spec, info = load_spec(q.model, allow_dense=q.allow_dense)
    try:
        whole = resolve_target(db, q.hardware, q.devices, q.nodes)
    except CapsimError as err:
        raise CapsimError(f"--hardware: {err}") from None
    if not isinstance(q.pp, int) or q.pp < 1 or whole.n_devices % q.pp:
        raise CapsimError(f"--pp {q.pp}: expected a positive divisor of the {whole.n_devices} devices used")
    if q.pp > spec.layers:
        raise CapsimError(f"--pp {q.pp}: the model has only {spec.layers} layers")
    target, hop, hop_where = stage(whole, q.pp)  # one stage's devices, and the link between adjacent stages
    if q.threads is not None:  # per socket, before span joins two sockets' threads into one instance
        target = numa.with_threads(target, q.threads)
    if q.socket_layout == "span":
        target = numa.span(target)
    prec = precision.get(q.precision or info["native_precision"])
    # the checkpoint's own format (asked for, or by name): its real groups and scales (capsim.model.quant)
    bits = info.get("native_bits_per_weight") if prec.name == info["native_precision"] else None
    if bits and bits != prec.bits_per_weight:
        prec = replace(prec, bits_per_weight=bits, source=f"{prec.source}; {bits:.4g} bits: the checkpoint's "
                       "quantization_config")
    kv_name = (q.kv_precision or ("fp32" if prec.name == "fp32" else "bf16")).lower()
    kv_b = precision.kv_bytes(kv_name)
    profile = profile or engines.load(q.engine)
    kernels = profile.cpu_kernels
    dtype_peaks, paths = isa.engine_peaks(target.cpu_paths, target.peak_flop_per_s, kernels)
    compute = precision.choose_compute(prec, dtype_peaks, target.device_id, q.compute_dtype)
    tp, ep = _parallelism(q, target, spec)
    target = for_layout(target, tp, ep)
    target = replace(target, notes=[*target.notes, *check_domain(profile, target.device_role, q.offload)])
    shape = shape_of(spec, prec)
    offload = setup_offload(q, shape, target, prec, profile) if q.offload else None
    price, price_error = _price(db, q.hardware, whole)
    route = _routing(q, shape, info)
    whole, target = replace(whole, graph=None), replace(target, graph=None)  # the graph served the resolution
    return Scenario(
        query=q, model_id=info["id"], model_source=info["source"], model_info=info, spec=spec, shape=shape,
        precision=prec, kv_precision=kv_name, kv_bytes=kv_b, compute_dtype=compute,
        weight_only=compute not in prec.compute[:1], profile=profile, whole=whole, target=target,
        hop_bytes_per_s=hop, hop_bottleneck=hop_where, tp=tp, ep=ep,
        peaks=Peaks.of(dtype_peaks, compute, kernels.attention if kernels else "",
                       achievable(dtype_peaks, target.achievable_matmul_flop_per_s)
                       if target.device_role == "accelerator" else None),
        kernel_path=paths.get(compute, ""),
        dp=target.n_devices // tp, pp=q.pp, nodes=whole.nodes, offload=offload, price=price,
        price_error=price_error, routing=route.label, route=route)


def check_domain(profile: engines.EngineProfile, role: str, offload: str | None) -> list[str]:
    """Notes when the scenario lies outside the profile's fitted domain; a CPU-only or offload-only profile on
    an accelerator without offload is refused (its fitted overheads would be read as a GPU's)."""
    placement = offload or "none"
    devices, places = profile.domain_devices, profile.domain_offload
    fitted = f" (fitted on {profile.domain_fitted_on})" if profile.domain_fitted_on else ""
    if role == "accelerator" and placement == "none" and (devices == ("cpu",) or (places and "none" not in places)):
        kind = "a CPU engine" if devices == ("cpu",) else "an expert-offload engine"
        raise CapsimError(f"--engine {profile.id}: {kind}{fitted}, not a forecast for an accelerator holding every "
                          "expert; use --engine vllm, sglang, trt-llm or roofline (or --offload)")
    out = []
    if devices and role not in devices:
        out.append(f"engine {profile.id}: {role} is outside its domain ({', '.join(devices)}){fitted}")
    elif profile.domain_fitted_devices and role not in profile.domain_fitted_devices:
        out.append(f"engine {profile.id}: its parameters were fitted on "
                   f"{profile.domain_fitted_on or ', '.join(profile.domain_fitted_devices)}, not on an {role}")
    if places and placement not in places:
        out.append(f"engine {profile.id}: expert placement '{placement}' is outside its fitted domain "
                   f"({', '.join(places)}){fitted}")
    return out


def _routing(q: Query, shape: Shape, info: dict[str, Any]):
    """The routing the scenario replays (capsim.traces.sources)."""
    from capsim.traces import sources

    if q.routing not in sources.CHOICES and (not isinstance(q.routing, str) or not q.routing.strip()):
        raise CapsimError(f"--routing {q.routing!r}: expected uniform, real or a path")
    try:
        return sources.choose(q.routing, q.trace, info["id"], info.get("config_hash"), shape.num_experts,
                              shape.top_k, shape.moe_layers)
    except CapsimError as err:
        raise CapsimError(str(err) if str(err).startswith("--") else f"--routing {q.routing}: {err}") from None


def _price(db, hardware: str, whole: Target):
    """The devices' price per hour at the default cost assumptions (the listed cloud price, else capex over the
    lifetime plus energy: capsim.cap.hourly), or the reason it cannot be had."""
    from capsim.cap.hourly import default_pricer

    try:
        return default_pricer(db).price(hardware, whole.devices_per_node or whole.n_devices, whole.nodes), None
    except CapsimError as err:
        return None, str(err)


def for_device(shape: Shape, target: Target, profile: engines.EngineProfile, compute_dtype: str,
               kv_bytes: float, name: str = "") -> Scenario:
    """A scenario of one device running a model shape with no catalogue entry (a measured run's config): what
    validation cases and tests price single steps with."""
    kernels = profile.cpu_kernels
    p, paths = isa.engine_peaks(target.cpu_paths, target.peak_flop_per_s, kernels)
    if compute_dtype not in p:
        raise CapsimError(f"{target.device_id}: no measured {compute_dtype} peak (have {', '.join(p)})")
    prec = precision.get(compute_dtype)
    return Scenario(
        query=Query(model=name, hardware=target.hardware_id, engine=profile.id), model_id=name,
        model_source="measured run", model_info={"id": name}, spec=None, shape=shape, precision=prec,
        kv_precision=compute_dtype, kv_bytes=kv_bytes, compute_dtype=compute_dtype, weight_only=False,
        profile=profile, whole=target, target=target, hop_bytes_per_s=math.inf, hop_bottleneck="",
        peaks=Peaks.of(p, compute_dtype, kernels.attention if kernels else ""), tp=1, ep=1, dp=1, pp=1, nodes=1,
        kernel_path=paths.get(compute_dtype, ""))


def from_parts(shape: Shape, *, peak_flop_per_s: dict, bandwidth_bytes_per_s, profile: engines.EngineProfile,
               ring_bandwidth_bytes_per_s=math.inf, alltoall_bandwidth_bytes_per_s=math.inf, tp=1, ep=1, n=1,
               kv_bytes: float = 2.0, capacity_bytes=math.inf, page_faults=None, pp: int = 1,
               hop_bytes_per_s=math.inf, ring_latency_s=0.0, alltoall_latency_s=0.0) -> Scenario:
    """A scenario on a device described by its figures alone (peaks per operator class, bandwidths): what-if
    studies, tests, and benchmarks that price many devices in one call (any figure may be an array)."""
    from capsim.hardware.target import PageFaults

    target = Target(hardware_id="custom", device_id="custom", device_role="accelerator", n_devices=n,
                    n_available=None, memory_capacity_bytes=capacity_bytes,
                    memory_bandwidth_bytes_per_s=bandwidth_bytes_per_s, memory_type="custom",
                    peak_flop_per_s={}, ring_bandwidth_bytes_per_s=ring_bandwidth_bytes_per_s,
                    alltoall_bandwidth_bytes_per_s=alltoall_bandwidth_bytes_per_s, collective_link="custom",
                    page_faults=page_faults or PageFaults(), ring_latency_s=ring_latency_s,
                    alltoall_latency_s=alltoall_latency_s)
    p = peak_flop_per_s
    prec = precision.get("bf16")
    return Scenario(
        query=Query(model="custom", hardware="custom", engine=profile.id, pp=pp), model_id="custom",
        model_source="custom", model_info={"id": "custom"}, spec=None, shape=shape, precision=prec,
        kv_precision="custom", kv_bytes=kv_bytes, compute_dtype="custom", weight_only=False, profile=profile,
        whole=target, target=target, hop_bytes_per_s=hop_bytes_per_s, hop_bottleneck="",
        peaks=Peaks(p["matmul"], p["attention"], p["vector"]), tp=tp, ep=ep, dp=1, pp=pp, nodes=1)
