"""The `microbuild` command: one module per command group, errors as one line and an exit code."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import click

from microbuild import __version__
from microbuild.errors import ConfigError, SetupFailed, SnapshotError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3


# Command name -> module under microbuild.cli (its command has the same name). Imported when
# the command runs: an agent's `microbuild validate` should not pay for `serve`'s imports.
COMMANDS = {
    "init": "init",
    "validate": "validate",
    "runs": "runs",
    "stats": "stats",
    "hook": "hook",
    "snapshot": "snapshot",
    "sidecar": "sidecar",
    "serve": "serve",
    "host": "host",
}


class MicrobuildGroup(click.Group):
    """Turns known errors into `error: ...` on stderr and a documented exit status, and loads
    each command's module only when it is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in COMMANDS:
            module = importlib.import_module(f"microbuild.cli.{COMMANDS[cmd_name]}")
            command = getattr(module, cmd_name)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as exc:
            code = _exit_code_for(exc)
            if code is None:
                raise
            _fail(exc.details() if isinstance(exc, SetupFailed) else str(exc), code)


def _exit_code_for(exc: Exception) -> int | None:
    """2 for usage and config errors, 3 for the environment, None for a bug (a traceback)."""
    from microbuild.client import HostError
    from microbuild.runtime.base import RuntimeError_
    from microbuild.store import NotFound, StoreError

    if isinstance(exc, ConfigError | NotFound):
        return EXIT_USAGE
    if isinstance(exc, SetupFailed | SnapshotError | RuntimeError_ | StoreError):
        return EXIT_ENVIRONMENT
    if isinstance(exc, HostError):
        usage = exc.status in (400, 401, 403, 404, 413, 422)
        return EXIT_USAGE if usage else EXIT_ENVIRONMENT
    return None


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
@click.option(
    "--allow-host-access",
    is_flag=True,
    help="Let this command's sidecars have what the project's config asks of the host "
    '(expose, rootfs, network = "host"); local host only.',
)
@click.pass_context
def cli(
    ctx: click.Context,
    state_dir: Path | None,
    project_dir: Path | None,
    host: str | None,
    allow_host_access: bool,
) -> None:
    """Fast, isolated validation for AI coding agents."""
    from microbuild.cli._context import AppContext

    if state_dir is not None:
        state_dir = state_dir.absolute()
        os.environ["MICROBUILD_STATE_DIR"] = str(state_dir)
    ctx.obj = AppContext(
        state_dir=state_dir,
        project_dir=project_dir,
        host=host,
        allow_host_access=allow_host_access,
    )
    ctx.call_on_close(ctx.obj.close)


def main() -> None:
    cli(prog_name="microbuild")
