"""The ``capsim`` command: a click group whose errors are one line, exit code 2, no traceback."""

from __future__ import annotations

import sys

import click

from capsim import __version__
from capsim.cli.oneline import CapsimGroup
from capsim.errors import CapsimError


@click.group(cls=CapsimGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


def _register() -> None:
    from capsim.cli.cap import cap
    from capsim.cli.hw import hw
    from capsim.cli.measure import measure_cmd
    from capsim.cli.measure_disk import measure_disk_cmd
    from capsim.cli.model import model
    from capsim.cli.predict import predict_cmd
    from capsim.cli.probe import probe_cmd
    from capsim.cli.trace import trace

    cli.add_command(cap)
    cli.add_command(hw)
    cli.add_command(measure_cmd)
    cli.add_command(measure_disk_cmd)
    cli.add_command(model)
    cli.add_command(predict_cmd)
    cli.add_command(probe_cmd)
    cli.add_command(trace)
    from capsim.cli.validate import validate_cmd

    cli.add_command(validate_cmd)
    from capsim.cli.sweep import sweep_cmd

    cli.add_command(sweep_cmd)
    from capsim.cli.provision import provision_cmd

    cli.add_command(provision_cmd)


_register()


def main() -> None:
    try:
        cli.main(prog_name="capsim")
    except CapsimError as err:  # raised outside a command (e.g. while parsing)
        click.echo(f"capsim: error: {err}", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
