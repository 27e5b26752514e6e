"""The rules of a stop hook: when to validate, when to send the agent back, when to give up.

* No project at the event's directory (no microbuild.toml, not a git repository): allow, silently.
* Same tree as the last one validated for this session (or, for a new session, this project):
  nothing changed since, allow.
* A fresh turn (no loop guard from the agent) resets the session's attempts; while the agent is
  already continuing because of a stop hook, a blocked stop counts an attempt, and at
  `hooks.max_attempts` the agent may stop, with a note saying so. A pass resets the count.
* The microbuild gets `hooks.timeout_s` (minus what was spent already); still running then, the
  agent may stop with a note, and the next stop picks the result up (see `worker`).
* Anything going wrong on our side never blocks the agent: it is logged to `hooks.log` in the
  state dir and the stop is allowed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from microbuild.hooks.base import AgentAdapter, Answer, EventError, StopEvent

LOG_NAME = "hooks.log"
# Spent after the worker answers: recording the session, rendering, exiting.
SAFETY_MARGIN_S = 1.0


@dataclass(frozen=True)
class Reply:
    """What `microbuild hook AGENT` prints and why (the why goes to the log only)."""

    stdout: str
    answer: Answer
    why: str


def log(state: Path, agent: str, message: str) -> None:
    """One line in the state dir's hook log; a log that cannot be written is not an error."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        state.mkdir(parents=True, exist_ok=True)
        with open(state / LOG_NAME, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {agent}: {message}\n")
    except OSError:
        pass


def failed_message(report: str, attempt: int, cap: int, tree: str) -> str:
    return (
        f"The microbuild failed on your changes (tree {tree[:10]}): fix the code so that the "
        f"checks below pass, then finish again. This stop was sent back {attempt} of {cap} "
        "times at most.\n\n" + report.rstrip("\n")
    )


def error_message(report: str, attempt: int, cap: int) -> str:
    return (
        "The microbuild could not run its checks: an ENVIRONMENT failure (snapshot, sidecar or "
        "host), not a problem in your code. Do NOT rewrite code to fix it. Run the remedy the "
        "report names (for example `microbuild snapshot build --rebuild` or "
        "`microbuild sidecar reset ID`) and finish again, or tell the user if that does not "
        "help. "
        f"This stop was sent back {attempt} of {cap} times at most.\n\n" + report.rstrip("\n")
    )


def answer_stop(
    adapter: AgentAdapter, raw: str, state: Path, host: str | None, started: float
) -> Reply:
    """The whole hook; never raises (any exception becomes a logged allow)."""
    try:
        event = adapter.load(raw)
    except EventError as exc:
        log(state, adapter.name, f"allowed: {exc}")
        return _reply(adapter, Answer.allow(), f"malformed event: {exc}")
    try:
        answer, why = _decide(event, state, host, started)
    except Exception as exc:
        log(state, adapter.name, f"allowed: internal error {type(exc).__name__}: {exc}")
        return _reply(adapter, Answer.allow(), f"internal error: {exc}")
    log(state, adapter.name, f"{answer.kind} ({why}) session={event.session} cwd={event.cwd}")
    return _reply(adapter, answer, why)


def _reply(adapter: AgentAdapter, answer: Answer, why: str) -> Reply:
    return Reply(adapter.render(answer), answer, why)


def _decide(event: StopEvent, state: Path, host: str | None, started: float) -> tuple[Answer, str]:
    from microbuild import sync
    from microbuild.config import CONFIG_FILENAME, find_project
    from microbuild.errors import ConfigError
    from microbuild.hooks.worker import run_within
    from microbuild.store import HookSession, Store

    if not event.actionable:
        return Answer.allow(), "the agent did not finish (status is not completed)"
    if not event.cwd.is_dir():
        return Answer.allow(), f"{event.cwd} is not a directory"
    try:
        project = find_project(event.cwd)
    except ConfigError as exc:
        if str(exc).startswith(f"no {CONFIG_FILENAME} found"):
            return Answer.allow(), "not a microbuild project"
        return Answer.allow(f"microbuild did not validate: {exc}"), f"broken config: {exc}"
    root = str(project.root)
    try:
        tree = sync.tree_id(project.root, state / "indexes")
    except Exception as exc:
        return Answer.allow(), f"no tree id (not a git repository?): {exc}"
    hooks = project.config.hooks
    store = Store(state / "state.db")
    try:
        session = store.get_hook_session(event.agent, event.session, root)
        if session is None:
            session = HookSession(event.agent, event.session, root)
            baseline = store.last_hook_tree(event.agent, root)
        else:
            baseline = session.last_tree
        if not event.loop_guard_active:
            session.attempts = 0
        if tree == baseline:
            return Answer.allow(), f"no changes since tree {tree[:10]} was validated"
        attempts = max(session.attempts, event.loop_count)
        if event.loop_guard_active and attempts >= hooks.max_attempts:
            store.put_hook_session(session)
            return (
                Answer.allow(
                    f"microbuild: still failing after {attempts} attempts in a row "
                    f"(hooks.max_attempts = {hooks.max_attempts}); letting the agent stop. Run "
                    "`microbuild validate` to see the report."
                ),
                "retry cap reached",
            )
        budget = hooks.timeout_s - (time.monotonic() - started) - SAFETY_MARGIN_S
        outcome = run_within(state, project.root, tree, host, budget, state / LOG_NAME)
        if outcome.status == "pending":
            session.last_status = "pending"
            store.put_hook_session(session)
            return (
                Answer.allow(
                    f"microbuild: the checks were still running after {hooks.timeout_s:g} s "
                    "(hooks.timeout_s); they go on in the background and the next stop gets "
                    "their result."
                ),
                f"time budget exceeded ({outcome.message})",
            )
        if outcome.status == "unavailable":
            return (
                Answer.allow(f"microbuild could not validate: {outcome.message}"),
                f"unavailable: {outcome.message}",
            )
        session.last_tree = tree
        session.last_status = outcome.status
        if outcome.status == "passed":
            session.attempts = 0
            store.put_hook_session(session)
            return Answer.allow(), f"passed (run {outcome.run})"
        session.attempts = attempts + 1
        store.put_hook_session(session)
        if outcome.status == "failed":
            message = failed_message(outcome.report, session.attempts, hooks.max_attempts, tree)
        else:
            message = error_message(outcome.report, session.attempts, hooks.max_attempts)
        store.prune_hook_sessions()
        return Answer.block(message), f"{outcome.status} (run {outcome.run})"
    finally:
        store.close()
