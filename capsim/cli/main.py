"""The ``capsim`` command: a click group whose errors are one line, exit code 2, no traceback."""

from __future__ import annotations

import sys

import click

from capsim import __version__
from capsim.cli.oneline import CapsimGroup
from capsim.errors import CapsimError

COMMANDS = {  # name -> the module and attribute of its click command (imported when used)
    "cap": "capsim.cli.cap:cap", "hw": "capsim.cli.hw:hw", "measure": "capsim.cli.measure:measure_cmd",
    "measure-disk": "capsim.cli.measure_disk:measure_disk_cmd", "model": "capsim.cli.model:model",
    "predict": "capsim.cli.predict:predict_cmd", "probe": "capsim.cli.probe:probe_cmd", "trace": "capsim.cli.trace:trace",
    "validate": "capsim.cli.validate:validate_cmd", "sweep": "capsim.cli.sweep:sweep_cmd",
    "provision": "capsim.cli.provision:provision_cmd", "serve": "capsim.cli.serve:serve_cmd",
}


@click.group(cls=CapsimGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="capsim")
@click.option(
    "--hardware-db",
    type=click.Path(file_okay=False),
    envvar="CAPSIM_HARDWARE_DB",
    default=None,
    help="Folder of your own hardware YAML, merged over the built-in database (env CAPSIM_HARDWARE_DB).",
)
@click.pass_context
def cli(ctx: click.Context, hardware_db: str | None) -> None:
    """capsim: predict throughput, latency, utilisation (S-MBU, S-MFU) and cost of
    Mixture-of-Experts inference on hardware you may not have."""
    ctx.ensure_object(dict)
    ctx.obj["hardware_db"] = hardware_db


def main() -> None:
    try:
        cli.main(prog_name="capsim")
    except CapsimError as err:  # raised outside a command (e.g. while parsing)
        click.echo(f"capsim: error: {err}", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
