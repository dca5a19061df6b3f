"""The accuracy side of the CAP analysis: cited published scores, the no-score case, and lm-eval file import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from capsim.cap import accuracy
from capsim.cap.lm_eval import load_lm_eval
from capsim.cli.main import cli
from capsim.errors import CapsimError
from capsim.model.catalogue import entries

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "lm_eval_mixtral_fixture.json"  # hand-written, lm-eval 0.4 format; arbitrary scores
WRONG = DATA / "lm_eval_wrong_format.json"


def test_table_rows_are_checked_and_cited():
    rows, sources = accuracy.load_table()
    assert len(rows) >= 60
    for r in rows:
        assert r.model in entries() and r.source in sources
        # value is the published percentage / 100 (load_table refuses a row where they differ)
        assert abs(float(r.as_published.rstrip("%")) / 100 - r.value) < 1e-9
        assert r.precision_basis in ("stated", "checkpoint")
    for s in sources.values():
        assert s["title"] and s["url"].startswith("https://") and s["read"]


def test_table_refuses_a_value_that_does_not_match_its_source_text(tmp_path):
    text = accuracy.TABLE.read_text().replace('value: 0.706, as_published: "70.6%"', 'value: 0.716, as_published: "70.6%"')
    bad = tmp_path / "accuracy.yaml"
    bad.write_text(text)
    with pytest.raises(CapsimError, match="does not match as_published"):
        accuracy.load_table(bad)


def test_cited_numbers():
    # Mixtral paper (arXiv:2401.04088) Table 2: MMLU 70.6% (5-shot)
    r = accuracy.score("mixtral", "MMLU")
    assert r.value == 0.706 and r.exact_precision and r.precision_of_score == "bf16" and r.reason is None
    assert (r.score.source, r.score.as_published, r.score.shots) == ("mixtral-paper", "70.6%", 5)
    # the authors' own number is preferred to another lab's evaluation (Qwen2 report: 71.8)
    assert [alt.value for alt in r.alternatives] == [0.718]
    # DeepSeek-V3 technical report / README chat table: MMLU 88.5 (EM); the catalogue id is the chat model
    v3 = accuracy.score("deepseek-v3", "mmlu")
    assert v3.value == 0.885 and v3.score.checkpoint == "deepseek-ai/DeepSeek-V3" and v3.precision_of_score == "fp8"
    # a benchmark published only for the base checkpoint says whose score it is
    gsm = accuracy.score("deepseek-v3", "GSM8K")
    assert gsm.value == 0.893 and "DeepSeek-V3-Base" in gsm.reason
    # Llama 4 model card: "all reported evaluations ... were conducted on bf16 models"
    assert accuracy.score("scout", "MMLU").score.precision_basis == "stated"


def test_no_published_score_is_said_not_invented():
    r = accuracy.score("qwen3-30b", "MMLU")
    assert r.value is None and r.score is None and "no published score" in r.reason
    assert r.model == "Qwen/Qwen3-30B-A3B"
    # DeepSeek-R1 shares DeepSeek-V3's shape but not its scores
    r1 = accuracy.score("deepseek-r1", "MMLU")
    assert r1.value is None and r1.model == "deepseek-ai/DeepSeek-R1"
    assert accuracy.score("mixtral", "SWE-bench Verified").value is None


def test_quantised_precision_reports_the_native_score_only_flagged():
    r = accuracy.score("mixtral", "MMLU", precision="int4")
    assert r.value == 0.706 and not r.exact_precision
    assert (r.precision_requested, r.precision_of_score) == ("int4", "bf16")
    assert "no published score at int4" in r.reason
    strict = accuracy.score("mixtral", "MMLU", precision="int4", allow_other_precision=False)
    assert strict.value is None and "published at: bf16" in strict.reason


def test_benchmark_names_match_loosely():
    assert accuracy.normalise("ARC-Challenge") == accuracy.normalise("arc_challenge") == "arcchallenge"
    assert accuracy.score("llama-3.1-8b", "arc challenge").value == 0.797


def test_lm_eval_import():
    rows = load_lm_eval(FIXTURE)
    got = {(r.benchmark, r.metric): r for r in rows}
    # wikitext perplexity and bits per byte are not accuracies: skipped
    assert set(got) == {("gsm8k", "exact_match (strict-match)"), ("gsm8k", "exact_match (flexible-extract)"),
                        ("hellaswag", "acc"), ("hellaswag", "acc_norm"), ("mmlu", "acc")}
    mmlu = got[("mmlu", "acc")]
    assert mmlu.value == 0.6875 and mmlu.shots == 5 and mmlu.stderr is None  # stderr "N/A" in the file
    assert mmlu.model == "mistralai/Mixtral-8x7B-v0.1" and mmlu.precision == "bf16"
    assert mmlu.source == str(FIXTURE) and mmlu.as_published == "acc,none: 0.6875"
    assert got[("hellaswag", "acc")].stderr == 0.0047 and got[("gsm8k", "exact_match (strict-match)")].shots == 5
    # imported rows join the published table for comparison
    assert accuracy.score("mistralai/Mixtral-8x7B-v0.1", "mmlu", rows=rows).value == 0.6875


def test_lm_eval_other_format_is_a_clear_error(tmp_path):
    with pytest.raises(CapsimError) as err:
        load_lm_eval(WRONG)
    msg = str(err.value)
    assert msg.startswith(str(WRONG)) and "'results'" in msg and "expected an lm-evaluation-harness" in msg
    notjson = tmp_path / "results.json"
    notjson.write_text("task,acc\nmmlu,0.7\n")
    with pytest.raises(CapsimError, match="not JSON"):
        load_lm_eval(notjson)
    nomodel = tmp_path / "nomodel.json"
    nomodel.write_text(json.dumps({"results": {"mmlu": {"acc,none": 0.5}}}))
    with pytest.raises(CapsimError, match="no model name"):
        load_lm_eval(nomodel)


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_cli_lookup_and_table():
    r = run("cap", "accuracy", "-m", "mixtral", "-b", "mmlu", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["lookup"]["value"] == 0.706 and "mixtral-paper" in out["sources"]
    t = run("cap", "accuracy", "-m", "qwen3-30b")
    assert t.exit_code == 0 and "no published score for Qwen/Qwen3-30B-A3B" in t.stdout
    i = run("cap", "accuracy", "--import", str(FIXTURE))
    assert i.exit_code == 0, i.output
    assert "68.8%" in i.stdout and "70.6% [mixtral-paper]" in i.stdout  # imported beside published


def test_cli_wrong_format_exit_2_one_line():
    r = run("cap", "accuracy", "--import", str(WRONG))
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith(f"capsim: error: {WRONG}") and "expected" in err and "\n" not in err
    assert "Traceback" not in r.output
