"""Agent adapters: parse an agent's stop-event JSON, decide, answer in its dialect."""

from __future__ import annotations

from microbuild.hooks.base import AgentAdapter
from microbuild.hooks.claude import Claude
from microbuild.hooks.codex import Codex
from microbuild.hooks.cursor import Cursor
from microbuild.hooks.gemini import Gemini

ADAPTERS: dict[str, AgentAdapter] = {a.name: a for a in (Claude(), Codex(), Cursor(), Gemini())}
AGENTS = tuple(ADAPTERS)

__all__ = ["ADAPTERS", "AGENTS", "AgentAdapter"]
