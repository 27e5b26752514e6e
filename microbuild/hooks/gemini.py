"""Gemini CLI: `AfterAgent` hooks in `.gemini/settings.json` (with `tools.enableHooks`).

`{"decision": "deny", "reason": ...}` rejects the agent's answer and sends the reason back as
a new prompt; no output lets it stop. Its hook timeouts are in milliseconds.
"""

from __future__ import annotations

from microbuild.hooks.base import DecisionAdapter


class Gemini(DecisionAdapter):
    name = "gemini"
    settings_path = ".gemini/settings.json"
    block_decision = "deny"
