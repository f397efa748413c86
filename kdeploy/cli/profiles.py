"""`kdeploy profiles list|show|check|schema`: what the profiles are and whether they load."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from kdeploy.cli.errors import ErrorGroup
from kdeploy.core.errors import KdeployError


@click.group(cls=ErrorGroup)
def profiles() -> None:
    """List, show and check profiles."""


@profiles.command("list")
def profiles_list() -> None:
    """Known profiles and where they come from."""
    from kdeploy.config import available_profiles, load_profile

    for name, path in available_profiles().items():
        try:
            p = load_profile(path).profile
            desc = f"{p.target.device}/{p.target.runtime}/{p.target.precision}  {p.description}"
        except KdeployError as exc:
            desc = f"INVALID: {exc.what.splitlines()[0]}"
        click.echo(f"{name:12s} {desc}  ({path})")


@profiles.command("show")
@click.argument("ref")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def profiles_show(ref, overrides) -> None:
    """The fully resolved profile (extends merged, defaults filled in) as YAML."""
    from kdeploy.config import dump_profile, load_profile

    loaded = load_profile(ref, list(overrides))
    click.echo(f"# {loaded.name}: from {', '.join(str(s) for s in loaded.sources)}")
    click.echo(f"# digest {loaded.digest()}")
    click.echo(dump_profile(loaded.profile), nl=False)


@profiles.command("check")
@click.argument("refs", nargs=-1, required=True)
def profiles_check(refs) -> None:
    """Validate profiles; exit non-zero naming file and line of every problem."""
    from kdeploy.config import load_profile

    failed: KdeployError | None = None
    for ref in refs:
        try:
            loaded = load_profile(ref)
            click.echo(f"ok      {ref} ({loaded.name})")
        except KdeployError as exc:
            click.echo(f"INVALID {ref}\n{exc.render()}", err=True)
            failed = exc
    if failed is not None:
        sys.exit(failed.exit_code)


@profiles.command("schema")
@click.option("--out", type=click.Path(path_type=Path), default=None)
def profiles_schema(out) -> None:
    """The JSON Schema of a profile (for editors)."""
    from kdeploy.config import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if out:
        from kdeploy.core.fsutil import atomic_write_text

        atomic_write_text(out, text)
    else:
        click.echo(text, nl=False)
