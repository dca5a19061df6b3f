"""Continuous batching, step by step, as vLLM's scheduler does it (vllm/v1/core/sched/scheduler.py).

Every request has a number of tokens whose K/V are computed (``computed``) and of tokens it has generated
(``gen``); it needs ``input + gen - computed`` tokens processed to sample its next token (the whole prompt at
first, then one token per decode step; after a preemption the prompt and the tokens generated so far again).
Each step:

1. The running requests, in the order they were admitted, take min(need, budget left) tokens of the step's
   token budget (``max_batched_tokens``; none: unlimited): decode tokens first in effect (they need one) and
   prefill chunks from what is left (chunked prefill).
2. Their K/V must fit in the cache, counted in blocks of ``block_tokens``: while they do not, the request
   admitted last is preempted (recompute: its blocks are freed and it waits at the head of the queue; without
   prefix caching ``computed`` returns to 0, with it the request keeps the prefix whose blocks are still cached
   when it is admitted again, :mod:`capsim.serve.blocks`).
3. Waiting requests (first come, first served; a preempted one first) are admitted while sequences stay
   within ``max_running``, budget is left, and the blocks of their first chunk fit; none in a step that
   preempted (vLLM schedules waiting requests only ``if not preempted_reqs``).
4. The step's time is its mix's cost (:class:`capsim.serve.steps.StepCost`); then every request that finished
   its needed tokens samples one: its first (TTFT) or its next (an inter-token latency, ITL); a request with
   all its output leaves and frees its blocks.

A request handed off by a prefill instance (prefill/decode disaggregation, ``Workload.handoff``) arrives with
its prompt's K/V (its blocks taken on admission) and its first token, and needs one token per step from then on.

With ``concurrency`` N a request is sent when it has arrived and fewer than N are in flight; its latencies run
from when it is sent, as the benchmark measures them. A sent request first passes the engine's front end
(``intake_s``, :mod:`capsim.engines.frontend`): the requests in intake share its CPU equally (processor
sharing), and a request joins the waiting queue when its ``intake_s`` of CPU is done (at 0: when it is sent).
Time jumps to the next arrival or intake end when nothing can run.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from capsim.errors import CapsimError
from capsim.serve.blocks import BlockPool
from capsim.serve.workload import Workload
from capsim.sim.span import cached_tokens_per_layer, chunk_pairs_per_layer


@dataclass(frozen=True)
class SchedulerConfig:
    max_running: int  # sequences a step may carry (vLLM max_num_seqs)
    max_batched_tokens: float  # tokens a step may process (inf: no chunking)
    block_tokens: int  # tokens per KV-cache block
    kv_blocks: int  # blocks the KV cache holds
    windows: tuple[tuple[int, int], ...]  # the model's attention windows (capsim.sim.span)
    layers: int
    prefix_caching: bool = False  # a preempted request's blocks stay cached until evicted (vLLM V1's default)
    cache_windows: tuple[tuple[int, int], ...] = ()  # sparse attention: the dense spans its indexer scores
    intake_s: float = 0.0  # front-end CPU seconds per request, processor-shared (capsim.engines.frontend)


@dataclass(frozen=True)
class Trace:
    """What a run did: per request (sent, first token, done, ITLs) and per step (duration, sequences)."""

    sent_s: np.ndarray
    first_s: np.ndarray
    done_s: np.ndarray
    itl_s: np.ndarray  # every inter-token latency of every request
    step_s: np.ndarray
    step_seqs: np.ndarray
    preemptions: int


def run(w: Workload, cfg: SchedulerConfig, cost, max_steps: int = 50_000_000) -> Trace:
    n = w.n
    inp, out = w.input_len.astype(np.int64), w.output_len.astype(np.int64)
    if int((inp + out).max()) > cfg.kv_blocks * cfg.block_tokens:
        k = int(np.argmax(inp + out))
        raise CapsimError(f"request {k}: {int(inp[k] + out[k])} tokens do not fit in the whole KV cache "
                          f"({cfg.kv_blocks * cfg.block_tokens} tokens)")
    computed, gen, blocks = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    sent, first, done, last = (np.full(n, np.nan) for _ in range(4))
    running: list[int] = []
    waiting: deque[int] = deque()
    pool = BlockPool(cfg.kv_blocks, cfg.prefix_caching)
    # blocks a request of c tokens holds: its full-attention layers' ceil(c / block), plus (vLLM's hybrid KV
    # manager, vllm/v1/core/single_type_kv_cache_manager.py SlidingWindowManager) each sliding layer group's last
    # window, ceil((w - 1) / block) + 1 blocks at most, in units of the full layers' blocks (layer count ratio)
    full = sum(n for w, n in cfg.windows if w == 0)
    slide = [(w, n / full) for w, n in cfg.windows if w > 0] if full else []

    def held(c):
        out = -(-c // bt)
        for w, ratio in slide:
            out = out + np.ceil(ratio * np.minimum(out, -(-(w - 1) // bt) + 1)).astype(np.int64)
        return out

    nxt, in_flight, finished, preempt, now = 0, 0, 0, 0, 0.0
    itls, step_s, step_seqs = [], [], []
    budget, bt = cfg.max_batched_tokens, cfg.block_tokens
    limit = w.concurrency or n
    fe = _FrontEnd(cfg.intake_s if w.handoff is None else 0.0, waiting)
    for _ in range(max_steps):
        while nxt < n and w.arrival_s[nxt] <= now and in_flight < limit:
            sent[nxt] = max(w.arrival_s[nxt], now) if w.concurrency else w.arrival_s[nxt]
            if w.handoff is not None:  # its prompt's K/V and first token come from a prefill instance
                sent[nxt], first[nxt] = w.handoff[0][nxt], w.handoff[1][nxt]
                last[nxt], computed[nxt], gen[nxt] = first[nxt], inp[nxt], 1
            fe.send(float(sent[nxt]), nxt)
            nxt, in_flight = nxt + 1, in_flight + 1
        fe.advance(now)
        if not running and not waiting:
            if nxt >= n and not fe.ids:
                break
            now = max(now, min(fe.next_end(), float(w.arrival_s[nxt]) if nxt < n and in_flight < limit else math.inf))
            continue
        ids = np.array(running, np.int64)
        need = inp[ids] + gen[ids] - computed[ids]
        take = np.clip(budget - (np.cumsum(need) - need), 0, need).astype(np.int64)
        extra = held(computed[ids] + take) - blocks[ids]
        preempted = False
        while len(ids) and int(extra.sum()) > pool.free:  # preempt the request admitted last (recompute)
            preempted = True
            v = running.pop()
            pool.preempt(v, int(blocks[v]), int(computed[v] // bt))
            blocks[v], computed[v] = 0, 0
            waiting.appendleft(v)
            preempt += 1
            ids, need, take, extra = ids[:-1], need[:-1], take[:-1], extra[:-1]
        pool.take(int(extra.sum()))
        blocks[ids] += extra
        left = budget - float(take.sum())
        new, new_take = [], []
        while not preempted and waiting and len(running) + len(new) < cfg.max_running and left > 0:
            r = waiting[0]
            hit = min(pool.cached_tokens(r, bt), int(inp[r] + gen[r]) - 1)  # its prefix still cached
            done_tokens = max(int(computed[r]), hit)
            t = int(min(inp[r] + gen[r] - done_tokens, left))
            nb = int(held(np.int64(done_tokens + t))) - blocks[r]  # a handed-off request brings its prompt's K/V
            if nb > pool.free:
                break
            waiting.popleft()
            pool.take(int(nb), r)
            computed[r] = done_tokens
            blocks[r] = nb
            new.append(r)
            new_take.append(t)
            left -= t
        running.extend(new)
        s_ids = np.concatenate([ids, np.array(new, np.int64)])
        s_take = np.concatenate([take, np.array(new_take, np.int64)])
        keep = s_take > 0
        s_ids, s_take = s_ids[keep], s_take[keep]
        if len(s_ids) == 0:  # nothing fits: only possible with every block held by waiting-free requests
            raise CapsimError("the KV cache cannot hold the next chunk of any request; raise the memory or "
                              "lower --max-num-seqs")
        ctx = computed[s_ids]
        is_decode = (s_take == 1) & (ctx > 0) & (ctx == inp[s_ids] + gen[s_ids] - 1)
        tokens = float(s_take.sum())
        pairs = float(np.sum(chunk_pairs_per_layer(cfg.windows, cfg.layers, ctx, s_take)))
        kv = float(np.sum(np.where(is_decode, chunk_pairs_per_layer(cfg.windows, cfg.layers, ctx, 1),
                                   cached_tokens_per_layer(cfg.windows, cfg.layers, ctx))))
        dense = (float(np.sum(chunk_pairs_per_layer(cfg.cache_windows, cfg.layers, ctx, s_take)))
                 if cfg.cache_windows and cfg.cache_windows != cfg.windows else None)
        dt = cost(tokens, float(len(s_ids)), pairs, kv, bool(is_decode.all()), dense)
        now += dt
        step_s.append(dt)
        step_seqs.append(len(s_ids))
        computed[s_ids] += s_take
        sampled = s_ids[computed[s_ids] == inp[s_ids] + gen[s_ids]]
        gen[sampled] += 1
        firsts = sampled[gen[sampled] == 1]
        first[firsts] = now
        later = sampled[gen[sampled] > 1]
        if len(later):
            itls.append(now - last[later])
        last[sampled] = now
        ended = sampled[gen[sampled] >= out[sampled]]
        if len(ended):
            done[ended] = now
            pool.release(int(blocks[ended].sum()))
            blocks[ended] = 0
            gone = set(ended.tolist())
            running = [r for r in running if r not in gone]
            finished += len(ended)
            in_flight -= len(ended)
        if finished >= n:
            break
    else:
        raise CapsimError(f"the serving simulation did not finish in {max_steps} steps")
    return Trace(sent, first, done, np.concatenate(itls) if itls else np.zeros(0), np.array(step_s),
                 np.array(step_seqs), preempt)


class _FrontEnd:
    """The front end's intake as processor sharing: each request in intake has ``left`` seconds of CPU to go and
    gets 1/k of the CPU while k are in intake; finished ones join ``waiting`` in the order they were sent."""

    def __init__(self, intake_s: float, waiting: deque):
        self.intake, self.waiting = intake_s, waiting
        self.ids: list[int] = []
        self.left = np.zeros(0)
        self.t = 0.0  # the time the front end has been run to

    def send(self, t: float, r: int) -> None:
        if self.intake <= 0:
            self.waiting.append(r)
            return
        self.advance(t)
        self.ids.append(r)
        self.left = np.append(self.left, self.intake)

    def next_end(self) -> float:
        return self.t + float(self.left.min()) * len(self.ids) if self.ids else math.inf

    def advance(self, t: float) -> None:
        while self.ids and self.t < t:
            k, m = len(self.ids), float(self.left.min())
            if self.t + m * k > t:  # nobody finishes before t
                self.left = self.left - (t - self.t) / k
                break
            self.t += m * k
            self.left = self.left - m
            end = self.left <= self.intake * 1e-12  # equal shares finish together (rounding aside)
            self.waiting.extend(r for r, e in zip(self.ids, end, strict=True) if e)
            self.ids = [r for r, e in zip(self.ids, end, strict=True) if not e]
            self.left = self.left[~end]
        self.t = max(self.t, t)


def kv_blocks(capacity_tokens: float, block_tokens: int) -> int:
    """Whole blocks in a KV cache of ``capacity_tokens`` tokens."""
    if not math.isfinite(capacity_tokens):
        return 1 << 40
    return max(0, int(capacity_tokens // block_tokens))
