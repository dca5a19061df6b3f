"""`capsim hw` commands: output, overrides, aliases, and one-line errors with exit code 2."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from capsim.cli.main import cli
from capsim.hardware import db as hwdb

H100 = hwdb.BUILTIN_DB / "accelerators" / "h100-sxm5-80gb.yaml"
TOY = Path(__file__).parent / "data" / "toy_db"


def run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env)


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert "Traceback" not in result.output + err
    assert err.startswith("capsim: error: ")
    assert "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_list_and_json():
    r = run("hw", "list")
    assert r.exit_code == 0 and "h100-sxm5-80gb" in r.output
    items = json.loads(run("hw", "list", "--kind", "system", "--json").output)
    assert items and {i["kind"] for i in items} == {"system"}


def test_show_resolves_aliases_and_prints_sources():
    r = run("hw", "show", "h100")
    assert r.exit_code == 0
    assert "3.35 TB/s" in r.output and "989.5 TFLOPS" in r.output and "nv-h100-datasheet" in r.output
    data = json.loads(run("hw", "show", "a100-80gb", "--json").output)
    assert data["id"] == "a100-sxm4-80gb"
    assert data["memory"]["bandwidth_bytes_per_s"]["value"] == 2.039e12
    assert run("hw", "show", "4090", "--json").exit_code == 0


def test_show_system_has_topology():
    data = json.loads(run("hw", "show", "dgx-h100", "--json").output)
    topo = data["topology"]
    assert topo["accelerators"] == 8
    # Each H100 reaches the NVSwitch fabric over 18 NVLink4 links, 450 GB/s per direction;
    # a ring and an all-to-all through a non-blocking switch both run at that rate.
    assert topo["ring_bandwidth_bytes_per_s"] == pytest.approx(450e9)
    assert topo["alltoall_bandwidth_bytes_per_s"] == pytest.approx(450e9)


def test_unknown_and_ambiguous_ids():
    one_line_error(run("hw", "show", "h900"), "unknown hardware id 'h900'", "did you mean")
    one_line_error(run("hw", "show", "rtx"), "ambiguous", "rtx-4090")


def _user_db(tmp_path, name, text):
    d = tmp_path / "db"
    d.mkdir(exist_ok=True)
    (d / name).write_text(text)
    return d


def test_check_malformed_yaml(tmp_path):
    d = _user_db(tmp_path, "bad.yaml", "id: bad\nkind: link\n  name: [\n")
    one_line_error(run("hw", "check", str(d)), "bad.yaml", "malformed YAML at line 3")


def test_check_unknown_unit(tmp_path):
    text = H100.read_text().replace('as_published: "3.35TB/s"', 'as_published: "3.35 TB/fortnight"')
    d = _user_db(tmp_path, "h100-sxm5-80gb.yaml", text)
    one_line_error(run("hw", "check", str(d)), "h100-sxm5-80gb.yaml", "memory.bandwidth_bytes_per_s", "unknown unit")


def test_check_negative_bandwidth(tmp_path):
    text = H100.read_text().replace('value: 3.35e12, as_published: "3.35TB/s"', 'value: -3.35e12, as_published: "-3.35TB/s"')
    d = _user_db(tmp_path, "h100-sxm5-80gb.yaml", text)
    one_line_error(run("hw", "check", str(d)), "memory.bandwidth_bytes_per_s", "must be >= 0")


def test_check_missing_and_unknown_source(tmp_path):
    text = H100.read_text().replace('as_published: "80GB", source: nv-h100-datasheet, ', 'as_published: "80GB", ')
    d = _user_db(tmp_path, "h100-sxm5-80gb.yaml", text)
    one_line_error(run("hw", "check", str(d)), "memory.capacity_bytes.source", "required field is missing")
    text = H100.read_text().replace('as_published: "80GB", source: nv-h100-datasheet', 'as_published: "80GB", source: my-notes')
    d = _user_db(tmp_path, "h100-sxm5-80gb.yaml", text)
    one_line_error(run("hw", "check", str(d)), "memory.capacity_bytes.source", "unknown source 'my-notes'")


def test_check_link_to_missing_device(tmp_path):
    d = tmp_path / "db"
    shutil.copytree(TOY, d)
    box = d / "systems" / "toy-box.yaml"
    box.write_text(box.read_text().replace("item: toy-gpu", "item: toy-gpu-9000"))
    one_line_error(run("hw", "check", str(d)), "toy-box.yaml", "components.0.item", "no accelerator with id 'toy-gpu-9000'")
    box.write_text(box.read_text().replace("item: toy-gpu-9000", "item: toy-gpu").replace("link: toy-upi", "link: toy-warp"))
    one_line_error(run("hw", "check", str(d)), "connections.1.link", "no link with id 'toy-warp'")
    box.write_text(box.read_text().replace("link: toy-warp", "link: toy-upi").replace("{a: nvme, b: cpu0", "{a: nvme, b: cpu7"))
    one_line_error(run("hw", "check", str(d)), "no component or instance named 'cpu7'")


def test_check_id_must_match_file_name(tmp_path):
    d = _user_db(tmp_path, "my-gpu.yaml", H100.read_text())
    one_line_error(run("hw", "check", str(d)), "my-gpu.yaml", "must equal the file name")


def test_check_good_folder():
    r = run("hw", "check", str(TOY))
    assert r.exit_code == 0 and "8 items OK" in r.output


def test_user_db_overrides_builtin(tmp_path, monkeypatch):
    text = H100.read_text().replace('value: 700.0, as_published: "Up to 700W', 'value: 500.0, as_published: "500W')
    d = _user_db(tmp_path, "h100-sxm5-80gb.yaml", text)
    data = json.loads(run("--hardware-db", str(d), "hw", "show", "h100", "--json").output)
    assert data["tdp_w"]["value"] == 500.0
    data = json.loads(run("hw", "show", "h100", "--json", env={"CAPSIM_HARDWARE_DB": str(d)}).output)
    assert data["tdp_w"]["value"] == 500.0
    assert json.loads(run("hw", "show", "h100", "--json").output)["tdp_w"]["value"] == 700.0


def test_bad_user_db_fails_every_command_in_one_line(tmp_path):
    d = _user_db(tmp_path, "bad.yaml", "id: [unclosed\n")
    one_line_error(run("--hardware-db", str(d), "hw", "list"), "bad.yaml", "malformed YAML")
    one_line_error(run("--hardware-db", str(tmp_path / "nope"), "hw", "list"), "no such folder")


def test_real_entry_point_has_no_traceback():
    # The installed console script, as a user runs it.
    exe = Path(sys.executable).parent / "capsim"
    p = subprocess.run([str(exe), "hw", "show", "not-a-device"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.startswith("capsim: error: unknown hardware id") and "Traceback" not in p.stderr


def test_readme_what_if_flow_doubles_bandwidth_halves_tpot(tmp_path, monkeypatch):
    """The README's what-if flow: `hw new --like h100`, edit one as_published text, `hw check`, predict.
    At batch 1 every op of qwen3-30b on one H100 is bandwidth-bound (roofline), so 3.35 TB/s -> 6.7 TB/s
    halves the time per output token exactly: TPOT = bytes / bandwidth."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPSIM_CACHE", "off")
    r = run("hw", "new", "--like", "h100", "--id", "my-gpu")
    assert r.exit_code == 0, r.output
    entry = tmp_path / "my_hw" / "accelerators" / "my-gpu.yaml"
    text = entry.read_text()
    assert "bandwidth_bytes_per_s: {as_published: 3.35 TB/s" in text
    entry.write_text(text.replace("bandwidth_bytes_per_s: {as_published: 3.35 TB/s",
                                  "bandwidth_bytes_per_s: {as_published: 6.7 TB/s"))
    r = run("hw", "check", "my_hw")
    assert r.exit_code == 0 and "1 items OK" in r.output, r.output
    tpot = {}
    for hw in ("my-gpu", "h100"):
        r = run("--hardware-db", "my_hw", "predict", "-m", "qwen3-30b", "-H", hw, "--engine", "roofline",
                "--batch", "1", "--json")
        assert r.exit_code == 0, r.output
        tpot[hw] = json.loads(r.stdout)["tpot_s"]
    assert tpot["my-gpu"] == pytest.approx(tpot["h100"] / 2, rel=1e-9)
    r = run("hw", "new", "--like", "h100", "--id", "my-gpu")  # never replaces the user's edited file
    one_line_error(r, "my-gpu")
    assert "6.7 TB/s" in entry.read_text()
