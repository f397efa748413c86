"""How a command's failure reaches the console: a KdeployError as its message and exit code,
Ctrl-C as exit 130, any other exception as one message with the traceback in a log file."""

from __future__ import annotations

import os
from pathlib import Path

import click

from kdeploy.core.errors import InternalError, Interrupted, KdeployError


class ErrorGroup(click.Group):
    """Turns KdeployError into its message and exit code; Ctrl-C into exit 130."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KdeployError as exc:
            click.echo(exc.render(), err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo(
                Interrupted("stopped by Ctrl-C", fix="rerun the same command to resume").render(),
                err=True,
            )
            ctx.exit(Interrupted.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug: say so in one message, traceback to a file
            if os.environ.get("KDEPLOY_DEBUG"):
                raise
            click.echo(_internal_error(exc).render(), err=True)
            ctx.exit(InternalError.exit_code)


def _internal_error(exc: Exception) -> KdeployError:
    import tempfile
    import time
    import traceback

    log = Path(tempfile.gettempdir()) / f"kdeploy-crash-{time.strftime('%Y%m%d-%H%M%S')}.log"
    try:
        log.write_text(traceback.format_exc())
        where = str(log)
    except OSError:
        where = "(the traceback could not be written; rerun with KDEPLOY_DEBUG=1 to see it)"
    return InternalError(
        f"unexpected {type(exc).__name__}: {exc}",
        where=where,
        fix="this is a kdeploy bug: please report it with that log; KDEPLOY_DEBUG=1 shows "
        "the traceback on the console",
    )
