"""``capsim probe``: measure this machine (and its GPU) and write a hardware entry of kind ``measured``."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click

from capsim.cli import progress as bars
from capsim.errors import CapsimError
from capsim.hardware.schema import KEBAB


def _command(out: Path, item_id: str, file: Path | None, quick: bool, threads: int | None,
             gemm_nk: int | None, cold_weights: bool = False, shapes_of: tuple[str, ...] = (),
             shapes: tuple[str, ...] = ()) -> str:
    parts = ["capsim", "probe", "--id", item_id, "--out", str(out)]
    if threads is not None:
        parts += ["--threads", str(threads)]
    if gemm_nk is not None:
        parts += ["--gemm-nk", str(gemm_nk)]
    for m in shapes_of:
        parts += ["--gemm-shapes-of", m]
    for sh in shapes:
        parts += ["--gemm-shape", sh]
    if cold_weights:
        parts.append("--cold-weights")
    if file is not None:
        parts += ["--file", str(file)]
    if quick:
        parts.append("--quick")
    return " ".join(parts)


@click.command("probe")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the entry to (usable as --hardware-db), e.g. my_hw/. Required: the probe "
                   "writes nowhere else (it no longer defaults to validation/hardware).")
@click.option("--id", "item_id", default="local-cpu", show_default=True,
              help="Id of the CPU entry (kebab-case); a measured GPU is written as ID-gpu.")
@click.option("--file", "file", type=click.Path(path_type=Path), default=None,
              help="Also measure the sequential read rate of this file (e.g. on an NVMe drive).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch.set_num_threads for the CPU measurements (default: torch's own choice); match the "
                   "threads of the runs you will validate against.")
@click.option("--gemm-nk", type=click.IntRange(min=16), default=None,
              help="N = K of the CPU GEMM curve (default 4096): small-M efficiency depends on the weight's size; "
                   "use the hidden size of the models you will validate.")
@click.option("--cold-weights", is_flag=True,
              help="Cycle CPU GEMMs through 1 GiB of weight copies, so each call reads its weight from DRAM (as a "
                   "decode step over a model larger than the last-level cache does); default: one cache-hot weight.")
@click.option("--gemm-shapes-of", "shapes_of", multiple=True, metavar="MODEL",
              help="Also measure every weight shape of this model (catalogue id or config.json) as torch.nn.Linear "
                   "runs it, cold; engine profiles with 'gemm_curves: probe' then use the nearest shape. Repeatable.")
@click.option("--gemm-shape", "shapes", multiple=True, metavar="KxN",
              help="Also measure this weight shape (K in, N out features), as --gemm-shapes-of does. Repeatable.")
@click.option("--add-reclaim", is_flag=True,
              help="Measure only whether the machine takes freed memory back (cpu.memory.reclaim) and add it to "
                   "the existing OUT/probe/ID.json, keeping the rest of that probe (for an entry probed before "
                   "capsim measured reclaim).")
@click.option("--quick", is_flag=True, help="Small sizes and few repeats (seconds; for tests, not for numbers).")
@click.option("--json", "as_json", is_flag=True, help="Print all measurements as JSON on stdout.")
@bars.option()
def probe_cmd(out: Path, item_id: str, file: Path | None, threads: int | None, gemm_nk: int | None,
              cold_weights: bool, shapes_of: tuple[str, ...], shapes: tuple[str, ...], add_reclaim: bool,
              quick: bool, as_json: bool, progress: bool | None) -> None:
    """Measure memory read/copy bandwidth, GEMM FLOP/s per dtype as M grows, GPU copies and a file's
    read rate; write OUT/cpus/ID.yaml (kind measured), OUT/sources/ID.yaml and OUT/probe/ID.json.

    --out is required: the probe writes only into the folder it names (there is no default folder).
    On a terminal a progress bar counts the measurement steps, with the time left.

    Check the result with 'capsim hw check OUT' and use it with 'capsim --hardware-db OUT predict -H ID'.
    """
    if not KEBAB.match(item_id):
        raise CapsimError(f"--id {item_id!r}: expected kebab-case (lower-case letters, digits and '-')")
    if file is not None and not file.is_file():
        raise CapsimError(f"--file {file}: {'not a regular file' if file.exists() else 'no such file'}")
    if out.exists() and not out.is_dir():
        raise CapsimError(f"--out {out}: not a folder")
    from capsim import outputs
    from capsim.measure.probe_entry import destinations

    for part, path in destinations(out, item_id).items():  # before minutes of measuring
        outputs.check_output(path, "run" if part == "json" else "entry", "--out")

    gemm_shapes = _gemm_shapes(shapes_of, shapes)
    from capsim.hardware import db as hwdb
    from capsim.measure import probe, probe_entry

    bar = bars.Progress(None, "probe", enabled=bars.wanted(progress, as_json), unit="steps")

    def log(msg: str) -> None:
        bar.echo(f"capsim probe: {msg}")

    settings = probe.QUICK if quick else probe.FULL
    from capsim import atomic

    with atomic.lock(destinations(out, item_id)["json"], "--out"):  # one probe at a time into one entry
        with bar:
            if threads is not None:
                import torch

                torch.set_num_threads(threads)
            t0 = time.perf_counter()
            if add_reclaim:
                bar.set(0, 1)
                _add_reclaim(out / "probe" / f"{item_id}.json", settings, threads, quick, log)
                bar.set(1)
            else:
                if gemm_nk is not None:
                    settings = dataclasses.replace(settings, gemm_nk=gemm_nk)
                if cold_weights:
                    settings = dataclasses.replace(settings, gemm_cold_bytes=settings.memory_bytes)
                if gemm_shapes:
                    settings = dataclasses.replace(settings, gemm_shapes=gemm_shapes)
                result = probe.run_probe(settings, file=file, log=log, on_progress=bar.set)
        if add_reclaim:
            log(f"done in {time.perf_counter() - t0:.1f} s")
            return
        command = _command(out, item_id, file, quick, threads, gemm_nk, cold_weights, shapes_of, shapes)
        written = probe_entry.write_entry(result, out, item_id, command)
        _, problems = hwdb.check(hwdb.BUILTIN_DB, out)
        if problems:
            raise CapsimError(f"the written entry does not load: {problems[0]}")
        for line in probe_entry.summary_lines(result):
            log(line)
        log(f"wrote {', '.join(str(p) for p in written.values())} in {time.perf_counter() - t0:.1f} s")
    if as_json:
        click.echo(json.dumps(result, indent=1, default=probe_entry.json_default))


def _add_reclaim(path: Path, settings, threads: int | None, quick: bool, log) -> None:
    """Measure cpu.memory.reclaim alone and write it into an existing probe result, with its own date and
    command, and into the hardware entry's memory_faults (the rest of both stays as it was)."""
    from capsim import atomic
    from capsim.measure import probe
    from capsim.measure.machine import utc_now

    try:
        result = json.loads(path.read_text())
        memory = result["cpu"]["memory"]
    except OSError:
        raise CapsimError(f"--add-reclaim: {path}: no probe result to add to (run capsim probe first)") from None
    except (ValueError, KeyError, TypeError):
        raise CapsimError(f"--add-reclaim: {path}: not a capsim probe result (no cpu.memory)") from None
    import torch

    with torch.inference_mode():
        reclaim = probe.memory_reclaim(settings, log)
    command = ["capsim", "probe", "--id", path.stem, "--out", str(path.parent.parent), "--add-reclaim"]
    command += ["--threads", str(threads)] if threads is not None else []
    command += ["--quick"] if quick else []
    reclaim.update(date=utc_now(), command=" ".join(command), torch_threads=torch.get_num_threads())
    memory["reclaim"] = reclaim
    atomic.write_text(path, json.dumps(result, indent=1) + "\n")
    from capsim.measure.probe_entry import update_memory_faults

    entry = path.parent.parent / "cpus" / f"{path.stem}.yaml"
    if update_memory_faults(entry, result):
        log(f"updated memory_faults in {entry}")
    log(f"retained {reclaim['retained_bytes'] / 1e9:.2f} GB of freed memory after {reclaim['gap_s']:g} s; "
        f"refault {reclaim['s_per_byte'] * 1e9:.2f} ns/B more; wrote {path}")


def _gemm_shapes(models: tuple[str, ...], shapes: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """The distinct (K, N) of --gemm-shapes-of models and --gemm-shape KxN values, in the order given."""
    from capsim.model.catalogue import load_spec
    from capsim.model.gemms import distinct_shapes

    seen: dict[tuple[int, int], None] = {}
    for name in models:
        try:
            spec, _ = load_spec(name)
        except CapsimError as err:
            raise CapsimError(f"--gemm-shapes-of {name}: {err}") from None
        for kn in distinct_shapes(spec):
            seen.setdefault(kn, None)
    for text in shapes:
        k, sep, n = text.lower().partition("x")
        if not sep or not k.strip().isdigit() or not n.strip().isdigit() or int(k) < 1 or int(n) < 1:
            raise CapsimError(f"--gemm-shape {text!r}: expected KxN, two positive integers (e.g. 1024x7168)")
        seen.setdefault((int(k), int(n)), None)
    return tuple(seen)
