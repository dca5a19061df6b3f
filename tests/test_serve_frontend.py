"""The engine's front end in capsim serve (capsim.engines.frontend): requests in intake share its CPU (processor
sharing) before the scheduler sees them. Hand-derived cases with the made-up step cost of test_serve.py."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from capsim.cli.main import cli
from capsim.engines import FOLDER as PROFILES
from capsim.engines.frontend import FrontEnd, parse
from capsim.errors import CapsimError
from capsim.hardware.db import load
from capsim.predict import Query
from capsim.scenario import resolve
from capsim.serve import scheduler, workload
from capsim.serve.run import serve
from capsim.validation import serving_frontend

DB = load()


def cost(tokens, seqs, pairs, kv, decode, dense=None):
    """1 s per step plus 0.1 s per token processed (as test_serve.py)."""
    return 1.0 + 0.1 * tokens


def cfg(intake_s: float) -> scheduler.SchedulerConfig:
    return scheduler.SchedulerConfig(1 << 30, math.inf, 1, 100, ((0, 1),), 1, intake_s=intake_s)


def wl(n, i, o, arrival, concurrency=None):
    return workload.Workload(np.asarray(arrival, float), np.full(n, i, np.int64), np.full(n, o, np.int64), concurrency)


def test_one_request_waits_its_intake_then_runs_as_before():
    # I = 4, O = 3 alone takes 1.4 s to its first token and 3.6 s in all (test_serve.py test_one_request); with
    # 0.5 s of intake the scheduler sees it at 0.5 s: first token 1.9 s, done 4.1 s, ITLs unchanged
    tr = scheduler.run(wl(1, 4, 3, [0.0]), cfg(0.5), cost)
    assert tr.sent_s[0] == 0.0
    assert tr.first_s[0] == pytest.approx(1.9) and tr.done_s[0] == pytest.approx(4.1)
    assert list(tr.itl_s) == pytest.approx([1.1, 1.1])


def test_a_burst_reaches_the_engine_together_after_n_intakes():
    # 3 requests sent at 0, 0.5 s of intake each, the CPU shared three ways: all done at 3 x 0.5 = 1.5 s. Then one
    # prefill step of 12 tokens (2.2 s): first tokens at 3.7 s (without a front end: 2.2 s)
    tr = scheduler.run(wl(3, 4, 3, [0.0, 0.0, 0.0]), cfg(0.5), cost)
    assert list(tr.first_s) == pytest.approx([3.7] * 3)
    assert list(tr.step_seqs) == [3, 3, 3]


def test_intakes_that_overlap_share_the_cpu():
    # a = 1 s; request 0 sent at 0, request 1 at 0.5 s. Alone until 0.5 s request 0 has 0.5 s left; shared, it
    # finishes at 0.5 + 2 x 0.5 = 1.5 s, when request 1 has 1 - 0.5 = 0.5 s left, alone: done at 2.0 s.
    # Request 0's prefill (4 tokens, 1.4 s) runs 1.5 -> 2.9 s; request 1 joins at the next step (2.9 s): its
    # prefill and request 0's decode, 5 tokens, 1.5 s -> its first token at 4.4 s
    tr = scheduler.run(wl(2, 4, 3, [0.0, 0.5]), cfg(1.0), cost)
    assert list(tr.first_s) == pytest.approx([2.9, 4.4])


def test_with_a_concurrency_limit_each_request_pays_its_intake_after_it_is_sent():
    # --concurrency 1: request 1 is sent when request 0 is done (0.5 + 3.6 = 4.1 s), then waits 0.5 s of intake
    tr = scheduler.run(wl(2, 4, 3, [0.0, 0.0], concurrency=1), cfg(0.5), cost)
    assert list(tr.sent_s) == pytest.approx([0.0, 4.1])
    assert list(tr.done_s) == pytest.approx([4.1, 8.2])


def _sc(intake):
    q = Query(model="mixtral-8x7b", hardware="dgx-h100", devices=8, engine="vllm", routing="uniform", batch=1,
              input_len=512, output_len=64, check_memory=False)
    sc = resolve(q, DB)
    return replace(sc, profile=replace(sc.profile, frontend=FrontEnd(intake, "test")))


def test_a_burst_is_the_engine_alone_shifted_by_n_intakes():
    # the identity the front end's fit relies on (capsim.validation.serving_frontend.shifted): 64 requests at once,
    # 5 ms each, all reach the engine at 64 x 5 ms = 0.32 s
    w = workload.build(64, input_len=512, output_len=64)
    alone, with_fe = serve(_sc(0.0), w), serve(_sc(0.005), w)
    shifted = serving_frontend.shifted(alone, 64, 0.005)
    assert with_fe["ttft_s"]["mean"] == pytest.approx(alone["ttft_s"]["mean"] + 0.32, rel=1e-12)
    for k in ("ttft_mean", "ttft_p99", "tpot_mean", "itl_p99", "e2e_mean", "output_tokens_per_s"):
        stat, key = k.rsplit("_", 1) if k != "output_tokens_per_s" else (k, None)
        got = with_fe[stat + "_s"][key] if key else with_fe[k]
        assert got == pytest.approx(shifted[k], rel=1e-9)
    assert with_fe["scheduler"]["intake_s_per_request"] == 0.005


def test_the_fit_recovers_a_known_intake():
    # measured TTFT = the engine alone's + N x 4 ms for two bursts of 100 and 1000 requests: the fit returns 4 ms
    pred = {"ttft_s": {"mean": 1.0, "p99": 2.0}, "tpot_s": {"mean": 0.1, "p99": 0.2}, "itl_s": {"mean": 0.1, "p99": 0.3},
            "e2e_s": {"mean": 3.0}, "duration_s": 5.0, "output_tokens_per_s": 100.0}
    cases = [(n, pred, {"ttft_mean": 1.0 + n * 0.004, "ttft_p99": 2.0 + n * 0.004}) for n in (100, 1000)]
    assert serving_frontend.fit(cases) == pytest.approx(0.004, abs=1e-5)


def test_the_profile_section_round_trips_and_bad_values_are_refused(tmp_path):
    path = tmp_path / "vllm.yaml"
    path.write_text((PROFILES / "vllm.yaml").read_text())
    serving_frontend.write(0.0042, "a test", path)
    data = yaml.safe_load(path.read_text())
    assert data["frontend"] == {"intake_s_per_request": 0.0042, "fitted_to": "a test"}
    assert list(data).index("frontend") == list(data).index("scheduler") + 1
    assert path.read_text().startswith("# Written by")
    for bad in ({"intake_s_per_request": -1}, {"intake_s_per_request": "5ms"}, {"intake": 1},
                {"intake_s_per_request": 0.01}):
        with pytest.raises(CapsimError, match="frontend"):
            parse(bad, path)
    assert parse({"intake_s_per_request": 0}, path) == FrontEnd(0.0, "")


def test_the_flag_overrides_the_profile_and_bad_times_exit_2():
    args = ["serve", "-m", "mixtral", "-H", "dgx-h100", "--devices", "8", "--request-rate", "inf",
            "--num-requests", "4", "--input-len", "100", "--output-len", "4", "--routing", "uniform", "--json"]
    runs = {}
    for intake in ("0", "10ms"):
        r = CliRunner().invoke(cli, [*args, "--frontend-intake", intake])
        assert r.exit_code == 0, r.output
        runs[intake] = json.loads(r.stdout)
    assert runs["0"]["scheduler"]["intake_s_per_request"] == 0.0
    # 4 requests at once, 10 ms each shared: all reach the engine at 40 ms
    assert runs["10ms"]["ttft_s"]["mean"] - runs["0"]["ttft_s"]["mean"] == pytest.approx(0.04, rel=1e-9)
    r = CliRunner().invoke(cli, [*args, "--frontend-intake", "-1ms"])
    assert r.exit_code == 2 and "--frontend-intake" in r.output and "Traceback" not in r.output


def test_refitting_the_engine_keeps_its_front_end(tmp_path):
    # capsim validate --gpu --fit rewrites the whole profile (capsim.engines.write): the frontend section survives
    from capsim import engines

    prof = engines.load("vllm")
    assert prof.frontend is not None and prof.frontend.intake_s_per_request > 0
    path = engines.write(prof, folder=tmp_path, command="capsim validate --gpu --fit")
    st = path.stat()
    assert engines._load(str(path), st.st_mtime_ns, st.st_size).frontend == prof.frontend
