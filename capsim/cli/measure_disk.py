"""``capsim measure-disk``: decode steps of a Hugging Face MoE model whose routed experts are read from a file on
disk (memory-mapped; the file evicted from the page cache before each cold step), the bytes read, and the
drive's sequential and random read rates (:mod:`capsim.measure.disk_experts`). torch is imported only when
the command runs."""

from __future__ import annotations

import json
import sys

import click

from capsim.cli import progress as bars
from capsim.cli.measure import INTS


class _Batches(click.ParamType):
    name = "N[,N...]|none"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        if str(value).strip().lower() in ("", "none"):
            return []
        return INTS.convert(value, param, ctx)


def _table(run: dict) -> str:
    rows = [f"{'mode':8s} {'batch':>5s} {'median ms':>10s} {'p10 ms':>9s} {'p90 ms':>9s} {'read MiB':>9s} "
            f"{'experts/layer':>13s}"]
    for m in run["measurements"]:
        got = m["read_bytes_median"]
        rows.append(f"{m['mode']:8s} {m['batch']:5d} {m['median_s'] * 1e3:10.1f} {m['p10_s'] * 1e3:9.1f} "
                    f"{m['p90_s'] * 1e3:9.1f} {'?' if got is None else f'{got / 2**20:.1f}':>9s} "
                    f"{m['activated_experts_per_layer']:13.1f}")
    return "\n".join(rows)


@click.command("measure-disk")
@click.option("--model", "model", required=True, type=click.Path(),
              help="Model folder (config.json + weights) or a config.json file (with --random-init).")
@click.option("--random-init", is_flag=True, help="Random weights from the config (seeded) instead of a checkpoint's.")
@click.option("--batches", type=INTS, default="1,4,16", show_default=True, help="Decode batch sizes.")
@click.option("--context", type=click.IntRange(min=1), default=128, show_default=True,
              help="Tokens already in the KV cache of every sequence.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed steps per point (cold and warm).")
@click.option("--warmup", type=click.IntRange(min=1), default=1, show_default=True,
              help="Untimed steps per point before the timed ones (cold ones evicted first too).")
@click.option("--page-batches", type=_Batches(), default="1", show_default=True,
              help="Batches also timed with one page per fault (madvise MADV_RANDOM; slow); 'none' for none.")
@click.option("--page-repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed steps per cold-4k point.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="torch.set_num_threads.")
@click.option("--dir", "folder", type=click.Path(file_okay=False), default=None,
              help="Folder for the experts file, on the drive to measure (default: the temporary directory; "
                   "deleted afterwards).")
@click.option("--notes", default=None, help="Free text stored in the run file.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the weights and token ids.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Run file to write (JSON).")
@click.option("--json", "as_json", is_flag=True, help="Print the run file on stdout.")
@bars.option()
def measure_disk_cmd(model, random_init, batches, context, repeats, warmup, page_batches, page_repeats, dtype,
                     threads, folder, notes, seed, out, as_json, progress) -> None:
    """Time decode steps with the routed experts memory-mapped from a file: cold (file evicted from the page
    cache before each step), cold-4k (also no fault readahead) and warm (file in the page cache); record the
    bytes read, the routing, and the drive's streaming and random-read rates on the same file."""
    from contextlib import nullcontext

    from capsim import atomic, outputs
    from capsim.measure.disk_experts import measure_disk

    if out:
        outputs.check_output(out, "run", "--out")
    lock = atomic.lock(out, "--out") if out else nullcontext()  # a second run into the same --out is refused
    with lock, bars.Progress(None, "measuring", enabled=bars.wanted(progress, as_json), unit="cases") as bar:
        run = measure_disk(
            model, random_init=random_init, batches=batches, context=context, repeats=repeats, warmup=warmup,
            page_batches=page_batches, page_repeats=page_repeats, dtype=dtype, seed=seed, threads=threads,
            folder=folder, out=out, notes=notes,
            command=["capsim", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith("capsim") else list(sys.argv),
            progress=bar.echo, on_progress=bar.set,
        )
    if as_json:
        click.echo(json.dumps(run, indent=1))
        return
    st, pc = run["storage"], run["page_cache"]
    fs = st["filesystem"]
    click.echo(f"{run['model']['id']}: {run['experts_file']['bytes'] / 2**20:.0f} MiB of experts on "
               f"{fs.get('type', '?')} ({fs.get('source', '?')}), readahead "
               f"{(st['readahead_bytes'] or 0) // 1024} KiB, {run['device']['threads']} threads, "
               f"{run['provenance']['wall_s']} s")
    r4k = st["random_4k_bytes_per_s"]
    click.echo(f"drive: sequential {st['sequential_bytes_per_s'] / 1e9:.2f} GB/s, random 4 KiB "
               + (f"{r4k / 1e6:.1f} MB/s ({r4k / 4096:.0f} reads/s, one at a time)" if r4k else "not measured"))
    click.echo(f"page cache: eviction {'verified (0 pages left before every cold step)' if pc['eviction_verified'] else 'NOT verified: pages stayed cached'}")
    if pc["no_cache_filesystem"]:
        click.echo(f"warning: {fs.get('type')} keeps files in memory only; pass --dir on a disk", err=True)
    click.echo(_table(run))
    if out:
        click.echo(f"wrote {out}")
