"""`microbuild hook AGENT` (the stop hook itself) and `microbuild hook install|uninstall`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from microbuild import gitsafe
from microbuild.cli._context import AppContext
from microbuild.cli._ui import emit_json
from microbuild.hooks import ADAPTERS, AGENTS

EXIT_USAGE = 2
TARGETS = (*AGENTS, "aider", "all")


def _agents(target: str) -> list[str]:
    return list(AGENTS) if target == "all" else [t for t in (target,) if t in AGENTS]


def _state(app: AppContext) -> Path:
    from microbuild.store import default_state_dir

    return (app.state_dir or default_state_dir()).absolute()


def _answer(app: AppContext, agent: str) -> None:
    from microbuild.hooks.decide import answer_stop

    started = time.monotonic()
    try:
        raw = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    except OSError:
        raw = ""
    reply = answer_stop(ADAPTERS[agent], raw, _state(app), app.host, started)
    if reply.stdout:
        sys.stdout.write(reply.stdout + "\n")
        sys.stdout.flush()


@click.group()
def hook() -> None:
    """Agent stop hooks: answer a stop event (`hook AGENT`, reads its JSON on stdin), or
    install/uninstall the hook in an agent's project settings."""


def _make_answer_command(agent: str) -> click.Command:
    @click.command(
        name=agent,
        help=f"Answer a {agent} stop event read from stdin (what {ADAPTERS[agent].settings_path} "
        "runs). Always exits 0; problems go to hooks.log in the state dir.",
    )
    @click.pass_obj
    def command(app: AppContext) -> None:
        _answer(app, agent)

    return command


for _agent in AGENTS:
    hook.add_command(_make_answer_command(_agent))


def _project_dir(app: AppContext, project: Path | None) -> Path:
    """Where the settings go: --project, else the microbuild project (or git top) around cwd."""
    import subprocess

    if project is not None:
        return project.absolute()
    start = (app.project_dir or Path.cwd()).absolute()
    from microbuild.config import find_project
    from microbuild.errors import ConfigError

    try:
        return find_project(start).root
    except ConfigError:
        pass
    top = subprocess.run(
        gitsafe.argv(start, "rev-parse", "--show-toplevel"),
        capture_output=True,
        text=True,
        check=False,
    )
    return Path(top.stdout.strip()) if top.returncode == 0 and top.stdout.strip() else start


def _hook_settings(root: Path) -> tuple[float, int]:
    """The project's [hooks] timeout and attempt cap (defaults when it has no config yet)."""
    from microbuild.config import HooksConfig, find_project
    from microbuild.errors import ConfigError

    try:
        hooks = find_project(root).config.hooks
    except ConfigError:
        hooks = HooksConfig()
    return hooks.timeout_s, hooks.max_attempts


def install_hooks(target: str, root: Path, state_dir: Path | None = None) -> list[dict[str, str]]:
    """Install for one agent or all (also what `microbuild init --agent` calls); raises
    InstallError on a settings file it cannot merge into."""
    from microbuild.hooks.install import install, microbuild_command

    timeout_s, max_attempts = _hook_settings(root)
    command = microbuild_command(state_dir)
    return [
        install(
            agent, root, command=command, timeout_s=timeout_s, max_attempts=max_attempts
        ).to_json()
        for agent in _agents(target)
    ]


def _run(changes: list[dict[str, str]], *, as_json: bool, aider: bool) -> None:
    from microbuild.hooks.install import AIDER_LINE

    if as_json:
        document: dict[str, object] = {"changes": changes}
        if aider:
            document["aider"] = AIDER_LINE
        emit_json(document)
        return
    for change in changes:
        click.echo(f"{change['agent']}: {change['action']} {change['path']}")
    if aider:
        click.echo(f"aider: run it as  {AIDER_LINE}")


_target = click.argument("target", type=click.Choice(TARGETS))
_project = click.option(
    "--project",
    "project",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The project whose settings to change (default: the one around the current directory).",
)
_json = click.option("--json", "as_json", is_flag=True, help="Print what changed as JSON.")


@hook.command("install")
@_target
@_project
@_json
@click.pass_obj
def install_(app: AppContext, target: str, project: Path | None, as_json: bool) -> None:
    """Add the microbuild stop hook to an agent's project settings (idempotent; other entries
    are kept as they are). `aider` prints the flags to use instead."""
    from microbuild.hooks.install import InstallError

    root = _project_dir(app, project)
    try:
        changes = install_hooks(target, root, app.state_dir)
    except InstallError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    _run(changes, as_json=as_json, aider=target in ("aider", "all"))


@hook.command("uninstall")
@_target
@_project
@_json
@click.pass_obj
def uninstall_(app: AppContext, target: str, project: Path | None, as_json: bool) -> None:
    """Remove only the microbuild entry from an agent's project settings."""
    from microbuild.hooks.install import InstallError, uninstall

    root = _project_dir(app, project)
    try:
        changes = [uninstall(agent, root).to_json() for agent in _agents(target)]
    except InstallError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    _run(changes, as_json=as_json, aider=False)


def install_after_init(ctx: click.Context, target: str) -> None:
    """`microbuild init --agent`: once init has written (or found) the config, install the
    hooks; nothing on a dry run or when init itself failed."""
    failed = sys.exc_info()[1]
    if isinstance(failed, SystemExit) and failed.code not in (0, None):
        return
    if failed is not None and not isinstance(failed, SystemExit):
        return
    if ctx.params.get("dry_run"):
        click.echo(f"dry run: no {target} hook installed", err=True)
        return
    from microbuild.hooks.install import AIDER_LINE, InstallError

    app = ctx.find_object(AppContext)
    base = (app.project_dir if app is not None else None) or Path.cwd()
    path = ctx.params.get("path")
    root = (base / path if path is not None else base).absolute()
    try:
        changes = install_hooks(target, root, app.state_dir if app is not None else None)
    except InstallError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    for change in changes:
        click.echo(f"{change['agent']} hook: {change['action']} {change['path']}", err=True)
    if target == "all":
        click.echo(f"aider: run it as  {AIDER_LINE}", err=True)
