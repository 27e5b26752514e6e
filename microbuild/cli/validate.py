"""`microbuild validate`: the project's checks, on exactly the files in its working tree, in a
sidecar — synced incrementally, answered from the cache when the tree did not change."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from microbuild.cli._context import AppContext
from microbuild.cli._ui import Progress, emit_json


@click.command()
@click.argument(
    "path", required=False, type=click.Path(file_okay=False, exists=True, path_type=Path)
)
@click.option("--no-fail-fast", is_flag=True, help="Run every check even after one fails.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--plain", is_flag=True, help="Plain text for agents: no live display.")
@click.option("-v", "--verbose", is_flag=True, help="Stream snapshot setup output if it builds.")
@click.pass_obj
def validate(
    app: AppContext,
    path: Path | None,
    no_fail_fast: bool,
    as_json: bool,
    plain: bool,
    verbose: bool,
) -> None:
    """Validate the working tree: sync it to the project's sidecar and run its checks.

    Exit status: 0 passed, 1 a check failed, 3 environment failure, 2 usage or config error.
    """
    from microbuild.validate import validate_project

    if path is not None:
        app.project_dir = path.absolute()
    project = app.project()
    agent = plain or not sys.stderr.isatty()
    progress = Progress(quiet=as_json or agent, verbose=verbose and not as_json)
    with progress.live():
        result = validate_project(
            app.client,
            project,
            fail_fast=not no_fail_fast,
            progress=progress,
            index_dir=app.state_dir / "indexes" if app.state_dir else None,
        )
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(result.report.rstrip("\n"))
    sys.exit(result.exit_code)
