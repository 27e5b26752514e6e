"""The `microbuild` command: one module per command group, errors as one line and an exit code."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from microbuild import __version__
from microbuild.client import HostError
from microbuild.errors import ConfigError, SetupFailed, SnapshotError
from microbuild.runtime.base import RuntimeError_
from microbuild.store import NotFound, StoreError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3


class MicrobuildGroup(click.Group):
    """Turns known errors into `error: ...` on stderr and a documented exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, NotFound) as exc:
            _fail(str(exc), EXIT_USAGE)
        except SetupFailed as exc:
            _fail(exc.details(), EXIT_ENVIRONMENT)
        except (SnapshotError, RuntimeError_, StoreError) as exc:
            _fail(str(exc), EXIT_ENVIRONMENT)
        except HostError as exc:
            usage = exc.status in (400, 401, 403, 404, 413, 422)
            _fail(str(exc), EXIT_USAGE if usage else EXIT_ENVIRONMENT)
        except KeyboardInterrupt:
            _fail("interrupted", 130)


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(cls=MicrobuildGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="microbuild")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MICROBUILD_STATE_DIR",
    help="Where snapshots, sidecars and the state database live.",
)
@click.option(
    "-C",
    "--project",
    "project_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Run as if started in this directory.",
)
@click.option(
    "--host",
    envvar="MICROBUILD_HOST",
    help="A remote host (https://HOST:PORT or unix:PATH; token from MICROBUILD_TOKEN or "
    "MICROBUILD_TOKEN_FILE). Default: the local host, started on first use.",
)
@click.pass_context
def cli(
    ctx: click.Context, state_dir: Path | None, project_dir: Path | None, host: str | None
) -> None:
    """Fast, isolated validation for AI coding agents."""
    from microbuild.cli._context import AppContext

    if state_dir is not None:
        state_dir = state_dir.absolute()
        os.environ["MICROBUILD_STATE_DIR"] = str(state_dir)
    ctx.obj = AppContext(state_dir=state_dir, project_dir=project_dir, host=host)
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    from microbuild.cli import hook, host, init, runs, serve, sidecar, snapshot, stats, validate

    cli.add_command(snapshot.snapshot)
    cli.add_command(sidecar.sidecar)
    cli.add_command(serve.serve)
    cli.add_command(host.host)
    cli.add_command(init.init)
    cli.add_command(validate.validate)
    cli.add_command(runs.runs)
    cli.add_command(stats.stats)
    cli.add_command(hook.hook)


_register()


def main() -> None:
    cli(prog_name="microbuild")
