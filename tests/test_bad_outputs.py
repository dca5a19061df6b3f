"""No write removes or moves what capsim did not create; the inputs that used to hang capsim are refused at
once; the Mac Studio that said 96 GB. Each refusal is checked with tests/badinput.py (exit 2, one line, nothing
touched); a user's file is also checked byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from badinput import refused
from click.testing import CliRunner

from capsim.cli.main import cli

REPO = Path(__file__).resolve().parent.parent
SYNTH = ["trace", "synth", "--experts", "8", "--top-k", "2", "--layers", "2", "--sequences", "2", "--prompt-len",
         "4", "--decode-len", "4"]
THESIS = "Chapter 1. Four years of work.\n"


def ok(args: list[str], cwd: Path) -> str:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        r = CliRunner().invoke(cli, [str(a) for a in args])
    finally:
        os.chdir(old)
    assert r.exit_code == 0, (args, r.output, r.exception)
    return r.stdout


@contextmanager
def must_return_within(seconds: int):
    """Fail (instead of hanging the suite) when the body has not returned after ``seconds``."""
    def stop(*_):
        raise TimeoutError(f"still running after {seconds} s: the input was counted down, not refused")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ----------------------------------------------------------------------------- the three data-loss cases
def test_synth_over_a_users_folder_keeps_the_thesis(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "thesis.txt").write_text(THESIS)
    refused([*SYNTH, "--out", "work"], tmp_path, "--out work")
    assert (tmp_path / "work" / "thesis.txt").read_text() == THESIS


def test_synth_over_a_file_neither_moves_nor_replaces_it(tmp_path):
    (tmp_path / "thesis.txt").write_text(THESIS)
    refused([*SYNTH, "--out", "thesis.txt"], tmp_path, "--out thesis.txt")
    assert (tmp_path / "thesis.txt").read_text() == THESIS and sorted(os.listdir(tmp_path)) == ["thesis.txt"]


def test_synth_over_a_symlink_keeps_the_link(tmp_path):
    (tmp_path / "thesis.txt").write_text(THESIS)
    (tmp_path / "link").symlink_to(tmp_path / "thesis.txt")
    refused([*SYNTH, "--out", "link"], tmp_path, "symbolic link")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link").read_text() == THESIS


def test_collect_refuses_the_same_three_and_a_foreign_partial_folder(tmp_path):
    import shutil

    shutil.copytree(REPO / "traces" / "models", tmp_path / "models")
    (tmp_path / "p.txt").write_text("one prompt\n")
    base = ["trace", "collect", "--model", "models/tiny-olmoe-stdlib", "--random-init", "--prompts", "p.txt",
            "--max-new-tokens", "2"]
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "thesis.txt").write_text(THESIS)
    refused([*base, "--out", "work"], tmp_path, "--out work")
    refused([*base, "--out", "p.txt"], tmp_path, "--out p.txt")
    (tmp_path / "t.partial").mkdir()
    (tmp_path / "t.partial" / "thesis.txt").write_text(THESIS)
    refused([*base, "--out", "t"], tmp_path, "t.partial")
    assert (tmp_path / "t.partial" / "thesis.txt").read_text() == THESIS


# ------------------------------------------------------------ every other output: refuse what is not capsim's
def test_outputs_refuse_a_users_file_of_the_same_name(tmp_path):
    (tmp_path / "results.csv").write_text("name,score\nme,10\n")
    refused(["sweep", "-m", "mixtral", "-H", "dgx-h100", "--out", "results.csv"], tmp_path, "results.csv")
    (tmp_path / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n my holiday photo")
    refused(["provision", "-m", "mixtral", "--users", "8", "--tpot", "50ms", "-H", "dgx-h100", "--plot", "plot.png"],
            tmp_path, "plot.png")
    (tmp_path / "notes.md").write_text("# my notes\n")
    refused(["validate", "--report", "notes.md"], tmp_path, "notes.md")
    (tmp_path / "run.json").write_text('{"mine": true}\n')
    refused(["measure", "--model", str(REPO / "traces/models/tiny-olmoe-stdlib"), "--random-init", "--out",
             "run.json"], tmp_path, "run.json")
    (tmp_path / "hw" / "cpus").mkdir(parents=True)
    (tmp_path / "hw" / "cpus" / "box.yaml").write_text("# my own entry\n")
    refused(["probe", "--quick", "--id", "box", "--out", "hw"], tmp_path, "box.yaml")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "popularity.png").write_bytes(b"mine")
    refused(["trace", "stats", str(REPO / "traces/tiny-olmoe-stdlib"), "--plot", "plots"], tmp_path, "popularity.png")


def test_capsims_own_outputs_are_replaced(tmp_path):
    for _ in range(2):  # the second run replaces what the first wrote
        ok([*SYNTH, "--out", "t"], tmp_path)
        ok(["sweep", "-m", "mixtral", "-H", "dgx-h100", "--batch", "1,2", "--out", "r.csv"], tmp_path)
        ok(["provision", "-m", "mixtral", "--users", "8", "--tpot", "50ms", "-H", "dgx-h100", "--plot", "p.png"],
           tmp_path)
    assert (tmp_path / "t" / "meta.json").is_file() and b"capsim" in (tmp_path / "p.png").read_bytes()[:4096]


def test_a_second_run_into_the_same_output_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".t.capsim.lock").write_text(f"{holder.pid}\n")
        line = refused([*SYNTH, "--out", "t"], tmp_path, f"pid {holder.pid}")
        assert "another capsim process" in line
    finally:
        holder.kill()
        holder.wait()
    ok([*SYNTH, "--out", "t"], tmp_path)  # the lock of a process that has ended is taken over
    assert not (tmp_path / ".t.capsim.lock").exists()


def test_temporary_files_of_killed_runs_are_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".r.csv.{int(dead.stdout)}.x1y2.capsim.tmp"
    stale.write_text("half a fi")
    ok(["sweep", "-m", "mixtral", "-H", "dgx-h100", "--out", "r.csv"], tmp_path)
    assert not stale.exists() and sorted(os.listdir(tmp_path)) == ["r.csv"]


# ------------------------------------------------------------------------------------ the four hangs
def test_a_billion_sequence_batch_is_refused_at_once(tmp_path):
    with must_return_within(60):
        refused(["predict", "-m", "mixtral", "-H", "dgx-h100", "--batch", "1000000000"], tmp_path, "--batch")
        refused(["cap", "cost", "-H", "dgx-h100", "-m", "mixtral", "--batch", "1000000000"], tmp_path, "--batch")


def test_a_billion_nodes_are_refused_at_once(tmp_path):
    with must_return_within(60):
        refused(["predict", "-m", "mixtral", "-H", "dgx-h100", "--nodes", "1000000000"], tmp_path, "--nodes")


def test_1e30_layers_are_refused_at_once(tmp_path):
    cfg = json.loads((REPO / "capsim/catalogue/configs/mistralai__Mixtral-8x7B-v0.1.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1e30}))
    with must_return_within(60):
        refused(["predict", "-m", "config.json", "-H", "dgx-h100"], tmp_path, "num_hidden_layers")


def test_fifty_million_component_system_is_refused_at_once(tmp_path):
    import yaml

    (tmp_path / "db" / "systems").mkdir(parents=True)
    box = {"id": "big-box", "kind": "system", "name": "Big", "vendor": "Me", "composition_source": "nvidia-dgx-h100",
           "components": [{"name": "gpu", "role": "accelerator", "item": "h100-sxm5-80gb", "count": 50_000_000}]}
    (tmp_path / "db" / "systems" / "big-box.yaml").write_text(yaml.safe_dump(box))
    with must_return_within(60):
        refused(["--hardware-db", "db", "predict", "-m", "mixtral", "-H", "big-box"], tmp_path, "count")


# --------------------------------------------------------------------------- the Mac Studio's 32 GB
def test_mac_studio_holds_32_gb_so_mixtral_does_not_fit(tmp_path):
    line = refused(["predict", "-m", "mixtral", "-H", "mac-studio-m2-max"], tmp_path, "mixtral")
    assert "has 32.0 GB" in line  # hardware_db/systems/mac-studio-m2-max.yaml: 32 GB unified memory


@pytest.mark.parametrize("fmt", ["--json"])
def test_provision_does_not_rank_the_mac_studio_for_mixtral(fmt, tmp_path):
    out = json.loads(ok(["provision", "-m", "mixtral", "--users", "1", "--tpot", "1s", "-H", "mac-studio-m2-max",
                         fmt], tmp_path))
    assert out["found"] is False and not out["qualifying"] and not out["qualifying_unpriced"]


# ------------------------------------------------------------------ truncated checkpoints, outputs under a file
@pytest.mark.parametrize("command", [
    "measure --model m --out r.json",
    "trace collect --model m --prompts p.txt --max-new-tokens 2 --out t",
    "measure-disk --model m --out d.json",
])
def test_a_truncated_checkpoint_is_refused_before_loading(command, tmp_path):
    """A download cut short (half of model.safetensors) is named with its size, not a reader's traceback."""
    import shutil

    shutil.copytree(REPO / "traces" / "models" / "tiny-olmoe-stdlib", tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (tmp_path / "p.txt").write_text("one prompt\n")
    line = refused(command.split(), tmp_path, "model.safetensors")
    assert "truncated" in line


@pytest.mark.parametrize("command, needle", [
    ("validate --report pyproject.toml/r.md", "pyproject.toml"),
    ("sweep -m mixtral -H dgx-h100 --out pyproject.toml/r.csv", "pyproject.toml"),
    ("provision -m mixtral --users 8 --tpot 50ms -H dgx-h100 --plot pyproject.toml/p.png", "pyproject.toml"),
    ("trace synth --experts 8 --top-k 2 --layers 2 --sequences 2 --prompt-len 4 --decode-len 4 "
     "--out pyproject.toml/t", "pyproject.toml"),
])
def test_an_output_below_a_file_is_refused(command, needle, tmp_path):
    """The folder of an output is a user's file: one line naming it, and the file untouched."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    refused(command.split(), tmp_path, needle)
    assert (tmp_path / "pyproject.toml").read_text() == "[project]\nname = 'mine'\n"
