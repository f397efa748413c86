"""Command line: parse, call the library, print. Errors print without a traceback (see
kdeploy.cli.errors); each command group lives in its own module."""

from __future__ import annotations

import click

from kdeploy import __version__
from kdeploy.cli.compress import compress
from kdeploy.cli.device import bench, build, serve_check_cmd, verify
from kdeploy.cli.errors import ErrorGroup
from kdeploy.cli.profiles import profiles
from kdeploy.cli.serve import serve


@click.group(cls=ErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kdeploy")
def cli() -> None:
    """Distil, compress, export and verify a Hugging Face transformer for a target."""


for _command in (compress, profiles, bench, verify, build, serve_check_cmd, serve):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="kdeploy")
