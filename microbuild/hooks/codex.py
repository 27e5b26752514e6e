"""Codex CLI: `Stop` hooks in `.codex/hooks.json`.

Its output schema allows only `continue`, `decision`, `reason`, `stopReason`, `suppressOutput`
and `systemMessage`, and empty output has been reported invalid: a plain allow is `{}`.
"""

from __future__ import annotations

from typing import Any

from microbuild.hooks.base import AgentAdapter, Answer, StopEvent, cwd_field, dumps, text_field


class Codex(AgentAdapter):
    name = "codex"
    settings_path = ".codex/hooks.json"

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
        return dumps({"systemMessage": answer.message}) if answer.message else "{}"
