"""Agent stop hooks end to end: each agent's documented stop-event JSON fed to the real
`microbuild hook AGENT` in a real repository with a real host, and the installers on real
settings files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import git, need_isolation, write_project

if __package__:
    from . import realproject
else:
    import realproject

AGENTS = ("claude", "codex", "cursor", "gemini")
CHECK = 'grep -q BUG src.txt && { echo "src.txt:1: found BUG"; exit 1; }; echo ok'


def config(*, check: str = "sh check.sh", max_attempts: int = 5, timeout_s: int = 60) -> str:
    return (
        '[snapshot]\nsetup = ["true"]\n\n'
        f'[[check]]\nname = "tests"\ncommand = {json.dumps(check)}\n\n'
        f"[hooks]\nmax_attempts = {max_attempts}\ntimeout_s = {timeout_s}\n"
    )


def project(tmp_path: Path, **kwargs: Any) -> Path:
    return write_project(
        tmp_path / "proj", config(**kwargs), {"check.sh": CHECK + "\n", "src.txt": "fine\n"}
    )


def event(
    agent: str, root: Path, *, session: str = "s1", guard: bool = False, loop: int = 0
) -> str:
    """The stop event each agent documents, with every field it sends."""
    if agent == "cursor":
        data: dict[str, Any] = {
            "conversation_id": session,
            "generation_id": "g1",
            "model": "claude-4-sonnet",
            "hook_event_name": "stop",
            "workspace_roots": [str(root)],
            "status": "completed",
            "loop_count": loop,
        }
    elif agent == "gemini":
        data = {
            "session_id": session,
            "transcript_path": "/tmp/transcript.json",
            "cwd": str(root),
            "hook_event_name": "AfterAgent",
            "timestamp": "2026-11-30T00:00:00Z",
            "prompt": "fix it",
            "prompt_response": "done",
            "stop_hook_active": guard,
        }
    else:
        data = {
            "session_id": session,
            "transcript_path": "/tmp/transcript.jsonl",
            "cwd": str(root),
            "permission_mode": "default",
            "hook_event_name": "Stop",
            "stop_hook_active": guard,
        }
        if agent == "codex":
            data |= {"last_assistant_message": None, "model": "gpt-5-codex", "turn_id": "t1"}
    return json.dumps(data)


def hook(
    state: Path, agent: str, stdin: str, *extra: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("MICROBUILD_STATE_DIR", "MICROBUILD_HOST")
    }
    env["MICROBUILD_HOST_IDLE_EXIT"] = "60"
    proc = subprocess.run(
        [sys.executable, "-m", "microbuild", "--state-dir", str(state), *extra, "hook", agent],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
        cwd="/",
    )
    assert proc.returncode == 0, proc
    assert proc.stderr == "", proc.stderr
    return proc


def blocked(agent: str, proc: subprocess.CompletedProcess[str]) -> str:
    """The report of a blocking answer, after checking its exact shape."""
    data = json.loads(proc.stdout)
    if agent == "cursor":
        assert list(data) == ["followup_message"]
        return str(data["followup_message"])
    assert list(data) == ["decision", "reason"], proc.stdout
    assert data["decision"] == ("deny" if agent == "gemini" else "block")
    return str(data["reason"])


def allowed(agent: str, proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.stdout == ("{}\n" if agent in ("codex", "cursor") else "")


def noted(agent: str, proc: subprocess.CompletedProcess[str]) -> str:
    """The note of an allow-with-note (Cursor has no field for one: `{}`)."""
    if agent == "cursor":
        assert proc.stdout == "{}\n"
        return ""
    data = json.loads(proc.stdout)
    assert list(data) == ["systemMessage"]
    return str(data["systemMessage"])


def log_text(state: Path) -> str:
    return (state / "hooks.log").read_text()


# -- no host needed -------------------------------------------------------------------------


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize("stdin", ["", "   \n", "{not json", "[1, 2]", '{"cwd": 3}', "\x00\xff"])
def test_malformed_stdin_allows_and_logs(state_dir: Path, agent: str, stdin: str) -> None:
    allowed(agent, hook(state_dir, agent, stdin))
    assert f"{agent}: allowed:" in log_text(state_dir)


@pytest.mark.parametrize("agent", AGENTS)
def test_outside_a_project_allows_silently(state_dir: Path, tmp_path: Path, agent: str) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    allowed(agent, hook(state_dir, agent, event(agent, plain)))
    assert "not a microbuild project" in log_text(state_dir)


@pytest.mark.parametrize("agent", AGENTS)
def test_broken_config_allows_with_a_note(state_dir: Path, tmp_path: Path, agent: str) -> None:
    root = write_project(tmp_path / "proj", "[[check]]\nname = 3\n")
    note = noted(agent, hook(state_dir, agent, event(agent, root)))
    assert agent == "cursor" or "microbuild.toml" in note
    assert "broken config" in log_text(state_dir)


def test_cursor_acts_only_on_completed(state_dir: Path, tmp_path: Path) -> None:
    root = project(tmp_path)
    (root / "src.txt").write_text("BUG\n")
    data = json.loads(event("cursor", root)) | {"status": "aborted"}
    allowed("cursor", hook(state_dir, "cursor", json.dumps(data)))
    assert "status is not completed" in log_text(state_dir)


@pytest.mark.parametrize("agent", ["claude", "codex"])
def test_unreachable_host_allows_with_a_note(state_dir: Path, tmp_path: Path, agent: str) -> None:
    root = project(tmp_path)
    (root / "src.txt").write_text("BUG\n")
    proc = hook(state_dir, agent, event(agent, root), "--host", f"unix:{tmp_path}/none.sock")
    assert "could not validate" in noted(agent, proc)
    assert "unavailable" in log_text(state_dir)


# -- with a real host -----------------------------------------------------------------------


@pytest.mark.isolation
@pytest.mark.parametrize("agent", AGENTS)
def test_failing_passing_and_unchanged(state_dir: Path, tmp_path: Path, agent: str) -> None:
    need_isolation()
    root = project(tmp_path)
    allowed(agent, hook(state_dir, agent, event(agent, root)))  # passing tree
    allowed(agent, hook(state_dir, agent, event(agent, root)))  # no change since
    (root / "src.txt").write_text("BUG\n")
    report = blocked(agent, hook(state_dir, agent, event(agent, root)))
    assert report.startswith("The microbuild failed on your changes")
    assert "src.txt:1: found BUG" in report
    assert "1 of 5" in report
    # Stopping again without a change: the agent is not trapped.
    allowed(agent, hook(state_dir, agent, event(agent, root, guard=True, loop=1)))
    (root / "src.txt").write_text("fixed\n")
    allowed(agent, hook(state_dir, agent, event(agent, root, guard=True, loop=1)))
    assert git(root, "status", "--porcelain") == " M src.txt\n"


@pytest.mark.isolation
@pytest.mark.parametrize("agent", AGENTS)
def test_retry_cap_lets_the_agent_stop(state_dir: Path, tmp_path: Path, agent: str) -> None:
    need_isolation()
    root = project(tmp_path, max_attempts=2)
    for attempt in (1, 2):
        (root / "src.txt").write_text(f"BUG {attempt}\n")
        proc = hook(state_dir, agent, event(agent, root, guard=attempt > 1, loop=attempt - 1))
        assert f"{attempt} of 2" in blocked(agent, proc)
    (root / "src.txt").write_text("BUG 3\n")
    proc = hook(state_dir, agent, event(agent, root, guard=True, loop=2))
    note = noted(agent, proc)
    assert agent == "cursor" or "after 2 attempts" in note
    assert "retry cap reached" in log_text(state_dir)
    # A new turn (the loop guard is off) starts counting again.
    assert "1 of 2" in blocked(agent, hook(state_dir, agent, event(agent, root, loop=0)))


@pytest.mark.isolation
def test_stop_hook_active_with_changes_still_validates(state_dir: Path, tmp_path: Path) -> None:
    need_isolation()
    root = project(tmp_path)
    (root / "src.txt").write_text("BUG\n")
    assert "1 of 5" in blocked("claude", hook(state_dir, "claude", event("claude", root)))
    (root / "src.txt").write_text("BUG again\n")
    proc = hook(state_dir, "claude", event("claude", root, guard=True))
    assert "2 of 5" in blocked("claude", proc)
    # Another session in the same project, same tree: already validated, nothing to do.
    allowed("claude", hook(state_dir, "claude", event("claude", root, session="s2")))


@pytest.mark.isolation
@pytest.mark.parametrize("agent", ["claude", "cursor"])
def test_environment_failure_says_not_to_rewrite_code(
    state_dir: Path, tmp_path: Path, agent: str
) -> None:
    need_isolation()
    root = project(tmp_path, check="no-such-tool --check")
    (root / "src.txt").write_text("changed\n")
    report = blocked(agent, hook(state_dir, agent, event(agent, root)))
    assert "ENVIRONMENT failure" in report
    assert "Do NOT rewrite code" in report
    assert "no-such-tool" in report


@pytest.mark.isolation
@pytest.mark.parametrize("agent", ["claude", "gemini"])
def test_time_budget_exceeded_then_next_stop_gets_the_result(
    state_dir: Path, tmp_path: Path, agent: str
) -> None:
    need_isolation()
    root = project(tmp_path, check=f"sleep 6; {CHECK}", timeout_s=5)
    (root / "src.txt").write_text("BUG\n")
    started = time.monotonic()
    proc = hook(state_dir, agent, event(agent, root))
    took = time.monotonic() - started
    assert "still running after 5 s" in noted(agent, proc)
    assert took < 5 + 3, took
    assert "time budget exceeded" in log_text(state_dir)
    # The microbuild went on without the hook: its result is there for the next stop.
    results = state_dir / "hooks"
    deadline = time.monotonic() + 60
    while not list(results.glob("*/result-*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    started = time.monotonic()
    report = blocked(agent, hook(state_dir, agent, event(agent, root, guard=True)))
    assert time.monotonic() - started < 4
    assert "src.txt:1: found BUG" in report


@pytest.mark.slow
@pytest.mark.isolation
def test_real_project_failing_test_blocks_claude_and_codex(state_dir: Path, tmp_path: Path) -> None:
    need_isolation()
    spec = realproject.PROJECTS["pluggy"]
    root = realproject.real_project("pluggy", tmp_path / "pluggy")
    with (root / "microbuild.toml").open("a") as f:
        f.write(
            '\n[[check]]\nname = "tests"\ncommand = "python -m pytest -q -p no:cacheprovider"\n'
        )
    git(root, "commit", "-qam", "tests check")
    bug = root / spec.bug_file
    original = bug.read_bytes()
    # The first validate builds the snapshot (minutes, beyond a hook's budget): do it up front.
    warm = subprocess.run(
        [sys.executable, "-m", "microbuild", "--state-dir", str(state_dir), "validate", "--plain"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=os.environ | {"MICROBUILD_HOST_IDLE_EXIT": "60"},
    )
    assert warm.returncode == 0, warm.stdout + warm.stderr
    allowed("claude", hook(state_dir, "claude", event("claude", root)))
    subprocess.run(["sed", "-i", spec.bug_sed, str(bug)], check=True)
    report = blocked("claude", hook(state_dir, "claude", event("claude", root), timeout=600))
    assert "test_helpers" in report and "varnames" in report
    # Codex on the same tree: answered from the host's cache, same report.
    assert "test_helpers" in blocked("codex", hook(state_dir, "codex", event("codex", root)))
    bug.write_bytes(original)
    allowed("claude", hook(state_dir, "claude", event("claude", root, guard=True)))


# -- installers -----------------------------------------------------------------------------

OTHERS = {
    "claude": (
        ".claude/settings.json",
        {
            "permissions": {"allow": ["Bash(npm test)"]},
            "hooks": {
                "Stop": [{"hooks": [{"type": "command", "command": "notify-send done"}]}],
                "PreToolUse": [
                    {"matcher": "Bash", "hooks": [{"type": "command", "command": "audit.sh"}]}
                ],
            },
        },
    ),
    "codex": (
        ".codex/hooks.json",
        {"hooks": {"SessionStart": [{"hooks": [{"type": "command", "command": "hello.sh"}]}]}},
    ),
    "cursor": (
        ".cursor/hooks.json",
        {"version": 1, "hooks": {"afterFileEdit": [{"command": "./fmt.sh"}]}},
    ),
    "gemini": (
        ".gemini/settings.json",
        {"theme": "GitHub", "tools": {"sandbox": False}, "hooks": {"BeforeTool": []}},
    ),
}


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MICROBUILD_STATE_DIR"}
    return subprocess.run(
        [sys.executable, "-m", "microbuild", "--state-dir", str(state), "hook", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize("indent", [2, 4])
def test_install_keeps_other_entries_and_uninstall_restores_bytes(
    state_dir: Path, tmp_path: Path, agent: str, indent: int
) -> None:
    root = project(tmp_path, timeout_s=100, max_attempts=3)
    rel, other = OTHERS[agent]
    path = root / rel
    path.parent.mkdir()
    before = json.dumps(other, indent=indent) + "\n"
    path.write_text(before)
    proc = cli(state_dir, "install", agent, "--project", str(root), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["changes"] == [
        {"agent": agent, "path": str(path), "action": "installed"}
    ]
    data = json.loads(path.read_text())
    for key, value in other.items():
        if key != "hooks":
            assert data[key] == value if key != "tools" else data[key]["sandbox"] is False
    for event_name, entries in other["hooks"].items():  # type: ignore[union-attr]
        assert data["hooks"][event_name][: len(entries)] == entries
    microbuild = str(Path(sys.executable).parent / "microbuild")
    if agent == "claude":
        for event_name in ("Stop", "SubagentStop"):
            ours = data["hooks"][event_name][-1]["hooks"][0]
            assert ours["type"] == "command" and ours["timeout"] == 160
            assert ours["command"].endswith(" hook claude")
            assert ours["command"].split()[0] in (microbuild, sys.executable)
        assert data["hooks"]["Stop"][0] == other["hooks"]["Stop"][0]  # type: ignore[index]
    elif agent == "codex":
        assert data["hooks"]["Stop"] == [
            {
                "hooks": [
                    {
                        "type": "command",
                        "command": data["hooks"]["Stop"][0]["hooks"][0]["command"],
                        "timeout": 160,
                    }
                ]
            }
        ]
    elif agent == "cursor":
        (ours,) = data["hooks"]["stop"]
        assert data["version"] == 1
        assert ours["loop_limit"] == 3 and ours["timeout"] == 160
        assert ours["command"].endswith(" hook cursor")
    else:
        assert data["tools"] == {"sandbox": False, "enableHooks": True}
        (group,) = data["hooks"]["AfterAgent"]
        assert group["hooks"][0]["timeout"] == 160_000
        assert group["hooks"][0]["name"] == "microbuild"
    assert path.read_text().startswith("{\n" + " " * indent + '"')
    installed = path.read_bytes()
    again = cli(state_dir, "install", agent, "--project", str(root), "--json")
    assert json.loads(again.stdout)["changes"][0]["action"] == "unchanged"
    assert path.read_bytes() == installed
    proc = cli(state_dir, "uninstall", agent, "--project", str(root))
    assert proc.returncode == 0 and f"{agent}: removed" in proc.stdout
    assert path.read_text() == before
    assert "absent" in cli(state_dir, "uninstall", agent, "--project", str(root)).stdout
    assert path.read_text() == before


def test_install_all_into_a_bare_project_and_uninstall_leaves_nothing(
    state_dir: Path, tmp_path: Path
) -> None:
    root = project(tmp_path)
    proc = cli(state_dir, "install", "all", "--project", str(root))
    assert proc.returncode == 0, proc.stderr
    assert 'aider --test-cmd "microbuild validate --plain" --auto-test' in proc.stdout
    for agent in AGENTS:
        assert f"{agent}: installed" in proc.stdout
        assert (root / OTHERS[agent][0]).is_file()
    assert json.loads((root / ".cursor/hooks.json").read_text())["version"] == 1
    assert cli(state_dir, "uninstall", "all", "--project", str(root)).returncode == 0
    for agent in AGENTS:
        assert not (root / OTHERS[agent][0]).exists()


def test_install_updates_an_old_entry_in_place(state_dir: Path, tmp_path: Path) -> None:
    root = project(tmp_path)
    path = root / ".claude/settings.json"
    path.parent.mkdir()
    old = {"type": "command", "command": "/old/bin/microbuild hook claude", "timeout": 30}
    other = {"type": "command", "command": "other.sh"}
    path.write_text(json.dumps({"hooks": {"Stop": [{"hooks": [old]}, {"hooks": [other]}]}}))
    proc = cli(state_dir, "install", "claude", "--project", str(root))
    assert "claude: updated" in proc.stdout
    stop = json.loads(path.read_text())["hooks"]["Stop"]
    assert len(stop) == 2 and stop[1] == {"hooks": [other]}
    assert stop[0]["hooks"][0]["command"] != old["command"]


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize("text", ['{"hooks": [', '["not", "an", "object"]', '{"hooks": 3}'])
def test_corrupt_settings_are_left_alone(
    state_dir: Path, tmp_path: Path, agent: str, text: str
) -> None:
    root = project(tmp_path)
    path = root / OTHERS[agent][0]
    path.parent.mkdir()
    path.write_text(text)
    for verb in ("install", "uninstall"):
        proc = cli(state_dir, verb, agent, "--project", str(root))
        if verb == "uninstall" and text == '{"hooks": 3}':
            assert proc.returncode == 0 and "absent" in proc.stdout
            continue
        assert proc.returncode == 2, proc
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
        assert str(path) in proc.stderr
    assert path.read_text() == text


def test_aider_prints_the_flags(state_dir: Path, tmp_path: Path) -> None:
    proc = cli(state_dir, "install", "aider", "--project", str(tmp_path), "--json")
    assert json.loads(proc.stdout) == {
        "changes": [],
        "aider": 'aider --test-cmd "microbuild validate --plain" --auto-test',
    }
