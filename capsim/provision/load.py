"""Provisioning against latency percentiles under load: ``capsim provision --request-rate R --slo-ttft-p99 T
--slo-tpot-p99 T``.

Each layout (:mod:`capsim.provision.candidates`) that ``capsim serve`` can run (no expert offload: serve does not
model offload yet) is served the same workload, ``num_requests`` requests at Poisson rate R with the query's lengths and seed
(:mod:`capsim.serve`); it qualifies when its p99 TTFT and p99 TPOT are within the SLOs given. Qualifying, priced
layouts are ranked by USD per hour (ties: lower p99 TTFT); the rest follow, closest to the SLOs first (the larger
of p99 / SLO over the SLOs given).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from capsim.errors import CapsimError


@dataclass(frozen=True)
class LoadQuery:
    model: str
    input_len: int
    output_len: int
    engine: str
    routing: str
    request_rate: float
    num_requests: int
    slo_ttft_p99_s: float | None
    slo_tpot_p99_s: float | None
    seed: int = 0

    def check(self) -> LoadQuery:
        if self.slo_ttft_p99_s is None and self.slo_tpot_p99_s is None:
            raise CapsimError("--request-rate: give --slo-ttft-p99 and/or --slo-tpot-p99 (the latencies to hold)")
        return self


def _ratio(value: float | None, slo: float | None) -> float:
    if slo is None:
        return 0.0
    return math.inf if value is None else value / slo


def search_under_load(layouts, q: LoadQuery, db, pricer, progress=None) -> dict[str, Any]:
    from capsim.predict import Query
    from capsim.scenario import resolve
    from capsim.serve import workload
    from capsim.serve.run import serve

    q.check()
    w = workload.build(q.num_requests, request_rate=q.request_rate, input_len=q.input_len, output_len=q.output_len,
                       seed=q.seed)
    rows, skipped = [], {}
    for lay in layouts:
        if progress is not None:
            progress(1)
        if lay.offload:
            skipped["not served under load yet: expert offload"] = skipped.get(
                "not served under load yet: expert offload", 0) + 1
            continue
        try:
            sc = resolve(Query(model=q.model, hardware=lay.hardware, devices=lay.devices, nodes=lay.nodes, tp=lay.tp,
                               ep=lay.ep, precision=lay.precision, engine=q.engine, routing=q.routing, batch=1,
                               input_len=q.input_len, output_len=q.output_len, check_memory=False), db)
            rep = serve(sc, w)
        except CapsimError as err:
            reason = str(err).split(":")[-1].strip()[:120]
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        price = pricer.price(lay.hardware, lay.devices, lay.nodes)
        ttft, tpot = rep["ttft_s"]["p99"], rep["tpot_s"]["p99"]
        worst = max(_ratio(ttft, q.slo_ttft_p99_s), _ratio(tpot, q.slo_tpot_p99_s))
        rows.append({"system": lay.label(), "hardware": lay.hardware, "devices": lay.devices, "nodes": lay.nodes,
                     "tp": lay.tp, "ep": lay.ep, "precision": lay.precision or sc.precision.name,
                     "ttft_p99_s": ttft, "tpot_p99_s": tpot, "ttft_mean_s": rep["ttft_s"]["mean"],
                     "output_tokens_per_s": rep["output_tokens_per_s"], "preemptions": rep["preemptions"],
                     "usd_per_h": price.usd_per_h, "cost_basis": price.basis, "qualifies": worst <= 1.0,
                     "slo_ratio": worst if math.isfinite(worst) else None})
    ok = sorted((r for r in rows if r["qualifies"] and r["usd_per_h"] is not None),
                key=lambda r: (r["usd_per_h"], r["ttft_p99_s"]))
    unpriced = [r for r in rows if r["qualifies"] and r["usd_per_h"] is None]
    rest = sorted((r for r in rows if not r["qualifies"]), key=lambda r: r["slo_ratio"] or math.inf)
    ranked = ok + unpriced + rest
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    return {"mode": "load", "model": q.model, "engine": q.engine, "request_rate_per_s": q.request_rate,
            "num_requests": q.num_requests, "input_len": q.input_len, "output_len": q.output_len,
            "slo_ttft_p99_s": q.slo_ttft_p99_s, "slo_tpot_p99_s": q.slo_tpot_p99_s, "candidates": ranked,
            "qualifying": len(ok) + len(unpriced), "skipped": skipped}


def human(res: dict[str, Any], top: int) -> str:
    from capsim.cli.table import render

    slo = " and ".join(s for s in (f"p99 TTFT <= {res['slo_ttft_p99_s']:g} s" if res["slo_ttft_p99_s"] else "",
                                   f"p99 TPOT <= {res['slo_tpot_p99_s']:g} s" if res["slo_tpot_p99_s"] else "") if s)
    head = (f"{res['model']} ({res['engine']}) at {res['request_rate_per_s']:g} requests/s, {res['num_requests']} "
            f"requests of {res['input_len']} + {res['output_len']} tokens; {slo}: {res['qualifying']} layouts qualify")

    def ms(x):
        return "-" if x is None else f"{x * 1e3:,.0f} ms"
    body = render(["#", "system", "p99 TTFT", "p99 TPOT", "output tok/s", "USD/h", "meets SLO"],
                  [[str(r["rank"]), r["system"], ms(r["ttft_p99_s"]), ms(r["tpot_p99_s"]),
                    f"{r['output_tokens_per_s']:,.0f}", "-" if r["usd_per_h"] is None else f"{r['usd_per_h']:,.2f}",
                    "yes" if r["qualifies"] else f"no ({r['slo_ratio']:.2g}x)" if r["slo_ratio"] else "no"]
                   for r in res["candidates"][:top]])
    skipped = "; ".join(f"{n} x {why}" for why, n in res["skipped"].items())
    return "\n".join([head, body] + ([f"skipped: {skipped}"] if skipped else []))
