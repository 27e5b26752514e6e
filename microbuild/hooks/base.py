"""What every agent adapter shares: the stop event in a common shape, and the answer to give.

An adapter turns its agent's stop-event JSON into a `StopEvent` and renders an `Answer` in the
agent's dialect; the rules in `decide` never see an agent's field names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal


class EventError(ValueError):
    """The stop event on stdin is not what the agent documents (empty, not JSON, no cwd)."""


@dataclass(frozen=True)
class StopEvent:
    agent: str
    session: str
    cwd: Path
    loop_guard_active: bool
    """The agent is already continuing because a stop hook sent it back (not a fresh turn)."""
    loop_count: int = 0
    """How many times in a row the agent says it was sent back (Cursor), else 0."""
    actionable: bool = True
    """False when the agent stopped for a reason other than finishing (Cursor's `status`)."""
    event_name: str = ""


@dataclass(frozen=True)
class Answer:
    """`block`: keep the agent working, `message` is for the agent; `allow`: let it stop,
    `message` (may be empty) is a note for the user."""

    kind: Literal["allow", "block"]
    message: str = ""

    @classmethod
    def allow(cls, note: str = "") -> Answer:
        return cls("allow", note)

    @classmethod
    def block(cls, message: str) -> Answer:
        return cls("block", message)


class AgentAdapter:
    """One agent's dialect. Subclasses set `name` and implement `parse` and `render`."""

    name: ClassVar[str]
    settings_path: ClassVar[str]

    def load(self, raw: str) -> StopEvent:
        """Parse stdin; any shape problem is an `EventError`."""
        if not raw.strip():
            raise EventError("empty stdin: no stop event")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise EventError(f"stdin is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise EventError(f"the stop event is a JSON {type(data).__name__}, not an object")
        return self.parse(data)

    def parse(self, data: dict[str, Any]) -> StopEvent:
        raise NotImplementedError

    def render(self, answer: Answer) -> str:
        """The exact stdout text ("" for no output); the exit status is always 0."""
        raise NotImplementedError


class DecisionAdapter(AgentAdapter):
    """The agents that share Claude Code's event and answer shape (`session_id`, `cwd`,
    `stop_hook_active`; `{"decision": ..., "reason": ...}` to keep the agent working): they
    differ in the decision's word and in what a silent allow prints."""

    block_decision: ClassVar[str] = "block"
    silent_allow: ClassVar[str] = ""

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
            return dumps({"decision": self.block_decision, "reason": answer.message})
        return dumps({"systemMessage": answer.message}) if answer.message else self.silent_allow


def text_field(data: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = data.get(key)
    if isinstance(value, str) and value:
        return value
    if required:
        raise EventError(f"the stop event has no {key!r} string")
    return ""


def cwd_field(value: object, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise EventError(f"the stop event has no {key!r} directory")
    path = Path(value)
    if not path.is_absolute():
        raise EventError(f"the stop event's {key!r} is not an absolute path: {value!r}")
    return path


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False)
