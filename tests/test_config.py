"""Tests for microbuild.config: schema, sizes, line-precise errors, project discovery, hashing."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from microbuild.config import (
    CheckConfig,
    ConfigError,
    Project,
    ProjectConfig,
    SidecarConfig,
    SnapshotConfig,
    config_hash,
    find_project,
    load_config,
    parse_size,
)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

FULL_TOML = """\
# microbuild configuration
[snapshot]
setup = ["python -m pip install -e .[dev]", "npm ci"]
inputs = ["pyproject.toml", "requirements/**/*.txt"]
timeout_s = 900

[sidecar]
runtime = "namespace"
memory = "2GiB"
pids = 256
cpus = 1.5
network = "host"
idle_suspend_s = 0
expose = ["/opt/tools", "/etc/ssl/certs"]
rootfs = "/srv/rootfs"
tmp_size = "256M"

[sidecar.env]
PYTHONHASHSEED = "0"
"LC_ALL" = "C.UTF-8"

[[check]]
name = "tests"
command = "pytest -q"
timeout_s = 120.5
network = "host"
parser = "pytest"

[[check]]
name = "lint.ruff"
command = "ruff check ."
"""


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str, name: str = "microbuild.toml") -> ConfigError:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == path
    return info.value


# --- valid configurations ---------------------------------------------------


def test_empty_microbuild_toml_gives_all_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "microbuild.toml", ""))

    assert config == ProjectConfig()
    assert config.snapshot == SnapshotConfig(setup=(), inputs=(), timeout_s=1800)
    assert config.checks == ()


def test_defaults() -> None:
    sidecar = SidecarConfig()

    assert sidecar.runtime == "auto"
    assert sidecar.memory == 4 * GiB
    assert sidecar.pids == 1024
    assert sidecar.cpus == 2.0
    assert sidecar.network == "none"
    assert sidecar.idle_suspend_s == 300
    assert sidecar.expose == ()
    assert sidecar.rootfs is None
    assert sidecar.env == {}
    assert sidecar.tmp_size == 1 * GiB
    assert SnapshotConfig().timeout_s == 1800
    check = CheckConfig(name="t", command="true")
    assert (check.timeout_s, check.network, check.parser) == (600, "none", "auto")


def test_minimal_microbuild_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "microbuild.toml", '[[check]]\nname = "tests"\ncommand = "pytest"\n')

    config = load_config(path)

    assert config.checks == (CheckConfig(name="tests", command="pytest"),)
    assert config.sidecar == SidecarConfig()


def test_full_microbuild_toml(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "microbuild.toml", FULL_TOML))

    assert config.snapshot == SnapshotConfig(
        setup=("python -m pip install -e .[dev]", "npm ci"),
        inputs=("pyproject.toml", "requirements/**/*.txt"),
        timeout_s=900,
    )
    assert config.sidecar == SidecarConfig(
        runtime="namespace",
        memory=2 * GiB,
        pids=256,
        cpus=1.5,
        network="host",
        idle_suspend_s=0,
        expose=("/opt/tools", "/etc/ssl/certs"),
        rootfs="/srv/rootfs",
        env={"PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"},
        tmp_size=256 * MiB,
    )
    assert config.checks == (
        CheckConfig(
            name="tests", command="pytest -q", timeout_s=120.5, network="host", parser="pytest"
        ),
        CheckConfig(name="lint.ruff", command="ruff check ."),
    )


def test_full_pyproject_toml_matches_microbuild_toml(tmp_path: Path) -> None:
    body = FULL_TOML.replace("[sidecar", "[tool.microbuild.sidecar")
    body = body.replace("[snapshot]", "[tool.microbuild.snapshot]")
    body = body.replace("[[check]]", "[[tool.microbuild.check]]")
    pyproject = write(tmp_path / "a", "pyproject.toml", '[project]\nname = "demo"\n\n' + body)
    reference = write(tmp_path / "b", "microbuild.toml", FULL_TOML)

    assert load_config(pyproject) == load_config(reference)


def test_minimal_pyproject_with_empty_tool_table(tmp_path: Path) -> None:
    path = write(tmp_path, "pyproject.toml", '[project]\nname = "demo"\n\n[tool.microbuild]\n')

    assert load_config(path) == ProjectConfig()


def test_inline_and_dotted_forms(tmp_path: Path) -> None:
    text = """\
sidecar.memory = "1GiB"
sidecar.env = { A = "1" }
snapshot = { setup = ["make deps"] }
check = [
  { name = "a", command = "make a" },
  { name = "b", command = "make b", timeout_s = 5 },
]
"""
    config = load_config(write(tmp_path, "microbuild.toml", text))

    assert config.sidecar.memory == GiB
    assert config.sidecar.env == {"A": "1"}
    assert config.snapshot.setup == ("make deps",)
    assert [(c.name, c.timeout_s) for c in config.checks] == [("a", 600), ("b", 5)]


def test_cpus_none_string_means_unlimited(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "microbuild.toml", '[sidecar]\ncpus = "None"\n'))

    assert config.sidecar.cpus is None


def test_models_are_frozen_and_checks_field_is_python_named() -> None:
    config = ProjectConfig(checks=(CheckConfig(name="a", command="b"),))

    assert config.checks[0].name == "a"
    with pytest.raises(ValidationError):
        config.checks[0].name = "other"


# --- sizes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (123456, 123456),
        ("4096", 4096),
        ("512B", 512),
        ("100k", 100 * KiB),
        ("100K", 100 * KiB),
        ("800M", 800 * MiB),
        ("512MiB", 512 * MiB),
        ("512mib", 512 * MiB),
        ("2G", 2 * GiB),
        ("2GB", 2 * GiB),
        ("2Gi", 2 * GiB),
        ("4GiB", 4 * GiB),
        ("1.5GiB", 3 * GiB // 2),
        (" 1.5 GiB ", 3 * GiB // 2),
        ("0.5k", 512),
        ("1T", 1024 * GiB),
        ("3TiB", 3 * 1024 * GiB),
    ],
)
def test_parse_size_accepts(value: str | int, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", "invalid size 'lots'"),
        ("", "invalid size ''"),
        ("4 GiBs", "invalid size '4 GiBs'"),
        ("1P", "invalid size '1P'"),
        ("-1G", "invalid size '-1G'"),
        ("1e3", "invalid size '1e3'"),
        ("G", "invalid size 'G'"),
        (-5, "size must not be negative, got -5"),
        (True, "expected a size like '4GiB' or a number of bytes, got True"),
        (1.5, "expected a size like '4GiB' or a number of bytes, got 1.5"),
    ],
)
def test_parse_size_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        parse_size(value)  # type: ignore[arg-type]


def test_size_fields_convert_and_enforce_minimums(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "microbuild.toml", '[sidecar]\nmemory = "16MiB"\ntmp_size = 1048576\n')
    )
    assert (config.sidecar.memory, config.sidecar.tmp_size) == (16 * MiB, MiB)

    err = load_error(tmp_path, '[sidecar]\npids = 64\nmemory = "15M"\n')
    assert str(err) == "microbuild.toml:3: [sidecar] memory: must be at least 16 MiB, got '15M'"
    assert (err.line, err.key) == (3, "sidecar.memory")


# --- error messages ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "line", "key"),
    [
        pytest.param(
            '[snapshot]\nsetup = []\n\n[sidecar]\npids = 64\nnetwork = "none"\nmemroy = "1G"\n',
            "microbuild.toml:7: [sidecar] unknown key 'memroy' (did you mean 'memory'?)",
            7,
            "sidecar.memroy",
            id="unknown-key-suggestion",
        ),
        pytest.param(
            '[sidecar]\n"memroy" = 1\n',
            "microbuild.toml:2: [sidecar] unknown key 'memroy' (did you mean 'memory'?)",
            2,
            "sidecar.memroy",
            id="unknown-quoted-key",
        ),
        pytest.param(
            "[snapshot]\nxyzzy = 1\n",
            "microbuild.toml:2: [snapshot] unknown key 'xyzzy' "
            "(expected one of: setup, inputs, timeout_s)",
            2,
            "snapshot.xyzzy",
            id="unknown-key-no-close-match",
        ),
        pytest.param(
            '[[check]]\nname = "a"\ncommand = "b"\ntimeout = 5\n',
            "microbuild.toml:4: [check #1] unknown key 'timeout' (did you mean 'timeout_s'?)",
            4,
            "check[0].timeout",
            id="unknown-check-key",
        ),
        pytest.param(
            '# limits\n\n[sidecar]\nmemory = "1G"\n\n\n\n\npids = "lots"\n',
            "microbuild.toml:9: [sidecar] pids: expected an integer, got 'lots'",
            9,
            "sidecar.pids",
            id="wrong-type",
        ),
        pytest.param(
            "[sidecar]\ncpus = true\n",
            "microbuild.toml:2: [sidecar] cpus: expected a number, got True",
            2,
            "sidecar.cpus",
            id="bool-is-not-a-number",
        ),
        pytest.param(
            '[sidecar]\nruntime = "docker"\n',
            "microbuild.toml:2: [sidecar] runtime: expected 'auto', 'namespace' or 'process', "
            "got 'docker'",
            2,
            "sidecar.runtime",
            id="bad-literal",
        ),
        pytest.param(
            '[[check]]\nname = "a"\ncommand = "x"\n\n[[check]]\nname = "b"\n',
            "microbuild.toml:5: [check #2] missing required key 'command'",
            5,
            "check[1].command",
            id="missing-check-key",
        ),
        pytest.param(
            "[snapshot]\n\n[sidecars]\npids = 64\n",
            "microbuild.toml:3: unknown table 'sidecars' (did you mean 'sidecar'?)",
            3,
            "sidecars",
            id="unknown-table",
        ),
        pytest.param(
            '[[checks]]\nname = "a"\ncommand = "b"\n',
            "microbuild.toml:1: unknown table 'checks' (did you mean 'check'?)",
            1,
            "checks",
            id="python-field-name-is-not-a-toml-key",
        ),
        pytest.param(
            "verbose = true\n",
            "microbuild.toml:1: unknown key 'verbose' "
            "(expected one of: snapshot, sidecar, check, hooks, report_tokens)",
            1,
            "verbose",
            id="unknown-top-level-key",
        ),
        pytest.param(
            '[[check]]\nname = "a"\ncommand = "x"\n[[check]]\nname = "b"\ncommand = "y"\n'
            '[[check]]\ncommand = "z"\nname = "a"\n',
            "microbuild.toml:9: [check #3] name: duplicate check name 'a' "
            "(already used by check #1); check names must be unique",
            9,
            "check[2].name",
            id="duplicate-check-names",
        ),
        pytest.param(
            '[[check]]\nname = "a"\ncommand = "x"\n[[check]]\nname = "b"\ncommand = "y"\n'
            "\n[check.options]\nretries = 2\n",
            "microbuild.toml:8: [check #2] unknown key 'options' (expected one of: name, "
            "command, timeout_s, network, parser)",
            8,
            "check[1].options",
            id="unknown-subtable-of-a-check",
        ),
        pytest.param(
            "[snapshot]\ntimeout_s = -5\n",
            "microbuild.toml:2: [snapshot] timeout_s: must be greater than 0, got -5",
            2,
            "snapshot.timeout_s",
            id="negative-snapshot-timeout",
        ),
        pytest.param(
            '[[check]]\nname = "a"\ncommand = "b"\ntimeout_s = -0.5\n',
            "microbuild.toml:4: [check #1] timeout_s: must be greater than 0, got -0.5",
            4,
            "check[0].timeout_s",
            id="negative-check-timeout",
        ),
        pytest.param(
            "[sidecar]\nidle_suspend_s = -1\n",
            "microbuild.toml:2: [sidecar] idle_suspend_s: must be at least 0, got -1",
            2,
            "sidecar.idle_suspend_s",
            id="negative-idle-suspend",
        ),
        pytest.param(
            '[sidecar]\nexpose = [\n  "/opt/tools",  # fine\n  "data/cache",\n]\n',
            "microbuild.toml:4: [sidecar] expose #2: must be an absolute path, got 'data/cache'",
            4,
            "sidecar.expose[1]",
            id="relative-expose-path",
        ),
        pytest.param(
            '[sidecar]\nrootfs = "rootfs"\n',
            "microbuild.toml:2: [sidecar] rootfs: must be an absolute path, got 'rootfs'",
            2,
            "sidecar.rootfs",
            id="relative-rootfs",
        ),
        pytest.param(
            "[sidecar.env]\nPORT = 8080\n",
            "microbuild.toml:2: [sidecar] env.PORT: expected a string, got 8080",
            2,
            "sidecar.env.PORT",
            id="env-value-not-string",
        ),
        pytest.param(
            '[[check]]\nname = "unit tests"\ncommand = "pytest"\n',
            "microbuild.toml:2: [check #1] name: must start with a letter or digit and use only "
            "letters, digits, '_', '.' and '-', got 'unit tests'",
            2,
            "check[0].name",
            id="bad-check-name",
        ),
        pytest.param(
            '[[check]]\nname = "a"\ncommand = "   "\n',
            "microbuild.toml:3: [check #1] command: must not be empty",
            3,
            "check[0].command",
            id="blank-command",
        ),
        pytest.param(
            '[snapshot]\ninputs = ["/etc/**"]\n',
            "microbuild.toml:2: [snapshot] inputs: patterns are relative to the project root, "
            "got absolute '/etc/**'",
            2,
            "snapshot.inputs",
            id="absolute-input-pattern",
        ),
        pytest.param(
            '[check]\nname = "a"\ncommand = "b"\n',
            "microbuild.toml:1: check: expected an array of tables: write each check as "
            "[[check]], not [check]",
            1,
            "check",
            id="single-bracket-check",
        ),
        pytest.param(
            "sidecar = 5\n",
            "microbuild.toml:1: sidecar: expected a table, got 5",
            1,
            "sidecar",
            id="section-not-a-table",
        ),
    ],
)
def test_validation_errors_name_file_line_and_key(
    tmp_path: Path, text: str, message: str, line: int, key: str
) -> None:
    err = load_error(tmp_path, text)

    assert str(err) == message
    assert (err.line, err.key) == (line, key)
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    ("text", "message", "line", "key"),
    [
        pytest.param(
            'sidecar.pids = 64\nsidecar.memory = "8M"\n',
            "microbuild.toml:2: [sidecar] memory: must be at least 16 MiB, got '8M'",
            2,
            "sidecar.memory",
            id="dotted-top-level-key",
        ),
        pytest.param(
            "\nsidecar = { pids = 64, memroy = 1 }\n",
            "microbuild.toml:2: [sidecar] unknown key 'memroy' (did you mean 'memory'?)",
            2,
            "sidecar.memroy",
            id="inline-table",
        ),
        pytest.param(
            'check = [\n  { name = "a", command = "x" },\n  # second\n  { name = "b" },\n]\n',
            "microbuild.toml:4: [check #2] missing required key 'command'",
            4,
            "check[1].command",
            id="inline-array-of-tables",
        ),
        pytest.param(
            '[snapshot]\nsetup = [\n  """\n  pids = "lots"\n  [sidecar]\n  """,\n  \'x = [\',\n]\n'
            "timeout_s = 'soon'\n",
            "microbuild.toml:9: [snapshot] timeout_s: expected a number, got 'soon'",
            9,
            "snapshot.timeout_s",
            id="multiline-strings-do-not-confuse-the-scanner",
        ),
        pytest.param(
            '[sidecar] # "[snapshot]"\n"env"."A.B" = "1"\n env . C = 2  # x = 1\n',
            "microbuild.toml:3: [sidecar] env.C: expected a string, got 2",
            3,
            "sidecar.env.C",
            id="comments-and-quoted-dotted-keys",
        ),
    ],
)
def test_errors_in_inline_and_dotted_forms(
    tmp_path: Path, text: str, message: str, line: int, key: str
) -> None:
    err = load_error(tmp_path, text)

    assert str(err) == message
    assert (err.line, err.key) == (line, key)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[sidecar]\npids = 64\nmemory "1G"\n',
            "microbuild.toml:3: invalid TOML: Expected '=' after a key in a key/value pair",
        ),
        (
            "[sidecar]\n\n[sidecar]\n",
            "microbuild.toml:3: invalid TOML: Cannot declare ('sidecar',) twice",
        ),
        ('[snapshot]\nsetup = ["a",\n', "microbuild.toml:2: invalid TOML: Invalid value"),
    ],
)
def test_toml_syntax_errors(tmp_path: Path, text: str, message: str) -> None:
    err = load_error(tmp_path, text)

    assert str(err) == message
    assert err.key is None


def test_pyproject_errors_use_tool_microbuild_tables(tmp_path: Path) -> None:
    text = """\
[project]
name = "demo"
version = "1.0"

[tool.ruff]
line-length = 100

[tool.microbuild.sidecar]
pids = 64

[[tool.microbuild.check]]
name = "tests"
command = "pytest"

[[tool.microbuild.check]]
name = "lint"
timeout_s = 30
"""
    err = load_error(tmp_path, text, name="pyproject.toml")

    assert (
        str(err) == "pyproject.toml:15: [tool.microbuild.check #2] missing required key 'command'"
    )
    assert (err.line, err.key) == (15, "check[1].command")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "[tool.microbuild]\nsidecar = { memory = 1, pids = 64 }\n",
            "pyproject.toml:2: [tool.microbuild.sidecar] memory: must be at least 16 MiB, got 1",
            id="inline-section",
        ),
        pytest.param(
            "[tool.microbuild]\n\n[tool.microbuild.sidecars]\npids = 1\n",
            "pyproject.toml:3: [tool.microbuild] unknown table 'sidecars' "
            "(did you mean 'sidecar'?)",
            id="unknown-table",
        ),
        pytest.param(
            "[tool.microbuild.check]\nname = 'a'\n",
            "pyproject.toml:1: [tool.microbuild] check: expected an array of tables: write each "
            "check as [[tool.microbuild.check]], not [tool.microbuild.check]",
            id="single-bracket-check",
        ),
        pytest.param(
            "[tool]\nmicrobuild = true\n",
            "pyproject.toml:2: [tool] microbuild: expected a table, got True",
            id="tool-microbuild-not-a-table",
        ),
    ],
)
def test_pyproject_error_forms(tmp_path: Path, text: str, message: str) -> None:
    assert str(load_error(tmp_path, text, name="pyproject.toml")) == message


def test_pyproject_without_tool_microbuild(tmp_path: Path) -> None:
    err = load_error(tmp_path, '[project]\nname = "demo"\n\n[tool.ruff]\n', name="pyproject.toml")

    assert str(err) == (
        "pyproject.toml: no [tool.microbuild] table; add one, or put the configuration in "
        "microbuild.toml"
    )
    assert (err.line, err.key) == (None, "tool.microbuild")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "microbuild.toml"
    with pytest.raises(ConfigError, match=r"^microbuild.toml: cannot read the file: ") as info:
        load_config(path)
    assert info.value.path == path


# --- find_project -----------------------------------------------------------


def test_find_project_walks_up_from_a_nested_directory(tmp_path: Path) -> None:
    config_path = write(tmp_path / "repo", "microbuild.toml", FULL_TOML)
    nested = tmp_path / "repo" / "src" / "pkg" / "sub"
    nested.mkdir(parents=True)

    project = find_project(nested)

    assert project == Project(
        root=tmp_path / "repo", config_path=config_path, config=load_config(config_path)
    )
    assert project.root.is_absolute()


def test_find_project_from_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "microbuild.toml", "")
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")

    assert find_project(Path(".")).root == tmp_path.resolve()


def test_find_project_uses_pyproject_with_tool_table(tmp_path: Path) -> None:
    path = write(tmp_path, "pyproject.toml", "[tool.microbuild.sidecar]\npids = 64\n")
    (tmp_path / "tests").mkdir()

    project = find_project(tmp_path / "tests")

    assert (project.root, project.config_path) == (tmp_path, path)
    assert project.config.sidecar.pids == 64


def test_find_project_skips_pyproject_without_tool_table(tmp_path: Path) -> None:
    outer = write(tmp_path, "microbuild.toml", "[sidecar]\npids = 99\n")
    write(tmp_path / "lib", "pyproject.toml", '[project]\nname = "lib"\n')

    project = find_project(tmp_path / "lib")

    assert (project.root, project.config_path) == (tmp_path, outer)
    assert project.config.sidecar.pids == 99


def test_find_project_nearest_directory_wins(tmp_path: Path) -> None:
    write(tmp_path, "microbuild.toml", "")
    inner = write(tmp_path / "sub", "pyproject.toml", "[tool.microbuild]\n")

    assert find_project(tmp_path / "sub").config_path == inner


def test_find_project_prefers_microbuild_toml_when_pyproject_does_not_configure(
    tmp_path: Path,
) -> None:
    config_path = write(tmp_path, "microbuild.toml", "")
    write(tmp_path, "pyproject.toml", '[project]\nname = "x"\n')

    assert find_project(tmp_path).config_path == config_path


def test_find_project_rejects_two_configurations(tmp_path: Path) -> None:
    config_path = write(tmp_path, "microbuild.toml", "")
    write(tmp_path, "pyproject.toml", '[project]\nname = "x"\n\n[tool.microbuild]\n')
    (tmp_path / "src").mkdir()

    with pytest.raises(ConfigError) as info:
        find_project(tmp_path / "src")

    assert str(info.value) == (
        f"microbuild.toml: pyproject.toml in {tmp_path} also has a [tool.microbuild] table "
        "(line 4); keep only one of the two configurations"
    )
    assert info.value.path == config_path


def test_find_project_reports_config_errors_of_the_found_file(tmp_path: Path) -> None:
    write(tmp_path, "microbuild.toml", "[sidecar]\npids = 1\n")

    with pytest.raises(ConfigError, match=r"^microbuild.toml:2: \[sidecar\] pids: "):
        find_project(tmp_path)


def test_find_project_nothing_found(tmp_path: Path) -> None:
    start = tmp_path / "empty"
    start.mkdir()
    if any((d / "microbuild.toml").exists() for d in start.parents):
        pytest.skip("a parent of the temporary directory has a microbuild.toml")

    with pytest.raises(ConfigError) as info:
        find_project(start)

    assert str(info.value) == (
        f"no microbuild.toml found in {start} or its parents; run `microbuild init` to create one"
    )
    assert (info.value.path, info.value.line, info.value.key) == (None, None, None)


# --- config_hash ------------------------------------------------------------


def test_config_hash_is_stable_and_keyed_on_checks(tmp_path: Path) -> None:
    base = load_config(write(tmp_path, "microbuild.toml", FULL_TOML))
    digest = config_hash(base)

    assert re.fullmatch("[0-9a-f]{64}", digest)
    assert config_hash(load_config(tmp_path / "microbuild.toml")) == digest
    reordered_keys = FULL_TOML.replace(
        'name = "lint.ruff"\ncommand = "ruff check ."',
        'command = "ruff check ."\nname = "lint.ruff"',
    )
    assert (
        config_hash(load_config(write(tmp_path / "b", "microbuild.toml", reordered_keys))) == digest
    )
    assert config_hash(base.model_copy(update={"sidecar": SidecarConfig(pids=8)})) == digest


@pytest.mark.parametrize(
    "change",
    [
        {"command": "ruff check src"},
        {"timeout_s": 601},
        {"network": "host"},
        {"parser": "ruff"},
        {"name": "lint.ruff2"},
    ],
)
def test_config_hash_changes_when_a_check_changes(
    tmp_path: Path, change: dict[str, object]
) -> None:
    base = load_config(write(tmp_path, "microbuild.toml", FULL_TOML))
    changed_check = base.checks[1].model_copy(update=change)
    changed = base.model_copy(update={"checks": (base.checks[0], changed_check)})

    assert config_hash(changed) != config_hash(base)


def test_config_hash_depends_on_check_order() -> None:
    a = CheckConfig(name="a", command="x")
    b = CheckConfig(name="b", command="y")

    assert config_hash(ProjectConfig(checks=(a, b))) != config_hash(ProjectConfig(checks=(b, a)))
    assert config_hash(ProjectConfig()) != config_hash(ProjectConfig(checks=(a,)))


def test_config_hash_is_sha256_of_canonical_checks_json() -> None:
    config = ProjectConfig(checks=(CheckConfig(name="t", command="pytest"),))
    canonical = (
        '[{"command":"pytest","name":"t","network":"none","parser":"auto","timeout_s":600.0}]'
    )

    assert json.loads(canonical)[0] == config.checks[0].model_dump()
    assert config_hash(config) == hashlib.sha256(canonical.encode()).hexdigest()


def test_hooks_table_and_report_budget(tmp_path: Path) -> None:
    path = tmp_path / "microbuild.toml"
    path.write_text("report_tokens = 1500\n[hooks]\nmax_attempts = 3\ntimeout_s = 100\n")
    config = load_config(path)
    assert config.report_tokens == 1500
    assert (config.hooks.max_attempts, config.hooks.timeout_s) == (3, 100)
    assert load_config(_empty(tmp_path)).report_tokens == 2000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("report_tokens = 10\n", "microbuild.toml:1: report_tokens: must be at least 200"),
        ("[hooks]\nmax_atempts = 3\n", "did you mean 'max_attempts'?"),
        ("[hooks]\nmax_attempts = 0\n", "microbuild.toml:2: hooks.max_attempts"),
    ],
)
def test_hooks_and_budget_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "microbuild.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty" / "microbuild.toml"
    path.parent.mkdir()
    path.write_text("")
    return path
