"""Claude Code: `Stop` / `SubagentStop` hooks in `.claude/settings.json`.

Block with `{"decision": "block", "reason": ...}` on stdout and exit 0; allow with no output at
all — anything on stderr, even with exit 0, is shown to the user as a "Stop hook error".
"""

from __future__ import annotations

from microbuild.hooks.base import DecisionAdapter


class Claude(DecisionAdapter):
    name = "claude"
    settings_path = ".claude/settings.json"
