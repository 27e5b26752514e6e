"""Cursor: `stop` hooks in `.cursor/hooks.json` (`version: 1`).

The event has no cwd and no `stop_hook_active`: the project is `workspace_roots[0]`, and
`loop_count` says how many follow-ups in a row hooks already sent. Keeping the agent working
is `{"followup_message": ...}`, submitted as the next user message; anything else is `{}` —
its stop output has no field for a note, so notes only go to the hook log.
"""

from __future__ import annotations

from typing import Any

from microbuild.hooks.base import (
    AgentAdapter,
    Answer,
    EventError,
    StopEvent,
    cwd_field,
    dumps,
    text_field,
)


class Cursor(AgentAdapter):
    name = "cursor"
    settings_path = ".cursor/hooks.json"

    def parse(self, data: dict[str, Any]) -> StopEvent:
        roots = data.get("workspace_roots")
        if not isinstance(roots, list) or not roots:
            raise EventError("the stop event has no 'workspace_roots'")
        count = data.get("loop_count", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise EventError(f"the stop event's 'loop_count' is not a count: {count!r}")
        return StopEvent(
            agent=self.name,
            session=text_field(data, "conversation_id") or "default",
            cwd=cwd_field(roots[0], "workspace_roots[0]"),
            loop_guard_active=count > 0,
            loop_count=count,
            actionable=data.get("status") == "completed",
            event_name=text_field(data, "hook_event_name"),
        )

    def render(self, answer: Answer) -> str:
        if answer.kind == "block":
            return dumps({"followup_message": answer.message})
        return "{}"
