"""Benchmark of incremental tree sync, run by hand:

    .venv/bin/python benchmarks/sync.py [--n 20] [--sizes 2000,5000,10000,20000] [--json]

For generated git repositories of each size (files of a few hundred bytes spread over nested
directories, committed and packed), measures a 1-file change reaching a real sidecar through a
real host (`python -m microbuild --state-dir D serve` on a Unix socket, the snapshot built from
the repository through the API as `microbuild snapshot build` does):

* `tree_id` alone: the working tree as a git tree, through a one-off copy of the index,
  through the index kept between calls (what validate does in a fresh process), and through
  the kept index with an inotify watcher of the tree (microbuild.watch, registered in this
  process as the command server keeps one per project: only the changed paths restaged);
* ours, end to end: GET of the sidecar (the tree it holds, what changed in it) + `tree_id`
  (kept index, with the watcher) + `has_object` + `tree_diff` + `Client.sync` (the patch
  applied inside the sidecar), what `microbuild validate` does through the command server
  when the sidecar holds the last tree; and the same without the watcher;

and, in the same run, the baselines: `rsync -a --delete` of the working tree to a scratch copy
kept in sync (skipped, with a note, if rsync is missing), and a full copy of the working tree
into a fresh directory with `shutil.copytree` and with `cp -a`. Each iteration changes one
random file and runs every method once (round-robin, so load changes on the machine hit all of
them alike), after WARMUP untimed iterations. The working trees keep their git directory
elsewhere (`git init --separate-git-dir`), so the copies carry only the files.

The table gives median, p95, min and max per size and method, the ratio baseline / ours (> 1:
ours is that many times faster), and how each method grows from the smallest to the largest
size (largest median / smallest median). The design target: ours end to end < 50 ms at the
largest size (20k files by default) and flat in size (growth < 1.5x), shown as met / not met.
At the largest size, where tree_id's time goes (from GIT_TRACE2_PERF regions: the lstat of
every tracked file, the untracked scan, index reads and writes, process starts). Nothing here
asserts on time. The host is stopped, sidecars destroyed and temp dirs removed at the end, also
on Ctrl-C, SIGTERM and errors.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
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

from microbuild import sync, watch
from microbuild.client import Client, HostError
from microbuild.config import find_project
from microbuild.host.manager import SidecarManager

TARGET_S = 0.050
FLAT_GROWTH = 1.5
WARMUP = 2
FILES_PER_DIR = 20
HOST_START_TIMEOUT_S = 30.0
HOST_STOP_TIMEOUT_S = 10.0
GIT_IDENTITY = ["-c", "user.name=bench", "-c", "user.email=bench@example.com"]

TREE_ID = "tree_id alone (one-off index copy)"
TREE_ID_KEPT = "tree_id alone (kept index)"
TREE_ID_WATCHED = "tree_id alone (kept index + watcher)"
OURS_SCAN = "ours, no watcher: get+tree_id+diff+sync"
OURS = "ours: get+tree_id (watcher)+diff+sync"
RSYNC = "rsync -a --delete"
COPYTREE = "shutil.copytree"
CP = "cp -a"
METHODS = (TREE_ID, TREE_ID_KEPT, TREE_ID_WATCHED, OURS_SCAN, OURS, RSYNC, COPYTREE, CP)
BASELINES = (RSYNC, COPYTREE, CP)
STEPS = (
    "GET sidecar (tree held, changes in it)",
    "tree_id (kept index, watcher)",
    "has_object",
    "tree_diff",
    "Client.sync (git apply in the sidecar)",
)
EXEC_TRUE = "ref: Client.exec true"


# -- figures -----------------------------------------------------------------------------------


@dataclass
class Figure:
    size: int
    method: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"files": self.size, "method": self.method, "n": len(self.samples)}
        if self.samples:
            data |= {"median_ms": self.median * 1e3, "p95_ms": p95(self.samples) * 1e3}
            data |= {"min_ms": min(self.samples) * 1e3, "max_ms": max(self.samples) * 1e3}
        return data


@dataclass
class Report:
    n: int
    sizes: list[int]
    copy_n: int
    machine: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    patch_bytes: dict[int, list[int]] = field(default_factory=dict)
    setup_s: dict[int, float] = field(default_factory=dict)
    steps: dict[int, dict[str, float]] = field(default_factory=dict)
    profile: dict[str, float] = field(default_factory=dict)
    profile_size: int | None = None
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unavailable: str | None = None
    rsync: bool = True

    def figure(self, size: int, method: str) -> Figure | None:
        for fig in self.figures:
            if fig.size == size and fig.method == method and fig.samples:
                return fig
        return None

    def ratio(self, size: int, method: str) -> float | None:
        """Baseline median / ours end to end at the same size (> 1: ours is faster)."""
        fig, ours = self.figure(size, method), self.figure(size, OURS)
        if method not in BASELINES or fig is None or ours is None or ours.median <= 0:
            return None
        return fig.median / ours.median

    def growth(self, method: str) -> tuple[float, float, float] | None:
        """(median at the smallest size, at the largest, largest / smallest)."""
        measured = sorted(f.size for f in self.figures if f.method == method and f.samples)
        if len(measured) < 2:
            return None
        small, large = self.figure(measured[0], method), self.figure(measured[-1], method)
        assert small is not None and large is not None
        return small.median, large.median, large.median / small.median

    def target(self) -> tuple[bool, bool] | None:
        """(under TARGET_S at the largest size, flat in size) for ours end to end."""
        largest = self.figure(max(self.sizes), OURS)
        growth = self.growth(OURS)
        if largest is None or growth is None:
            return None
        return largest.median < TARGET_S, growth[2] < FLAT_GROWTH

    def to_json(self) -> dict[str, Any]:
        figures = []
        for fig in self.figures:
            data = fig.to_json()
            ratio = self.ratio(fig.size, fig.method)
            if ratio is not None:
                data["ratio_baseline_over_ours"] = ratio
            figures.append(data)
        growth = {}
        for method in METHODS:
            g = self.growth(method)
            if g is not None:
                growth[method] = {
                    "smallest_ms": g[0] * 1e3,
                    "largest_ms": g[1] * 1e3,
                    "ratio": g[2],
                }
        target = self.target()
        return {
            "machine": self.machine,
            "n": self.n,
            "copy_n": self.copy_n,
            "sizes": self.sizes,
            "namespace_unavailable": self.unavailable,
            "rsync_available": self.rsync,
            "figures": figures,
            "growth_largest_over_smallest": growth,
            "target": {
                "ours_end_to_end": f"median < {TARGET_S * 1e3:g} ms at {max(self.sizes)} files",
                "flat": f"largest / smallest median < {FLAT_GROWTH:g}",
                "fast_met": target[0] if target else None,
                "flat_met": target[1] if target else None,
            },
            "patch_bytes_median": {
                str(size): statistics.median(sizes) for size, sizes in self.patch_bytes.items()
            },
            "setup_s": {str(size): s for size, s in self.setup_s.items()},
            "ours_steps_median_ms": {
                str(size): {step: v * 1e3 for step, v in steps.items()}
                for size, steps in self.steps.items()
            },
            "tree_id_profile_ms": {k: v * 1e3 for k, v in self.profile.items()},
            "tree_id_profile_files": self.profile_size,
            "notes": self.notes,
            "errors": self.errors,
        }


# -- repositories ------------------------------------------------------------------------------


def run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env={**os.environ, **env} if env else None,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


def rel_path(i: int) -> str:
    """Nested like a package: 20 files per directory, 10 directories per level."""
    leaf = i // FILES_PER_DIR
    return f"pkg{leaf // 100:02d}/sub{leaf // 10 % 10}/mod{leaf % 10}/file{i:05d}.py"


def content(i: int, tag: str = "") -> str:
    body = "".join(f"VALUE_{i}_{k} = {i * 7 + k}\n" for k in range(12))
    return f'"""Generated module {i}."""\n\n{body}{tag}'


def make_repo(base: Path, size: int) -> tuple[Path, list[str]]:
    """A committed, packed repository of `size` files; its git dir beside the working tree."""
    work, gitdir = base / "work", base / "git"
    base.mkdir(parents=True)
    run(["git", "init", "-q", "--separate-git-dir", str(gitdir), str(work)])
    run(["git", "-C", str(work), "config", "gc.auto", "0"])  # no background gc mid-measurement
    (work / "microbuild.toml").write_text(
        # Its own setup line: the snapshot key differs per size, so each size gets a snapshot
        # built from its own repository (a sidecar then holds the committed tree).
        f'[snapshot]\nsetup = ["true {size} files"]\n\n[sidecar]\nmemory = "256MiB"\npids = 128\n'
    )
    (work / ".gitignore").write_text(".venv/\n*.log\n")
    files = []
    made: set[Path] = set()
    for i in range(size):
        rel = rel_path(i)
        path = work / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_text(content(i))
        files.append(rel)
    run(["git", "-C", str(work), "add", "-A"])
    run(["git", "-C", str(work), *GIT_IDENTITY, "commit", "-qm", "generated"])
    run(["git", "-C", str(work), "repack", "-adq"])
    run(["git", "-C", str(work), "prune-packed"])
    return work, files


# -- the host ----------------------------------------------------------------------------------


@dataclass
class Host:
    state: Path
    proc: subprocess.Popen[bytes]
    log: Path
    client: Client | None = None
    sidecars: list[str] = field(default_factory=list)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-3:])
        return ""


def start_host(state: Path) -> Host:
    state.mkdir(parents=True, mode=0o700)
    log = state / "host.log"
    argv = [sys.executable, "-m", "microbuild", "--state-dir", str(state), "serve"]
    argv += ["--listen", f"unix:{state / 'host.sock'}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # its own process group: stopped as one, never our Ctrl-C
            close_fds=True,
        )
    host = Host(state, proc, log)
    deadline = time.monotonic() + HOST_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the host exited ({proc.returncode}): {host.log_tail()}")
        client = Client("http://microbuild", uds=str(state / "host.sock"))
        if client.health():
            host.client = client
            return host
        client.close()
        time.sleep(0.05)
    host.client = None
    raise RuntimeError(f"the host did not answer in {HOST_START_TIMEOUT_S:.0f} s")


def stop_host(host: Host, errors: list[str]) -> None:
    """Destroy the sidecars, ask the host to stop, then SIGTERM / SIGKILL its process group."""
    if host.client is not None:
        for ident in list(host.sidecars):
            if host.proc.poll() is not None:
                break
            try:
                host.client.sidecar_action(ident, "destroy")
                host.sidecars.remove(ident)
            except HostError as exc:
                errors.append(f"destroying {ident} failed: {exc}")
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
        errors.append(f"host pid {host.proc.pid} did not exit")


def destroy_leftovers(state: Path, errors: list[str]) -> None:
    """Once the host is gone: destroy whatever sidecar its store still has (only if something
    failed on the way)."""
    if not (state / "state.db").exists():
        return
    manager = SidecarManager(state)
    try:
        for ident, exc in manager.destroy_all():
            if exc is None:
                errors.append(f"sidecar {ident} was still there; destroyed it")
            else:
                errors.append(f"destroying leftover {ident} failed: {exc}")
    finally:
        manager.close()


def snapshot_and_sidecar(host: Host, work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The repository's snapshot, resolved and built through the API, and a sidecar on it."""
    assert host.client is not None
    project = find_project(work)
    request = sync.describe_snapshot(project)
    snap, needed = host.client.resolve_snapshot(
        request.model_dump(mode="json"), runtime="namespace"
    )
    if needed:
        with tempfile.TemporaryDirectory(prefix="mbs_src_", dir=host.state) as tmp:
            tar = Path(tmp) / "source.tar"
            sync.export_source(project, request, tar)
            last: dict[str, Any] = {}
            for event in host.client.upload_source(snap["id"], tar):
                last = event
            if last.get("event") != "done":
                raise RuntimeError(f"snapshot build failed: {last}")
            snap = last["snapshot"]
    sidecar = host.client.create_sidecar(snap["id"])
    host.sidecars.append(str(sidecar["id"]))
    return snap, sidecar


def sidecar_run(client: Client, sidecar_id: str, argv: list[str]) -> bytes:
    out = []
    result: dict[str, Any] = {}
    for kind, data in client.exec(sidecar_id, argv):
        if kind == "stdout":
            out.append(data)
        elif kind == "result":
            result = data
    if result.get("exit_code") != 0:
        raise RuntimeError(f"{argv} in {sidecar_id}: {result}")
    return b"".join(out)


# -- measurements ------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass
class Synced:
    """What the sidecar holds; the end-to-end sync moves it forward."""

    client: Client
    sidecar: str
    work: Path
    held: str
    index_dir: Path
    scan_dir: Path
    patch_bytes: list[int] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)

    def sync_once(self, watched: bool = True) -> None:
        """What validate's sync_tree does when the sidecar holds the last tree, each step's time
        kept apart too (those of the watched runs only)."""
        start = time.perf_counter()
        record = self.client.get_sidecar(self.sidecar)
        if record["tree"] != self.held or record.get("changed"):
            raise RuntimeError(f"the sidecar changed under the benchmark: {record}")
        t0 = time.perf_counter()
        kept = self.index_dir if watched else self.scan_dir
        tree = sync.tree_id(self.work, kept, watched=watched)
        t1 = time.perf_counter()
        if not sync.has_object(self.work, self.held):
            raise RuntimeError(f"the held tree {self.held} is missing from the repository")
        t2 = time.perf_counter()
        patch = sync.tree_diff(self.work, self.held, tree)
        t3 = time.perf_counter()
        record = self.client.sync(self.sidecar, to_tree=tree, payload=patch, from_tree=self.held)
        t4 = time.perf_counter()
        if record["tree"] != tree:
            raise RuntimeError(f"the sidecar holds {record['tree']} after syncing {tree}")
        self.held = tree
        if not watched:
            return
        self.patch_bytes.append(len(patch))
        times = (t0 - start, t1 - t0, t2 - t1, t3 - t2, t4 - t3)
        for step, seconds in zip(STEPS, times, strict=True):
            self.steps.setdefault(step, []).append(seconds)


def copy_with_copytree(work: Path, dest: Path) -> Callable[[], object]:
    return lambda: shutil.copytree(work, dest, symlinks=True)


def copy_with_cp(work: Path, dest: Path) -> Callable[[], object]:
    return lambda: run(["cp", "-a", str(work), str(dest)])


def rsync_to(work: Path, scratch: Path) -> Callable[[], object]:
    return lambda: run(["rsync", "-a", "--delete", "--exclude=/.git", f"{work}/", f"{scratch}/"])


def measure_size(
    report: Report, host: Host, root: Path, size: int, n: int, copy_n: int, console: Console
) -> None:
    client = host.client
    assert client is not None
    base = root / f"r{size}"
    started = time.monotonic()
    console.print(f"[dim]{size} files: generating, committing and packing the repository[/dim]")
    work, files = make_repo(base, size)
    console.print(f"[dim]{size} files: building the snapshot and creating a sidecar[/dim]")
    _snap, sidecar = snapshot_and_sidecar(host, work)
    if sidecar["tree"] != sync.tree_id(work):
        raise RuntimeError(f"the new sidecar holds {sidecar['tree']}, not the committed tree")
    synced = Synced(
        client, str(sidecar["id"]), work, str(sidecar["tree"]), base / "indexes", base / "scan"
    )
    # What the command server keeps for a project: inotify watches on its directories.
    watch.register(watch.start(work))
    scratch = base / "rsync"
    if report.rsync:
        scratch.mkdir()
        rsync_to(work, scratch)()
    report.setup_s[size] = time.monotonic() - started

    figures = {
        method: Figure(size, method) for method in METHODS if report.rsync or method != RSYNC
    }
    report.figures += figures.values()
    rng = random.Random(size)
    console.print(f"[dim]{size} files: {WARMUP} warm-up + {n} iterations, round-robin[/dim]")
    for iteration in range(WARMUP + n):
        keep = iteration >= WARMUP
        i = rng.randrange(size)
        target = work / files[i]
        # Warm-up iterations go to throwaway figures.
        sink = figures if keep else {m: Figure(size, m) for m in figures}
        target.write_text(content(i, f"EDIT = 'a{iteration}'\n"))
        sink[TREE_ID].samples.append(timed(lambda: sync.tree_id(work)))
        sink[TREE_ID_KEPT].samples.append(
            timed(lambda: sync.tree_id(work, base / "kept", watched=False))
        )
        sink[TREE_ID_WATCHED].samples.append(timed(lambda: sync.tree_id(work, base / "watched")))
        # The same file again (so the sidecar is 1 file behind), then the whole sync, without
        # and with the watcher.
        target.write_text(content(i, f"EDIT = 'b{iteration}'\n"))
        sink[OURS_SCAN].samples.append(timed(lambda: synced.sync_once(watched=False)))
        target.write_text(content(i, f"EDIT = 'c{iteration}'\n"))
        sink[OURS].samples.append(timed(synced.sync_once))
        if report.rsync:
            sink[RSYNC].samples.append(timed(rsync_to(work, scratch)))
        # For reference: the bare round trip of a command in the sidecar.
        exec_true = timed(lambda: sidecar_run(client, synced.sidecar, ["true"]))
        synced.steps.setdefault(EXEC_TRUE, []).append(exec_true)
        if iteration < WARMUP + copy_n:  # full copies are slow: fewer of them
            for method, copier in ((COPYTREE, copy_with_copytree), (CP, copy_with_cp)):
                dest = base / f"copy-{iteration}"
                sink[method].samples.append(timed(copier(work, dest)))
                shutil.rmtree(dest)
        if not keep:
            synced.patch_bytes.clear()
            synced.steps.clear()
    report.patch_bytes[size] = synced.patch_bytes
    report.steps[size] = {step: statistics.median(v) for step, v in synced.steps.items()}

    # The sidecar holds what the working tree holds: the last file changed, byte for byte.
    if sidecar_run(client, synced.sidecar, ["cat", "--", files[i]]) != target.read_bytes():
        raise RuntimeError(f"{files[i]} in the sidecar differs from the working tree")
    if size == max(report.sizes):
        console.print(f"[dim]{size} files: profiling tree_id[/dim]")
        report.profile = profile_tree_id(work, files, max(5, n // 2))
        report.profile_size = size
    watch.unregister(work)
    client.sidecar_action(synced.sidecar, "destroy")
    host.sidecars.remove(synced.sidecar)
    shutil.rmtree(base, ignore_errors=True)


# -- where tree_id's time goes -----------------------------------------------------------------


def traced(argv: list[str], cwd: Path, env: dict[str, str], trace: Path) -> dict[str, float]:
    """Run git with GIT_TRACE2_PERF: {top-level region label: seconds, "total": seconds}."""
    trace.unlink(missing_ok=True)
    run(argv, cwd=cwd, env={**env, "GIT_TRACE2_PERF": str(trace)})
    regions: dict[str, float] = {}
    for line in trace.read_text().splitlines():
        cols = [c.strip() for c in line.split("|")]
        if len(cols) < 9:
            continue
        event, label = cols[3], cols[8]
        if event == "region_leave" and label.startswith("label:") and cols[6]:
            name = label[len("label:") :].split(" ")[0]
            regions[name] = regions.get(name, 0.0) + float(cols[6])
        elif event == "atexit" and cols[5]:
            regions["total"] = float(cols[5])
    return regions


PROFILE_ROWS = {
    "spawn": "a git process that does nothing (git --version)",
    "rev-parse": "git rev-parse --absolute-git-dir (finding the index)",
    "copy": "copying the user's index",
    "add": "git add --all (process total)",
    "add:do_read_index": "  reading the index",
    "add:preload": "  lstat of every tracked file (preload)",
    "add:read_directory": "  scanning for untracked files",
    "add:do_write_index": "  writing the index",
    "write-tree": "git write-tree (process total)",
    "write-tree:do_write_index": "  writing the index (cache tree)",
    "tree_id": "tree_id, all of it, untraced",
    "private": "what-if: a kept private index with untracked cache: add --all + write-tree",
}


def profile_tree_id(work: Path, files: list[str], reps: int) -> dict[str, float]:
    """Medians over `reps` runs, each after a 1-file change, of tree_id's steps."""
    samples: dict[str, list[float]] = {}

    def add(key: str, seconds: float) -> None:
        samples.setdefault(key, []).append(seconds)

    rng = random.Random(0)
    index = sync.git_dir(work) / "index"
    with tempfile.TemporaryDirectory(prefix="mbs_prof_") as tmp:
        temp_index = Path(tmp) / "index"
        trace = Path(tmp) / "trace"
        private = Path(tmp) / "private-index"
        env = {"GIT_INDEX_FILE": str(temp_index), "GIT_OPTIONAL_LOCKS": "0"}
        private_env = {"GIT_INDEX_FILE": str(private), "GIT_OPTIONAL_LOCKS": "0"}
        shutil.copyfile(index, private)
        run(["git", "update-index", "--untracked-cache"], cwd=work, env=private_env)
        run(["git", "add", "--all", "--", ":/"], cwd=work, env=private_env)
        for rep in range(reps):
            i = rng.randrange(len(files))
            (work / files[i]).write_text(content(i, f"PROFILE = {rep}\n"))
            add("spawn", timed(lambda: run(["git", "--version"])))
            add("rev-parse", timed(lambda: sync.git_dir(work)))
            add("copy", timed(lambda: shutil.copyfile(index, temp_index)))
            add_regions = traced(["git", "add", "--all", "--", ":/"], work, env, trace)
            for name, seconds in add_regions.items():
                add("add" if name == "total" else f"add:{name}", seconds)
            tree_regions = traced(["git", "write-tree"], work, env, trace)
            for name, seconds in tree_regions.items():
                add("write-tree" if name == "total" else f"write-tree:{name}", seconds)
            add("tree_id", timed(lambda: sync.tree_id(work)))
            add(
                "private",
                timed(
                    lambda: (
                        run(["git", "add", "--all", "--", ":/"], cwd=work, env=private_env),
                        run(["git", "write-tree"], cwd=work, env=private_env),
                    )
                ),
            )
    return {key: statistics.median(values) for key, values in samples.items()}


# -- output ------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def render(report: Report, console: Console) -> None:
    m = report.machine
    console.print(
        f"[bold]microbuild tree sync benchmark[/bold]  N={report.n}  nproc={m.get('nproc')}  "
        f"kernel={m.get('kernel')}  python={m.get('python')}  git={m.get('git')}"
    )
    if report.unavailable:
        console.print(f"[yellow]namespace runtime unavailable: {report.unavailable}")
    if not report.rsync:
        console.print(
            "[yellow]rsync is not installed: its column is skipped "
            "(install it, e.g. apt-get install rsync)"
        )
    table = Table(title="a 1-file change, synced (times in ms)")
    for name, justify in (
        ("files", "right"),
        ("method", "left"),
        ("n", "right"),
        ("median", "right"),
        ("p95", "right"),
        ("min", "right"),
        ("max", "right"),
        ("baseline/ours", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for size in report.sizes:
        for method in METHODS:
            fig = report.figure(size, method)
            if fig is None:
                continue
            ratio = report.ratio(size, method)
            table.add_row(
                str(size),
                f"[bold]{method}[/bold]" if method == OURS else method,
                str(len(fig.samples)),
                ms(fig.median),
                ms(p95(fig.samples)),
                ms(min(fig.samples)),
                ms(max(fig.samples)),
                f"{ratio:.1f}x" if ratio is not None else "",
            )
        table.add_section()
    console.print(table)

    growth = Table(title=f"growth from {min(report.sizes)} to {max(report.sizes)} files")
    for name in ("method", "median, smallest", "median, largest", "largest/smallest"):
        growth.add_column(name, justify="left" if name == "method" else "right", no_wrap=True)
    for method in METHODS:
        g = report.growth(method)
        if g is not None:
            growth.add_row(method, ms(g[0]), ms(g[1]), f"{g[2]:.2f}x")
    console.print(growth)

    target = report.target()
    if target is not None:
        fast, flat = target
        largest = report.figure(max(report.sizes), OURS)
        g = report.growth(OURS)
        assert largest is not None and g is not None

        def verdict(ok: bool) -> str:
            return "[green]met[/green]" if ok else "[red]not met[/red]"

        console.print(
            f"target: ours end to end < {TARGET_S * 1e3:g} ms at {max(report.sizes)} files: "
            f"{ms(largest.median)} ms, {verdict(fast)}; flat in size "
            f"(largest/smallest < {FLAT_GROWTH:g}x): {g[2]:.2f}x, {verdict(flat)}"
        )
    if report.patch_bytes:
        sizes = ", ".join(
            f"{size}: {statistics.median(b):.0f} B" for size, b in report.patch_bytes.items() if b
        )
        console.print(f"patch size (median): {sizes}")
    if report.steps:
        steps = Table(title="ours, step by step (median ms)")
        steps.add_column("files", justify="right")
        for step in (*STEPS, EXEC_TRUE):
            steps.add_column(step, justify="right")
        for size, medians in report.steps.items():
            steps.add_row(str(size), *(ms(medians[step]) for step in (*STEPS, EXEC_TRUE)))
        console.print(steps)
    if report.profile:
        prof = Table(title=f"where tree_id's time goes at {report.profile_size} files (ms)")
        prof.add_column("step", no_wrap=True)
        prof.add_column("median", justify="right")
        for key, label in PROFILE_ROWS.items():
            if key in report.profile:
                prof.add_row(label, ms(report.profile[key]))
        console.print(prof)
    console.print(
        "Times from perf_counter in this process. ours = tree_id + has_object + tree_diff + "
        "Client.sync (git apply in the sidecar); baseline/ours = baseline median / ours median "
        "at the same size (> 1: ours is faster). Copies are of the working tree only (its git "
        "dir is elsewhere) into a fresh directory; rsync keeps one scratch copy in sync."
    )
    for note in report.notes:
        console.print(f"- {note}")
    for error in report.errors:
        console.print(f"[red]! {error}[/red]")


# -- main --------------------------------------------------------------------------------------


def measure(report: Report, root: Path, hosts: list[Host], console: Console) -> None:
    from microbuild.runtime.namespace import unavailable_reason

    reason = unavailable_reason()
    if reason:
        report.unavailable = reason
        return
    console.print("[dim]starting a host on a Unix socket[/dim]")
    host = start_host(root / "state")
    hosts.append(host)
    for size in report.sizes:
        measure_size(report, host, root, size, report.n, report.copy_n, console)
    report.notes.append(
        f"{WARMUP} untimed iterations per size first; each iteration changes one random file "
        "(a few hundred bytes) and runs every method once (the full copies only in the first "
        f"{report.copy_n}); the user's index is never updated, as between validate runs, so "
        "tree_id re-hashes the files changed earlier too"
    )
    report.notes.append(
        "setup per size (generate, commit, pack, snapshot, sidecar): "
        + ", ".join(f"{size}: {s:.1f} s" for size, s in report.setup_s.items())
    )


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--sizes: {exc}") from exc
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("--sizes: positive numbers, comma-separated")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20, help="iterations per size (20)")
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=[2000, 5000, 10000, 20000],
        help="repository sizes in files (2000,5000,10000,20000)",
    )
    parser.add_argument(
        "--copy-n",
        type=int,
        default=5,
        help="iterations of the full-copy baselines per size, at most N (5; they are slow)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    n = max(1, args.n)
    report = Report(n=n, sizes=args.sizes, copy_n=min(n, max(1, args.copy_n)))
    out = Console(width=None if sys.stdout.isatty() else 140)
    err = Console(stderr=True)
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    report.machine = {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "git": run(["git", "--version"]).split()[-1],
    }
    report.rsync = shutil.which("rsync") is not None
    if not report.rsync:
        err.print("[yellow]rsync is not installed: skipping that baseline (apt-get install rsync)")
    # Short: the host's overlay mount options carry paths under it.
    root = Path(tempfile.mkdtemp(prefix="mbs_", dir="/var/tmp"))
    hosts: list[Host] = []
    interrupted = False
    try:
        measure(report, root, hosts, err)
    except KeyboardInterrupt:
        interrupted = True
        err.print("[yellow]interrupted: cleaning up")
    except Exception as exc:
        report.errors.append(f"benchmark stopped: {type(exc).__name__}: {exc}")
        err.print(traceback.format_exc())
        for host in hosts:
            if host.proc.poll() is not None:
                report.errors.append(f"host log: {host.log_tail()}")
    finally:
        with signals_ignored():
            for host in hosts:
                stop_host(host, report.errors)
                destroy_leftovers(host.state, report.errors)
            left = mounts_under(root)
            if left:
                report.errors.append(f"{left} mounts under {root} in the host namespace")
            shutil.rmtree(root, ignore_errors=True)
            if root.exists():
                report.errors.append(f"could not remove {root}")
    report.notes.append(
        f"after cleanup: host exited={all(h.proc.poll() is not None for h in hosts)}, "
        f"temp dir removed={not root.exists()}"
    )
    return _common.finish(report, render, out, as_json=args.json, interrupted=interrupted)


if __name__ == "__main__":
    sys.exit(main())
