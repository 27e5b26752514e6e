"""`microbuild host status|stop`."""

from __future__ import annotations

import time

import click

from microbuild.cli._context import AppContext
from microbuild.cli._ui import emit_json


@click.group()
def host() -> None:
    """The host that owns the sidecars (local by default, or --host)."""


@host.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(app: AppContext, as_json: bool) -> None:
    """Where the host is, what it runs, how many sidecars and snapshots it holds."""
    info = app.client.host_info()
    info["url"] = app.client.where
    if as_json:
        emit_json(info)
        return
    up = time.time() - float(info["started_at"])
    isolation = "isolated" if info["isolates"] else "NOT isolated"
    click.echo(
        f"host {info['url']} pid {info['pid']} up {up:.0f}s, microbuild {info['version']}, "
        f"runtime {info['runtime']} ({isolation}), {info['sidecars']} sidecars, "
        f"{info['snapshots']} snapshots, state {info['state_dir']}"
    )


@host.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def stop(app: AppContext, as_json: bool) -> None:
    """Stop the host. Its sidecars keep running; the next host adopts them."""
    from microbuild.client import Client, connect

    client: Client
    if app.host is None:
        # Do not start a local host just to stop it.
        from microbuild.store import default_state_dir

        state = (app.state_dir or default_state_dir()).absolute()
        client = Client("http://microbuild", uds=str(state / "host.sock"))
        if not client.health():
            if as_json:
                emit_json({"status": "not running"})
            else:
                click.echo("no local host is running")
            return
    else:
        client = connect(app.host, app.state_dir)
    try:
        client.stop_host()
    finally:
        client.close()
    if as_json:
        emit_json({"status": "stopping"})
    else:
        click.echo("host stopping")
