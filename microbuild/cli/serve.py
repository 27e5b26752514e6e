"""`microbuild serve`: run a host by hand (the CLI starts a local one on its own)."""

from __future__ import annotations

from pathlib import Path

import click

from microbuild.store import default_state_dir


def _size(value: str) -> int:
    from microbuild.config import parse_size

    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command()
@click.option(
    "--listen",
    default=None,
    help="tcp:HOST:PORT or unix:PATH (default: unix:STATE_DIR/host.sock).",
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Token for TCP clients (default STATE_DIR/host.token, created 0600 on first start).",
)
@click.option("--max-sidecars", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--min-free-memory",
    default="1GiB",
    show_default=True,
    help="Refuse new sidecars when less memory than this is available.",
)
@click.option("--idle-check", type=click.FloatRange(min=0.1), default=5.0, show_default=True)
@click.option(
    "--exit-when-idle",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Exit after this many seconds without requests (sidecars keep running).",
)
@click.option(
    "--allow-expose",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A host directory sidecars may have exposed read-only (repeatable; never the state "
    "dir, the token or home directories).",
)
@click.option(
    "--allow-rootfs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A root filesystem directory sidecars may use (repeatable).",
)
@click.option("--allow-host-network", is_flag=True, help="Sidecars and checks may ask for it.")
@click.pass_context
def serve(
    ctx: click.Context,
    listen: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    token_file: Path | None,
    max_sidecars: int,
    min_free_memory: str,
    idle_check: float,
    exit_when_idle: float | None,
    allow_expose: tuple[Path, ...],
    allow_rootfs: tuple[Path, ...],
    allow_host_network: bool,
) -> None:
    """Run a host: sidecars behind an HTTP API on a Unix socket or TCP (token, optional TLS)."""
    from microbuild.host.manager import Admission
    from microbuild.host.server import Listen, ListenError, load_or_create_token, serve, token_path

    state_dir = (ctx.obj.state_dir or default_state_dir()).absolute()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        where = Listen.parse(listen or f"unix:{state_dir / 'host.sock'}")
    except ListenError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from exc
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("give both --tls-cert and --tls-key, or neither")
    token = None
    if where.kind == "tcp":
        path = token_file or token_path(state_dir)
        token, created = load_or_create_token(path)
        if created:
            click.echo(f"microbuild: new host token (stored in {path}, mode 0600):", err=True)
            click.echo(token)
        if tls_cert is None:
            click.echo(
                "warning: serving TCP without TLS: the token and every synced file cross the "
                "network in clear; give --tls-cert/--tls-key (or put a TLS proxy in front)",
                err=True,
            )
    from microbuild.host.policy import HostPolicy, PolicyRefused

    for path in (*allow_expose, *allow_rootfs):
        if not path.is_absolute():
            raise click.BadParameter(f"{path}: give an absolute path", param_hint="--allow-expose")
    policy = HostPolicy.for_host(
        state_dir,
        allow_expose=allow_expose,
        allow_rootfs=allow_rootfs,
        allow_host_network=allow_host_network,
    )
    admission = Admission(max_sidecars=max_sidecars, min_available_memory=_size(min_free_memory))
    try:
        serve(
            where,
            state_dir,
            token=token,
            tls_cert=tls_cert,
            tls_key=tls_key,
            admission=admission,
            idle_check_s=idle_check,
            exit_when_idle_s=exit_when_idle,
            policy=policy,
        )
    except ListenError as exc:
        raise click.UsageError(str(exc)) from exc
    except PolicyRefused as exc:
        raise click.UsageError(str(exc)) from exc
