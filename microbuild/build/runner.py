"""Run a microbuild: the project's checks, one after another in a sidecar, fail-fast.

Each check is `/bin/sh -c COMMAND` in the sidecar's workspace with its own timeout (the runtime
kills the whole process tree when it passes) and, only if it asks, the host's network. Its
output (stdout and stderr interleaved as they arrive) goes to `STATE/runs/RUN/CHECK.log`; the
run, its checks, its wall time and its core-seconds go to the store.

A result is about the code (`passed`, `failed`) or about the environment (`error`: a timeout,
an OOM kill, a command that is not there, a sidecar that died). Only results about the code are
cached, keyed by (tree, config hash, snapshot): the same tree with the same checks in the same
environment gives the same answer.

Each check's output is also parsed (`microbuild.report.parsers`; the command is instrumented to
write a machine-readable artifact under the sidecar's /tmp, outside the synced tree) into
failures, each classified as the code's or the environment's fault; a failed check whose every
failure is the environment's becomes an `error`. Parsing is a courtesy: whatever goes wrong in
it, the check keeps its result and the report falls back to the tail of the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microbuild.config import CheckConfig
from microbuild.report.classify import (
    classify_check,
    classify_failure,
    disk_limit_cause,
    project_packages,
)
from microbuild.report.model import Failure, ParseResult
from microbuild.report.render import (
    DEFAULT_BUDGET,
    log_tail,
    plain_report,
    record_summary,
    report_json_failures,
)
from microbuild.report.tokens import count_file_tokens, count_logs_tokens, count_tokens, warm_up
from microbuild.runtime import ExecResult, Execution, RuntimeError_
from microbuild.store import CACHEABLE_RUN_STATES, CheckResult, RunRecord, Store

if TYPE_CHECKING:
    from microbuild.host.manager import SidecarManager

__all__ = [
    "EXIT_CODES",
    "Cancellation",
    "Emit",
    "cached_copy",
    "check_json",
    "exit_code_for",
    "find_cached",
    "log_file",
    "new_run_id",
    "read_log",
    "run_checks",
    "run_json",
    "run_microbuild",
    "runs_dir",
]

Emit = Callable[[dict[str, Any]], None]
logger = logging.getLogger(__name__)

# What the CLI exits with for a run's status.
EXIT_CODES = {"passed": 0, "failed": 1, "error": 3}
COMMAND_NOT_FOUND = 127
_ENVIRONMENT_STATES = ("timed_out", "error")


def exit_code_for(status: str) -> int:
    """0 passed, 1 failed (the code), 3 anything else (the environment)."""
    return EXIT_CODES.get(status, 3)


def new_run_id() -> str:
    return f"run_{secrets.token_hex(5)}"


def runs_dir(state_dir: Path) -> Path:
    return state_dir / "runs"


def log_file(state_dir: Path, run_id: str, check: str) -> Path:
    return runs_dir(state_dir) / run_id / f"{check}.log"


class Cancellation:
    """Stops a run from another thread: the running check's process tree is killed, the rest
    are skipped, and the run ends as an `error` (never cached)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._execution: Execution | None = None
        self.reason: str | None = None

    @property
    def cancelled(self) -> bool:
        return self.reason is not None

    def cancel(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            if self._execution is not None:
                self._execution.kill()

    @contextlib.contextmanager
    def watching(self, execution: Execution) -> Iterator[None]:
        with self._lock:
            self._execution = execution
            if self.reason is not None:
                execution.kill()
        try:
            yield
        finally:
            with self._lock:
                self._execution = None


def find_cached(
    store: Store, tree: str, config_hash: str, snapshot_id: str, *, complete: bool = False
) -> RunRecord | None:
    """The latest `passed` or `failed` run for this key (an indexed lookup); `error` runs are
    never reused. With `complete`, a fail-fast run that stopped at a failure does not count."""
    return store.find_cached_run(tree, config_hash, snapshot_id, complete=complete)


def _safe_emit(emit: Emit | None) -> Emit:
    """Events are a courtesy to whoever watches; a watcher that went away stops nothing."""
    broken = False

    def send(event: dict[str, Any]) -> None:
        nonlocal broken
        if emit is None or broken:
            return
        try:
            emit(event)
        except Exception:
            broken = True

    return send


def _classify(result: ExecResult, timeout_s: float) -> tuple[str, str | None]:
    if result.timed_out:
        return "timed_out", f"timed out after {timeout_s:g} s"
    if result.oom_killed:
        return "error", "out of memory: the sidecar's memory limit killed a process"
    if result.disk_limit_reached is not None:
        return "error", disk_limit_cause(result.disk_limit_reached)
    if result.exit_code == 0:
        return "passed", None
    if result.exit_code == COMMAND_NOT_FOUND:
        return "error", "command not found (exit 127)"
    return "failed", None


# Where instrumented commands write their artifacts: the sidecar's /tmp (private to it, never
# part of the synced tree), wiped before each instrumented check.
ARTIFACT_DIR = "tmp/.microbuild-report"
ARTIFACT_MAX_BYTES = 64 << 20
# How much of a log the parsers see: its head and its end (a check may write gigabytes).
PARSE_HEAD_BYTES = 1 << 20
PARSE_TAIL_BYTES = 7 << 20
MAX_STORED_FAILURES = 1000


class _Sandbox:
    """What the runner needs to know about a sidecar's filesystem for reports: where its root
    is from the host (to read artifacts back) and from inside, and the project's packages."""

    def __init__(self, manager: SidecarManager, sidecar_id: str) -> None:
        self.host_root: Path | None = None
        self.inner_root = "/"
        self.workspace = "/workspace"
        self.own_packages: frozenset[str] = frozenset()
        self._manager = manager
        self._sidecar_id = sidecar_id
        self.source_paths: frozenset[str] = frozenset()
        try:
            self.source_paths = frozenset(
                p for p in manager.source_paths(sidecar_id) if not _is_cache(p)
            )
        except Exception as exc:
            logger.warning("sidecar %s: tracked files unknown: %s", sidecar_id, exc)
        try:
            _record, rt, handle = manager.wake(sidecar_id)
            self.workspace = rt.workspace_in_sidecar(handle)
            self.inner_root = posixpath.dirname(self.workspace.rstrip("/")) or "/"
            workspace = rt.workspace(handle)
            self.host_root = workspace.parent
            self.own_packages = project_packages(workspace)
        except Exception as exc:  # a sidecar that cannot be looked at still runs its checks
            logger.warning("sidecar %s: no report artifacts: %s", sidecar_id, exc)

    def changed_sources(self, since_ns: int) -> list[str]:
        """The project's own files (not caches, not new files) a check wrote or deleted."""
        written = self._manager.written_since(self._sidecar_id, since_ns)
        return [p for p in written or () if p in self.source_paths]

    @property
    def artifact_dir(self) -> str:
        return posixpath.join(self.inner_root, ARTIFACT_DIR)

    def read(self, artifact: str) -> bytes | None:
        """An artifact's bytes, read beneath the sidecar's root (symlinks leading out refused)."""
        from microbuild.host import files

        if self.host_root is None:
            return None
        rel = posixpath.relpath(artifact, self.inner_root)
        if rel.startswith("../") or rel == "..":
            return None
        try:
            return files.read_file(self.host_root, rel, limit=ARTIFACT_MAX_BYTES)
        except (OSError, files.PathRefused, files.PathInvalid):
            return None


_CACHE_DIRS = frozenset(
    {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", ".tox", ".nox"}
)
MAX_CHANGED_SHOWN = 5


def _is_cache(path: str) -> bool:
    parts = path.split("/")
    if _CACHE_DIRS.intersection(parts) or any(p.endswith(".egg-info") for p in parts[:-1]):
        return True
    return parts[-1].endswith((".pyc", ".pyo"))


@dataclass
class _Plan:
    """How a check runs: its argv and environment, and what parses its output."""

    argv: list[str]
    env: dict[str, str]
    parser: str | None
    artifact: str | None


def _plan(check: CheckConfig, sandbox: _Sandbox) -> _Plan:
    plain = _Plan(["/bin/sh", "-c", check.command], {}, None, None)
    try:
        from microbuild.report.parsers import choose_parser, instrument

        parser = choose_parser(check.command, check.parser)
        inst = instrument(parser, check.command, sandbox.artifact_dir)
    except Exception as exc:
        logger.warning("check %s: no parser: %s", check.name, exc)
        return plain
    command = inst.command
    # The instrumentation's variables are option lists (PYTEST_ADDOPTS): appended to a value
    # the sidecar's [sidecar] env may give, never replacing it.
    for name, value in inst.env.items():
        command = f'export {name}="${{{name}:+${name} }}"{shlex.quote(value)}; {command}'
    if inst.artifact:
        where = shlex.quote(sandbox.artifact_dir)
        command = f"rm -rf {where} 2>/dev/null; mkdir -p {where} 2>/dev/null; {command}"
    return _Plan(["/bin/sh", "-c", command], dict(inst.set_env), parser, inst.artifact)


def _log_for_parsing(path: Path) -> str:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= PARSE_HEAD_BYTES + PARSE_TAIL_BYTES:
            data = f.read()
        else:
            head = f.read(PARSE_HEAD_BYTES)
            f.seek(size - PARSE_TAIL_BYTES)
            data = head + b"\n[... output cut by microbuild ...]\n" + f.read()
    return data.decode("utf-8", errors="replace")


def _parse(
    plan: _Plan, sandbox: _Sandbox, log_path: Path, artifact: bytes | None
) -> ParseResult | None:
    if plan.parser is None:
        return None
    from microbuild.report.parsers import parse_output

    return parse_output(
        plan.parser, _log_for_parsing(log_path), artifact, workspace=sandbox.workspace
    )


def _report_on(
    result: CheckResult,
    check: CheckConfig,
    plan: _Plan,
    sandbox: _Sandbox,
    log_path: Path,
    artifact: bytes | None,
) -> None:
    """Parse and classify a check's output into `result` (failures; status and reason when
    the environment is to blame). Never raises: a parser bug must not lose a result."""
    try:
        parsed = _parse(plan, sandbox, log_path, artifact)
        failures: list[Failure] = list(parsed.failures) if parsed is not None else []
        for failure in failures:
            failure.check = check.name
            if result.status == "timed_out" and failure.message.startswith("did not finish"):
                failure.kind = "environment"  # the test the timeout cut short
            elif failure.kind != "environment":
                failure.kind = classify_failure(
                    failure, own_packages=sandbox.own_packages, network=check.network
                ).kind
        diagnosis = classify_check(
            result.status,
            result.reason,
            result.exit_code,
            failures,
            "\n".join(log_tail(log_path)),
            own_packages=sandbox.own_packages,
            network=check.network,
        )
        if diagnosis.kind == "environment" and result.status in ("failed", "error"):
            result.status, result.reason = "error", diagnosis.cause
        result.failures = [f.to_json() for f in failures[:MAX_STORED_FAILURES]]
        if parsed is not None:
            record_summary(result, parsed)
    except Exception as exc:
        logger.warning("check %s: its output could not be parsed: %s", check.name, exc)
        result.failures = []


def _run_one(
    manager: SidecarManager,
    sidecar_id: str,
    check: CheckConfig,
    log_path: Path,
    cancel: Cancellation,
    sandbox: _Sandbox,
) -> CheckResult:
    from microbuild.host.manager import SidecarDead
    from microbuild.runtime import SidecarGone

    plan = _plan(check, sandbox)
    started = time.monotonic()
    since_ns = time.time_ns()
    with open(log_path, "wb") as log:
        try:
            execution = manager.exec(
                sidecar_id,
                plan.argv,
                env=plan.env or None,
                timeout=check.timeout_s,
                host_network=check.network == "host",
            )
        except RuntimeError_ as exc:
            log.write(f"microbuild: {exc}\n".encode())
            dead = isinstance(exc, SidecarDead | SidecarGone)
            return CheckResult(
                name=check.name,
                status="error",
                duration_s=time.monotonic() - started,
                log_path=str(log_path),
                reason=f"the sidecar died: {exc}" if dead else f"the sidecar cannot run it: {exc}",
            )
        with cancel.watching(execution):
            for chunk in execution.chunks():
                log.write(chunk.data)
                log.flush()
            result = execution.result()
    status, reason = _classify(result, check.timeout_s)
    if cancel.cancelled:
        status, reason = "error", cancel.reason
    elif status in ("failed", "error") and not _alive(manager, sidecar_id):
        status, reason = "error", "the sidecar died during the check"
    outcome = CheckResult(
        name=check.name,
        status=status,
        exit_code=result.exit_code,
        duration_s=result.duration_s,
        cpu_s=result.cpu_s,
        log_path=str(log_path),
        reason=reason,
    )
    # The tool's machine-readable result, read once for the timings and the report.
    artifact = sandbox.read(plan.artifact) if plan.artifact else None
    if artifact is not None and status in ("passed", "failed"):
        outcome.durations = _durations(plan, sandbox, artifact)
    if status != "passed" and not cancel.cancelled:
        _report_on(outcome, check, plan, sandbox, log_path, artifact)
    if status in ("passed", "failed") and not cancel.cancelled:
        _changed_tree(outcome, sandbox.changed_sources(since_ns))
    return outcome


def _durations(plan: _Plan, sandbox: _Sandbox, artifact: bytes) -> dict[str, float]:
    from microbuild.report.parsers import test_durations

    try:
        if plan.parser is None:
            return {}
        return test_durations(plan.parser, artifact, workspace=sandbox.workspace)
    except Exception as exc:  # timings are a courtesy: never lose the result over them
        logger.warning("no test durations: %s", exc)
        return {}


def _changed_tree(outcome: CheckResult, changed: list[str]) -> None:
    """A check that rewrote the project's files validated a tree other than the one synced (a
    fixer, a formatter, `fix = true` in a linter's config): never a pass, and said plainly."""
    if not changed:
        return
    shown = ", ".join(changed[:MAX_CHANGED_SHOWN])
    more = (
        f" and {len(changed) - MAX_CHANGED_SHOWN} more" if len(changed) > MAX_CHANGED_SHOWN else ""
    )
    passed = outcome.status == "passed"
    message = (
        f"{'passed only by rewriting' if passed else 'rewrote'} {len(changed)} tracked "
        f"file{'s' if len(changed) != 1 else ''} in the sidecar: {shown}{more}; "
        "a check must only report (run the tool check-only: --check, --no-fix)"
    )
    outcome.failures.append(
        Failure(id="tree changed", message=message, file=changed[0], check=outcome.name).to_json()
    )
    if passed:
        outcome.status = "failed"


def _alive(manager: SidecarManager, sidecar_id: str) -> bool:
    try:
        return manager.get(sidecar_id).state in ("running", "suspended")
    except Exception:
        return False


def _run_status(checks: Sequence[CheckResult]) -> str:
    statuses = {c.status for c in checks}
    if statuses & set(_ENVIRONMENT_STATES):
        return "error"
    if "failed" in statuses:
        return "failed"
    return "passed"


def run_checks(
    manager: SidecarManager,
    sidecar_id: str,
    checks: Sequence[CheckConfig],
    *,
    tree: str,
    config_hash: str,
    project: str,
    fail_fast: bool = True,
    emit: Emit | None = None,
    cancel: Cancellation | None = None,
    report_tokens: int = DEFAULT_BUDGET,
) -> RunRecord:
    """Run `checks` in the sidecar one after another and record the run.

    The first check that does not pass ends the run (unless `fail_fast` is false; a dead
    sidecar or a cancellation always ends it) and the remaining ones are `skipped`. Events:
    `check_started`, `check_finished` (per check that ran), `done` (with the run, whose report
    is kept within `report_tokens`)."""
    send = _safe_emit(emit)
    cancel = cancel or Cancellation()
    record = manager.get(sidecar_id)
    run = RunRecord(
        id=new_run_id(),
        project=project,
        sidecar_id=record.id,
        snapshot_id=record.snapshot_id,
        tree=tree,
        config_hash=config_hash,
        status="running",
        fail_fast=fail_fast,
    )
    warm_up()  # the token counts at the end must not wait for the encoding to load
    directory = runs_dir(manager.state_dir) / run.id
    directory.mkdir(parents=True, mode=0o700)
    manager.store.put_run(run)
    started = time.monotonic()
    stop = False
    try:
        with (
            manager.microbuild_lock(record.id),
            manager.running(record.id, run.id),
            manager.using(record.id),
        ):
            sandbox = _Sandbox(manager, record.id)
            for check in checks:
                if stop or cancel.cancelled:
                    run.checks.append(CheckResult(name=check.name, status="skipped"))
                    continue
                send({"event": "check_started", "check": check.name})
                result = _run_one(
                    manager,
                    record.id,
                    check,
                    log_file(manager.state_dir, run.id, check.name),
                    cancel,
                    sandbox,
                )
                run.checks.append(result)
                send({"event": "check_finished", "check": check_json(run.id, result)})
                if result.status != "passed" and (
                    fail_fast or cancel.cancelled or not _alive(manager, record.id)
                ):
                    stop = True
        run.status = _run_status(run.checks)
        if cancel.cancelled:
            run.status, run.error = "error", cancel.reason
        elif run.status in CACHEABLE_RUN_STATES and _held_tree(manager, record.id) != tree:
            # A sync changed the workspace under the checks: the result belongs to no tree.
            run.status = "error"
            run.error = "the sidecar's tree changed during the run (a sync?); run it again"
    except BaseException as exc:
        run.status = "error"
        run.error = f"the host failed: {exc}" if str(exc) else f"the host failed: {exc!r}"
        raise
    finally:
        run.wall_s = time.monotonic() - started
        run.cpu_s = sum(c.cpu_s or 0.0 for c in run.checks)
        _count_tokens(run, report_tokens, setup_log=_setup_log(manager, record.id))
        manager.store.put_run(run)
        _keep_durations(manager, run)
    send({"event": "done", "run": run_json(run, report_tokens=report_tokens)})
    return run


def _count_tokens(
    run: RunRecord,
    budget: int,
    *,
    setup_log: Path | None = None,
    original: RunRecord | None = None,
) -> None:
    """What the agent reads (the report) against what it would otherwise have read: the
    CI-style log of the same run (the snapshot's setup output, then every check's), with the
    checks' own output as a figure of its own. A cached run counts as the run it repeats."""
    try:
        if original is not None:
            run.raw_tokens, run.check_tokens = original.raw_tokens, original.check_tokens
        else:
            run.check_tokens = count_logs_tokens(c.log_path for c in run.checks)
            run.raw_tokens = run.check_tokens + _setup_tokens(setup_log)
        run.report_tokens = count_tokens(plain_report(run, budget=budget))
    except Exception as exc:  # accounting must never lose a run
        logger.warning("run %s: tokens not counted: %s", run.id, exc)


SETUP_TOKENS = "setup.tokens"


def _setup_log(manager: SidecarManager, sidecar_id: str) -> Path | None:
    try:
        return manager.setup_log(sidecar_id)
    except Exception:
        return None


def _setup_tokens(setup_log: Path | None) -> int:
    """The setup log's tokens, counted once per snapshot (the count is kept beside it)."""
    if setup_log is None or not setup_log.is_file():
        return 0
    counted = setup_log.with_name(SETUP_TOKENS)
    with contextlib.suppress(OSError, ValueError):
        return int(counted.read_text())
    tokens = count_file_tokens(setup_log)
    with contextlib.suppress(OSError):
        partial = counted.with_name(f"{SETUP_TOKENS}.{os.getpid()}")
        partial.write_text(str(tokens))
        partial.replace(counted)
    return tokens


def _keep_durations(manager: SidecarManager, run: RunRecord) -> None:
    for check in run.checks:
        if check.durations:
            try:
                manager.store.put_test_durations(run.project, check.name, run.id, check.durations)
            except Exception as exc:  # a courtesy to sharding: never lose the run over it
                logger.warning("run %s: test durations not kept: %s", run.id, exc)


def _held_tree(manager: SidecarManager, sidecar_id: str) -> str | None:
    try:
        return manager.store.get_sidecar(sidecar_id).tree
    except Exception:
        return None


def run_microbuild(
    manager: SidecarManager,
    sidecar_id: str,
    checks: Sequence[CheckConfig],
    *,
    tree: str,
    config_hash: str,
    project: str,
    fail_fast: bool = True,
    emit: Emit | None = None,
    cancel: Cancellation | None = None,
    report_tokens: int = DEFAULT_BUDGET,
) -> RunRecord:
    """What the host does for a microbuild request: one at a time per sidecar; a cached result
    for (tree, config hash, the sidecar's snapshot) is answered at once (recorded as a run of
    its own, `cached_from` the original), otherwise the checks run."""
    from microbuild.host.manager import TreeMismatch

    send = _safe_emit(emit)
    record = manager.get(sidecar_id)
    lock = manager.microbuild_lock(record.id)
    if not lock.acquire(blocking=False):
        busy = manager.running_run(record.id)
        send({"event": "waiting", "run": busy, "message": f"waiting for run {busy or '?'}"})
        lock.acquire()
    try:
        held = manager.get(record.id).tree
        if held != tree:
            raise TreeMismatch(
                f"sidecar {record.id} holds tree {held}, not {tree}: another sync came first; "
                "sync it again"
            )
        hit = find_cached(
            manager.store, tree, config_hash, record.snapshot_id, complete=not fail_fast
        )
        if hit is not None:
            run = cached_copy(
                manager.store, hit, project=project, sidecar_id=record.id, budget=report_tokens
            )
            send({"event": "done", "run": run_json(run, report_tokens=report_tokens)})
            return run
        return run_checks(
            manager,
            record.id,
            checks,
            tree=tree,
            config_hash=config_hash,
            project=project,
            fail_fast=fail_fast,
            emit=send,
            cancel=cancel,
            report_tokens=report_tokens,
        )
    finally:
        lock.release()


def cached_copy(
    store: Store,
    original: RunRecord,
    *,
    project: str,
    sidecar_id: str,
    budget: int = DEFAULT_BUDGET,
) -> RunRecord:
    """Record a cache answer: the original's result and logs, at no cost of its own (its
    report is the agent's cost: counted; the raw logs are the original's)."""
    started = time.monotonic()
    run = RunRecord(
        id=new_run_id(),
        project=project,
        sidecar_id=sidecar_id,
        snapshot_id=original.snapshot_id,
        tree=original.tree,
        config_hash=original.config_hash,
        status=original.status,
        fail_fast=original.fail_fast,
        cached_from=original.id,
        checks=[CheckResult(**c.__dict__) for c in original.checks],
    )
    run.wall_s = time.monotonic() - started
    run.cpu_s = 0.0
    _count_tokens(run, budget, original=original)
    store.put_run(run)
    return run


# -- JSON ------------------------------------------------------------------------------------


def check_json(run_id: str, check: CheckResult) -> dict[str, Any]:
    """A check as the API shows it; `log` is where the host serves its full log."""
    return {
        "name": check.name,
        "status": check.status,
        "exit_code": check.exit_code,
        "duration_s": round(check.duration_s, 3),
        "cpu_s": None if check.cpu_s is None else round(check.cpu_s, 3),
        "log": f"/v1/runs/{run_id}/logs/{check.name}" if check.log_path else None,
        "reason": check.reason,
    }


def run_json(
    run: RunRecord, *, cached: bool | None = None, report_tokens: int = DEFAULT_BUDGET
) -> dict[str, Any]:
    """A run as the API shows it, with its plain report (within `report_tokens`), its parsed
    failures and its token counts. `cached` overrides whether it is presented as a cache
    answer (a cache lookup presents the original run as one)."""
    is_cached = run.cached if cached is None else cached
    report = plain_report(run, cached=is_cached, budget=report_tokens)
    try:
        shown: int | None = count_tokens(report)
    except Exception:
        shown = run.report_tokens
    return {
        "id": run.id,
        "project": run.project,
        "sidecar": run.sidecar_id,
        "snapshot": run.snapshot_id,
        "tree": run.tree,
        "config_hash": run.config_hash,
        "status": run.status,
        "cached": is_cached,
        "cached_from": run.cached_from,
        "error": run.error,
        "fail_fast": run.fail_fast,
        "started_at": run.started_at,
        "wall_s": round(run.wall_s, 3),
        "cpu_s": round(run.cpu_s, 3),
        "checks": [check_json(run.id, c) for c in run.checks],
        "failures": report_json_failures(run),
        "tokens": {"report": shown, "raw": run.raw_tokens, "checks": run.check_tokens},
        "report": report,
    }


def read_log(state_dir: Path, run: RunRecord, check: str) -> Path | None:
    """The log file of a check of `run`, only if `check` names one of its checks and the file
    lies in the runs directory (no path is ever built from what a client sent)."""
    for result in run.checks:
        if result.name == check and result.log_path:
            path = Path(result.log_path)
            root = os.path.realpath(runs_dir(state_dir))
            real = os.path.realpath(path)
            if os.path.commonpath([root, real]) == root and os.path.isfile(real):
                return Path(real)
    return None
