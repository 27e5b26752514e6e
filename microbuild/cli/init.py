"""`microbuild init`: write a microbuild.toml detected from a Python project's own files."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from microbuild.cli._context import AppContext
from microbuild.cli._ui import emit_json

EXIT_FAILED = 1  # as in microbuild.cli.main, which imports this module


def _agent_hooks(ctx: click.Context, _param: click.Parameter, target: str | None) -> None:
    """--agent: install that agent's stop hook once init has written the config."""
    if target is not None:
        from microbuild.cli.hook import install_after_init

        ctx.call_on_close(lambda: install_after_init(ctx, target))


@click.command()
@click.option(
    "--agent",
    type=click.Choice(["claude", "codex", "cursor", "gemini", "all"]),
    expose_value=False,
    callback=_agent_hooks,
    help="Also install this agent's stop hook (see `microbuild hook install`).",
)
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print the configuration; write nothing.")
@click.option(
    "--force", is_flag=True, help="Replace an existing microbuild.toml or [tool.microbuild] table."
)
@click.option(
    "--no-ci",
    is_flag=True,
    help="Ignore CI files and task runners; detect from the Python project files only.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print {path, written, config, decisions} as JSON."
)
@click.pass_context
def init(
    ctx: click.Context, path: Path | None, dry_run: bool, force: bool, no_ci: bool, as_json: bool
) -> None:
    """Write a microbuild.toml for the project at PATH (default: here), distilled from its CI.

    Checks come from the CI (CircleCI, GitHub Actions, GitLab), else from the tox config
    (tox.ini, setup.cfg, pyproject.toml or tox.toml), noxfile.py, Makefile or package.json, else
    from the Python project's files, which also complete the setup. Each decision kept or
    dropped, and the file behind it, is printed to stderr.
    """
    from microbuild.distill.configure import init_project
    from microbuild.distill.plan import GeneratedConfigError

    app = ctx.find_object(AppContext)
    base = (app.project_dir if app is not None else None) or Path.cwd()
    root = base / path if path is not None else base
    try:
        result = init_project(root, force=force, dry_run=dry_run, use_ci=not no_ci)
    except GeneratedConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if as_json:
        emit_json(
            {
                "path": str(result.path),
                "written": result.written,
                "config": result.config,
                "decisions": [d.as_json() for d in result.decisions],
            }
        )
        return
    for decision in result.decisions:
        click.echo(decision.line(), err=True)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if dry_run:
        click.echo(result.config, nl=False)
        click.echo(f"dry run: {result.path} not written", err=True)
    else:
        click.echo(f"wrote {result.path}")
        click.echo("next: `microbuild validate` (it builds the snapshot on first use)", err=True)
