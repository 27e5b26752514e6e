"""Benchmark of the edit-validate loop on a real project, run by hand:

    .venv/bin/python benchmarks/loop.py [--project pluggy] [--n 5] [--json]

The same real project (a pinned PyPI sdist committed to a git repository, as the end-to-end
tests use: tests/realproject.py), configured by `microbuild init` (only its `tests` check kept),
and the same one-line change every iteration: a comment line appended to the package's
`__init__.py`, different each time so the cache never answers. N iterations of:

* (a) CI-style: `git clone` of the project repository into a fresh temp dir, the change written
  into the clone, the snapshot's setup commands from microbuild.toml run there (a fresh venv,
  then the same `pip install -e ...`, pip's download cache warm as on most CI runners), then
  the checks' commands (`python -m pytest -x -q`);
* (b) warm `microbuild validate --json` in the project (its snapshot and sidecar already made
  by an untimed validate; the change synced incrementally), as a subprocess, handed by the
  launcher to the command server (started by the first validate, as for any user; its tree
  watcher in place after two more untimed ones);
* (c) for the breakdown only: the same validate in this process with timers around its phases
  (host connection, git, each host round trip, the run), plus `python -c pass` and
  `python -m microbuild --version` for interpreter start and CLI imports.

Wall time: perf_counter around the subprocesses. Core-seconds: (a) `RUSAGE_CHILDREN` deltas;
(b) the CLI's own `RUSAGE_CHILDREN` delta (the launcher, or a whole CLI and its git children)
+ the command server's, the host's and its zygote's CPU deltas from /proc/PID/stat (the
server's and the host's utime+stime+cutime+cstime: the server reaps its workers, which reap
their git processes; the zygote's utime+stime: the processes it reaps ran in the sidecar's
cgroup) + the sidecar cgroup's CPU delta. Median and p95 of each, the ratios (a)/(b) of the
medians (target >= 20x each) and the warm overhead = (b)'s wall time minus its checks' own
`duration_s` (target < 150 ms).

Nothing here asserts on time. The sidecars are destroyed, the host stopped (`microbuild host
stop`, then SIGTERM/SIGKILL to the pid in host.json) and the temp dir removed at the end, also
on Ctrl-C, SIGTERM and errors. Needs root, namespaces and cgroups, and the network (pip).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import _common
from _common import raise_interrupt, signals_ignored
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
RATIO_TARGET = 20.0
OVERHEAD_TARGET_S = 0.150
CALL_TIMEOUT_S = 900.0
HOST_STOP_TIMEOUT_S = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The host the CLI starts must stay up across the slow CI-style runs between validates.
HOST_IDLE_EXIT_S = "1800"
# Tools the dropped lint/types checks needed; the tests check does not.
DROPPED_TOOLS = ("ruff", "mypy")
# iniconfig's tests use `py.test.mark`, which only the real `py` has; it does not declare it
# (tox.ini's `deps = pytest` pulled it in when pytest depended on it). The project's state.
EXTRA_REQUIREMENTS = {"iniconfig": "py==1.11.0"}


def load_realproject() -> ModuleType:
    """tests/realproject.py: the same pinned projects as the end-to-end tests."""
    sys.path.insert(0, str(REPO / "tests"))
    return importlib.import_module("realproject")


# -- figures -----------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p95(values: list[float]) -> float:
    return _common.p95(values) if values else float("nan")


@dataclass
class Iteration:
    ci_wall: float = 0.0
    ci_cpu: float = 0.0
    ci_steps: dict[str, float] = field(default_factory=dict)
    mb_wall: float = 0.0
    mb_cpu: float = 0.0
    mb_cpu_parts: dict[str, float] = field(default_factory=dict)
    mb_checks_s: float = 0.0
    mb_reported_s: float = 0.0
    """validate's own `duration_s` (in the CLI, after its imports)."""
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def overhead(self) -> float:
        return self.mb_wall - self.mb_checks_s


@dataclass
class Report:
    project: str
    n: int
    machine: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    iterations: list[Iteration] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def series(self, fn: Callable[[Iteration], float]) -> list[float]:
        return [fn(it) for it in self.iterations]

    def keyed(self, fn: Callable[[Iteration], dict[str, float]]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for it in self.iterations:
            for key, value in fn(it).items():
                out.setdefault(key, []).append(value)
        return out

    def summary(self) -> dict[str, Any]:
        ci_wall = self.series(lambda it: it.ci_wall)
        ci_cpu = self.series(lambda it: it.ci_cpu)
        mb_wall = self.series(lambda it: it.mb_wall)
        mb_cpu = self.series(lambda it: it.mb_cpu)
        overhead = self.series(lambda it: it.overhead)
        wall_ratio = median(ci_wall) / median(mb_wall) if mb_wall else float("nan")
        cpu_ratio = median(ci_cpu) / median(mb_cpu) if mb_cpu else float("nan")
        return {
            "ci_wall_s": _stats(ci_wall),
            "ci_core_s": _stats(ci_cpu),
            "validate_wall_s": _stats(mb_wall),
            "validate_core_s": _stats(mb_cpu),
            "validate_checks_s": _stats(self.series(lambda it: it.mb_checks_s)),
            "validate_reported_duration_s": _stats(self.series(lambda it: it.mb_reported_s)),
            "ratio_wall": wall_ratio,
            "ratio_core_s": cpu_ratio,
            "ratio_target": f">= {RATIO_TARGET:g}x",
            "ratio_wall_met": wall_ratio >= RATIO_TARGET,
            "ratio_core_s_met": cpu_ratio >= RATIO_TARGET,
            "warm_overhead_s": _stats(overhead),
            "warm_overhead_target": f"< {OVERHEAD_TARGET_S * 1e3:g} ms (median)",
            "warm_overhead_met": bool(overhead) and median(overhead) < OVERHEAD_TARGET_S,
            "ci_steps_median_s": {
                k: median(v) for k, v in self.keyed(lambda it: it.ci_steps).items()
            },
            "validate_core_s_median": {
                k: median(v) for k, v in self.keyed(lambda it: it.mb_cpu_parts).items()
            },
            "validate_wall_median_s": {
                "before and after validate's own duration_s (interpreter, imports, exit)": median(
                    self.series(lambda it: it.mb_wall - it.mb_reported_s)
                ),
                "validate's own duration_s minus its checks": median(
                    self.series(lambda it: it.mb_reported_s - it.mb_checks_s)
                ),
            },
            "overhead_phases_median_s": {
                k: median(v) for k, v in self.keyed(lambda it: it.phases).items()
            },
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "project": self.project,
            "n": self.n,
            "config": self.config,
            "summary": self.summary() if self.iterations else None,
            "iterations": [it.__dict__ for it in self.iterations],
            "notes": self.notes,
            "errors": self.errors,
        }


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"median": median(values), "p95": p95(values), "min": min(values), "max": max(values)}


# -- processes ---------------------------------------------------------------------------------


def run(
    argv: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = CALL_TIMEOUT_S,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode} in {cwd}: {tail}")
    return proc


def cli_env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("MICROBUILD_STATE_DIR", "MICROBUILD_HOST")
    }
    env["MICROBUILD_HOST_IDLE_EXIT"] = HOST_IDLE_EXIT_S
    # (b) is validate as an agent gets it: through the warm command server.
    env["MICROBUILD_COMMAND_SERVER"] = "1"
    env["MICROBUILD_COMMAND_SERVER_IDLE_EXIT"] = HOST_IDLE_EXIT_S
    return env


def microbuild(
    state: Path, cwd: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "microbuild", "--state-dir", str(state), *args]
    return run(argv, cwd, env=cli_env(), check=check)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int, with_children: bool) -> float:
    """utime+stime (and, if asked, cutime+cstime of reaped children) of a process, in s."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def find_zygote(host_pid: int) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == host_pid and b"microbuild.runtime.zygote" in cmdline:
            return int(entry)
    return None


def host_pid(state: Path) -> int:
    return int(json.loads((state / "host.json").read_text())["pid"])


def server_pid(state: Path) -> int | None:
    """The command server's pid (it forks the worker that runs each validate)."""
    for info in state.glob("cli-*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            return int(json.loads(info.read_text())["pid"])
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- the project -------------------------------------------------------------------------------


@dataclass
class Setup:
    root: Path
    state: Path
    project: Path
    edit_file: Path
    original: bytes
    setup: list[str]
    checks: list[dict[str, Any]]
    env: dict[str, str]
    host_pid: int = 0
    zygote_pid: int | None = None
    server_pid: int | None = None
    cgroup: Any = None
    imports: list[str] = field(default_factory=list)


def configure(name: str, config: Path) -> None:
    """`microbuild init`'s config with only the tests check (and what it alone needs)."""
    text = config.read_text()
    head, *checks = text.split("\n[[check]]\n")
    kept = [c for c in checks if re.search(r'^name = "tests"$', c, re.M)]
    if len(kept) != 1:
        raise RuntimeError(f"microbuild init wrote no tests check:\n{text}")
    dropped = len(checks) - len(kept)
    data = tomllib.loads(head)
    for cmd in data["snapshot"]["setup"]:
        if "pip install" not in cmd:
            continue
        new = cmd
        if dropped:
            new = " ".join(w for w in new.split() if w not in DROPPED_TOOLS)
        if name in EXTRA_REQUIREMENTS:
            new = f"{new} {EXTRA_REQUIREMENTS[name]}"
        head = head.replace(json.dumps(cmd), json.dumps(new))
    config.write_text(head + f"\n[[check]]\n{kept[0]}")


def prepare(report: Report, root: Path, console: Console) -> Setup:
    realproject = load_realproject()
    name = report.project
    spec = realproject.PROJECTS[name]
    console.print(f"[dim]checking out {name} {spec.version} (pinned sdist, committed)[/dim]")
    try:
        project = Path(realproject.checkout(name, root / "src"))
        realproject.check_index_reachable(spec)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pytest.skip / pytest.fail outside pytest: no network
        raise RuntimeError(f"cannot get {name}: {exc}") from None
    state = root / "state"
    microbuild(state, project, "init")
    config = project / "microbuild.toml"
    configure(name, config)
    data = tomllib.loads(config.read_text())
    report.config = {
        "microbuild.toml": config.read_text(),
        "changed_file": f"src/{name}/__init__.py",
    }
    edit_file = project / "src" / name / "__init__.py"
    return Setup(
        root=root,
        state=state,
        project=project,
        edit_file=edit_file,
        original=edit_file.read_bytes(),
        setup=list(data["snapshot"]["setup"]),
        checks=list(data["check"]),
        env={str(k): str(v) for k, v in data.get("sidecar", {}).get("env", {}).items()},
    )


def change(setup: Setup, path: Path, token: str) -> None:
    path.write_bytes(setup.original + f"# microbuild loop benchmark {token}\n".encode())


# -- (a) CI-style ------------------------------------------------------------------------------


def ci_run(setup: Setup, token: str, it: Iteration) -> None:
    clone = setup.root / "ci" / token
    clone.parent.mkdir(exist_ok=True)
    env = {
        **os.environ,
        **setup.env,
        "PATH": f"{clone / '.venv' / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(key, None)
    cpu0 = children_cpu()
    start = last = time.perf_counter()

    def step(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        it.ci_steps[name] = it.ci_steps.get(name, 0.0) + now - last
        last = now

    try:
        run(["git", "clone", "-q", str(setup.project), str(clone)], setup.root)
        change(setup, clone / setup.edit_file.relative_to(setup.project), token)
        step("git clone")
        for cmd in setup.setup:
            run(["/bin/sh", "-c", cmd], clone, env=env)
            step("setup: venv" if "venv" in cmd and "pip" not in cmd else "setup: install")
        for check in setup.checks:
            run(["/bin/sh", "-c", str(check["command"])], clone, env=env)
            step(f"check: {check['name']}")
        it.ci_wall = time.perf_counter() - start
        it.ci_cpu = children_cpu() - cpu0
    finally:
        shutil.rmtree(clone, ignore_errors=True)


# -- (b) warm validate -------------------------------------------------------------------------


def locate(setup: Setup, snapshot_id: str) -> None:
    """The host's and zygote's pids, and the sidecar's cgroup, from the state dir."""
    from microbuild.runtime import cgroup
    from microbuild.store import Store

    setup.host_pid = host_pid(setup.state)
    setup.zygote_pid = find_zygote(setup.host_pid)
    store = Store(setup.state / "state.db")
    try:
        records = [
            r
            for r in store.list_sidecars(str(setup.project))
            if r.snapshot_id == snapshot_id and r.state in ("running", "suspended")
        ]
    finally:
        store.close()
    if len(records) != 1:
        raise RuntimeError(f"expected one sidecar of {snapshot_id}, found {len(records)}")
    setup.cgroup = cgroup.from_json(records[0].handle["cgroup"])


def cpu_sample(setup: Setup) -> dict[str, float]:
    sample = {
        "CLI + its children": children_cpu(),
        "host": proc_cpu(setup.host_pid, with_children=True),
        "sidecar cgroup": float(setup.cgroup.cpu_usage_s()),
    }
    if setup.zygote_pid is not None:
        sample["zygote"] = proc_cpu(setup.zygote_pid, with_children=False)
    if setup.server_pid is not None:
        # Its own CPU and its reaped workers' (each with the git processes it reaped).
        sample["command server + workers"] = proc_cpu(setup.server_pid, with_children=True)
    return sample


def validate_json(setup: Setup) -> dict[str, Any]:
    proc = microbuild(setup.state, setup.project, "validate", "--json", check=False)
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        result = {}
    if proc.returncode != 0 or result.get("status") != "passed":
        raise RuntimeError(
            f"validate exited {proc.returncode}: {result.get('report') or proc.stderr.strip()}"
        )
    return result


def mb_run(setup: Setup, it: Iteration) -> None:
    if setup.host_pid != host_pid(setup.state) or not pid_alive(setup.host_pid):
        raise RuntimeError("the host changed between iterations (did it exit when idle?)")
    if setup.server_pid is not None and server_pid(setup.state) != setup.server_pid:
        raise RuntimeError("the command server changed between iterations")
    before = cpu_sample(setup)
    start = time.perf_counter()
    result = validate_json(setup)
    it.mb_wall = time.perf_counter() - start
    after = cpu_sample(setup)
    if result.get("cached"):
        raise RuntimeError("validate answered from the cache: the change did not reach it")
    it.mb_cpu_parts = {k: after[k] - before[k] for k in before}
    it.mb_cpu = sum(it.mb_cpu_parts.values())
    it.mb_checks_s = sum(float(c["duration_s"] or 0) for c in result["checks"])
    it.mb_reported_s = float(result["duration_s"])


# -- (c) where the warm overhead goes ----------------------------------------------------------


class PhaseTimer:
    """Timers around validate's phases, installed on the modules and classes it calls."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.times[name] = self.times.get(name, 0.0) + seconds

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)

        return timed

    def wrap_stream(self, name: str, fn: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            start = time.perf_counter()
            try:
                yield from fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from microbuild import client, config, sync

        patches: list[tuple[Any, str, Callable[..., Any]]] = [
            (client, "connect", self.wrap("connect (health probe)", client.connect)),
            (config, "find_project", self.wrap("find + load microbuild.toml", config.find_project)),
            (sync, "describe_snapshot", self.wrap("snapshot key (git)", sync.describe_snapshot)),
            (sync, "tree_id", self.wrap("tree_id (git)", sync.tree_id)),
            (sync, "has_object", self.wrap("diff (git)", sync.has_object)),
            (sync, "tree_diff", self.wrap("diff (git)", sync.tree_diff)),
        ]
        for method, label in (
            ("resolve_snapshot", "resolve snapshot (round trip)"),
            ("cached_run", "cache lookup (round trip)"),
            ("list_sidecars", "find sidecar (round trip)"),
            ("sync", "sync (round trip + git apply)"),
        ):
            patches.append(
                (client.Client, method, self.wrap(label, getattr(client.Client, method)))
            )
        patches.append(
            (client.Client, "microbuild", self.wrap_stream("run", client.Client.microbuild))
        )
        saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
        try:
            for owner, attr, replacement in patches:
                setattr(owner, attr, replacement)
            yield
        finally:
            for owner, attr, original in saved:
                setattr(owner, attr, original)


def phases_run(setup: Setup, it: Iteration) -> None:
    """validate in this process (imports already done), timed phase by phase; then the
    interpreter start and the CLI's imports from subprocesses."""
    from microbuild.cli.main import cli

    timer = PhaseTimer()
    out = io.StringIO()
    code: object = 0
    with timer.installed(), contextlib.redirect_stdout(out):
        start = time.perf_counter()
        try:
            cli.main(
                args=["--state-dir", str(setup.state), "validate", "--json", str(setup.project)],
                prog_name="microbuild",
                standalone_mode=False,
            )
        except SystemExit as exc:
            code = exc.code
        total = time.perf_counter() - start
    result = json.loads(out.getvalue())
    if code not in (0, None) or result["status"] != "passed" or result["cached"]:
        raise RuntimeError(f"in-process validate: exit {code}, {result.get('report')}")
    checks = sum(float(c["duration_s"] or 0) for c in result["checks"])
    phases = dict(timer.times)
    phases["run: host + round trip (run minus checks)"] = phases.pop("run", 0.0) - checks
    phases["other (config hash, report, JSON)"] = total - checks - sum(phases.values())
    start = time.perf_counter()
    run([sys.executable, "-c", "pass"], setup.root)
    interpreter = time.perf_counter() - start
    start = time.perf_counter()
    run([sys.executable, "-c", f"import {', '.join(setup.imports)}"], setup.root, env=cli_env())
    imports = time.perf_counter() - start
    it.phases = {
        "interpreter start (python -c pass)": interpreter,
        "imports a validate does (python -c 'import ...' minus the above)": imports - interpreter,
        **phases,
    }


def _top_level_imports(stderr: str) -> list[str]:
    """Modules imported at the top level (not by another import), from -X importtime."""
    found = re.findall(r"^import time:\s+\d+ \|\s+\d+ \| (\S+)$", stderr, re.M)
    return list(dict.fromkeys(found))


def validate_imports(setup: Setup) -> list[str]:
    """What a validate (not from the cache) imports beyond a bare interpreter, in order."""
    change(setup, setup.edit_file, f"imports-{secrets.token_hex(4)}")
    argv = [sys.executable, "-X", "importtime", "-m", "microbuild", "--state-dir"]
    proc = run([*argv, str(setup.state), "validate", "--json"], setup.project, env=cli_env())
    bare = run([sys.executable, "-X", "importtime", "-c", "pass"], setup.root)
    skip = set(_top_level_imports(bare.stderr)) | {"runpy"}
    return [m for m in _top_level_imports(proc.stderr) if m not in skip]


# -- output ------------------------------------------------------------------------------------


def _met(flag: bool) -> str:
    return "[green]met[/green]" if flag else "[red]not met[/red]"


def render(report: Report, console: Console) -> None:
    m = report.machine
    console.print(
        f"[bold]microbuild edit-validate loop[/bold]  project={report.project}  "
        f"N={len(report.iterations)}  nproc={m.get('nproc')}  kernel={m.get('kernel')}  "
        f"python={m.get('python')}"
    )
    if report.iterations:
        s = report.summary()
        table = Table(title="CI-style (a) vs warm microbuild validate (b)")
        for name in ("measure", "median", "p95", "min", "max", "target", "met"):
            table.add_column(name, justify="left" if name in ("measure", "target") else "right")

        def row(label: str, stats: dict[str, float], unit: str, scale: float = 1.0) -> None:
            cells = [f"{stats[k] * scale:.3f}{unit}" for k in ("median", "p95", "min", "max")]
            table.add_row(label, *cells, "", "")

        row("(a) CI-style wall", s["ci_wall_s"], " s")
        row("(a) CI-style core-seconds", s["ci_core_s"], " s")
        row("(b) validate wall", s["validate_wall_s"], " s")
        row("(b) validate core-seconds", s["validate_core_s"], " s")
        row("(b) its checks' own time", s["validate_checks_s"], " s")
        table.add_row(
            "ratio (a)/(b) wall",
            f"{s['ratio_wall']:.1f}x",
            "",
            "",
            "",
            s["ratio_target"],
            _met(s["ratio_wall_met"]),
        )
        table.add_row(
            "ratio (a)/(b) core-seconds",
            f"{s['ratio_core_s']:.1f}x",
            "",
            "",
            "",
            s["ratio_target"],
            _met(s["ratio_core_s_met"]),
        )
        o = s["warm_overhead_s"]
        table.add_row(
            "warm overhead: (b) wall - checks",
            *(f"{o[k] * 1e3:.0f} ms" for k in ("median", "p95", "min", "max")),
            s["warm_overhead_target"],
            _met(s["warm_overhead_met"]),
        )
        console.print(table)

        detail = Table(title="Medians by part")
        detail.add_column("part")
        detail.add_column("median", justify="right")
        for key, value in s["ci_steps_median_s"].items():
            detail.add_row(f"(a) {key}", f"{value:.3f} s")
        for key, value in s["validate_core_s_median"].items():
            detail.add_row(f"(b) core-seconds: {key}", f"{value:.3f} s")
        for key, value in s["validate_wall_median_s"].items():
            detail.add_row(f"(b) wall: {key}", f"{value * 1e3:.1f} ms")
        phases = s["overhead_phases_median_s"]
        for key, value in phases.items():
            detail.add_row(f"(c) overhead: {key}", f"{value * 1e3:.1f} ms")
        explained = sum(phases.values())
        detail.add_row("(c) overhead: sum of the medians", f"{explained * 1e3:.1f} ms")
        detail.add_row(
            "(c) not explained: (b) overhead median - the sum (exit, click, ...)",
            f"{(s['warm_overhead_s']['median'] - explained) * 1e3:.1f} ms",
        )
        console.print(detail)
        console.print(
            "(a) and (b) alternate, one change each per iteration; ratios are of the medians. "
            "(c) is the same validate code in this process with timers around its phases, "
            "plus interpreter start and CLI imports from subprocesses: a breakdown of (b)'s "
            "overhead, not part of (b)'s figures."
        )
    for note in report.notes:
        console.print(f"- {note}")
    for error in report.errors:
        console.print(f"[red]! {error}[/red]")


# -- main --------------------------------------------------------------------------------------


def measure(report: Report, root: Path, console: Console) -> Setup:
    setup = prepare(report, root, console)
    console.print("[dim]untimed validate: builds the snapshot and the sidecar[/dim]")
    first = validate_json(setup)
    locate(setup, str(first["snapshot"]))
    # As for any user: the first validates run in their own processes, one of them starts the
    # command server, the next goes through it and has the tree watched, and from the one after
    # on only the changes are restaged.
    for token in ("warm-server-1", "warm-server-2", "warm-server-3"):
        deadline = time.monotonic() + 10
        while server_pid(setup.state) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        change(setup, setup.edit_file, token)
        validate_json(setup)
    setup.server_pid = server_pid(setup.state)
    if setup.server_pid is None:
        report.notes.append("no command server started: (b) ran in fresh processes")
    console.print("[dim]untimed warm-up: one change through (b), (a) and (c)[/dim]")
    warm = Iteration()
    change(setup, setup.edit_file, "warm-up")
    mb_run(setup, warm)
    ci_run(setup, "warm-up", warm)
    setup.imports = validate_imports(setup)
    change(setup, setup.edit_file, "warm-up-c")
    phases_run(setup, warm)
    for i in range(report.n):
        it = Iteration()
        token = f"{i}-{secrets.token_hex(4)}"
        change(setup, setup.edit_file, token)
        console.print(f"[dim]iteration {i + 1}/{report.n}: (b) validate[/dim]")
        mb_run(setup, it)
        console.print(f"[dim]iteration {i + 1}/{report.n}: (a) CI-style[/dim]")
        ci_run(setup, token, it)
        change(setup, setup.edit_file, f"{token}-c")
        phases_run(setup, it)
        report.iterations.append(it)
    setup.edit_file.write_bytes(setup.original)
    report.notes.append(
        f"the change: one comment line appended to {report.config['changed_file']}; (a) clones "
        "the repository (a local clone) and writes the same file; pip's download cache is warm "
        "(an untimed CI-style run first), as on most CI runners"
    )
    report.notes.append(f"imports a validate does (timed in (c)): {', '.join(setup.imports)}")
    report.notes.append(
        f"host pid {setup.host_pid}, zygote pid {setup.zygote_pid}, sidecar cgroup "
        f"{json.dumps(setup.cgroup.to_json())}"
    )
    return setup


def cleanup(root: Path, report: Report, known_host: int | None) -> None:
    state = root / "state"
    if (state / "state.db").exists():
        listed = microbuild(state, root, "sidecar", "list", "-a", "--json", check=False)
        if listed.returncode == 0:
            for record in json.loads(listed.stdout):
                gone = microbuild(state, root, "sidecar", "destroy", record["id"], check=False)
                if gone.returncode != 0:
                    report.errors.append(f"destroying {record['id']}: {gone.stderr.strip()}")
        else:
            report.errors.append(f"listing sidecars: {listed.stderr.strip()}")
    server = server_pid(state)
    if server is not None and pid_alive(server):
        os.kill(server, signal.SIGTERM)  # the command server this benchmark's CLI started
    pid = known_host
    with contextlib.suppress(OSError, ValueError, KeyError):
        pid = host_pid(state)
    if (state / "host.sock").exists():
        microbuild(state, root, "host", "stop", check=False)
    if pid is not None:
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)  # the host this benchmark's CLI started, by its pid
            deadline = time.monotonic() + HOST_STOP_TIMEOUT_S
            while pid_alive(pid) and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.05)
            if not pid_alive(pid):
                break
        if pid_alive(pid):
            report.errors.append(f"host pid {pid} did not exit")
    with open("/proc/self/mountinfo") as f:
        mounts = sum(1 for line in f if str(root) in line)
    if mounts:
        report.errors.append(f"{mounts} mounts left under {root}")
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        report.errors.append(f"could not remove {root}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--project", default="pluggy", help="pluggy (default) or iniconfig")
    parser.add_argument("--n", type=int, default=5, help="iterations (5)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    report = Report(project=args.project, n=max(1, args.n))
    out = Console(width=None if sys.stdout.isatty() else 140)
    err = Console(stderr=True)
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    report.machine = {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "loadavg": os.getloadavg()[0],
    }
    from microbuild.runtime.namespace import unavailable_reason

    reason = unavailable_reason()
    if reason:
        err.print(f"[yellow]namespace runtime unavailable: {reason}")
        return 0
    # Short: the sidecars' overlay mount options carry paths under it.
    root = Path(tempfile.mkdtemp(prefix="mbl_", dir="/var/tmp"))
    interrupted = False
    setup: Setup | None = None
    try:
        setup = measure(report, root, err)
    except KeyboardInterrupt:
        interrupted = True
        err.print("[yellow]interrupted: cleaning up")
    except Exception as exc:
        report.errors.append(f"benchmark stopped: {type(exc).__name__}: {exc}")
        err.print(traceback.format_exc())
    finally:
        with signals_ignored():
            cleanup(root, report, setup.host_pid if setup and setup.host_pid else None)
    report.notes.append(f"after cleanup: temp dir removed={not root.exists()}")
    return _common.finish(report, render, out, as_json=args.json, interrupted=interrupted)


if __name__ == "__main__":
    sys.exit(main())
