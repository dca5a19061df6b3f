"""Progress bars of the long commands (capsim.cli.progress) and where ``capsim probe`` writes."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

from click.testing import CliRunner

from capsim.cli import progress as bars
from capsim.cli.main import cli

REPO = Path(__file__).resolve().parents[1]


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_not_a_terminal():
    stream = io.StringIO()  # isatty() is False: a pipe or a file
    with bars.Progress(5, "work", file=stream, redraw_s=0, tick_s=0.01) as bar:
        for _ in range(5):
            bar.update()
            time.sleep(0.02)
    assert not bar.active
    assert stream.getvalue() == ""


def test_silent_when_disabled():
    stream = FakeTTY()
    with bars.Progress(3, "work", enabled=False, file=stream, redraw_s=0) as bar:
        bar(3)
    assert stream.getvalue() == ""


def test_echo_without_bar_prints_the_line_as_before():
    stream = io.StringIO()
    with bars.Progress(2, "work", file=stream) as bar:
        bar.echo("capsim probe: memory: read 16 MiB")
        bar.update()
    assert stream.getvalue() == "capsim probe: memory: read 16 MiB\n"


def test_shows_done_total_elapsed_and_time_left_on_a_terminal():
    stream = FakeTTY()
    with bars.Progress(4, "work", file=stream, unit="steps", redraw_s=0, tick_s=0) as bar:
        assert bar.active
        bar.update()
        time.sleep(0.01)
        bar.update()
        text = stream.getvalue()
        bar.echo("a log line")
    frames = text.split("\r")
    assert any("2/4 steps" in f and " 50%" in f for f in frames), frames
    assert re.search(r"elapsed \d+:\d\d\s+left ~\d+:\d\d", text), text
    final = stream.getvalue()
    assert "a log line\n" in final
    last = [f for f in final.split("\r") if f.strip()][-1]
    assert final.endswith("\n") and "2/4 steps" in last and "elapsed 0:00" in last
    assert "left" not in last  # the final state: no time left shown


def test_unknown_total_then_set_and_ticks_without_updates():
    stream = FakeTTY()
    with bars.Progress(None, "probe", file=stream, redraw_s=0, tick_s=0.02) as bar:
        time.sleep(0.1)  # nothing reported: the ticker still redraws (a long single step shows movement)
        assert stream.getvalue().count("\r") >= 3
        assert "elapsed 0:00" in stream.getvalue() and "[" not in stream.getvalue()  # no total yet: no bar
        bar.set(0, 3)
        bar.set(1)
    assert "1/3" in stream.getvalue()


def test_eta_counts_down_from_the_mean_time_per_unit():
    bar = bars.Progress(10, file=io.StringIO())
    bar.start()
    t0 = bar._history[0][0]
    bar._history.append((t0 + 2.0, 2))  # 2 units in 2 s: 1 s per unit
    bar.done = 2
    assert abs(bar.eta(t0 + 2.0) - 8.0) < 1e-9
    assert abs(bar.eta(t0 + 5.0) - 5.0) < 1e-9
    assert bar.eta(t0 + 20.0) == 0.0
    bar.close()
    assert bars.clock(3725) == "1:02:05" and bars.clock(65) == "1:05"


def test_wanted():
    assert bars.wanted(None) is True
    assert bars.wanted(None, as_json=True) is False
    assert bars.wanted(True, as_json=True) is True
    assert bars.wanted(False) is False


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_probe_needs_out_and_writes_nothing_without_it(tmp_path, monkeypatch):
    hardware = REPO / "validation" / "hardware"
    before = _listing(hardware)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["probe", "--quick", "--id", "some-cpu"])
    assert r.exit_code == 2, r.output
    assert "Missing option '--out'" in r.output
    assert list(tmp_path.iterdir()) == []
    assert _listing(hardware) == before
    assert not [p for top in ("validation", "capsim") for p in (REPO / top).rglob("some-cpu*")]


def test_probe_help_documents_out():
    r = CliRunner().invoke(cli, ["probe", "--help"])
    assert r.exit_code == 0
    assert "--out" in r.output and "Required" in r.output and "--progress / --no-progress" in r.output


def test_every_long_command_has_the_flag():
    for args in (["probe"], ["trace", "collect"], ["measure"], ["measure-disk"], ["sweep"], ["provision"]):
        r = CliRunner().invoke(cli, [*args, "--help"])
        assert r.exit_code == 0, (args, r.output)
        assert "--progress / --no-progress" in r.output, args
