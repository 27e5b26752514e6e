"""Benchmark of the sidecar runtime layer (microbuild.runtime), run by hand:

    .venv/bin/python benchmarks/sidecar.py [--n 100] [--json]

Builds a realistic snapshot layer in a fresh state dir under /var/tmp (a small Python package
of a few hundred files plus a `python -m venv` virtualenv, nothing downloaded), then measures,
each over N iterations, on the `namespace` runtime: create (N sidecars one after another, same
spec), `exec true` round trip (the first in each sidecar apart: with --zygote it makes the
sidecar's exec helper, which later ones reuse), suspend, resume, reset and destroy, plus the
idle memory of a sidecar (cgroup charge, RSS of its processes and their sum, over min(20, N)
sidecars) after create and after suspend. The `process` runtime (which copies the layer) is
measured in the same run as the baseline for create, exec and destroy; the ratio column is
baseline / namespace.
Targets from the design doc are shown as a met / not met column; nothing here asserts on time.
Without root (or overlayfs, or cgroups) only the process runtime is measured. Every sidecar is
destroyed and the state dir removed at the end, also on Ctrl-C, SIGTERM and errors.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
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

from microbuild.config import parse_size
from microbuild.runtime import (
    Limits,
    Runtime,
    RuntimeUnavailable,
    SidecarHandle,
    SidecarSpec,
    get_runtime,
)

MIB = 1 << 20
MEMORY_SAMPLES = 20
SUBPACKAGES = 20
MODULES_PER_SUBPACKAGE = 15
TEST_FILES = 40
LIMITS = Limits(1 << 30, 512, 1.0)


# -- figures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A design-doc target on the median of a figure."""

    limit: float
    label: str

    def met(self, median: float) -> bool:
        return median < self.limit


@dataclass
class Figure:
    runtime: str
    operation: str
    unit: str
    samples: list[float] = field(default_factory=list)
    target: Target | None = None
    baseline: Figure | None = None

    def shown(self, value: float) -> float:
        """A sample (seconds or MiB) in the unit shown: ms or MiB."""
        return value * 1e3 if self.unit == "ms" else value

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        return p95(self.samples)

    @property
    def ratio(self) -> float | None:
        """baseline median / this median: how many times faster than the baseline."""
        if self.baseline is None or not self.baseline.samples or not self.samples:
            return None
        return self.baseline.median / self.median if self.median > 0 else None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "runtime": self.runtime,
            "operation": self.operation,
            "unit": self.unit,
            "n": len(self.samples),
        }
        if self.samples:
            data |= {"median": self.shown(self.median), "p95": self.shown(self.p95)}
            data |= {"min": self.shown(min(self.samples)), "max": self.shown(max(self.samples))}
        if self.baseline is not None and self.baseline.samples:
            data["baseline_median"] = self.baseline.shown(self.baseline.median)
            data["ratio"] = self.ratio
        if self.target is not None:
            data["target"] = self.target.label
            data["met"] = self.target.met(self.median) if self.samples else None
        return data


@dataclass
class Report:
    machine: dict[str, Any]
    n: int
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    namespace_unavailable: str | None = None

    def figure(
        self, runtime: str, operation: str, unit: str = "ms", target: Target | None = None
    ) -> Figure:
        fig = Figure(runtime, operation, unit, target=target)
        self.figures.append(fig)
        return fig

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "n": self.n,
            "namespace_unavailable": self.namespace_unavailable,
            "figures": [f.to_json() for f in self.figures],
            "notes": self.notes,
            "errors": self.errors,
        }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


# -- the snapshot layer ------------------------------------------------------------------------


MODULE_TEMPLATE = '''\
"""Module {sub}.{mod} of the benchmark package: a bit of everything a real module has."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class Record{mod}:
    name: str
    weight: float = 1.0
    tags: tuple[str, ...] = ()

    def scaled(self, factor: float) -> Record{mod}:
        return dataclasses.replace(self, weight=self.weight * factor)


@functools.lru_cache(maxsize=128)
def checksum_{mod}(text: str) -> int:
    total = 0
    for index, char in enumerate(text):
        total = (total * 31 + ord(char) + index) % 1_000_003
    return total


def heaviest_{mod}(records: Iterable[Record{mod}]) -> Record{mod} | None:
    best = None
    for record in records:
        if best is None or record.weight > best.weight:
            best = record
    return best
'''

TEST_TEMPLATE = """\
from benchpkg.sub{sub:02d} import mod00


def test_checksum_{index}() -> None:
    assert mod00.checksum_00("abc") == mod00.checksum_00("abc")


def test_heaviest_{index}() -> None:
    records = [mod00.Record00("a", 1.0), mod00.Record00("b", 2.0)]
    best = mod00.heaviest_00(records)
    assert best is not None and best.name == "b"
"""


def make_layer(layer: Path) -> dict[str, Any]:
    """A snapshot layer: /workspace with a small package and a real virtualenv."""
    ws = layer / "workspace"
    pkg = ws / "src" / "benchpkg"
    pkg.mkdir(parents=True)
    (ws / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [project]
            name = "benchpkg"
            version = "0.1.0"
            requires-python = ">=3.11"

            [tool.pytest.ini_options]
            testpaths = ["tests"]
            """
        )
    )
    (ws / "README.md").write_text("# benchpkg\n\nA generated package for the sidecar benchmark.\n")
    (pkg / "__init__.py").write_text('"""The benchmark package."""\n')
    for sub in range(SUBPACKAGES):
        sub_dir = pkg / f"sub{sub:02d}"
        sub_dir.mkdir()
        (sub_dir / "__init__.py").write_text(f'"""Subpackage {sub:02d}."""\n')
        for mod in range(MODULES_PER_SUBPACKAGE):
            text = MODULE_TEMPLATE.format(sub=f"{sub:02d}", mod=f"{mod:02d}")
            (sub_dir / f"mod{mod:02d}.py").write_text(text)
    tests = ws / "tests"
    tests.mkdir()
    for index in range(TEST_FILES):
        text = TEST_TEMPLATE.format(sub=index % SUBPACKAGES, index=index)
        (tests / f"test_{index:03d}.py").write_text(text)
    subprocess.run(
        [sys.executable, "-m", "venv", str(ws / ".venv")],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    files = 0
    size = 0
    for dirpath, _dirs, names in os.walk(layer):
        for name in names:
            path = os.path.join(dirpath, name)
            files += 1
            with contextlib.suppress(OSError):
                size += os.lstat(path).st_size
    venv_files = sum(len(names) for _d, _s, names in os.walk(ws / ".venv"))
    return {"files": files, "venv_files": venv_files, "mib": size / MIB}


# -- sidecar bookkeeping -----------------------------------------------------------------------


class Sidecars:
    """The live sidecars of one runtime, so that every one of them is destroyed in the end."""

    def __init__(self, runtime: Runtime, prefix: str) -> None:
        self.runtime = runtime
        self.prefix = prefix
        self.live: dict[str, SidecarHandle] = {}
        self.inits: list[tuple[int, int | None]] = []
        self._seq = 0

    def new_id(self) -> str:
        self._seq += 1
        return f"{self.prefix}_{self._seq:04d}"

    def create(self, spec: SidecarSpec) -> tuple[SidecarHandle, float]:
        sidecar_id = self.new_id()
        handle, seconds = timed(lambda: self.runtime.create(sidecar_id, spec))
        assert isinstance(handle, SidecarHandle)
        self.live[sidecar_id] = handle
        self._remember(handle)
        return handle, seconds

    def reset(self, handle: SidecarHandle) -> tuple[SidecarHandle, float]:
        new, seconds = timed(lambda: self.runtime.reset(handle))
        assert isinstance(new, SidecarHandle)
        self.live[handle.id] = new
        self._remember(new)
        return new, seconds

    def _remember(self, handle: SidecarHandle) -> None:
        if handle.init_pid is not None:
            self.inits.append((handle.init_pid, handle.init_start))

    def unreaped_inits(self) -> int:
        """Init processes of our (destroyed) sidecars that are still zombies, waiting for the
        host's pid 1 to reap them: the runtime's fork leaves them orphaned."""
        count = 0
        for pid, start in self.inits:
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            fields = raw[raw.rindex(b")") + 2 :].split()
            if fields[0] == b"Z" and (start is None or int(fields[19]) == start):
                count += 1
        return count

    def destroy(self, handle: SidecarHandle) -> float:
        _, seconds = timed(lambda: self.runtime.destroy(handle))
        self.live.pop(handle.id, None)
        return seconds

    def cleanup(self) -> list[str]:
        """Destroy whatever is still alive, then sweep cgroups of ids we never got a handle for."""
        errors: list[str] = []
        for handle in list(self.live.values()):
            try:
                self.runtime.destroy(handle)
                self.live.pop(handle.id, None)
            except Exception as exc:
                errors.append(f"cleanup: destroy {handle.id} ({self.runtime.name}) failed: {exc}")
        for group_dir in self.leftover_cgroups():
            try:
                cgroup_root = getattr(self.runtime, "cgroup_root", None)
                if cgroup_root is not None:
                    cgroup_root.child(group_dir.name).remove()
            except Exception as exc:
                errors.append(f"cleanup: removing cgroup {group_dir} failed: {exc}")
        with contextlib.suppress(OSError):
            for path in self.runtime.sidecars_dir.iterdir():
                if path.name.startswith(self.prefix):
                    shutil.rmtree(path, ignore_errors=True)
        return errors

    def cgroup_dirs(self) -> list[Path]:
        """The runtime's cgroup root directories (one per v1 hierarchy), if it has any."""
        root = getattr(self.runtime, "cgroup_root", None)
        if root is None:
            return []
        data = root.to_json()
        if data.get("version") == 2:
            return [Path(str(data["path"]))]
        return [Path(p) for p in data["dirs"].values()]

    def leftover_cgroups(self) -> list[Path]:
        found: list[Path] = []
        for root in self.cgroup_dirs():
            with contextlib.suppress(OSError):
                found += [p for p in root.iterdir() if p.name.startswith(self.prefix)]
        return found


# -- measurements ------------------------------------------------------------------------------


def progress(console: Console, message: str) -> None:
    console.print(f"[dim]{message}[/dim]")


def run_exec_true(runtime: Runtime, handle: SidecarHandle, errors: list[str]) -> float:
    execution, seconds = timed(lambda: runtime.exec(handle, ["true"]).collect())
    result, _out, err = execution
    if result.exit_code != 0 and len(errors) < 10:
        errors.append(
            f"{runtime.name}: `true` in {handle.id} exited {result.exit_code}: "
            f"{err.decode(errors='replace').strip()[:200]}"
        )
    return float(seconds)


def idle_memory(
    report: Report,
    runtime: Runtime,
    handles: list[SidecarHandle],
    when: str,
) -> None:
    cgroup = report.figure(runtime.name, f"idle mem after {when}: cgroup", "MiB")
    rss = report.figure(runtime.name, f"idle mem after {when}: RSS", "MiB")
    total = report.figure(
        runtime.name,
        f"idle mem after {when}: cgroup+RSS",
        "MiB",
        Target(5.0, "p50 < 5 MiB"),
    )
    procs: list[int] = []
    for handle in handles[:MEMORY_SAMPLES]:
        stats = runtime.stats(handle)
        cgroup.samples.append(stats.memory_bytes / MIB)
        rss.samples.append(stats.rss_bytes / MIB)
        total.samples.append((stats.memory_bytes + stats.rss_bytes) / MIB)
        procs.append(stats.processes)
    if procs:
        report.notes.append(
            f"{runtime.name}: processes per idle sidecar after {when}: "
            f"{min(procs)}..{max(procs)} (over {len(procs)} sidecars)"
        )


def bench_namespace(
    report: Report, sidecars: Sidecars, spec: SidecarSpec, n: int, console: Console
) -> dict[str, Figure]:
    runtime = sidecars.runtime
    figs = {
        "create": report.figure(runtime.name, "create", target=Target(0.010, "p50 < 10 ms")),
        "exec_first": report.figure(runtime.name, "exec true (first in a sidecar)"),
        "exec": report.figure(runtime.name, "exec true (round trip)"),
        "suspend": report.figure(runtime.name, "suspend", target=Target(0.005, "p50 < 5 ms")),
        "resume": report.figure(runtime.name, "resume", target=Target(0.005, "p50 < 5 ms")),
        "reset": report.figure(runtime.name, "reset"),
        "destroy": report.figure(runtime.name, "destroy"),
    }
    cold, cold_s = sidecars.create(spec)
    run_exec_true(runtime, cold, report.errors)
    sidecars.destroy(cold)
    report.notes.append(
        f"namespace: first (cold) create, not counted: {cold_s * 1e3:.2f} ms "
        "(builds the skeleton layer once per state dir)"
    )

    progress(console, f"namespace: create x{n}")
    handles: list[SidecarHandle] = []
    for _ in range(n):
        handle, seconds = sidecars.create(spec)
        handles.append(handle)
        figs["create"].samples.append(seconds)
    progress(console, "namespace: idle memory after create")
    idle_memory(report, runtime, handles, "create")
    # The first command in a sidecar pays for what later ones reuse (with --zygote: the
    # sidecar's exec helper), so it is a figure of its own.
    for name, what in (("exec_first", "the first in each sidecar"), ("exec", "again")):
        progress(console, f"namespace: exec true x{n}, {what}")
        for i in range(n):
            figs[name].samples.append(
                run_exec_true(runtime, handles[i % len(handles)], report.errors)
            )
    progress(console, f"namespace: suspend x{n}")
    for handle in handles:
        start = time.perf_counter()
        runtime.suspend(handle)
        figs["suspend"].samples.append(time.perf_counter() - start)
    progress(console, "namespace: idle memory after suspend")
    idle_memory(report, runtime, handles, "suspend")
    progress(console, f"namespace: resume x{n}")
    for handle in handles:
        start = time.perf_counter()
        runtime.resume(handle)
        figs["resume"].samples.append(time.perf_counter() - start)
    progress(console, f"namespace: reset x{n}")
    for i, handle in enumerate(handles):
        handles[i], seconds = sidecars.reset(handle)
        figs["reset"].samples.append(seconds)
    dead = [h.id for h in handles if not runtime.is_alive(h)]
    if dead:
        report.errors.append(f"namespace: {len(dead)} sidecars dead after reset: {dead[:5]}")
    progress(console, f"namespace: destroy x{n}")
    for handle in handles:
        figs["destroy"].samples.append(sidecars.destroy(handle))
    return figs


def bench_process(
    report: Report, sidecars: Sidecars, spec: SidecarSpec, n: int, console: Console
) -> dict[str, Figure]:
    runtime = sidecars.runtime
    figs = {
        "create": report.figure(runtime.name, "create (copies the layer)"),
        "exec": report.figure(runtime.name, "exec true (round trip)"),
        "destroy": report.figure(runtime.name, "destroy"),
    }
    cold, cold_s = sidecars.create(spec)
    run_exec_true(runtime, cold, report.errors)
    sidecars.destroy(cold)
    report.notes.append(f"process: first (cold) create, not counted: {cold_s * 1e3:.2f} ms")
    progress(console, f"process: create x{n}")
    handles: list[SidecarHandle] = []
    for _ in range(n):
        handle, seconds = sidecars.create(spec)
        handles.append(handle)
        figs["create"].samples.append(seconds)
    progress(console, f"process: exec true x{n}")
    for i in range(n):
        figs["exec"].samples.append(
            run_exec_true(runtime, handles[i % len(handles)], report.errors)
        )
    progress(console, f"process: destroy x{n}")
    for handle in handles:
        figs["destroy"].samples.append(sidecars.destroy(handle))
    return figs


# -- the machine and what is left behind -------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def machine_info(cgroup_version: int | None) -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "cgroup_version": cgroup_version,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def remove_created_roots(dirs: list[Path], existed: set[Path]) -> list[Path]:
    """rmdir the runtime's cgroup roots this run created; rmdir refuses if anyone uses them."""
    left: list[Path] = []
    for path in dirs:
        if path in existed or not path.is_dir():
            continue
        try:
            path.rmdir()
        except OSError:
            left.append(path)
    return left


# -- output ------------------------------------------------------------------------------------


def render(report: Report, console: Console) -> None:
    m = report.machine
    version = m["cgroup_version"]
    cgroup = f"cgroup=v{version}" if version else "cgroup=n/a (no namespace runtime)"
    console.print(
        f"[bold]microbuild sidecar runtime benchmark[/bold]  N={report.n}  "
        f"nproc={m['nproc']}  kernel={m['kernel']}  {cgroup}  "
        f"python={m['python']}"
    )
    for key in ("layer", "state_dir"):
        if key in m:
            console.print(f"{key}: {m[key]}")
    if report.namespace_unavailable:
        console.print(f"[yellow]namespace runtime unavailable: {report.namespace_unavailable}")
    table = Table(show_lines=False)
    for name, justify in (
        ("operation", "left"),
        ("runtime", "left"),
        ("unit", "left"),
        ("n", "right"),
        ("median", "right"),
        ("p95", "right"),
        ("min", "right"),
        ("max", "right"),
        ("baseline p50", "right"),
        ("ratio base/ns", "right"),
        ("target", "left"),
        ("met", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    previous: tuple[str, str] | None = None
    for fig in report.figures:
        if previous is not None and previous != (fig.runtime, fig.unit):
            table.add_section()
        previous = (fig.runtime, fig.unit)
        if not fig.samples:
            table.add_row(fig.operation, fig.runtime, fig.unit, "0", *["-"] * 8)
            continue
        base = fig.baseline
        ratio = fig.ratio
        met = ""
        if fig.target is not None:
            met = "[green]met[/green]" if fig.target.met(fig.median) else "[red]not met[/red]"
        table.add_row(
            fig.operation,
            fig.runtime,
            fig.unit,
            str(len(fig.samples)),
            f"{fig.shown(fig.median):.2f}",
            f"{fig.shown(fig.p95):.2f}",
            f"{fig.shown(min(fig.samples)):.2f}",
            f"{fig.shown(max(fig.samples)):.2f}",
            f"{base.shown(base.median):.2f}" if base is not None and base.samples else "",
            f"{ratio:.2f}x" if ratio is not None else "",
            fig.target.label if fig.target else "",
            met,
        )
    console.print(table)
    console.print(
        "ratio = baseline (process runtime) median / namespace median: >1 means the namespace "
        "runtime is faster. Times in ms (perf_counter); memory in MiB; targets judged on the "
        "median; idle target judged on cgroup+RSS (conservative: RSS also counts shared "
        "library pages the cgroup is not charged for)."
    )
    for note in report.notes:
        console.print(f"- {note}")
    for error in report.errors:
        console.print(f"[red]! {error}[/red]")


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100, help="iterations per figure (100)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--zygote",
        action="store_true",
        help="fork sidecar processes from the zygote helper, as the host does",
    )
    parser.add_argument(
        "--disk",
        default="none",
        help='the sidecars\' disk limit, as [sidecar] disk says it ("10GiB"; default none)',
    )
    args = parser.parse_args(argv)
    disk = None if args.disk.strip().lower() == "none" else parse_size(args.disk)
    n: int = max(1, args.n)
    # Not a terminal (piped, captured): don't squeeze the table into 80 columns.
    out = Console(width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True)
    signal.signal(signal.SIGTERM, raise_interrupt)
    # Also when started in the background by a shell, which would have SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    state = Path(tempfile.mkdtemp(prefix="mb_bench_", dir="/var/tmp"))
    token = secrets.token_hex(3)
    all_sidecars: list[Sidecars] = []
    report = Report(machine={}, n=n)
    cgroup_version: int | None = None
    roots_existed: set[Path] = set()
    fds_before = open_fds()
    interrupted = False
    try:
        progress(err, f"state dir {state}: building the snapshot layer")
        layer = state / "layer"
        layer_info, layer_s = timed(lambda: make_layer(layer))
        report.machine["layer"] = (
            f"{layer_info['files']} files ({layer_info['venv_files']} in .venv), "
            f"{layer_info['mib']:.1f} MiB, built in {layer_s:.1f} s"
        )
        report.machine["state_dir"] = str(state)
        spec = SidecarSpec(layers=(str(layer),), network="none", limits=LIMITS, disk=disk)
        report.machine["disk"] = args.disk

        namespace: Runtime | None = None
        try:
            namespace = get_runtime("namespace", state / "namespace", zygote=args.zygote)
            report.machine["forks"] = "zygote helper" if args.zygote else "this process"
        except RuntimeUnavailable as exc:
            report.namespace_unavailable = str(exc)
            err.print(f"[yellow]namespace runtime unavailable: {exc}; measuring process only")
        process = get_runtime("process", state / "process")
        ns_figs: dict[str, Figure] = {}
        if namespace is not None:
            ns = Sidecars(namespace, f"bn_{token}")
            all_sidecars.append(ns)
            root = getattr(namespace, "cgroup_root", None)
            cgroup_version = getattr(root, "version", None)
            roots_existed = {p for p in ns.cgroup_dirs() if p.is_dir()}
            try:
                ns_figs = bench_namespace(report, ns, spec, n, err)
            except Exception as exc:
                report.errors.append(f"namespace benchmark stopped: {type(exc).__name__}: {exc}")
                err.print(traceback.format_exc())
        pr = Sidecars(process, f"bp_{token}")
        all_sidecars.append(pr)
        pr_figs: dict[str, Figure] = {}
        try:
            pr_figs = bench_process(report, pr, spec, n, err)
        except Exception as exc:
            report.errors.append(f"process benchmark stopped: {type(exc).__name__}: {exc}")
            err.print(traceback.format_exc())
        for key in ("create", "exec", "destroy"):
            if key in ns_figs and key in pr_figs:
                ns_figs[key].baseline = pr_figs[key]
        left = namespace.sidecars_dir if namespace is not None else None
        if left is not None and left.is_dir() and any(left.iterdir()):
            names = sorted(p.name for p in left.iterdir())
            report.errors.append(f"namespace sidecars dir not empty after destroy: {names[:5]}")
    except KeyboardInterrupt:
        interrupted = True
        err.print("[yellow]interrupted: cleaning up")
    finally:
        with signals_ignored():
            for sidecars in all_sidecars:
                report.errors += sidecars.cleanup()
            leftovers = [p for s in all_sidecars for p in s.leftover_cgroups()]
            if leftovers:
                report.errors.append(f"cgroups left after cleanup: {[str(p) for p in leftovers]}")
            roots = [p for s in all_sidecars for p in s.cgroup_dirs()]
            kept = remove_created_roots(roots, roots_existed)
            if kept:
                report.notes.append(f"cgroup roots still in use, kept: {[str(p) for p in kept]}")
            host_mounts = mounts_under(state)
            if host_mounts:
                report.errors.append(f"{host_mounts} mounts under {state} in the host namespace")
            shutil.rmtree(state, ignore_errors=True)
            if state.exists():
                report.errors.append(f"could not remove the state dir {state}")
    after = (
        f"after cleanup: state dir removed={not state.exists()}, "
        f"fds leaked by this process={open_fds() - fds_before}"
    )
    inits = sum(len(s.inits) for s in all_sidecars)
    if inits:
        zombies = sum(s.unreaped_inits() for s in all_sidecars)
        after += (
            f", init processes of destroyed sidecars still zombies={zombies} of {inits} "
            "(orphaned to the host's pid 1, which must reap them)"
        )
    report.notes.append(after)
    report.machine |= machine_info(cgroup_version)
    return _common.finish(report, render, out, as_json=args.json, interrupted=interrupted)


if __name__ == "__main__":
    sys.exit(main())
