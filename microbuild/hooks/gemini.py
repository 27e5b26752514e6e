"""Gemini CLI: `AfterAgent` hooks in `.gemini/settings.json` (with `tools.enableHooks`).

`{"decision": "deny", "reason": ...}` rejects the agent's answer and sends the reason back as
a new prompt; no output lets it stop. Its hook timeouts are in milliseconds.
"""

from __future__ import annotations

from typing import Any

from microbuild.hooks.base import AgentAdapter, Answer, StopEvent, cwd_field, dumps, text_field


class Gemini(AgentAdapter):
    name = "gemini"
    settings_path = ".gemini/settings.json"

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
            return dumps({"decision": "deny", "reason": answer.message})
        return dumps({"systemMessage": answer.message}) if answer.message else ""
