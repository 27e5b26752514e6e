"""Benchmark of the host's HTTP API overhead, run by hand:

    .venv/bin/python benchmarks/host.py [--n 100] [--json]

Measures the round trip of `exec true` through the API against the runtime called directly, in
this process, on the `namespace` runtime: N iterations each of

* in-process: `NamespaceRuntime.exec(handle, ["true"]).result()` (the baseline; the runtime
  forks through a zygote, as the host's does),
* API over a Unix socket: `list(Client.exec(id, ["true"]))` against a real host,
* API over TCP (with its bearer token): the same against a second host,
* `GET /v1/sidecars/{id}` over both, the pure HTTP cost of a request to a sidecar.

Each host is a subprocess (`python -m microbuild --state-dir D serve --listen ...`) with a
state dir of its own; its sidecar is created through the API from a tiny snapshot (a git repo
made here whose setup is `echo ok > built`, resolved and uploaded as `microbuild snapshot build`
does). The iterations go round-robin over the rows, so load changes on the machine hit every
row alike. Median, p95, min and max, the ratio API / in-process (> 1: the API costs that many
times the direct call) and the design target (exec p50 < 15 ms via the API) with met / not met.
Nothing here asserts on time. Hosts are stopped, sidecars destroyed and temp dirs removed at the
end, also on Ctrl-C, SIGTERM and errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common
from _common import mounts_under, p95, raise_interrupt, signals_ignored
from rich.console import Console
from rich.table import Table

from microbuild.client import Client, HostError
from microbuild.config import find_project
from microbuild.host.manager import SidecarManager
from microbuild.runtime import Runtime, SidecarHandle

TARGET_S = 0.015
WARMUP = 5
HOST_START_TIMEOUT_S = 30.0
HOST_STOP_TIMEOUT_S = 10.0
CONFIG = """\
[snapshot]
setup = ["echo ok > built"]

[sidecar]
memory = "256MiB"
pids = 128
"""


# -- figures -----------------------------------------------------------------------------------


@dataclass
class Figure:
    operation: str
    transport: str
    samples: list[float] = field(default_factory=list)
    baseline: Figure | None = None
    target: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        return p95(self.samples)

    @property
    def ratio(self) -> float | None:
        """This median / the baseline median: how many times the direct call this costs."""
        if self.baseline is None or not self.baseline.samples or not self.samples:
            return None
        base = self.baseline.median
        return self.median / base if base > 0 else None

    @property
    def met(self) -> bool | None:
        if self.target is None or not self.samples:
            return None
        return self.median < self.target

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "operation": self.operation,
            "transport": self.transport,
            "unit": "ms",
            "n": len(self.samples),
        }
        if self.samples:
            data |= {"median": self.median * 1e3, "p95": self.p95 * 1e3}
            data |= {"min": min(self.samples) * 1e3, "max": max(self.samples) * 1e3}
        if self.baseline is not None and self.baseline.samples:
            data["baseline_median"] = self.baseline.median * 1e3
            data["ratio"] = self.ratio
        if self.target is not None:
            data["target"] = f"p50 < {self.target * 1e3:g} ms"
            data["met"] = self.met
        return data


@dataclass
class Report:
    n: int
    machine: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unavailable: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "n": self.n,
            "namespace_unavailable": self.unavailable,
            "figures": [f.to_json() for f in self.figures],
            "notes": self.notes,
            "errors": self.errors,
        }


# -- the project, the hosts --------------------------------------------------------------------


def make_project(root: Path) -> Path:
    """A committed git repository with a microbuild.toml: the tiny snapshot's source."""
    root.mkdir(parents=True)
    (root / "microbuild.toml").write_text(CONFIG)
    (root / "README").write_text("benchmark project\n")
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-qm", "init"],
    ):
        subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)
    return root


@dataclass
class Host:
    """A host subprocess, its client, and the sidecar the benchmark made on it."""

    name: str
    state: Path
    proc: subprocess.Popen[bytes]
    log: Path
    client: Client | None = None
    sidecar: str | None = None

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-3:])
        return ""


def start_host(name: str, state: Path, listen: str, token: str | None) -> Host:
    state.mkdir(parents=True, mode=0o700)
    argv = [sys.executable, "-m", "microbuild", "--state-dir", str(state), "serve"]
    argv += ["--listen", listen]
    if token is not None:
        token_file = state / "bench.token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        argv += ["--token-file", str(token_file)]
    log = state / "host.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # its own process group: stopped as one, never our Ctrl-C
            close_fds=True,
        )
    return Host(name, state, proc, log)


def connect(host: Host, token: str | None) -> Client:
    """Wait until the host answers /v1/health, then a client for where it listens."""
    deadline = time.monotonic() + HOST_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if host.proc.poll() is not None:
            raise RuntimeError(
                f"{host.name} host exited ({host.proc.returncode}): {host.log_tail()}"
            )
        with contextlib.suppress(OSError, ValueError):
            info = json.loads((host.state / "host.json").read_text())
            listen = str(info["listen"])
            if listen.startswith("unix:"):
                client = Client("http://microbuild", uds=listen[5:])
            else:
                client = Client(listen, token=token)
            if client.health():
                return client
            client.close()
        time.sleep(0.05)
    raise RuntimeError(f"{host.name} host did not answer in {HOST_START_TIMEOUT_S:.0f} s")


def create_sidecar(client: Client, project_dir: Path) -> tuple[str, str]:
    """(sidecar id, snapshot id): the snapshot resolved and built through the API, as `microbuild
    snapshot build` does, then a sidecar from it."""
    from microbuild import sync

    project = find_project(project_dir)
    request = sync.describe_snapshot(project)
    snap, needed = client.resolve_snapshot(request.model_dump(mode="json"), runtime="namespace")
    if needed:
        with tempfile.TemporaryDirectory(prefix="mb_src_") as tmp:
            tar = Path(tmp) / "source.tar"
            sync.export_source(project, request, tar)
            last: dict[str, Any] = {}
            for event in client.upload_source(snap["id"], tar):
                last = event
            if last.get("event") != "done":
                raise RuntimeError(f"snapshot build failed: {last}")
            snap = last["snapshot"]
    sidecar = client.create_sidecar(snap["id"])
    return str(sidecar["id"]), str(snap["id"])


def check_sidecar(client: Client, sidecar_id: str) -> None:
    events = list(client.exec(sidecar_id, ["cat", "built"]))
    out = b"".join(data for kind, data in events if kind == "stdout")
    if out.strip() != b"ok":
        raise RuntimeError(f"sidecar {sidecar_id} does not see its snapshot: {events}")


def stop_host(host: Host, errors: list[str]) -> None:
    """Destroy the sidecar, ask the host to stop, then SIGTERM / SIGKILL its process group."""
    if host.client is not None:
        if host.sidecar is not None and host.proc.poll() is None:
            try:
                host.client.sidecar_action(host.sidecar, "destroy")
                host.sidecar = None
            except HostError as exc:
                errors.append(f"{host.name}: destroying {host.sidecar} failed: {exc}")
        with contextlib.suppress(HostError):
            if host.proc.poll() is None:
                host.client.stop_host()
        host.client.close()
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and host.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(host.proc.pid, sig)  # the group of the host we started, by its id
        with contextlib.suppress(subprocess.TimeoutExpired):
            host.proc.wait(timeout=HOST_STOP_TIMEOUT_S)
            break
    if host.proc.poll() is None:
        errors.append(f"{host.name}: host pid {host.proc.pid} did not exit")


def destroy_leftovers(state: Path, errors: list[str]) -> None:
    """Once its host is gone (or for the in-process state dir): destroy whatever sidecar the
    store still has, which only happens if something failed on the way."""
    if not (state / "state.db").exists():
        return
    manager = SidecarManager(state)
    try:
        for ident, exc in manager.destroy_all():
            if exc is None:
                errors.append(f"{state}: sidecar {ident} was still there; destroyed it")
            else:
                errors.append(f"{state}: destroying leftover {ident} failed: {exc}")
    finally:
        manager.close()


# -- measurements ------------------------------------------------------------------------------


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def exec_in_process(runtime: Runtime, handle: SidecarHandle) -> Callable[[], None]:
    def run() -> None:
        result = runtime.exec(handle, ["true"]).result()
        if result.exit_code != 0:
            raise RuntimeError(f"in-process `true` exited {result.exit_code}")

    return run


def exec_via_api(client: Client, sidecar_id: str) -> Callable[[], None]:
    def run() -> None:
        events = list(client.exec(sidecar_id, ["true"]))
        kind, result = events[-1]
        if kind != "result" or result["exit_code"] != 0:
            raise RuntimeError(f"`true` through {client.where}: {events}")

    return run


def get_via_api(client: Client, sidecar_id: str) -> Callable[[], None]:
    def run() -> None:
        client.get_sidecar(sidecar_id)

    return run


def measure(rows: list[tuple[Figure, Callable[[], None]]], n: int, console: Console) -> None:
    """WARMUP untimed calls of each, then N rounds, each row once per round."""
    for _figure, fn in rows:
        for _ in range(WARMUP):
            fn()
    console.print(f"[dim]measuring {len(rows)} rows x {n}, round-robin[/dim]")
    for _ in range(n):
        for figure, fn in rows:
            figure.samples.append(timed(fn))


# -- output ------------------------------------------------------------------------------------


def render(report: Report, console: Console) -> None:
    m = report.machine
    console.print(
        f"[bold]microbuild host API benchmark[/bold]  N={report.n}  nproc={m.get('nproc')}  "
        f"kernel={m.get('kernel')}  python={m.get('python')}"
    )
    if report.unavailable:
        console.print(f"[yellow]namespace runtime unavailable: {report.unavailable}")
    table = Table()
    for name, justify in (
        ("operation", "left"),
        ("transport", "left"),
        ("n", "right"),
        ("median", "right"),
        ("p95", "right"),
        ("min", "right"),
        ("max", "right"),
        ("in-proc p50", "right"),
        ("ratio api/in-proc", "right"),
        ("target", "left"),
        ("met", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for fig in report.figures:
        if not fig.samples:
            table.add_row(fig.operation, fig.transport, "0", *["-"] * 8)
            continue
        base = fig.baseline
        ratio = fig.ratio
        met = ""
        if fig.met is not None:
            met = "[green]met[/green]" if fig.met else "[red]not met[/red]"
        table.add_row(
            fig.operation,
            fig.transport,
            str(len(fig.samples)),
            f"{fig.median * 1e3:.2f}",
            f"{fig.p95 * 1e3:.2f}",
            f"{min(fig.samples) * 1e3:.2f}",
            f"{max(fig.samples) * 1e3:.2f}",
            f"{base.median * 1e3:.2f}" if base is not None and base.samples else "",
            f"{ratio:.2f}x" if ratio is not None else "",
            f"p50 < {fig.target * 1e3:g} ms" if fig.target is not None else "",
            met,
        )
    console.print(table)
    console.print(
        "Times in ms (perf_counter, in this process). ratio = API median / in-process median "
        "(how many times the direct runtime call the API costs). Target judged on the median."
    )
    for note in report.notes:
        console.print(f"- {note}")
    for error in report.errors:
        console.print(f"[red]! {error}[/red]")


# -- main --------------------------------------------------------------------------------------


def run(report: Report, root: Path, hosts: list[Host], console: Console) -> None:
    from microbuild.runtime.namespace import unavailable_reason

    reason = unavailable_reason()
    if reason:
        report.unavailable = reason
        return
    project = make_project(root / "project")
    token = secrets.token_urlsafe(32)
    console.print("[dim]starting a host on a Unix socket and one on TCP[/dim]")
    unix = start_host("unix", root / "u", f"unix:{root / 'u' / 'host.sock'}", None)
    hosts.append(unix)
    tcp = start_host("tcp", root / "t", "tcp:127.0.0.1:0", token)
    hosts.append(tcp)
    unix.client = connect(unix, None)
    tcp.client = connect(tcp, token)
    for host in (unix, tcp):
        assert host.client is not None
        console.print(f"[dim]{host.name}: snapshot and sidecar through {host.client.where}[/dim]")
        host.sidecar, snapshot_id = create_sidecar(host.client, project)
        check_sidecar(host.client, host.sidecar)
        report.notes.append(
            f"{host.name} host: {host.client.where}, pid {host.proc.pid}, "
            f"snapshot {snapshot_id}, sidecar {host.sidecar}"
        )

    console.print("[dim]in-process: the same snapshot and a sidecar, no host[/dim]")
    # zygote=True: the runtime forks like the host's does, so the ratio is the API's cost.
    manager = SidecarManager(root / "i", default_runtime="namespace", zygote=True)
    try:
        snapshot = manager.build_snapshot(find_project(project), runtime="namespace")
        record = manager.create_sidecar_from(snapshot.id)
        try:
            runtime = manager.runtime("namespace")
            handle = SidecarHandle.from_json(record.handle)
            assert unix.client is not None and tcp.client is not None
            assert unix.sidecar is not None and tcp.sidecar is not None
            base = Figure("exec true", "in-process (baseline)")
            api_unix = Figure("exec true", "API, Unix socket", baseline=base, target=TARGET_S)
            api_tcp = Figure("exec true", "API, TCP + token", baseline=base, target=TARGET_S)
            get_unix = Figure("GET /v1/sidecars/{id}", "API, Unix socket")
            get_tcp = Figure("GET /v1/sidecars/{id}", "API, TCP + token")
            report.figures += [base, api_unix, api_tcp, get_unix, get_tcp]
            measure(
                [
                    (base, exec_in_process(runtime, handle)),
                    (api_unix, exec_via_api(unix.client, unix.sidecar)),
                    (api_tcp, exec_via_api(tcp.client, tcp.sidecar)),
                    (get_unix, get_via_api(unix.client, unix.sidecar)),
                    (get_tcp, get_via_api(tcp.client, tcp.sidecar)),
                ],
                report.n,
                console,
            )
        finally:
            manager.destroy(record.id)
    finally:
        manager.close()
    report.notes.append(
        "each client keeps its HTTP connection open (keep-alive), as the CLI's does; "
        f"{WARMUP} untimed calls per row first"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100, help="iterations per row (100)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    report = Report(n=max(1, args.n))
    out = Console(width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True)
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    report.machine = {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    # Short: the hosts' overlay mount options carry paths under it.
    root = Path(tempfile.mkdtemp(prefix="mbh_", dir="/var/tmp"))
    hosts: list[Host] = []
    interrupted = False
    try:
        run(report, root, hosts, err)
    except KeyboardInterrupt:
        interrupted = True
        err.print("[yellow]interrupted: cleaning up")
    except Exception as exc:
        report.errors.append(f"benchmark stopped: {type(exc).__name__}: {exc}")
        err.print(traceback.format_exc())
        for host in hosts:
            if host.proc.poll() is not None:
                report.errors.append(f"{host.name} host log: {host.log_tail()}")
    finally:
        with signals_ignored():
            for host in hosts:
                stop_host(host, report.errors)
                destroy_leftovers(host.state, report.errors)
            destroy_leftovers(root / "i", report.errors)
            left = mounts_under(root)
            if left:
                report.errors.append(f"{left} mounts under {root} in the host namespace")
            shutil.rmtree(root, ignore_errors=True)
            if root.exists():
                report.errors.append(f"could not remove {root}")
    report.notes.append(
        f"after cleanup: hosts exited={all(h.proc.poll() is not None for h in hosts)}, "
        f"temp dir removed={not root.exists()}"
    )
    return _common.finish(report, render, out, as_json=args.json, interrupted=interrupted)


if __name__ == "__main__":
    sys.exit(main())
