"""How much does trace collection cost, and how fast is trace replay? The traces issue's benchmarks.

The issue's acceptance item: "Benchmarks: collection overhead under 10% of the model's forward
time; replay of a 1,000,000-token trace over batch sizes 1..256 in under 10 s and under 2 GB of
memory on this machine." Rows of the table:

1. collection overhead, per model: the collector's own batch loop
   (``capsim.traces.collect.run_batch``: left-padded prefill, then greedy decoding with the KV
   cache) with the ``RoutingRecorder`` hooks on every router, which copy the ids and weights to
   numpy on every call, and the per-batch bookkeeping that keeps the rows of real tokens ("a"),
   against the same loop with no hook installed and nothing recorded ("b": :func:`plain_batch`,
   the same model calls on the same inputs). Same prompts, batch, max-new-tokens and thread count;
   a and b alternate (a b, b a, ...) after one untimed warm-up of each, and the overhead is the
   median over ``--repeats`` pairs of (a - b) / b. Both must generate the same tokens. Models: the
   committed ``traces/models/tiny-olmoe-stdlib`` (its real float16 weights), and a randomly
   initialised Mixtral-shaped model (hidden 512, 4 layers, 8 experts top-2; about 40 ms a
   forward call here).
2. trace write, per model (information): writing one batch's routing as the collector does, the
   per-batch resume file plus the final ``write_trace``; not part of the overhead.
3. synthetic trace generation + write (information): ``synthetic_trace("zipf", ...)`` in the
   Qwen3-30B-A3B shape (128 experts, top-8, 48 MoE layers), ``--tokens`` tokens as sequences of
   250 prompt + 250 decode tokens, written with ``write_trace`` to a temporary folder.
4. replay time and peak memory, measured twice, each time in a fresh Python process that opens
   that trace (``open_trace``) and replays every batch size 1..256 with ``ep=1`` and 200 samples:
   (a) in one pass, ``decode_routing_curve(trace, 1..256)`` + ``prefill_routing_curve(trace,
   1..256)`` (each random composition is an order of sequences and batch B its first B entries, so
   one cumulative union answers every size; prefill with ``PREFILL_SAMPLES`` compositions, as
   ``prefill_routing`` uses); (b) one ``decode_routing(trace, B, samples=200)`` +
   ``prefill_routing(trace, B, samples=200)`` call per size, which is what ``predict`` makes for
   one batch size. Time: from ``open_trace`` to the end of the last call (the process's whole wall
   time, interpreter start and imports included, is shown beside it). Memory: the process's peak
   RSS, ``VmHWM`` of ``/proc/self/status`` (the memory-mapped trace pages it touched count). Not
   ``ru_maxrss``: on Linux a child started by fork + exec inherits its parent's peak in it, here
   the parent's 1.77 GB from building the trace (the JSON output keeps ``ru_maxrss_bytes`` too).
   In (b) the sizes run largest power-of-two divisor first (256, 128, 64, 192, 32, ...), so that
   a run stopped by ``--replay-budget`` has still done the largest size (the memory peak) and
   spans the whole range; the total for all 256 sizes is then estimated by interpolating the
   per-size times. The trace is in the OS file cache (it was just written): warm reads, as in
   repeated predictions.
5. one ``predict(Query(model="qwen3-30b", hardware="h100", batch=64, trace=PATH), db)`` call in
   process, end to end (it opens and verifies the trace, then replays it); information.

Usage: ``python benchmarks/bench_traces.py [--tokens 1000000] [--repeats 9] [--replay-budget 60]
[--part all|collection|replay] [--json] [--strict] [--profile]``. Exit code 0, or 1 with
``--strict`` when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from capsim.cli.table import render

# Targets, from the traces issue's acceptance item (see the module docstring).
COLLECT_OVERHEAD_TARGET = 0.10  # "collection overhead under 10% of the model's forward time"
REPLAY_TIME_TARGET_S = 10.0  # "replay of a 1,000,000-token trace over batch sizes 1..256 in under 10 s"
REPLAY_RSS_TARGET_BYTES = 2e9  # "... and under 2 GB of memory on this machine"

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "traces" / "prompts" / "stdlib_heldout.jsonl"
TINY_MODEL = REPO / "traces" / "models" / "tiny-olmoe-stdlib"
MIXTRAL_SHAPED = {  # random init; big enough that one forward call takes tens of ms on 2 cores
    "model_type": "mixtral", "hidden_size": 512, "intermediate_size": 1792, "num_hidden_layers": 4,
    "num_attention_heads": 8, "num_key_value_heads": 2, "num_local_experts": 8, "num_experts_per_tok": 2,
    "vocab_size": 32000, "max_position_embeddings": 4096,
}
# The settings the committed trace traces/tiny-olmoe-stdlib was collected with.
BATCH, MAX_NEW_TOKENS, MAX_PROMPT_TOKENS = 16, 32, 96
THREADS = 2  # torch threads, fixed

# Replay: a synthetic trace in the Qwen3-30B-A3B shape.
REPLAY_MODEL = "qwen3-30b"
NUM_EXPERTS, TOP_K, MOE_LAYERS = 128, 8, 48
PROMPT_LEN, DECODE_LEN = 250, 250
BATCH_SIZES = range(1, 257)
SAMPLES = 200
# Largest power-of-two divisor first: 256, 128, 64, 192, 32, 96, 160, 224, 16, ..., then the odd sizes.
REPLAY_ORDER = sorted(BATCH_SIZES, key=lambda b: (-(b & -b), b))

REPLAY_CODE = """
import json, resource, sys, time
path, mode, budget, order, samples, profile = sys.argv[1], sys.argv[2], float(sys.argv[3]), \\
    json.loads(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
from capsim.traces import replay
from capsim.traces.format import open_trace
if profile:
    import cProfile, pstats
    prof = cProfile.Profile()
    prof.enable()
t0 = time.perf_counter()
trace = open_trace(path)
done = []
if mode == "curve":  # every batch size from one set of random orders
    t1 = time.perf_counter()
    replay.decode_routing_curve(trace, order, ep=1, samples=samples)
    t2 = time.perf_counter()
    replay.prefill_routing_curve(trace, order, ep=1, samples=min(samples, replay.PREFILL_SAMPLES))
    done.append([max(order), t2 - t1, time.perf_counter() - t2])
else:  # one call per batch size, as predict() makes
    for b in order:
        t1 = time.perf_counter()
        replay.decode_routing(trace, b, ep=1, samples=samples)
        t2 = time.perf_counter()
        replay.prefill_routing(trace, b, samples=samples)
        done.append([b, t2 - t1, time.perf_counter() - t2])
        if budget and time.perf_counter() - t0 > budget:
            break
seconds = time.perf_counter() - t0
if profile:
    prof.disable()
    for key in ("cumulative", "tottime"):
        pstats.Stats(prof, stream=sys.stderr).sort_stats(key).print_stats(12)
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:  # this process's own peak; ru_maxrss also counts the parent's peak, inherited through fork + exec
    peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = maxrss
print(json.dumps({"seconds": seconds, "done": done, "peak_rss_bytes": peak, "ru_maxrss_bytes": maxrss}))
"""
MODES = {  # mode: (row label, batch sizes in the order asked)
    "curve": ("one pass for all sizes (decode_routing_curve + prefill_routing_curve)", list(BATCH_SIZES)),
    "calls": ("one call per size, as predict makes (decode_routing + prefill_routing)", REPLAY_ORDER),
}


def step(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def row(name: str, result: str, target: str = "-", passed: bool | None = None, **values) -> dict:
    return {"benchmark": name, "result": result, "target": target, "passed": passed, **values}


# ----------------------------------------------------------------------------- collection


def plain_batch(model, tokens: list[list[int]], max_new_tokens: int, pad_id: int, eos: set[int]) -> np.ndarray:
    """``collect.run_batch`` without the recorder: the same model calls on the same inputs; the tokens."""
    import torch

    b, length = len(tokens), max(len(t) for t in tokens)
    lens = torch.tensor([len(t) for t in tokens])
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    mask = torch.zeros((b, length), dtype=torch.long)
    for i, t in enumerate(tokens):
        input_ids[i, length - len(t):] = torch.tensor(t, dtype=torch.long)
        mask[i, length - len(t):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    generated = np.full((b, max_new_tokens), -1, dtype=np.int64)
    finished = np.zeros(b, dtype=bool)
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1, :].argmax(dim=-1).cpu()
        past = out.past_key_values
        for step in range(1, max_new_tokens + 1):
            generated[~finished, step - 1] = nxt.numpy()[~finished]
            finished |= np.isin(nxt.numpy(), list(eos)) if eos else False
            if step == max_new_tokens or finished.all():
                break
            feed = torch.where(torch.from_numpy(~finished), nxt, torch.full_like(nxt, pad_id))
            mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.long)], dim=1)
            p = (lens + step - 1).unsqueeze(1)
            out = model(input_ids=feed.unsqueeze(1), attention_mask=mask, position_ids=p, past_key_values=past,
                        use_cache=True, logits_to_keep=1)
            nxt = out.logits[:, -1, :].argmax(dim=-1).cpu()
            past = out.past_key_values
    return generated


def collection(label: str, model_path: Path, random_init: bool, repeats: int, tmp: Path) -> list[dict]:
    """Overhead row and write-time row for one model (see the module docstring)."""
    from capsim.traces import collect as col
    from capsim.traces import format as tfmt

    model, raw, family = col.load_hf_model(model_path, random_init, seed=0)
    rule = col.routing_rule(family, model.config)
    vocab = int(model.config.vocab_size)
    tokens = col.tokenize(col.read_prompts(PROMPTS), col.load_tokenizer(None if random_init else model_path),
                          vocab, MAX_PROMPT_TOKENS)[:BATCH]
    pad = getattr(model.config, "pad_token_id", None)
    pad_id = int(pad) if pad is not None and 0 <= int(pad) < vocab else 0
    eos = col._eos_ids(model)
    seq_ids = list(range(len(tokens)))

    def recorded() -> tuple[float, dict]:
        rec = col.RoutingRecorder(model, family, rule)  # hooks installed, untimed (once per collect() run)
        try:
            t0 = time.perf_counter()
            arrays = col.run_batch(model, rec, tokens, seq_ids, MAX_NEW_TOKENS, pad_id, eos)
            return time.perf_counter() - t0, arrays
        finally:
            rec.remove()

    def plain() -> tuple[float, np.ndarray]:
        assert not any(m._forward_hooks for m in model.modules()), "a hook is left on the model"
        t0 = time.perf_counter()
        gen = plain_batch(model, tokens, MAX_NEW_TOKENS, pad_id, eos)
        return time.perf_counter() - t0, gen

    _, arrays = recorded()  # warm-up, untimed
    _, gen = plain()
    if not np.array_equal(arrays["generated"], gen):
        raise AssertionError(f"{label}: the recorded and the plain loop generated different tokens")
    a, b = [], []
    for i in range(repeats):  # alternate the order to cancel drift
        for run in ((recorded, plain) if i % 2 == 0 else (plain, recorded)):
            (a if run is recorded else b).append(run()[0])
    ratios = [(x - y) / y for x, y in zip(a, b, strict=True)]
    overhead = statistics.median(ratios)
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (overhead,) * 3
    forwards = int((gen >= 0).sum(1).max())  # the prefill call, then one per token fed back
    med_a, med_b = statistics.median(a), statistics.median(b)
    rows = [row(f"collection overhead, {label}",
                f"{100 * overhead:+.1f}% (median of {repeats} pairs, quartiles {100 * q1:+.1f}..{100 * q3:+.1f}%; "
                f"recorded {1e3 * med_a:.0f} ms, plain {1e3 * med_b:.0f} ms per batch: {len(tokens)} prompts, "
                f"{forwards} forward calls, "
                f"{1e3 * med_b / forwards:.1f} ms a call)",
                f"< {100 * COLLECT_OVERHEAD_TARGET:.0f}%", overhead < COLLECT_OVERHEAD_TARGET,
                overhead=overhead, ratios=ratios, recorded_s=a, plain_s=b, forward_calls=forwards)]

    names = ("expert_ids", "weights", "sequence", "position", "phase")
    meta = {"model_id": label, "num_experts": rule.num_experts, "top_k": rule.top_k, "synthetic": False}
    t0 = time.perf_counter()
    col._save_npz(tmp / "batch_0.npz", arrays)  # what collect() keeps per batch for resuming
    t1 = time.perf_counter()
    tfmt.write_trace(tmp / f"trace-{family}", {n: arrays[n] for n in names}, meta)
    t2 = time.perf_counter()
    rows.append(row(f"trace write, {label}",
                    f"{1e3 * (t2 - t0):.1f} ms for {len(arrays['phase']):,} rows (resume file {1e3 * (t1 - t0):.1f} "
                    f"ms, write_trace {1e3 * (t2 - t1):.1f} ms)", seconds=t2 - t0))
    return rows


# ----------------------------------------------------------------------------- replay


def make_trace(tokens: int, path: Path) -> tuple[dict, int]:
    from capsim.traces.format import write_trace
    from capsim.traces.synthetic import synthetic_trace

    sequences = max(1, round(tokens / (PROMPT_LEN + DECODE_LEN)))
    t0 = time.perf_counter()
    arrays, meta = synthetic_trace("zipf", num_experts=NUM_EXPERTS, top_k=TOP_K, moe_layers=MOE_LAYERS,
                                   sequences=sequences, prompt_len=PROMPT_LEN, decode_len=DECODE_LEN, seed=0)
    t1 = time.perf_counter()
    write_trace(path, arrays, meta)
    t2 = time.perf_counter()
    n = len(arrays["phase"])
    size = sum(f.stat().st_size for f in path.iterdir())
    return row(f"synthetic trace, Qwen3-30B-A3B shape ({sequences:,} x {PROMPT_LEN}+{DECODE_LEN} tokens)",
               f"{n:,} tokens, {size / 1e9:.2f} GB: generated in {t1 - t0:.1f} s, written in {t2 - t1:.1f} s",
               tokens=n, generate_s=t1 - t0, write_s=t2 - t1, bytes=size), n


def run_replay(path: Path, mode: str, budget: float, profile: bool = False) -> tuple[dict, float, str]:
    cmd = [sys.executable, "-c", REPLAY_CODE, str(path), mode, str(budget), json.dumps(MODES[mode][1]), str(SAMPLES),
           "1" if profile else "0"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    return json.loads(out.stdout.strip().splitlines()[-1]), wall, out.stderr


def replay_rows(path: Path, tokens: int, mode: str, budget: float) -> list[dict]:
    res, wall, _ = run_replay(path, mode, budget)
    done = np.asarray(res["done"], float).reshape(-1, 3)
    dec, pre = done[:, 1].sum(), done[:, 2].sum()
    complete = mode == "curve" or len(done) == len(BATCH_SIZES)
    secs = res["seconds"]
    if complete:
        what = f"{secs:.2f} s (decode {dec:.2f} s, prefill {pre:.2f} s; whole process {wall:.2f} s)"
        passed, estimate = secs < REPLAY_TIME_TARGET_S, secs
    else:  # stopped by the budget: interpolate the per-size times over all sizes
        order = np.argsort(done[:, 0])
        bs = np.asarray(BATCH_SIZES, float)
        est = {k: float(np.interp(bs, done[order, 0], done[order, c]).sum()) for k, c in (("dec", 1), ("pre", 2))}
        estimate = est["dec"] + est["pre"]
        what = (f"stopped at the {budget:.0f} s budget after {len(done)} of {len(BATCH_SIZES)} sizes ({secs:.1f} s: "
                f"decode {dec:.1f} s, prefill {pre:.1f} s); all 256 estimated ~{estimate:,.0f} s "
                f"(decode ~{est['dec']:,.0f} s, prefill ~{est['pre']:,.0f} s)")
        passed = False
    rss = res["peak_rss_bytes"]
    label = MODES[mode][0]
    return [
        row(f"replay {tokens:,}-token trace, batch 1..256, {label}", what, f"< {REPLAY_TIME_TARGET_S:.0f} s", passed,
            seconds=secs, process_s=wall, complete=complete, estimated_total_s=estimate,
            per_batch_s={int(b): [d, p] for b, d, p in done}),
        row(f"  peak RSS of that process ({'all sizes' if complete else f'largest size {int(done[:, 0].max())}'})",
            f"{rss / 1e9:.2f} GB", f"< {REPLAY_RSS_TARGET_BYTES / 1e9:.0f} GB", rss < REPLAY_RSS_TARGET_BYTES,
            peak_rss_bytes=rss, ru_maxrss_bytes=res["ru_maxrss_bytes"]),
    ]


def predict_row(path: Path) -> dict:
    from capsim.hardware import db as hwdb
    from capsim.predict import Query, predict

    db = hwdb.load()
    q = Query(model=REPLAY_MODEL, hardware="h100", batch=64, trace=str(path))
    t0 = time.perf_counter()
    out = predict(q, db)
    secs = time.perf_counter() - t0
    assert out["spread"] is not None and np.isfinite(out["tpot_s"]), out
    return row(f"predict(Query({REPLAY_MODEL}, h100, batch=64, trace=...)) in process", f"{secs:.2f} s",
               seconds=secs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_000_000, help="tokens in the synthetic trace (default 1,000,000)")
    ap.add_argument("--repeats", type=int, default=9, help="timed recorded/plain pairs per model (default 9)")
    ap.add_argument("--replay-budget", type=float, default=60.0,
                    help="stop the replay loop after this many seconds and estimate the rest (0: no limit; "
                         "default 60)")
    ap.add_argument("--part", choices=("all", "collection", "replay"), default="all",
                    help="run only the collection rows (1-2) or only the replay rows (3-5)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--profile", action="store_true",
                    help="afterwards, run the replay once more under cProfile and print where the time goes")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(THREADS)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the temporary folder is removed
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="capsim-bench-traces-") as d:
        tmp = Path(d)
        cfg = tmp / "mixtral-shaped.json"
        cfg.write_text(json.dumps(MIXTRAL_SHAPED))
        if a.part in ("all", "collection"):
            step("collection overhead: tiny-olmoe-stdlib")
            rows += collection("tiny-olmoe-stdlib (real weights, fp16)", TINY_MODEL, False, a.repeats, tmp)
            step("collection overhead: Mixtral-shaped")
            rows += collection("Mixtral-shaped, random init (h512, 4 layers, 8 experts top-2, fp32)", cfg, True,
                               a.repeats, tmp)
        if a.part == "collection":
            return report(rows, a, torch.__version__, "")
        trace = tmp / "qwen3-30b-zipf"
        step(f"synthetic trace: {a.tokens:,} tokens")
        gen, n = make_trace(a.tokens, trace)
        rows.append(gen)
        for mode in MODES:
            step(f"replay: {MODES[mode][0]}")
            rows += replay_rows(trace, n, mode, a.replay_budget)
        rows.append(predict_row(trace))
        profile = "".join(f"=== cProfile, replay {MODES[m][0]} ===\n{run_replay(trace, m, a.replay_budget, True)[2]}"
                          for m in MODES) if a.profile else ""
    return report(rows, a, torch.__version__, profile)


def report(rows: list[dict], a: argparse.Namespace, torch_version: str, profile: str) -> int:
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"capsim trace benchmark: Python {sys.version.split()[0]}, numpy {np.__version__}, "
              f"torch {torch_version} ({THREADS} threads), {os.cpu_count()} CPUs")
        verdict = {True: "pass", False: "FAIL", None: "info"}
        print(render(["benchmark", "result", "target", "pass/fail"],
                     [[r["benchmark"], r["result"], r["target"], verdict[r["passed"]]] for r in rows]))
    if profile:
        print(profile, file=sys.stderr)
    return int(a.strict and any(r["passed"] is False for r in rows))


if __name__ == "__main__":
    sys.exit(main())
