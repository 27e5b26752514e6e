"""Classify CI command lines: a check to keep, dependency setup for the snapshot, or dropped.

Every CI reader turns its file into :class:`Step` objects (one shell command each, with its
working directory and environment); :class:`Distiller` classifies them and collects the result.
The classification is by the program a line runs (after ``sudo``, ``python -m``, ``uv run`` and
the like), because that is what decides whether a line can run offline in a sidecar.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "CHECK_ORDER",
    "Distiller",
    "Drop",
    "Step",
    "Verdict",
    "classify",
    "split_script",
]

Kind = Literal["lint", "types", "build", "tests", "setup", "python-setup", "drop"]
CHECK_ORDER: tuple[str, ...] = ("lint", "types", "build", "tests")
"""Fast first: a lint finding should not wait for the test suite."""
TIMEOUTS = {"lint": 300, "types": 600, "build": 600, "tests": 900}


@dataclass(frozen=True)
class Step:
    """One shell command from a CI file, with the context it ran in."""

    command: str
    file: str
    where: str
    """Human location inside the file: ``job tests``, ``session lint``, ..."""
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    before: tuple[str, ...] = ()
    """Commands that prepare this one (tox's commands_pre), run first in ``cwd``."""
    make_dirs: tuple[str, ...] = ()
    """Directories to create first, relative to the root (tox creates a missing change_dir)."""
    ignore_exit: bool = False
    """The exit status does not count (tox's ``- command``)."""

    def shell(self) -> str:
        """The command as it must run from the project root."""
        parts = [f"mkdir -p {shlex.join(self.make_dirs)}"] if self.make_dirs else []
        parts += [f"cd {shlex.quote(self.cwd)}"] if self.cwd not in (None, "", ".") else []
        parts += [f"export {k}={shlex.quote(v)}" for k, v in self.env]
        parts += self.before
        command = f"{{ {self.command} || true; }}" if self.ignore_exit else self.command
        return " && ".join([*parts, command])

    def prefixed(self) -> bool:
        return bool(
            self.env or self.before or self.make_dirs or self.ignore_exit
        ) or self.cwd not in (None, "", ".")


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    reason: str
    command: str | None = None
    """The line to run instead of the CI's, when the verdict rewrites it."""
    check: str | None = None
    """A check of its own with this name (one per pre-commit hook), instead of the kind's."""


@dataclass(frozen=True)
class Drop:
    item: str
    reason: str
    file: str | None


# A line is read through these wrappers to the program that does the work.
_WRAPPERS = {"!", "sudo", "time", "exec", "env", "nice", "command", "xvfb-run"}
_RUNNERS = (
    ("uv", "run"),
    ("poetry", "run"),
    ("pdm", "run"),
    ("pipenv", "run"),
    ("hatch", "run"),
    ("rye", "run"),
    ("pixi", "run"),
    ("npx",),
    ("pnpx",),
    ("bunx",),
    ("uvx",),
    ("pipx", "run"),
)
_ASSIGN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")

_LINT = {
    "ruff": "ruff",
    "flake8": "flake8",
    "pylint": "pylint",
    "black": "black",
    "isort": "isort",
    "pycodestyle": "pycodestyle",
    "pydocstyle": "pydocstyle",
    "bandit": "bandit (static analysis, runs offline: lint-like)",
    "eslint": "eslint",
    "prettier": "prettier",
    "stylelint": "stylelint",
    "shellcheck": "shellcheck",
    "codespell": "codespell",
    "yamllint": "yamllint",
    "golangci-lint": "golangci-lint",
    "rubocop": "rubocop",
    "biome": "biome",
    "check-manifest": "check-manifest",
    "pre-commit": "pre-commit run",
    "prek": "prek run",
}
_TYPES = {
    "mypy": "mypy",
    "pyright": "pyright",
    "pytype": "pytype",
    "pyre": "pyre",
    "tsc": "tsc",
    "vue-tsc": "vue-tsc",
    "ty": "ty",
    "pyrefly": "pyrefly",
    "stubtest": "mypy stubtest",
}
_TESTS = {
    "pytest": "pytest",
    "py.test": "pytest",
    "unittest": "unittest",
    "nose2": "nose2",
    "jest": "jest",
    "vitest": "vitest",
    "mocha": "mocha",
    "ava": "ava",
    "trial": "trial",
    "virtue": "virtue",
    "green": "green",
    "stestr": "stestr",
    "zope-testrunner": "zope-testrunner",
    "behave": "behave",
    "ward": "ward",
    "hypothesis": "hypothesis",
}
_SECURITY = {
    "snyk",
    "trivy",
    "safety",
    "pip-audit",
    "grype",
    "gitleaks",
    "trufflehog",
    "semgrep",
    "osv-scanner",
    "codeql",
    "zizmor",
}
_DEPLOY = {
    "kubectl",
    "helm",
    "terraform",
    "aws",
    "gcloud",
    "az",
    "heroku",
    "netlify",
    "vercel",
    "serverless",
    "flyctl",
    "fly",
    "ansible-playbook",
    "scp",
    "rsync",
    "firebase",
    "wrangler",
    "ghr",
    "gh",
}
_DOCS = {"sphinx-build", "mkdocs", "pdoc", "pdoc3", "sphinx-autobuild", "towncrier", "jupyter-book"}
_INFO = {
    "echo",
    "printf",
    "printenv",
    "ls",
    "cat",
    "pwd",
    "which",
    "whoami",
    "uname",
    "df",
    "free",
    "nproc",
    "true",
    "date",
    "env",
    "set",
    "type",
}
_NODE_PM = {"npm", "yarn", "pnpm", "bun"}
_NODE_BUILTIN_SCRIPTS = {"test", "start", "stop", "restart"}
_PACKAGE_BUILDERS = ("hatch", "flit", "poetry", "pdm", "uv")
"""Programs whose ``build`` subcommand builds the package's sdist and wheel."""
_PY_INSTALL_PROGRAMS = {"pip", "pip3", "uv", "poetry", "pdm", "pipenv", "pip-sync", "virtualenv"}


def split_script(script: str) -> Iterator[str]:
    """The simple commands of a shell script: lines (with ``\\`` continuations joined), and
    ``&&``/``;`` chains split outside quotes. Comments and blank lines are skipped."""
    joined = re.sub(r"\s*\\\r?\n\s*", " ", script)
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        yield from _split_chain(line)


def _split_chain(line: str) -> Iterator[str]:
    out: list[str] = []
    quote = ""
    i = 0
    start = 0
    depth = 0
    while i < len(line):
        char = line[i]
        if quote:
            if char == "\\" and quote == '"':
                i += 2
                continue
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        elif char == "#" and (i == 0 or line[i - 1] in " \t") and depth == 0:
            break
        elif depth == 0 and (line.startswith("&&", i) or char == ";"):
            out.append(line[start:i])
            i += 2 if char == "&" else 1
            start = i
            continue
        i += 1
    out.append(line[start:i])
    pending = ""
    for part in (p.strip() for p in out):
        if not part:
            continue
        if re.fullmatch(r"cd\s+\S+", part):
            # `cd dir && cmd` stays one command: cmd runs in dir
            pending = f"{pending}{part} && "
            continue
        yield pending + part
        pending = ""


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:
        return command.split()


def program(command: str) -> tuple[str, list[str]]:
    """The program a line runs and its arguments, through wrappers and runners."""
    words = _words(command.split("|", 1)[0] if "|" in command else command)
    while words:
        if words[0] == "cd" and len(words) >= 3 and words[2] == "&&":
            words = words[3:]
            continue
        head = words[0].rsplit("/", 1)[-1]
        if _ASSIGN_RE.match(words[0]) or head in _WRAPPERS:
            words = words[1:]
            continue
        if head.startswith("python") and len(words) >= 3 and words[1] == "-m":
            words = words[2:]
            continue
        if head in ("python", "python3") and len(words) >= 2 and words[1].startswith("-m"):
            words = [words[1][2:], *words[2:]]
            continue
        runner = next(
            (r for r in _RUNNERS if tuple(w.rsplit("/", 1)[-1] for w in words[: len(r)]) == r),
            None,
        )
        if runner is not None and len(words) > len(runner):
            rest = words[len(runner) :]
            while rest and rest[0].startswith("-"):
                # options of the runner itself (`uvx --with=tox-uv tox`, `uv run --frozen`)
                takes_value = "=" not in rest[0] and rest[0] in ("--with", "--python", "-p")
                rest = rest[2:] if takes_value else rest[1:]
            words = rest
            continue
        return head, words[1:]
    return "", []


# `coverage run` options that take a value (the next word unless written with `=`).
_COVERAGE_VALUE_OPTIONS = frozenset(
    {"--rcfile", "--source", "--include", "--omit", "--concurrency", "--context", "--data-file"}
    | {"--debug"}
)
_SHELL_SYNTAX = ("&&", "||", ";", "|", ">", "<", "$(", "`", "\n", "&")


def without_coverage(command: str) -> str | None:
    """`coverage run [OPTIONS] -m MODULE ARGS` as `python -m MODULE ARGS` (and `coverage run
    PROGRAM ARGS` as `python PROGRAM ARGS`), keeping leading variable assignments; None for
    anything else, or a line with more shell in it than that."""
    if any(token in command for token in _SHELL_SYNTAX):
        return None
    words = _words(command)
    i = 0
    while i < len(words) and _ASSIGN_RE.match(words[i]):
        i += 1
    assignments, python = words[:i], "python"
    head = words[i].rsplit("/", 1)[-1] if i < len(words) else ""
    if head.startswith("python") and words[i + 1 : i + 3] == ["-m", "coverage"]:
        python, i = words[i], i + 3
    elif head == "coverage":
        i += 1
    else:
        return None
    if words[i : i + 1] != ["run"]:
        return None
    i += 1
    while i < len(words) and words[i].startswith("-") and words[i] != "-m":
        takes_value = words[i] in _COVERAGE_VALUE_OPTIONS
        i += 2 if takes_value else 1
    rest = words[i:]
    if not rest or rest == ["-m"]:
        return None
    kept = []
    for word in assignments:
        key, _, value = word.partition("=")
        kept.append(f"{key}={shlex.quote(value)}")
    return " ".join([*kept, shlex.join([python, *rest])])


def classify(command: str) -> Verdict:
    """What to do with one command line; the reason is shown to the user."""
    text = command.strip()
    lowered = text.lower()
    name, args = program(text)
    first = args[0] if args else ""
    if re.search(
        r"\$(?:\{)?(?:GITHUB_ENV|GITHUB_OUTPUT|GITHUB_PATH|GITHUB_STEP_SUMMARY|BASH_ENV)", text
    ):
        return Verdict("drop", "sets CI variables for later steps (CI plumbing)")
    if "codecov" in lowered or "coveralls" in lowered:
        return Verdict("drop", "coverage upload (needs the network and a CI token)")
    if name in ("curl", "wget"):
        return Verdict("drop", "downloads or notifies over the network (checks run offline)")
    if name in _SECURITY or (name in _NODE_PM and first == "audit"):
        return Verdict("drop", "security scan (needs a vulnerability database online)")
    if name == "twine" and first == "check":
        return Verdict("build", "twine check: the built distributions' metadata")
    if name == "twine" or (
        first == "publish" and name in {*_NODE_PM, "poetry", "flit", "hatch", "uv", "cargo"}
    ):
        return Verdict("drop", "publishes a release")
    if name == "docker" or name == "podman":
        return Verdict(
            "drop", f"{name} {first}: containers and registries are not part of a microbuild"
        )
    if name in _DEPLOY or re.search(r"\bdeploy\b", lowered):
        return Verdict("drop", "deploys (needs credentials and the network)")
    if name in _DOCS or (name == "make" and first in ("html", "docs", "doc", "linkcheck")):
        return Verdict("drop", "builds the documentation (not a check of the code)")
    if name in ("coverage", "diff-cover", "genhtml"):
        if first in ("run",) and len(args) > 1:
            plain = without_coverage(text)
            inner = classify(
                plain or " ".join(shlex.quote(a) for a in args[1:] if not a.startswith("-"))
            )
            if inner.kind == "tests" and plain is not None:
                return Verdict(
                    "tests",
                    "tests, run without `coverage run`: no coverage report or threshold is "
                    "kept, so measuring coverage would only slow the check",
                    command=plain,
                )
            if inner.kind == "tests":
                return Verdict(
                    "tests", "tests under coverage (`coverage run`); coverage data is not reported"
                )
        return Verdict("drop", "coverage reporting (combines data across CI jobs; not a check)")
    if name in ("apt-get", "apt", "apk", "yum", "dnf", "brew", "choco", "snap", "port"):
        return Verdict(
            "drop",
            "system packages: sidecars share the host's read-only root filesystem; "
            "install them on the host",
        )
    if name == "git":
        return Verdict("drop", f"git {first}: the sidecar receives the working tree, not a clone")
    if name in (
        "cd",
        "mkdir",
        "rm",
        "cp",
        "mv",
        "touch",
        "chmod",
        "source",
        ".",
        "export",
        "tar",
        "unzip",
    ):
        return Verdict("drop", f"`{name}` prepares the CI machine (not a check)")
    if (
        name in _INFO
        or (args and args[-1] in ("--version", "-V", "version"))
        or name.startswith("--")
    ):
        return Verdict("drop", "prints information only")
    if name in ("tox", "nox"):
        return Verdict(
            "drop", f"{name}: environment manager (its environments are expanded where known)"
        )
    if _builds_package(name, args):
        return Verdict("build", "builds the package (sdist and wheel)")
    if name in _DIST_CHECKERS:
        return Verdict("build", _DIST_CHECKERS[name])
    # installation
    if name in _PY_INSTALL_PROGRAMS or name == "ensurepip" or name == "venv":
        if name in ("pip", "pip3") and first in ("install", "download", "wheel"):
            return Verdict("python-setup", "installs Python dependencies")
        if (name == "uv" and first in ("pip", "sync", "venv", "tool")) or (
            name in ("poetry", "pdm", "pipenv") and first in ("install", "sync", "lock")
        ):
            return Verdict("python-setup", "installs Python dependencies")
        if name in ("ensurepip", "venv", "virtualenv", "pip-sync"):
            return Verdict("python-setup", "creates or fills a virtualenv")
        return Verdict(
            "drop", f"`{name} {first}` is not an install, lint, type-check, build or test"
        )
    if name in _NODE_PM:
        if (
            first in ("ci", "install", "i")
            or (name in ("yarn", "bun") and not args)
            or first == "fetch"
        ):
            return Verdict("setup", "installs Node dependencies")
        script = args[1] if first == "run" and len(args) > 1 else first
        kind = _node_script_kind(script)
        if kind is not None:
            return Verdict(kind, f"runs the package.json script {script!r}")
        return Verdict(
            "drop", f"`{name} {' '.join(args[:2])}` is not a lint, type-check, build or test script"
        )
    if name in ("go", "cargo"):
        tool_kind: dict[str, Kind] = {
            "vet": "lint",
            "clippy": "lint",
            "fmt": "lint",
            "build": "build",
            "test": "tests",
        }
        if first in ("mod", "fetch"):
            return Verdict("setup", f"{name} {first}: downloads dependencies")
        if first in tool_kind:
            return Verdict(tool_kind[first], f"{name} {first}")
    if name == "make":
        kind = _target_kind(first or "all")
        if kind is not None:
            return Verdict(kind, f"make target {first or 'all'!r}")
        return Verdict("drop", f"make {first}: not a lint, type-check, build or test target")
    if name in _LINT:
        if name in ("pre-commit", "prek") and first != "run":
            return Verdict("drop", f"{name} {first}: installs git hooks (not a check)")
        checked = check_only(text)
        if checked is not None and checked != text:
            return Verdict(
                "lint", f"{_LINT[name]}, in check-only form (a check never rewrites files)", checked
            )
        return Verdict("lint", _LINT[name])
    if name in _TYPES:
        return Verdict("types", _TYPES[name])
    if name in _TESTS or name.startswith("pytest"):
        return Verdict("tests", _TESTS.get(name, "pytest"))
    if name == "setup.py" and first in ("test",):
        return Verdict("tests", "setup.py test")
    if name.startswith("python") and args and args[0].endswith(".py"):
        script = args[0].rsplit("/", 1)[-1]
        if re.match(r"(run_?)?tests?\b|.*_tests?\.py$", script):
            return Verdict("tests", f"test script {args[0]}")
    return Verdict("drop", "not recognised as a lint, type-check, build, test or install command")


_DIST_CHECKERS = {"check-wheel-contents": "check-wheel-contents: the built wheels' contents"}
"""Checkers of built distributions other than ``twine check`` (classified with twine)."""


def _builds_package(name: str, args: list[str]) -> bool:
    """``python -m build``, ``uv build``, ``hatch build``, ..., and ``pip wheel`` of the project
    itself (``pip wheel -r requirements.txt`` only fills a wheel cache: an install step)."""
    first = args[0] if args else ""
    if name == "build" or (name in _PACKAGE_BUILDERS and first == "build"):
        return True
    return (
        name in ("pip", "pip3")
        and first == "wheel"
        and any(a in (".", "..") or a.startswith(("./", "../")) for a in args[1:])
    )


# Options that make uv fetch an interpreter of its own (`--python 3.13 --python-preference
# only-managed`): the sidecar's .venv Python builds, offline.
_UV_FETCHING = {"--python", "-p", "--python-preference"}


def offline_build(command: str) -> str | None:
    """A package build as it runs without the network: build isolation would download the
    build backend, so ``python -m build`` gets ``--no-isolation``, ``uv build`` and ``pip
    wheel .`` ``--no-build-isolation`` (and uv keeps to the .venv's Python); None when the
    command is not one of those (or has more shell in it than one command)."""
    if any(token in command for token in _SHELL_SYNTAX):
        return None
    words = _words(command)
    name, args = program(command)
    if not words or not _builds_package(name, args):
        return None
    head = words[: len(words) - len(args)]
    if name == "build":
        if {"-n", "--no-isolation"} & set(args) or any(
            a.startswith("-") and not a.startswith("--") and "n" in a[1:] for a in args
        ):
            return command
        return shlex.join([*head, "--no-isolation", *args])
    if name == "uv":
        kept: list[str] = []
        it = iter(args)
        for arg in it:
            if arg in _UV_FETCHING:
                next(it, None)
                continue
            if arg.split("=", 1)[0] in _UV_FETCHING and "=" in arg:
                continue
            kept.append(arg)
        if "--no-build-isolation" not in kept:
            kept.insert(1, "--no-build-isolation")
        return shlex.join([*head, *kept])
    if name in ("pip", "pip3") and "--no-build-isolation" not in args:
        return shlex.join([*head, args[0], "--no-build-isolation", *args[1:]])
    return command


def consumes_distributions(command: str) -> bool:
    """Whether ``command`` checks built distributions (``twine check dist/*``): it needs a
    build step before it in the same check, or it checks an empty directory."""
    name, args = program(command)
    return (name == "twine" and args[:1] == ["check"]) or name in _DIST_CHECKERS


_FIX_FLAGS = {"--fix", "--unsafe-fixes", "--exit-non-zero-on-fix", "--fix-only", "--show-fixes"}


def check_only(command: str) -> str | None:
    """A formatter or fixer line in the form that only reports: ``black .`` → ``black --check
    .``, ``isort .`` → ``isort --check-only .``, ``ruff check --fix`` → ``ruff check``, ``ruff
    format`` → ``ruff format --check``. None when the line is not one of those tools (or has
    more shell in it than one command); the line itself when it already only checks."""
    if any(token in command for token in _SHELL_SYNTAX):
        return None
    words = _words(command)
    name, args = program(command)
    if name not in ("black", "isort", "ruff") or not words:
        return None
    head = words[: len(words) - len(args)]
    kept = [a for a in args if a not in _FIX_FLAGS]
    if name == "ruff":
        if kept[:1] == ["format"] and not {"--check", "--diff"} & set(kept):
            kept = ["format", "--check", *kept[1:]]
    elif name == "black":
        if not {"--check", "--diff"} & set(kept):
            kept = ["--check", *kept]
    elif not {"--check-only", "-c", "--check", "--diff"} & set(kept):
        kept = ["--check-only", *kept]
    if kept == args:
        return command
    return shlex.join([*head, *kept])


def _node_script_kind(script: str) -> Kind | None:
    return _target_kind(script.split(":", 1)[0])


def _target_kind(target: str) -> Kind | None:
    """A task name (Makefile target, package.json script, nox session) by what it says it does."""
    name = target.lower()
    if re.fullmatch(
        r"(lint|flake8|ruff|style|check-?format|format-?check|fmt-?check|eslint|pre-?commit)", name
    ):
        return "lint"
    if re.fullmatch(r"(types?|typecheck|type-?check|typing|mypy|pyright|tsc|check-?types)", name):
        return "types"
    if name in ("build", "compile", "dist"):
        return "build"
    if re.fullmatch(r"(tests?|unit|unit-?tests?|check|tests?-?unit|pytest|spec|ci)", name):
        return "tests"
    return None


def target_kind(target: str) -> Kind | None:
    return _target_kind(target)


@dataclass
class Distiller:
    """Collects classified steps; later duplicates (matrix cells, repeated jobs) fold away."""

    checks: dict[str, list[Step]] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    python_setup: list[Step] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    kept: list[tuple[str, str, str | None]] = field(default_factory=list)
    dropped: list[Drop] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    """Requirements of tools that checks run (pre-commit hooks, pinned), installed as they are."""
    kinds: dict[str, str] = field(default_factory=dict)
    """Check name → its kind, for checks named other than their kind."""
    offline_builders: set[str] = field(default_factory=set)
    """The programs of builds made to run without build isolation (``build``, ``uv``,
    ``pip``): the project's build backend, and uv, must be installed in the snapshot."""
    intercept: Callable[[Step], bool] | None = None
    """Takes a step over (True) before it is classified: how ``pre-commit run`` lines become
    the hooks' own commands, wherever they come from (CI, tox, nox, a Makefile)."""

    def add(self, step: Step, verdict: Verdict | None = None) -> Verdict:
        own = verdict is not None and verdict.check is not None
        if not own and self.intercept is not None and self.intercept(step):
            return Verdict("lint", "expanded")
        verdict = verdict or classify(step.command)
        label = f"{step.where}: `{_short(step.command)}`"
        if verdict.kind == "drop":
            self.drop(label, verdict.reason, step.file)
        elif verdict.kind == "setup":
            command = step.shell()
            if command not in self.setup:
                self.setup.append(command)
                self.kept.append((f"setup {label}", verdict.reason, step.file))
        elif verdict.kind == "python-setup":
            self.python_setup.append(step)
            self.kept.append((f"setup {label}", verdict.reason, step.file))
        else:
            if verdict.command is not None:
                step = dataclasses.replace(step, command=verdict.command)
            if verdict.kind == "build":
                offline = offline_build(step.command)
                if offline is not None and offline != step.command:
                    self.offline_builders.add(program(offline)[0])
                    step = dataclasses.replace(step, command=offline)
            key = verdict.check or verdict.kind
            if verdict.check is not None:
                self.kinds[key] = verdict.kind
            if consumes_distributions(step.command) and not any(
                not consumes_distributions(s.command) for s in self.checks.get(key, [])
            ):
                self.drop(
                    label,
                    "checks built distributions, but no kept step before it builds them "
                    "(it would check an empty directory)",
                    step.file,
                )
                return Verdict("drop", "no kept build step before it")
            steps = self.checks.setdefault(key, [])
            if all(s.shell() != step.shell() for s in steps):
                steps.append(step)
                self.kept.append((f"{verdict.kind} {label}", verdict.reason, step.file))
        return verdict

    def drop(self, item: str, reason: str, file: str | None) -> None:
        self.dropped.append(Drop(item, reason, file))

    def input(self, pattern: str) -> None:
        if pattern not in self.inputs:
            self.inputs.append(pattern)

    def check_commands(self) -> list[tuple[str, str]]:
        """(name, command) per kept kind, fast first; several commands of a kind chain."""
        out: list[tuple[str, str]] = []
        for kind in CHECK_ORDER:
            named = [k for k in self.checks if self.kinds.get(k) == kind and k != kind]
            for name in [kind, *named]:
                steps = self._without_subsumed(self.checks.get(name, []))
                if not steps:
                    continue
                if len(steps) == 1:
                    out.append((name, steps[0].shell()))
                    continue
                parts = [f"({s.shell()})" if s.prefixed() else s.command for s in steps]
                out.append((name, " && ".join(parts)))
        return out

    def timeout(self, name: str) -> int:
        return TIMEOUTS[self.kinds.get(name, name)]

    def _without_subsumed(self, steps: list[Step]) -> list[Step]:
        """A pytest run that selects a subset (``-k``, paths) is subsumed by a full run."""
        full = [s for s in steps if _is_full_pytest(s)]
        if not full:
            return steps
        kept: list[Step] = []
        for step in steps:
            name, _ = program(step.command)
            if (
                step not in full
                and name.startswith(("pytest", "py.test"))
                and step.cwd == full[0].cwd
            ):
                self.drop(
                    f"{step.where}: `{_short(step.command)}`",
                    f"a subset of the full run `{_short(full[0].command)}`",
                    step.file,
                )
                continue
            kept.append(step)
        return kept


def _is_full_pytest(step: Step) -> bool:
    name, args = program(step.command)
    if not name.startswith(("pytest", "py.test")):
        return False
    skip_value = {
        "-n",
        "-p",
        "-c",
        "-o",
        "--junitxml",
        "--cov",
        "--maxfail",
        "--tb",
        "--durations",
        "-W",
    }
    previous = ""
    for arg in args:
        if arg == "-k" or (arg.startswith("-k") and len(arg) > 2 and not arg.startswith("--")):
            return False
        if not arg.startswith("-") and previous not in skip_value:
            return False
        previous = arg
    return True


def _short(command: str, limit: int = 80) -> str:
    one = " ".join(command.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def short(command: str) -> str:
    return _short(command)


def unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


@dataclass
class PythonNeeds:
    """What the CI's Python install commands ask for; written as one ``.venv`` install later."""

    extras: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    requirement_files: list[str] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)
    project: bool = False
    """Whether the project itself is installed (``pip install .``, ``uv sync``, ...)."""
    tools: list[str] = field(default_factory=list)
    """Requirements of the tools checks run (pre-commit hooks' pins): installed in any case,
    unless the project's own dependencies install the tool; not a CI install of their own."""
    build_tools: list[str] = field(default_factory=list)
    """What a build without isolation needs: the build backend (``[build-system] requires``),
    the ``build`` frontend or uv."""

    def empty(self) -> bool:
        return not (
            self.extras or self.groups or self.requirement_files or self.packages or self.project
        )


_PIP_VALUE_OPTIONS = {
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-t",
    "--target",
    "--prefix",
    "--root",
    "--python",
    "-p",
    "--platform",
    "--python-version",
    "--only-binary",
    "--no-binary",
    "--trusted-host",
    "--cache-dir",
    "--upgrade-strategy",
    "--config-settings",
    "-C",
}
_NOT_PROJECT_DEPS = {
    "pip",
    "setuptools",
    "wheel",
    "tox",
    "nox",
    "tox-uv",
    "tox-gh-actions",
    "codecov",
    "coveralls",
    "twine",
    "uv",
    "virtualenv",
    "build",
    "pre-commit",
    *_SECURITY,
}


def python_needs(steps: Iterable[Step], into: PythonNeeds | None = None) -> PythonNeeds:
    """Read pip / uv / poetry / pdm install lines into :class:`PythonNeeds`."""
    needs = into or PythonNeeds()
    for step in steps:
        name, args = program(step.command)
        base = step.cwd.rstrip("/") + "/" if step.cwd not in (None, "", ".") else ""
        if name == "uv" and args[:1] == ["pip"]:
            name, args = "pip", args[1:]
        if name in ("pip", "pip3") and args[:1] == ["install"]:
            _pip_args(args[1:], base, needs)
        elif name == "uv" and args[:1] == ["sync"]:
            needs.project = True
            _sync_args(args[1:], needs, default_group="dev")
        elif name in ("pdm", "poetry") and args[:1] in (["install"], ["sync"]):
            needs.project = True
            _sync_args(args[1:], needs, default_group=None)
    return needs


def _sync_args(args: list[str], needs: PythonNeeds, default_group: str | None) -> None:
    it = iter(args)
    no_dev = False
    for arg in it:
        key, _, value = arg.partition("=")
        if key in ("--extra", "-E", "--extras", "--group", "--with", "-G"):
            value = value or next(it, "")
            target = needs.extras if key in ("--extra", "-E", "--extras") else needs.groups
            for item in value.replace(",", " ").split():
                if item not in target:
                    target.append(item)
        elif key in ("--no-dev", "--only-main", "--no-default-groups", "--prod"):
            no_dev = True
    if default_group and not no_dev and default_group not in needs.groups:
        needs.groups.append(default_group)


def _pip_args(args: list[str], base: str, needs: PythonNeeds) -> None:
    it = iter(args)
    for arg in it:
        key, eq, value = arg.partition("=")
        if arg in ("-r", "--requirement", "-c", "--constraint") or (
            key in ("--requirement", "--constraint") and eq
        ):
            path = value if eq else next(it, "")
            if (
                key in ("-r", "--requirement")
                and path
                and base + path not in needs.requirement_files
            ):
                needs.requirement_files.append(base + path)
        elif arg.startswith("-r") and len(arg) > 2:
            needs.requirement_files.append(base + arg[2:])
        elif key == "--group":
            group = value if eq else next(it, "")
            if group and group not in needs.groups:
                needs.groups.append(group.split(":")[-1])
        elif arg in ("-e", "--editable"):
            _pip_target(next(it, ""), base, needs)
        elif arg in _PIP_VALUE_OPTIONS:
            next(it, None)
        elif arg.startswith("-"):
            continue
        else:
            _pip_target(arg, base, needs)


def _pip_target(target: str, base: str, needs: PythonNeeds) -> None:
    match = re.fullmatch(r"\.?/?\.?(\[([^\]]*)\])?", target)
    if target and match is not None and target.startswith("."):
        if base:
            needs.packages.append(shlex.quote(base + target))
            return
        needs.project = True
        for extra in (match[2] or "").split(","):
            if extra.strip() and extra.strip() not in needs.extras:
                needs.extras.append(extra.strip())
        return
    req = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", target)
    if req is None or "$" in target:
        return
    if req.group().lower() in _NOT_PROJECT_DEPS:
        return
    if target not in needs.packages:
        needs.packages.append(target)
