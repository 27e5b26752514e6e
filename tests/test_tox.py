"""Reading tox configs, with real tox 4 as the oracle.

Each config (modelled on real projects' files) is rendered by `tox config` (which reads, never
creates environments) and by microbuild's reader; tox's absolute paths are mapped to the
sidecar's layout (the project root relative to change_dir, its .venv, .tox/ENV/tmp) and the two
must agree on commands, commands_pre, commands_post, change_dir, deps and set_env.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from microbuild.distill import distill
from microbuild.distill.steps import Step
from microbuild.distill.tox_env import SITE_PACKAGES, ToxCommand, ToxConfig, ToxConfigError, up_from
from microbuild.distill.toxconfig import env_steps, load_tox

if __package__:  # tests/ became a package
    from . import realproject
else:
    import realproject

TOX = Path(sys.executable).parent / "tox"
PY = f"py{sys.version_info.major}{sys.version_info.minor}"
DOT = f"{sys.version_info.major}.{sys.version_info.minor}"
"""tox resolves an env's interpreter from its name: only the host's Python is sure to exist."""
KEYS = ("commands_pre", "commands", "commands_post", "change_dir", "deps", "set_env")

needs_tox = pytest.mark.skipif(not TOX.is_file(), reason="tox (dev extra) is not installed")


def tox_config(
    root: Path, envs: list[str], posargs: list[str] | None = None
) -> dict[str, dict[str, list[str]]]:
    """`tox config -e ENVS -k KEYS [-- POSARGS]`, parsed: env → key → lines."""
    done = subprocess.run(
        [
            str(TOX),
            "config",
            "--no-provision",
            "-c",
            str(root),
            "--root",
            str(root),
            "-e",
            ",".join(envs),
            "-k",
            *KEYS,
            *(["--", *posargs] if posargs is not None else []),
        ],
        cwd=root,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    # tox exits non-zero when an env's interpreter is missing (shown as `# Exception: Skip`).
    skipped = "# Exception: Skip(" in done.stdout
    assert done.returncode == 0 or skipped, done.stdout + done.stderr
    assert not any((root / ".tox" / e).exists() for e in envs), "tox config made an env"
    out: dict[str, dict[str, list[str]]] = {}
    env: dict[str, list[str]] = {}
    key = ""
    for line in done.stdout.splitlines():
        if match := re.fullmatch(r"\[testenv:(.+)\]", line):
            env = out.setdefault(match[1], {})
        elif line.startswith("  "):
            env[key].append(line.strip())
        elif " = " in line or line.endswith(" ="):
            key, _, value = line.partition(" =")
            env[key] = [value.strip()] if value.strip() else []
    return out


def normalise(root: Path, env: str, lines: list[str], up: str) -> list[str]:
    """tox's absolute paths as microbuild writes them for the sidecar."""
    base = re.escape(str(root.resolve()))

    def rel(path: str) -> str:
        return path if up == "." else f"{up}/{path}"

    out = []
    for line in lines:
        line = re.sub(
            rf"{base}/\.tox/{re.escape(env)}/lib/python\d+\.\d+/site-packages",
            lambda _: SITE_PACKAGES,
            line,
        )
        for scratch in ("tmp", "log"):
            line = line.replace(f"{root}/.tox/{env}/{scratch}", rel(f".tox/{env}/{scratch}"))
        line = re.sub(rf"{base}/\.tox/{re.escape(env)}(?=/|$|[\s'])", rel(".venv"), line)
        line = line.replace(f"{root}/.tox", rel(".tox"))
        out.append(line.replace(str(root), up))
    return out


def ours(tox: ToxConfig, name: str) -> dict[str, list[str]]:
    env = tox.env(name)

    def shown(commands: tuple[ToxCommand, ...]) -> list[str]:
        return [("- " if c.ignore_exit else "") + c.shell() for c in commands]

    return {
        "commands_pre": shown(env.commands_pre),
        "commands": shown(env.commands),
        "commands_post": shown(env.commands_post),
        "change_dir": [env.change_dir or "."],
        "deps": list(env.deps),
        "set_env": [f"{k}={v}" for k, v in env.set_env],
    }


def assert_agrees(
    root: Path, envs: list[str], posargs: list[str] | None = None
) -> dict[str, dict[str, list[str]]]:
    """Ours and tox's renderings of ``envs`` are the same; returns ours."""
    rendered = tox_config(root, envs, posargs)
    tox = load_tox(root)
    assert tox is not None
    tox.posargs = posargs
    result = {}
    for name in envs:
        mine = ours(tox, name)
        theirs = rendered[name]
        change_dir = Path(theirs["change_dir"][0]).relative_to(root).as_posix()
        up = up_from(None if change_dir == "." else change_dir)
        assert mine["change_dir"] == [change_dir], name
        for key in ("commands_pre", "commands", "commands_post"):
            assert mine[key] == normalise(root, name, theirs.get(key, []), up), (name, key)
        assert mine["deps"] == normalise(root, name, theirs.get("deps", []), "."), name
        # tox adds its own variables (PYTHONHASHSEED, VIRTUAL_ENV...); ours must be among them.
        tox_env = normalise(root, name, theirs.get("set_env", []), up)
        for pair in mine["set_env"]:
            assert pair in tox_env, (name, pair)
        result[name] = mine
    return result


def project(tmp_path: Path, files: dict[str, str]) -> Path:
    root = (tmp_path / "proj").resolve()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text.replace("@PY@", PY).replace("@DOT@", DOT))
    return root


# Modelled on pyproject-api's tox.ini: a multi-line {posargs:...} default with nested
# substitutions, {work_dir}, {env_site_packages_dir}, {tty:...}, {/} and an env default.
PYPROJECT_API_INI = """\
[tox]
requires = tox>=4.2
env_list = fix, @PY@, py312, py311, type, pkg_meta
skip_missing_interpreters = true

[testenv]
description = run the unit tests with pytest under {base_python}
package = wheel
wheel_build_env = .pkg
extras = testing
set_env =
    COVERAGE_FILE = {env:COVERAGE_FILE:{work_dir}{/}.coverage.{env_name}}
commands =
    python -m pytest {tty:--color=yes} {posargs: \\
      --cov {env_site_packages_dir}{/}pyproject_api --cov {tox_root}{/}tests \\
      --cov-config=pyproject.toml --no-cov-on-fail --cov-report term-missing:skip-covered \\
      --cov-report html:{env_tmp_dir}{/}htmlcov \\
      --cov-report xml:{work_dir}{/}coverage.{env_name}.xml \\
      --junitxml {work_dir}{/}junit.{env_name}.xml \\
      tests}
    diff-cover --compare-branch {env:DIFF_AGAINST:origin/main} {work_dir}{/}coverage.{env_name}.xml

[testenv:fix]
skip_install = true
deps =
    pre-commit-uv>=4.1.1
commands =
    pre-commit run --all-files --show-diff-on-failure

[testenv:type]
deps = mypy==1.11.2
commands = mypy src {posargs}

[testenv:pkg_meta]
skip_install = true
deps =
    check-wheel-contents>=0.6
    twine>=5.1.1
commands =
    python -m build -o {env_tmp_dir} -s -w .
    twine check --strict {env_tmp_dir}{/}*
    check-wheel-contents --no-config {env_tmp_dir}
"""


@needs_tox
def test_pyproject_api_like_ini(tmp_path: Path) -> None:
    root = project(tmp_path, {"tox.ini": PYPROJECT_API_INI})
    got = assert_agrees(root, [PY, "fix", "type", "pkg_meta"])
    pytest_line = got[PY]["commands"][0]
    assert pytest_line.startswith('python -m pytest --cov "$(python -c')
    assert "--cov ./tests" in pytest_line and f"html:.tox/{PY}/tmp/htmlcov" in pytest_line
    assert "{" not in pytest_line.replace(SITE_PACKAGES, "")
    assert got[PY]["set_env"] == [f"COVERAGE_FILE=.tox/.coverage.{PY}"]
    tox = load_tox(root)
    assert tox is not None
    assert tox.env("pkg_meta").make_dirs == (".tox/pkg_meta/tmp",)


# Modelled on filelock's tox.toml: commands as arrays, posargs with an array default spread into
# the command, env replacements with defaults, a ref spreading another table's value.
FILELOCK_TOML = """\
requires = ["tox>=4.2"]
env_list = ["fix", "@DOT@", "3.12", "type", "coverage"]
skip_missing_interpreters = true

[env_run_base]
description = "run tests with {env_name}"
package = "wheel"
extras = ["testing"]
pass_env = ["PYTEST_ADDOPTS"]
set_env.COVERAGE_FILE = { replace = "env", name = "COVERAGE_FILE", \
  default = "{work_dir}{/}.coverage.{env_name}" }
set_env.COVERAGE_PROCESS_START = "{tox_root}{/}pyproject.toml"
commands = [
  [
    "pytest",
    { replace = "posargs", extend = true, default = [
      "--durations", "10",
      "--junitxml", "{work_dir}{/}junit.{env_name}.xml",
      "--cov", "{env_site_packages_dir}{/}filelock",
      "--cov-config={tox_root}{/}pyproject.toml",
      "--cov-report", "html:{env_tmp_dir}{/}htmlcov",
      "tests",
    ] },
  ],
  [
    "diff-cover",
    "--compare-branch",
    { replace = "env", name = "DIFF_AGAINST", default = "origin/main" },
    "{work_dir}{/}coverage.{env_name}.xml",
  ],
]

[env.fix]
skip_install = true
deps = ["pre-commit-uv>=4.1.4"]
commands = [["pre-commit", "run", "--all-files", "--show-diff-on-failure"]]

[env.type]
deps = ["mypy==1.11.2", "types-setuptools"]
commands = [["mypy", "--strict", "src"], ["mypy", "--strict", "tests"]]

[env.coverage]
skip_install = true
deps = ["covdefaults>=2.3", "coverage[toml]>=7.6.1"]
set_env = { COVERAGE_FILE = "{work_dir}/.coverage" }
commands = [
  ["coverage", "combine"],
  ["coverage", "report", "--skip-covered", "--show-missing"],
  { replace = "ref", of = ["env", "fix", "commands"], extend = true },
  ["-", "coverage", "xml", "-o", "{work_dir}/cov xml"],
]
"""


@needs_tox
def test_filelock_like_tox_toml(tmp_path: Path) -> None:
    root = project(tmp_path, {"tox.toml": FILELOCK_TOML})
    got = assert_agrees(root, [DOT, "fix", "type", "coverage"])
    assert got[DOT]["commands"][0].startswith(
        f"pytest --durations 10 --junitxml .tox/junit.{DOT}.xml"
    )
    assert got["coverage"]["commands"][2:] == [
        "pre-commit run --all-files --show-diff-on-failure",
        "- coverage xml -o '.tox/cov xml'",
    ]


@needs_tox
def test_pyproject_tool_tox_native_and_legacy(tmp_path: Path) -> None:
    native = project(
        tmp_path / "native",
        {
            "pyproject.toml": '[project]\nname = "p"\nversion = "1"\n\n[tool.tox]\n'
            'env_list = ["py", "lint"]\n[tool.tox.env_run_base]\n'
            'deps = ["pytest>=8"]\ncommands = [["pytest", { replace = "posargs",'
            ' default = ["-q", "tests"], extend = true }]]\n'
            '[tool.tox.env.lint]\nskip_install = true\ndeps = ["ruff"]\n'
            'commands = [["ruff", "check", "{tox_root}"], ["ruff", "format", "--check", "."],'
            ' ["echo", "{[tool.tox.env_run_base]deps}"]]\n'
        },
    )
    got = assert_agrees(native, ["py", "lint"])
    assert got["py"]["commands"] == ["pytest -q tests"]
    assert got["lint"]["commands"][0] == "ruff check ."
    legacy = project(
        tmp_path / "legacy",
        {
            "pyproject.toml": '[tool.tox]\nlegacy_tox_ini = """\n[tox]\nenv_list = py\n'
            '[testenv]\ndeps = pytest\ncommands = pytest {posargs:-q}\n"""\n'
        },
    )
    assert assert_agrees(legacy, ["py"])["py"]["commands"] == ["pytest -q"]


# Modelled on more-itertools' tox.ini ({envpython}, a quoted glob) and on a Django app's:
# commands_pre compiles the translations the i18n tests need; change_dir is a missing directory.
DJANGO_LIKE_INI = """\
[tox]
envlist = @PY@-django{42,50}, py{39,310}-django42, flake8, docs

[base]
deps =
    -r {toxinidir}/requirements/tests.txt
opts = -p no:cacheprovider

[testenv]
deps =
    django42: Django>=4.2,<5.0
    django50: Django>=5.0,<5.1
    {[base]deps}
set_env =
    PYTHONPATH = {toxinidir}
    DJANGO_SETTINGS_MODULE = tests.settings
    MESSAGE = {env:GREETING:hello world}
change_dir = {toxinidir}/build/run
commands_pre =
    python -m django compilemessages --ignore=.tox
commands =
    {envpython} -m coverage run --include="app/*.py" -m pytest {[base]opts} \\
        {posargs:{toxinidir}/tests}
    - {envpython} -m coverage report --show-missing
    !django50: python -c "print('\\{not a substitution\\}')"
commands_post =
    python -m pip list

[testenv:flake8]
skip_install = True
deps = flake8
change_dir = tests
commands = flake8 \\
    --max-line-length 100 {toxinidir}
"""


@needs_tox
def test_django_like_commands_pre_and_change_dir(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        {
            "tox.ini": DJANGO_LIKE_INI,
            "tests/test_i18n.py": "",
            "requirements/tests.txt": "pytest\n",
        },
    )
    got = assert_agrees(root, [f"{PY}-django42", f"{PY}-django50", "flake8"])
    py = got[f"{PY}-django42"]
    assert py["commands_pre"] == ["python -m django compilemessages --ignore=.tox"]
    assert py["commands"][0] == (
        "../../.venv/bin/python -m coverage run '--include=app/*.py' -m pytest"
        " -p no:cacheprovider ../../tests"
    )
    assert py["commands"][2] == "python -c 'print('\"'\"'{not a substitution}'\"'\"')'"
    assert got[f"{PY}-django50"]["commands"][2:] == []
    assert got["flake8"]["commands"] == ["flake8 --max-line-length 100 .."]
    assert py["deps"] == ["Django>=4.2,<5.0", "-r ./requirements/tests.txt"]

    # In the generated check: compilemessages first, in the created change_dir.
    steps = {s.command: s for s in _steps(root, f"{PY}-django42")}
    test = steps[py["commands"][0]]
    assert test.shell().startswith("mkdir -p build/run && cd build/run && export PYTHONPATH=../..")
    assert (
        "&& python -m django compilemessages --ignore=.tox && ../../.venv/bin/python -m coverage"
        in test.shell()
    )


def _steps(root: Path, env: str) -> list[Step]:
    tox = load_tox(root)
    assert tox is not None
    return env_steps(tox.env(env), "tox.ini", tox.file)


@needs_tox
def test_setup_cfg_and_factor_lines(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        {
            "setup.cfg": "[metadata]\nname = p\n\n[tox:tox]\nenvlist = py311, lint\n\n"
            "[testenv]\ndeps =\n    pytest\n    lint: ruff\ncommands =\n"
            "    py311,py312,py313: pytest {posargs:tests} \\\n        -q\n    lint: ruff check .\n"
            "    !lint: python -c 'import sys; print(sys.argv)' a:b [] {:}\n"
        },
    )
    got = assert_agrees(root, ["py311", "lint"])
    assert got["py311"]["commands"][0] == "pytest tests -q"
    assert got["lint"]["commands"] == ["ruff check ."]


def test_host_environment_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`{env:NAME}` without set_env or default is the sidecar's variable, never the host's."""
    monkeypatch.setenv("SECRET_TOKEN", "host-secret")
    root = project(
        tmp_path,
        {
            "tox.ini": "[tox]\nenv_list = py\n[testenv]\nset_env =\n  LEAK = {env:SECRET_TOKEN}\n"
            "deps = {env:SECRET_TOKEN}\n"
            "commands = pytest --basetemp={env:SECRET_TOKEN}/x {env:HOME} {glob:/etc/pass*:none}\n"
        },
    )
    tox = load_tox(root)
    assert tox is not None
    env = tox.env("py")
    assert env.commands[0].shell() == "pytest --basetemp=${SECRET_TOKEN}/x ${HOME} none"
    assert env.set_env == () and env.shell_env == (("LEAK", '"${SECRET_TOKEN}"'),)
    assert env.deps == ("${SECRET_TOKEN}",)
    rendered = repr(env)
    assert "host-secret" not in rendered and os.environ.get("HOME", "?") not in rendered.replace(
        "${HOME}", ""
    )


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {
                "tox.ini": "[tox]\nenv_list = py\n[a]\nb = x {[a]b}\n"
                "[testenv]\ncommands = echo {[a]b}\n"
            },
            "[a]b -> [a]b refers to itself",
        ),
        (
            {
                "tox.ini": "[tox]\nenv_list = py\n[a]\nb = {[a]c}\nc = {[a]b}\n"
                "[testenv]\ncommands = echo {[a]b}\n"
            },
            "[a]b -> [a]c -> [a]b refers to itself",
        ),
        (
            {
                "tox.ini": "[tox]\nenv_list = py\n[testenv]\nset_env =\n  A = {env:B}\n"
                "  B = {env:A}\ncommands = echo {env:A}\n"
            },
            "is circular",
        ),
        (
            {
                "tox.toml": 'env_list = ["py"]\n[env.py]\ncommands = [{ replace = "ref",'
                ' of = ["env", "py", "commands"], extend = true }]\n'
            },
            "env.py.commands -> env.py.commands refers to itself",
        ),
        (
            {
                "tox.ini": "[tox]\nenv_list = py\n[testenv]\nchange_dir = ../elsewhere\n"
                "commands = pytest\n"
            },
            "outside the project",
        ),
    ],
)
def test_bad_references_are_one_line_errors(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    tox = load_tox(project(tmp_path, files))
    assert tox is not None
    with pytest.raises(ToxConfigError) as err:
        tox.env("py")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_toml_and_ini_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ToxConfigError) as err:
        load_tox(project(tmp_path / "a", {"tox.toml": 'env_list = ["py"\n[env.py]\n'}))
    assert str(err.value).startswith("tox.toml: invalid TOML: ") and "\n" not in str(err.value)
    with pytest.raises(ToxConfigError) as err:
        load_tox(project(tmp_path / "b", {"tox.ini": "[tox]\nenv_list = py\n  [broken\nx"}))
    assert str(err.value).startswith("tox.ini cannot be parsed") and "\n" not in str(err.value)


def test_unknown_env_and_broken_config_are_dropped_with_a_reason(tmp_path: Path) -> None:
    workflow = (
        "on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n    steps:\n      - run: tox -e {env}\n"
    )
    root = project(
        tmp_path / "unknown",
        {
            ".github/workflows/ci.yml": workflow.format(env="nope"),
            "tox.toml": 'env_list = ["py"]\n[env_run_base]\ncommands = [["pytest"]]\n',
        },
    )
    result = distill(root)
    reasons = {d.item: d.reason for d in result.dropped}
    assert reasons["job t step 1: `tox -e nope`"] == "tox.toml defines no tox environment 'nope'"
    broken = project(
        tmp_path / "broken",
        {".github/workflows/ci.yml": workflow.format(env="py"), "tox.toml": "env_list = [\n"},
    )
    reasons = {d.item: d.reason for d in distill(broken).dropped}
    assert reasons["job t step 1: `tox -e py`"].startswith("tox.toml: invalid TOML: ")


def test_discovery_order_matches_tox(tmp_path: Path) -> None:
    """tox.ini wins over setup.cfg, which wins over pyproject's [tool.tox], then tox.toml."""
    root = project(
        tmp_path,
        {
            "tox.toml": 'env_list = ["toml"]\n',
            "pyproject.toml": '[tool.tox]\nenv_list = ["pyproject"]\n',
            "setup.cfg": "[tox:tox]\nenvlist = cfg\n",
        },
    )
    assert _first_env(root) == ["cfg"]
    (root / "setup.cfg").unlink()
    assert _first_env(root) == ["pyproject"]
    (root / "pyproject.toml").write_text('[project]\nname = "p"\n')
    assert _first_env(root) == ["toml"]
    (root / "tox.ini").write_text("[tox]\nenvlist = ini\n")
    assert _first_env(root) == ["ini"]


def _first_env(root: Path) -> list[str]:
    tox = load_tox(root)
    assert tox is not None
    return tox.declared_envs()


def _laughs(levels: int) -> str:
    refs = "\n".join(f"l{i} = {{[a]l{i + 1}}}{{[a]l{i + 1}}}" for i in range(levels))
    tail = "[testenv]\ncommands = echo {[a]l0}\n"
    return f"[tox]\nenv_list = py\n[a]\n{refs}\nl{levels} = lol\n{tail}"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"tox.ini": _laughs(40)}, "needs more than 20000 substitutions"),
        (
            {"tox.ini": "[tox]\nenv_list = py\n[testenv]\ncommands = echo " + "{" * 5000 + "\n"},
            "braces nest more than 100 deep",
        ),
        (
            {
                "tox.toml": 'env_list = ["py"]\n[env.py]\ncommands = ['
                + "[" * 3000
                + "]" * 3000
                + "]"
            },
            "tox.toml: invalid TOML: ",
        ),
    ],
)
def test_hostile_configs_end_quickly(tmp_path: Path, files: dict[str, str], message: str) -> None:
    """Substitutions that double at each level (2**40 of them), nesting that would exhaust the
    stack: a one-line error, in well under a second."""
    root = project(tmp_path, files)
    with pytest.raises(ToxConfigError) as err:
        tox = load_tox(root)
        assert tox is not None
        tox.env("py")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_huge_generative_env_list_is_refused(tmp_path: Path) -> None:
    root = project(tmp_path, {"tox.ini": "[tox]\nenv_list = py{1-9}{1-9}{1-9}{1-9}{1-9}-a\n"})
    result = distill(root)
    assert result.checks == ()
    assert any("stands for more than 10000 environments" in d.reason for d in result.dropped)


def test_host_python_is_chosen_from_dotted_env_names(tmp_path: Path) -> None:
    """filelock names its envs "3.14t", "3.13", "3.12", ...: one runs, the host's."""
    other = "3.99"
    root = project(
        tmp_path,
        {
            "tox.toml": f'env_list = ["{other}t", "{other}", "@DOT@", "lint"]\n[env_run_base]\n'
            'commands = [["pytest", "-q", "--junitxml={env_name}.xml"]]\n'
            '[env.lint]\ncommands = [["ruff", "check", "."]]\n'
        },
    )
    result = distill(root)
    assert [(name, command) for name, command, _ in result.checks] == [
        ("lint", "ruff check ."),
        ("tests", f"pytest -q --junitxml={DOT}.xml"),
    ]
    assert f"setup tox.toml (tox env {DOT}): `pip install .`" in {i for i, _, _ in result.kept}


def test_ci_posargs_and_requirement_paths(tmp_path: Path) -> None:
    """`tox -e py -- tests/unit -x`: tox's posargs replace the default, paths made relative to
    change_dir (tox's args_are_paths); `-r {tox_root}/...` deps are plain project paths."""
    workflow = "on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n    steps:\n      - run: {}\n"
    root = project(
        tmp_path,
        {
            ".github/workflows/ci.yml": workflow.format("tox -e py -- tests/unit -x"),
            "tests/unit/test_a.py": "",
            "requirements/test.txt": "pytest\n",
            "tox.ini": "[tox]\nenv_list = py\n[testenv]\nskip_install = true\nchange_dir = tests\n"
            "deps = -r {tox_root}/requirements/test.txt\n"
            "commands = pytest {posargs:--default}\n",
        },
    )
    result = distill(root)
    assert result.checks == (("tests", "cd tests && pytest unit -x", 900),)
    assert result.python.requirement_files == ["requirements/test.txt"]
    if TOX.is_file():
        got = assert_agrees(root, ["py"], ["tests/unit", "-x", "tests/missing"])
        assert got["py"]["commands"] == ["pytest unit -x tests/missing"]


SNIPPETS = {
    "tox.ini": {
        "a section's multi-line commands, alone on a line and inline": (
            "[tox]\nenv_list = py\n[testenv]\ncommands =\n    pytest a\n    pytest b\n"
            "[testenv:x]\ncommands =\n    {[testenv]commands}\n    echo {[testenv]commands}\n",
            ["x"],
        ),
        "substitutions inside quotes": (
            "[tox]\nenv_list = py\n[testenv]\nset_env = Q = hello world\ncommands =\n"
            "    python -c \"print('{env:Q}')\"\n    sh -c 'echo {posargs:a b}'\n"
            '    echo "{posargs:x y}"\n    echo {env:Q}\n',
            ["py"],
        ),
        "nested env defaults through set_env": (
            "[tox]\nenv_list = py\n[testenv]\nset_env =\n    A = {env:B:{env:C:deep}}\n"
            "    D = {env:A}-x\ncommands = echo {env:D} {env:NOPE:{env:A}} {env:E:}\n",
            ["py"],
        ),
        "factor lines, negated, combined, platform": (
            "[tox]\nenv_list = py311-{a,b}\n[testenv]\ndeps =\n    a: x\n    !a: y\n"
            "    {a,b}: both\n    py311-a: combo\n    linux: plat\n    win32: win\n"
            "commands =\n    a,b: echo ab\n    !b: echo notb\n    py311-!a: echo py-nota\n",
            ["py311-a", "py311-b"],
        ),
        "escapes, unknown substitutions and comments": (
            "[tox]\nenv_list = py\n[testenv]\ncommands =\n    echo \\{a\\} \\[b\\] x\\:y \\\\z\n"
            "    echo {unknown:thing} {}\n    echo a # comment\n    echo b \\# not comment\n",
            ["py"],
        ),
        "set_env lines that are substitutions": (
            "[tox]\nenv_list = py\n[base]\nset_env =\n    B = 2\n    C = {tox_root}/c\n"
            "[testenv]\nset_env =\n    {tty:MYPY_FORCE_COLOR=1}\n    {[base]set_env}\n    A = 1\n"
            "change_dir = sub\ncommands = echo {env:B} {env:C} {env:A}\n",
            ["py"],
        ),
        "an expression spanning lines": (
            "[tox]\nenv_list = py\n[testenv]\nskip_install = true\ncommands =\n"
            "    pytest {posargs:\n        -x\n        tests}\n    {posargs:a\n   b}\n"
            "    echo done {[testenv]deps}\ndeps =\n    pytest\n    ruff\n",
            ["py"],
        ),
        "core keys and other sections": (
            "[tox]\nenv_list = py\nmin_version = 4\n[other]\nx = 1 {[tox]min_version}\n"
            "[testenv]\ncommands = echo {[other]x} {min_version} {env_name} {envname} "
            "{[testenv:lint]commands}\n[testenv:lint]\ncommands = ruff .\n",
            ["py"],
        ),
    },
    "tox.toml": {
        "base tables and refs": (
            'env_list = ["a", "b"]\n[shared]\ndeps = ["shared-dep"]\n'
            'commands = [["echo", "shared"]]\n[env_run_base]\ndeps = ["run-base-dep"]\n'
            'commands = [["echo", "run base"]]\nset_env = { X = "1" }\n[env.a]\nbase = ["shared"]\n'
            '[env.b]\ncommands = [["echo", "{env:X}", "{env_name}"],'
            ' { replace = "ref", of = ["shared", "commands"], extend = true }]\n',
            ["a", "b"],
        ),
        "if on factors and env_name": (
            'env_list = ["py-fast", "py-slow"]\n[env_run_base]\ncommands = [["pytest",'
            ' { replace = "if", condition = "factor.fast", then = "-x", else = "-v" }],'
            ' { replace = "if", condition = "env_name == \'py-slow\'", then = [["echo", "slow"]],'
            " else = [], extend = true }]\n",
            ["py-fast", "py-slow"],
        ),
        "strings, exit prefixes, a missing change_dir": (
            'env_list = ["py"]\n[env_run_base]\ndeps = ["pytest", "-r{tox_root}{/}req.txt"]\n'
            'change_dir = "{tox_root}{/}sub"\ncommands = [["pytest", "{posargs:-q}", "a b",'
            ' "--x={env:Y:def}", "{[env_run_base]deps}"]]\n'
            'commands_post = [["-", "echo", "post"], ["!", "false"]]\n',
            ["py"],
        ),
        "refs to another env's values": (
            'env_list = ["py", "lint"]\n[env_run_base]\ncommands = [["pytest"]]\n[env.lint]\n'
            'deps = ["ruff"]\ncommands = [["ruff", "check"]]\n[env.py]\n'
            'deps = [{ replace = "ref", env = "lint", key = "deps", extend = true }, "pytest"]\n'
            'commands = [{ replace = "ref", env = "lint", key = "commands", extend = true },'
            ' ["pytest"]]\n',
            ["py"],
        ),
    },
}


@needs_tox
@pytest.mark.parametrize(
    ("file", "case"), [(file, case) for file, cases in SNIPPETS.items() for case in cases]
)
def test_snippets_agree_with_tox(tmp_path: Path, file: str, case: str) -> None:
    text, envs = SNIPPETS[file][case]
    assert_agrees(project(tmp_path, {file: text}), envs)


def test_labels_and_toxenv_choose_environments(tmp_path: Path) -> None:
    """`tox -m static` runs the envs labelled so (core table or their own labels); a bare `tox`
    under `env: TOXENV: ...` runs that env; an unknown label is dropped with the reason."""
    steps = "\n".join(f"      - run: {line}" for line in ("tox -m static", "tox", "tox -m nope"))
    workflow = (
        "on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n    env:\n      TOXENV: unit\n"
        f"    steps:\n{steps}\n"
    )
    root = project(
        tmp_path,
        {
            ".github/workflows/ci.yml": workflow,
            "tox.toml": 'env_list = ["unit", "integration"]\nlabels = { static = ["lint"] }\n'
            '[env.unit]\ncommands = [["pytest", "tests/unit"]]\n'
            '[env.integration]\ncommands = [["pytest", "tests/integration"]]\n'
            '[env.lint]\ncommands = [["ruff", "check", "."]]\n'
            '[env.types]\nlabels = ["static"]\ncommands = [["mypy", "src"]]\n',
        },
    )
    result = distill(root)
    assert [(name, command) for name, command, _ in result.checks] == [
        ("lint", "ruff check ."),
        ("types", "mypy src"),
        ("tests", "pytest tests/unit"),
    ]
    reasons = {d.item: d.reason for d in result.dropped}
    assert reasons["job t step 3: `tox -m nope`"] == "tox.toml defines no tox label 'nope'"
    tox = load_tox(root)
    assert tox is not None
    assert tox.select(["-e", "ALL"]) == (["unit", "integration", "lint", "types"], None)


@needs_tox
def test_ini_labels_agree_with_tox(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        {
            "tox.ini": "[tox]\nenv_list = py\nlabels =\n    static = lint, type{,s}\n"
            "[testenv:lint]\ncommands = ruff check .\n[testenv:other]\nlabels = static\n"
            "commands = echo\n",
        },
    )
    done = subprocess.run(
        [str(TOX), "config", "-m", "static", "-k", "commands"],
        cwd=root,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    theirs = re.findall(r"^\[testenv:(.+)\]$", done.stdout, re.MULTILINE)
    tox = load_tox(root)
    assert tox is not None
    assert tox.select(["-m", "static"]) == (theirs, None)


REAL_TOX_PROJECTS = [
    ("filelock", "3.20.0"),
    ("pyproject_api", "1.9.1"),
    ("more-itertools", "10.5.0"),
    ("humanize", "4.12.3"),
    ("tabulate", "0.9.0"),
    ("termcolor", "2.5.0"),
    ("pluggy", "1.5.0"),
    ("exceptiongroup", "1.2.2"),
]


@pytest.mark.slow
@needs_tox
@pytest.mark.parametrize(
    ("name", "version"), REAL_TOX_PROJECTS, ids=[n for n, _ in REAL_TOX_PROJECTS]
)
def test_real_projects_agree_with_tox(tmp_path: Path, name: str, version: str) -> None:
    """Every env of real projects' tox configs (their sdists), where tox finds the env's
    interpreter. `requires` is removed first: tox would provision those plugins (the network)."""
    root = realproject.checkout_spec(realproject.RealProject(name=name, version=version), tmp_path)
    for config in ("tox.ini", "tox.toml"):
        path = root / config
        if path.is_file():
            text = path.read_text()
            pattern = (
                r"^requires\s*=.*(\n[ \t]+.*)*" if config == "tox.ini" else r"^requires\s*=.*$"
            )
            path.write_text(re.sub(pattern, "", text, flags=re.MULTILINE))
    tox = load_tox(root)
    assert tox is not None
    rendered = tox_config(root, tox.env_list())
    runnable = [
        env
        for env, keys in rendered.items()
        if not any("Exception: Skip" in line for lines in keys.values() for line in lines)
    ]
    assert runnable
    assert_agrees(root, runnable)


def test_set_env_completed_by_the_sidecar_shell(tmp_path: Path) -> None:
    """`PATH = {tox_root}/bin{:}{env:PATH}`: the project's bin first, then the sidecar's PATH
    (tox would take the host's); the generated command runs and sees both."""
    root = project(
        tmp_path,
        {
            "tox.ini": "[tox]\nenv_list = py\n[testenv]\nskip_install = true\n"
            "set_env =\n  PATH = {tox_root}/bin{:}{env:PATH}\n  PLAIN = 1\n"
            "commands = hello\n",
            "bin/hello": '#!/bin/sh\necho "hello $PLAIN"\n',
        },
    )
    (root / "bin" / "hello").chmod(0o755)
    [step] = _steps(root, "py")
    assert step.shell() == 'export PLAIN=1 && export PATH=./bin:"${PATH}" && hello'
    done = subprocess.run(
        ["sh", "-c", step.shell()],
        cwd=root,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "hello 1\n"), done.stderr


@needs_tox
def test_toml_env_list_products_agree_with_tox(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        {
            "tox.toml": 'env_list = ["lint", { product = [["py312", "py313"],'
            ' { prefix = "django", start = 42, stop = 43 }], exclude = ["py312-django43"] },'
            ' { product = [{ db = ["pg", "sqlite"] }, ["fast"]] }]\n'
            '[env_run_base]\ncommands = [["pytest"]]\n'
        },
    )
    done = subprocess.run(
        [str(TOX), "config", "--no-provision", "-k", "env_name"],
        cwd=root,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    theirs = re.findall(r"^\[testenv:(.+)\]$", done.stdout, re.MULTILINE)
    tox = load_tox(root)
    assert tox is not None
    assert tox.declared_envs() == theirs
    assert "py313-django43" in theirs and "py312-django43" not in theirs


def test_tox_run_in_a_subdirectory_or_with_a_config_path(tmp_path: Path) -> None:
    """`working-directory: python` + `tox -e py`, and `tox -c tools/tox.ini -e lint`: tox reads
    the config found from there; commands run in its directory (and its change_dir)."""
    workflow = (
        "on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: tox -e py\n        working-directory: python\n"
        "      - run: tox -c tools/tox.ini -e lint\n"
        "      - run: tox -c ../elsewhere -e py\n"
    )
    root = project(
        tmp_path,
        {
            ".github/workflows/ci.yml": workflow,
            "python/tox.ini": "[tox]\nenv_list = py\n[testenv]\nextras = test\n"
            "change_dir = tests\ncommands = pytest {tox_root}/src\n",
            "python/tests/test_a.py": "",
            "tools/tox.ini": "[tox]\nenv_list = lint\n[testenv:lint]\nskip_install = true\n"
            "deps = ruff\ncommands = ruff check {tox_root}/..\n",
        },
    )
    result = distill(root)
    assert [(name, command) for name, command, _ in result.checks] == [
        ("lint", "cd tools && ruff check ./.."),
        ("tests", "cd python/tests && pytest ../src"),
    ]
    assert result.python.packages == ["'python/.[test]'", "ruff"]
    kept = {item: reason for item, reason, _ in result.kept}
    assert kept["job t step 2: `tox -c tools/tox.ini -e lint`"] == (
        "expanded through tools/tox.ini: lint"
    )
    reasons = {d.item: d.reason for d in result.dropped}
    assert reasons["job t step 3: `tox -c ../elsewhere -e py`"] == (
        "tox runs in '../elsewhere', outside the project"
    )


def test_config_linked_to_a_host_file_is_not_read(tmp_path: Path) -> None:
    """tox config is untrusted: a tox.ini linking to a host file is refused, and a broken one's
    error says where, never what the line holds."""
    secret = tmp_path / "host-secret"
    secret.write_text("TOKEN-abc123\n")
    root = project(tmp_path, {"README": ""})
    (root / "tox.ini").symlink_to(secret)
    with pytest.raises(ToxConfigError) as err:
        load_tox(root)
    assert str(err.value) == "tox.ini links outside the project; not read"
    (root / "tox.ini").unlink()
    (root / "tox.ini").write_text("[tox]\nenv_list = py\nTOKEN-abc123\n")
    with pytest.raises(ToxConfigError) as err:
        load_tox(root)
    assert str(err.value) == "tox.ini cannot be parsed at line 3: a line that is not `key = value`"
