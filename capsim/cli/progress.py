"""Progress bars of the long commands: units done out of a total, elapsed time and an estimate of the time left.

One line on stderr, redrawn in place (``\\r``) at most :data:`REDRAW_S` apart as units finish, and every
:data:`TICK_S` by a background thread, so that a long single step still shows its clock moving::

    probe  [#######-------------]  6/16 steps  38%  elapsed 1:12  left ~2:00

Before the total is known (a model loading) it shows a spinner and the elapsed time.

Shown only when the stream is a terminal and the command did not turn it off: ``--progress/--no-progress``
(:func:`option`), off by default with ``--json`` (:func:`wanted`). Otherwise every method is a no-op, except
:meth:`Progress.echo`, which prints its line as ``click.echo(line, err=True)`` would. A log line printed
while the bar is shown goes through :meth:`Progress.echo`: the bar is cleared, the line printed, the bar drawn
again below it.

The estimate: the mean time per unit over the last :data:`WINDOW` updates (from when the total became known,
so a model's loading before the first unit does not count), times the units left, counted down between updates.
"""

from __future__ import annotations

import math
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

import click

REDRAW_S = 0.25  # at most four redraws a second as units finish
TICK_S = 0.5  # redraw this often with no update: a long step shows its elapsed time moving
WINDOW = 10  # updates the time per unit is averaged over
BAR_WIDTH = 20
SPINNER = "|/-\\"
HELP = "Progress bar with elapsed time and time left on stderr [on when stderr is a terminal, off with --json]."


def option(help: str = HELP) -> Callable[[Any], Any]:
    """The ``--progress/--no-progress`` flag (None when not given: see :func:`wanted`)."""
    return click.option("--progress/--no-progress", "progress", default=None, help=help)


def wanted(flag: bool | None, as_json: bool = False) -> bool:
    """``--progress`` / ``--no-progress`` as given; not given: on unless ``--json`` (the bar itself also needs
    stderr to be a terminal)."""
    return flag if flag is not None else not as_json


def clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    s = max(int(seconds), 0)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class Progress:
    """A progress bar over ``total`` units (None: not known yet; a spinner and the elapsed time until
    :meth:`set` gives it). Use as a context manager; ``update(n)`` (or calling it) adds ``n`` units done,
    ``set(done, total)`` sets them. Active only when ``enabled`` and ``file`` (default: stderr) is a terminal."""

    def __init__(self, total: int | None = None, label: str = "", *, enabled: bool = True,
                 file: IO[str] | None = None, unit: str = "", redraw_s: float = REDRAW_S, tick_s: float = TICK_S):
        self.file = file if file is not None else sys.stderr
        self.active = bool(enabled) and _isatty(self.file)
        self.total = total
        self.done = 0
        self.label = label
        self.unit = unit
        self.redraw_s = redraw_s
        self.tick_s = tick_s
        self._lock = threading.RLock()
        self._start: float | None = None
        self._history: deque[tuple[float, int]] = deque(maxlen=WINDOW + 1)  # (time, done) at updates
        self._drawn_at = 0.0
        self._shown = 0  # characters of the bar on screen (0: none)
        self._spin = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Progress:
        with self._lock:
            if self._start is not None:
                return self
            self._start = time.monotonic()
            if self.total is not None and not self._history:
                self._history.append((self._start, self.done))
            if not self.active:
                return self
            self._draw(self._start)
        if self.tick_s > 0:
            self._thread = threading.Thread(target=self._tick, name="capsim-progress", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop redrawing; leave the last state of the bar on its own line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.active and self._start is not None:
                self._draw(time.monotonic())
                self.file.write("\n")
                self.file.flush()
                self._shown = 0

    def _tick(self) -> None:
        while not self._stop.wait(self.tick_s):
            with self._lock:
                now = time.monotonic()
                if not self._closed and now - self._drawn_at >= self.tick_s * 0.8:
                    self._draw(now)

    # ------------------------------------------------------------------ reporting

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        with self._lock:
            self._set(self.done + n, None)

    __call__ = update

    def set(self, done: int, total: int | None = None) -> None:
        """``done`` units done (out of ``total``, when given: it replaces the total)."""
        with self._lock:
            self._set(done, total)

    def _set(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        new_total = total is not None and total != self.total
        if new_total:
            self.total = total
            self._history.clear()  # the time per unit counts from when the total is known
            self._history.append((now, done))
        elif done != self.done:
            self._history.append((now, done))
        self.done = done
        if self.active and not self._closed and self._start is not None and (
                new_total or self.finished or now - self._drawn_at >= self.redraw_s):
            self._draw(now)

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    def echo(self, line: str) -> None:
        """Print ``line`` on stderr above the bar (as ``click.echo(line, err=True)`` when no bar is shown)."""
        with self._lock:
            if not self.active or self._closed or self._start is None:
                click.echo(line, file=self.file)
                return
            self._clear()
            click.echo(line, file=self.file)
            self._draw(time.monotonic())

    # ------------------------------------------------------------------ rendering

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left: the mean time per unit over the last updates times the units left, less the time
        since the last update (at least 0); None before the first unit or without a total."""
        if self.total is None or len(self._history) < 2:
            return None
        if self.finished:
            return 0.0
        (t0, d0), (t1, d1) = self._history[0], self._history[-1]
        if d1 <= d0:
            return None
        now = time.monotonic() if now is None else now
        per_unit = (t1 - t0) / (d1 - d0)
        return max(per_unit * (self.total - self.done) - (now - t1), 0.0)

    def line(self, now: float | None = None, width: int | None = None) -> str:
        """The bar's text (without carriage returns), at most ``width`` characters: the bar narrows, then goes."""
        now = time.monotonic() if now is None else now
        elapsed = now - (self._start if self._start is not None else now)
        unit = f" {self.unit}" if self.unit else ""
        frac = 0.0
        if self.total is not None:
            frac = min(self.done / self.total, 1.0) if self.total > 0 else 1.0
            count = f"{self.done}/{self.total}{unit}  {frac:.0%}"
        else:
            count = SPINNER[self._spin % len(SPINNER)] + (f" {self.done}{unit}" if self.done else "")
        tail = f"elapsed {clock(elapsed)}"
        if self.total is not None and not self.finished and not self._closed:
            eta = self.eta(now)
            tail += f"  left ~{clock(math.ceil(eta))}" if eta is not None else "  left ?"

        def text(bar_width: int) -> str:
            fill = int(frac * bar_width)
            bar = f"[{'#' * fill}{'-' * (bar_width - fill)}]" if self.total is not None and bar_width else ""
            return "  ".join(p for p in (self.label, bar, count, tail) if p)

        out = text(BAR_WIDTH)
        if width is not None and len(out) > width:
            narrower = BAR_WIDTH - (len(out) - width)
            out = text(narrower if narrower >= 8 else 0)[:width]
        return out

    def _width(self) -> int:
        return max(shutil.get_terminal_size((80, 24)).columns - 1, 20)

    def _draw(self, now: float) -> None:
        # The cursor is left at the start of the line: a warning printed by other code then overwrites the bar
        # instead of following it on the same line; the next redraw puts the bar back below it.
        self._spin += 1
        text = self.line(now, self._width())
        self.file.write("\r" + text + " " * max(self._shown - len(text), 0) + "\r")
        self.file.flush()
        self._shown = len(text)
        self._drawn_at = now

    def _clear(self) -> None:
        if self._shown:
            self.file.write("\r" + " " * self._shown + "\r")
            self._shown = 0
