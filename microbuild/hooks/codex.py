"""Codex CLI: `Stop` hooks in `.codex/hooks.json`.

Its output schema allows only `continue`, `decision`, `reason`, `stopReason`, `suppressOutput`
and `systemMessage`, and empty output has been reported invalid: a plain allow is `{}`.
"""

from __future__ import annotations

from microbuild.hooks.base import DecisionAdapter


class Codex(DecisionAdapter):
    name = "codex"
    settings_path = ".codex/hooks.json"
    silent_allow = "{}"
