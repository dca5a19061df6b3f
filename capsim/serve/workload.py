"""The requests a serving run sends: when each arrives and its prompt and output lengths.

Arrivals follow vLLM's serving benchmark (vllm/benchmarks/serve.py ``get_request``, vllm 0.32) draw for draw:
at a request rate R (requests/s) the gaps between requests are gamma-distributed with shape ``burstiness`` and
scale 1 / (R x burstiness), so their mean is 1 / R (burstiness 1 is a Poisson process, below 1 burstier, above
1 more regular), drawn from numpy's legacy global generator seeded with ``--seed``; their running sum is then
rescaled so the last request is sent at exactly N / R, as the benchmark does. The same ``--seed`` therefore
gives the same send times as ``vllm bench serve --seed`` (checked against vLLM's function in the tests).
``--request-rate inf`` sends every request at time 0. ``--concurrency N`` (the benchmark's
``--max-concurrency``) keeps at most N requests in flight: a request is sent when it has arrived and one of the
N slots is free (the scheduler releases them, :mod:`capsim.serve.scheduler`).

Lengths: fixed (``--input-len`` / ``--output-len``), drawn from the ShareGPT length distribution of vLLM's and
SGLang's benchmarks (:mod:`capsim.serve.sharegpt`), or read from a file of lengths (JSONL objects or CSV rows with
``input_len`` and ``output_len``; as many requests as rows keep the file's order, otherwise rows are drawn with
replacement).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capsim.errors import CapsimError


@dataclass(frozen=True)
class Workload:
    arrival_s: np.ndarray  # when each request arrives (sorted), seconds from the start
    input_len: np.ndarray  # prompt tokens (int64)
    output_len: np.ndarray  # output tokens, >= 1 (int64)
    concurrency: int | None = None  # at most this many requests in flight (None: no limit)
    description: dict = field(default_factory=dict)
    # prefill/decode disaggregation: (sent, first token) times of requests that arrive with their prompt's K/V
    handoff: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n(self) -> int:
        return len(self.arrival_s)


def arrivals(n: int, rate: float, burstiness: float, seed: int) -> np.ndarray:
    """Send times of ``n`` requests at ``rate`` requests/s (inf: all at 0), as vLLM's benchmark draws them."""
    if not (rate > 0):
        raise CapsimError(f"--request-rate {rate}: expected a positive number of requests per second, or inf")
    if not (burstiness > 0 and math.isfinite(burstiness)):
        raise CapsimError(f"--burstiness {burstiness}: expected a positive finite number (1 = Poisson)")
    if math.isinf(rate):
        return np.zeros(n)
    legacy = np.random.RandomState(seed)  # the benchmark's np.random.seed(args.seed); nothing draws before
    t = np.cumsum(legacy.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n))
    return t * ((n / rate) / t[-1]) if t[-1] > 0 else t


def read_lengths(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(input_len, output_len) from a JSONL file of objects or a CSV file with those two columns."""
    p = Path(path)
    if not p.is_file():
        raise CapsimError(f"--dataset {path}: no such file (expected sharegpt, or a JSONL / CSV file of lengths)")
    rows: list[tuple[object, object]] = []
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CapsimError(f"--dataset {path}: cannot read it as UTF-8 text ({err})") from None
    if p.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"input_len", "output_len"} <= set(reader.fieldnames):
            raise CapsimError(f"--dataset {path}: expected CSV columns input_len and output_len")
        rows = [(r["input_len"], r["output_len"]) for r in reader]
    else:
        for k, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                rows.append((obj["input_len"], obj["output_len"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CapsimError(f"--dataset {path}: line {k}: expected a JSON object with input_len and "
                                  "output_len") from None
    if not rows:
        raise CapsimError(f"--dataset {path}: no lengths in it")
    out = []
    for k, (i, o) in enumerate(rows, 1):
        try:
            a, b = int(str(i)), int(str(o))
        except ValueError:
            raise CapsimError(f"--dataset {path}: row {k}: input_len and output_len must be whole numbers") from None
        if a < 1 or b < 1:
            raise CapsimError(f"--dataset {path}: row {k}: input_len and output_len must be at least 1")
        out.append((a, b))
    arr = np.array(out, dtype=np.int64)
    return arr[:, 0], arr[:, 1]


def build(num_requests: int, *, request_rate: float = math.inf, concurrency: int | None = None,
          burstiness: float = 1.0, input_len: int | None = None, output_len: int | None = None,
          dataset: str | None = None, seed: int = 0) -> Workload:
    """The requests of a run (deterministic for a seed)."""
    if not isinstance(num_requests, int) or num_requests < 1:
        raise CapsimError(f"--num-requests {num_requests}: expected a positive whole number")
    if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
        raise CapsimError(f"--concurrency {concurrency}: expected a positive whole number of requests in flight")
    if not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise CapsimError(f"--seed {seed}: expected a whole number from 0 to 2**32 - 1")
    rng = np.random.default_rng(seed)  # lengths
    t = arrivals(num_requests, request_rate, burstiness, seed)
    if dataset is None:
        if input_len is None or output_len is None:
            raise CapsimError("--input-len and --output-len: both are needed without --dataset")
        if input_len < 1 or output_len < 1:
            raise CapsimError("--input-len / --output-len: expected positive numbers of tokens")
        i = np.full(num_requests, input_len, np.int64)
        o = np.full(num_requests, output_len, np.int64)
        what = f"fixed lengths {input_len} / {output_len}"
    elif dataset == "sharegpt":
        from capsim.serve import sharegpt

        i, o = sharegpt.draw(num_requests, rng)
        what = sharegpt.DESCRIPTION
    else:
        ai, ao = read_lengths(dataset)
        idx = rng.integers(0, len(ai), num_requests) if num_requests != len(ai) else np.arange(len(ai))
        i, o = ai[idx], ao[idx]
        what = f"lengths from {dataset} ({len(ai)} rows)"
    desc = {"num_requests": num_requests, "request_rate_per_s": request_rate, "burstiness": burstiness,
            "concurrency": concurrency, "lengths": what, "seed": seed,
            "mean_input_len": float(i.mean()), "mean_output_len": float(o.mean())}
    return Workload(t, i, o, concurrency, desc)
