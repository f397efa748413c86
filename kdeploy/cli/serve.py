"""`kdeploy serve`: a run's deployed model behind a real Triton Inference Server on this
machine (kdeploy.packaging.serve; needs kdeploy[serve])."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kdeploy.core.errors import Interrupted

if TYPE_CHECKING:
    from kdeploy.packaging.serve_model import ServeSettings


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address HTTP, gRPC and metrics listen on (0.0.0.0: every interface).",
)
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option(
    "--log-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Triton's own log [default: a file in the temp dir, named at start].",
)
def serve(
    run_dir: Path,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    log_file: Path | None,
) -> None:
    """Serve a run's deployed model with Triton on this machine: HTTP and gRPC (KServe v2),
    texts in (tokenized server-side by kdeploy.runtime), dynamic batching from the profile.
    Ctrl-C stops it (exit 130). Needs kdeploy[serve]."""
    from kdeploy.packaging.serve import Endpoints, Server, describe

    model_dir, settings = served_model(run_dir)
    endpoints = Endpoints(host, http_port, grpc_port, metrics_port)
    with _sigterm_as_interrupt():
        try:
            with Server(model_dir, settings, endpoints, log_file=log_file) as server:
                assert server.info is not None
                for line in describe(server.info):
                    click.echo(line, err=True)
                click.echo("ready; Ctrl-C stops the server", err=True)
                server.wait()
        except KeyboardInterrupt:
            raise Interrupted(
                "server stopped (Ctrl-C); Triton and its Python-backend stub have exited",
                fix=f"`kdeploy serve {run_dir}` serves it again",
            ) from None


def served_model(run_dir: Path) -> tuple[Path, ServeSettings]:
    """The run's deployable model dir (its files' sha256 checked against the manifest) and
    its serving settings; the model name is the one the run's Triton repository uses."""
    from kdeploy.engine.rundir import open_run
    from kdeploy.packaging.serve_model import serve_settings
    from kdeploy.packaging.triton import model_name
    from kdeploy.runtime.card import ModelCard

    view = open_run(run_dir, need=("package",), check_digests=False)
    deploy = view.artifact("deploy")
    pkg = view.profile.profile.package
    precision = ModelCard.load(deploy).precision
    name = pkg.triton_model_name or model_name(view.manifest.model["path"], precision)
    return deploy, serve_settings(view.profile, deploy, name)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill PID``) stops the server the way Ctrl-C does: cleanly."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
