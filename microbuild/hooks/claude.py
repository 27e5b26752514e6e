"""Claude Code: `Stop` / `SubagentStop` hooks in `.claude/settings.json`.

Block with `{"decision": "block", "reason": ...}` on stdout and exit 0; allow with no output at
all — anything on stderr, even with exit 0, is shown to the user as a "Stop hook error".
"""

from __future__ import annotations

from typing import Any

from microbuild.hooks.base import AgentAdapter, Answer, StopEvent, cwd_field, dumps, text_field


class Claude(AgentAdapter):
    name = "claude"
    settings_path = ".claude/settings.json"

    def parse(self, data: dict[str, Any]) -> StopEvent:
        return StopEvent(
            agent=self.name,
            session=text_field(data, "session_id") or "default",
            cwd=cwd_field(data.get("cwd"), "cwd"),
            loop_guard_active=data.get("stop_hook_active") is True,
            event_name=text_field(data, "hook_event_name"),
        )

    def render(self, answer: Answer) -> str:
        if answer.kind == "block":
            return dumps({"decision": "block", "reason": answer.message})
        return dumps({"systemMessage": answer.message}) if answer.message else ""
