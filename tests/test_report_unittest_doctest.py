"""unittest and doctest failures, from live runs of the real tools: every failing test named by
its id with the frame it failed in and its assertion (or Expected/Got), and the totals, through
the JUnit XML of our unittest shim and through the terminal output alone; then the same inside a
real namespace sidecar through the runner, whose shim must leave unittest's output as it was."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_isolation, write_project

from microbuild.build.runner import run_checks
from microbuild.config import CheckConfig, find_project
from microbuild.host.manager import SidecarManager
from microbuild.report.parsers import instrument, parse_output, unittest_shim
from microbuild.report.render import plain_report

TEST_X = textwrap.dedent(
    """\
    import os
    import unittest


    class TestFoo(unittest.TestCase):
        def test_ok(self):
            self.assertNotIn("MICROBUILD_UNITTEST_SHIM", os.environ)

        def test_bad(self):
            total = 3
            self.assertEqual(total, 4)

        def test_err(self):
            raise KeyError("k")

        @unittest.skip("not here")
        def test_skip(self):
            pass

        def test_sub(self):
            for i in range(3):
                with self.subTest(i=i):
                    self.assertLess(i, 1)

        @unittest.expectedFailure
        def test_known(self):
            self.assertTrue(False)
    """
)
WANTED = {
    "tests.test_broken": ("tests/test_broken.py", 1, "No module named 'not_a_module_anywhere'"),
    "tests.test_x.TestFoo.test_bad": ("tests/test_x.py", 11, "AssertionError: 3 != 4"),
    "tests.test_x.TestFoo.test_err": ("tests/test_x.py", 14, "KeyError: 'k'"),
    "tests.test_x.TestFoo.test_sub (i=1)": ("tests/test_x.py", 23, "1 not less than 1"),
    "tests.test_x.TestFoo.test_sub (i=2)": ("tests/test_x.py", 23, "2 not less than 1"),
}
MODULE = textwrap.dedent(
    '''\
    def add(a, b):
        """Add two numbers.

        >>> add(1, 2)
        4
        >>> add(2, 2)
        4
        """
        return a + b


    def boom():
        """
        >>> boom()
        1
        """
        raise ValueError("bad value")


    def lines():
        """
        >>> print("a", "b", "c", sep=chr(10))
        a
        b
        """
    '''
)


def _unittest_project(root: Path) -> Path:
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "__init__.py").write_text("")
    (root / "tests" / "test_x.py").write_text(TEST_X)
    (root / "tests" / "test_broken.py").write_text("import not_a_module_anywhere\n")
    return root


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
    return done.stdout + done.stderr


def _assert_named(failures: list[object], workspace: str) -> None:
    got = {f.id: (f.file, f.line, f.message) for f in failures}  # type: ignore[attr-defined]
    assert set(got) == set(WANTED), got
    for test_id, (file, line, message) in WANTED.items():
        assert got[test_id][:2] == (file, line), (test_id, got[test_id])
        assert message in got[test_id][2], (test_id, got[test_id])


def test_unittest_shim_writes_junit_and_leaves_the_output_as_it_was(tmp_path: Path) -> None:
    root = _unittest_project(tmp_path / "proj")
    xml = tmp_path / "out" / "unittest.xml"
    xml.parent.mkdir()
    plain = _run([sys.executable, "-m", "unittest", "-v"], root)
    env = {"MICROBUILD_UNITTEST_SHIM": unittest_shim(), "MICROBUILD_UNITTEST_XML": str(xml)}
    shimmed = _run([sys.executable, "-c", unittest_shim(), "-v"], root, env)

    def timeless(text: str) -> list[str]:
        return [
            line.split(" in ")[0] if line.startswith("Ran ") else line for line in text.splitlines()
        ]

    assert timeless(shimmed) == timeless(plain)
    assert (
        "Ran 7 tests" in plain
        and "FAILED (failures=3, errors=2, skipped=1, expected failures=1)" in plain
    )
    artifact = xml.read_bytes()
    assert b"<testsuites>" in artifact and b'time="' in artifact

    result = parse_output("unittest", shimmed, artifact, workspace=str(root))
    assert (result.parser, result.total, result.failed, result.complete) == ("unittest", 7, 5, True)
    _assert_named(result.failures, str(root))

    # A second invocation in the same check appends its suite: both runs are in the file.
    _run([sys.executable, "-c", unittest_shim(), "tests.test_x.TestFoo.test_bad"], root, env)
    again = parse_output("unittest", shimmed, xml.read_bytes(), workspace=str(root))
    assert [f.id for f in again.failures].count("tests.test_x.TestFoo.test_bad") == 2


def test_unittest_terminal_output_alone_names_every_failure(tmp_path: Path) -> None:
    root = _unittest_project(tmp_path / "proj")
    log = _run([sys.executable, "-m", "unittest"], root)
    result = parse_output("unittest", log, None, workspace=str(root))
    assert (result.total, result.failed, result.complete) == (7, 5, True)
    _assert_named(result.failures, str(root))


def test_unittest_output_of_python_before_3_11_names_tests_too() -> None:
    """3.10 and earlier print `FAIL: test_bad (tests.test_x.TestFoo)`: the id is the same."""
    log = textwrap.dedent(
        """\
        ======================================================================
        FAIL: test_bad (tests.test_x.TestFoo)
        ----------------------------------------------------------------------
        Traceback (most recent call last):
          File "/workspace/tests/test_x.py", line 11, in test_bad
            self.assertEqual(total, 4)
        AssertionError: 3 != 4

        ----------------------------------------------------------------------
        Ran 12 tests in 0.001s

        FAILED (failures=1)
        """
    )
    result = parse_output("unittest", log, None)
    assert [(f.id, f.location, f.message) for f in result.failures] == [
        ("tests.test_x.TestFoo.test_bad", "tests/test_x.py:11", "AssertionError: 3 != 4")
    ]
    assert (result.total, result.failed) == (12, 1)


def test_a_cut_short_unittest_run_is_not_complete() -> None:
    log = "test_a (tests.test_x.T.test_a) ... ok\ntest_b (tests.test_x.T.test_b) ... "
    assert parse_output("unittest", log, None).complete is False


@pytest.mark.parametrize(
    ("command", "shimmed"),
    [
        ("python -m unittest -v", True),
        (".venv/bin/python3.11 -W error -m unittest discover -s tests", True),
        ("cd src && python3 -m unittest; echo done", True),
        ("coverage run -m unittest", False),
        ("python -m unittest_extras", False),
        ("python -m pytest", False),
    ],
)
def test_only_the_interpreters_own_dash_m_unittest_is_shimmed(command: str, shimmed: bool) -> None:
    plan = instrument("unittest", command, "/tmp/.r")
    assert (plan.command != command) is shimmed
    if shimmed:
        assert (
            '-c "$MICROBUILD_UNITTEST_SHIM"' in plan.command and "-m unittest" not in plan.command
        )
        assert plan.artifact == "/tmp/.r/unittest.xml"
        assert plan.set_env["MICROBUILD_UNITTEST_XML"] == plan.artifact
        assert plan.set_env["MICROBUILD_UNITTEST_SHIM"] == unittest_shim()
    else:
        assert plan.set_env == {} and plan.artifact is None


@pytest.fixture(scope="module")
def doctest_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, bytes]:
    root = tmp_path_factory.mktemp("doc")
    (root / "calc.py").write_text(MODULE)
    xml = root / "junit.xml"
    log = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--doctest-modules",
            "calc.py",
            f"--junitxml={xml}",
            "-o",
            "junit_family=xunit1",
        ],
        root,
    )
    return root, log, xml.read_bytes()


@pytest.mark.parametrize("source", ["junit", "text"])
def test_doctest_failures_carry_expected_and_got(
    doctest_run: tuple[Path, str, bytes], source: str
) -> None:
    root, log, xml = doctest_run
    result = parse_output("pytest", log, xml if source == "junit" else None, workspace=str(root))
    by_id = {f.id: f for f in result.failures}
    assert set(by_id) == {"calc.py::calc.add", "calc.py::calc.boom", "calc.py::calc.lines"}
    add = by_id["calc.py::calc.add"]
    assert (add.location, add.message) == ("calc.py:4", "doctest add(1, 2): expected 4, got 3")
    boom = by_id["calc.py::calc.boom"]
    assert boom.location == "calc.py:14"
    assert boom.message == "doctest boom() raised ValueError: bad value"
    lines = by_id["calc.py::calc.lines"]
    assert lines.location == "calc.py:22"
    assert lines.message == 'doctest print("a", "b", "c", sep=chr(10)): expected a b, got a b c'
    assert "Expected:\n    a\n    b\nGot:\n    a\n    b\n    c" in lines.excerpt
    assert not any("DocTestFailure" in f.message for f in result.failures)


def test_stdlib_doctest_output_is_read_by_the_unittest_parser(tmp_path: Path) -> None:
    (tmp_path / "calc.py").write_text(MODULE)
    (tmp_path / "test_doc.py").write_text(
        "import doctest\nimport calc\n\n\ndef load_tests(loader, tests, ignore):\n"
        "    tests.addTests(doctest.DocTestSuite(calc))\n    return tests\n"
    )
    log = _run([sys.executable, "-m", "unittest", "test_doc"], tmp_path)
    result = parse_output("unittest", log, None, workspace=str(tmp_path))
    got = {f.id: (f.location, f.message) for f in result.failures}
    assert got == {
        "calc.add": ("calc.py:4", "doctest add(1, 2): expected 4, got 3"),
        "calc.boom": ("calc.py:14", "doctest boom() raised ValueError: bad value"),
        "calc.lines": (
            "calc.py:22",
            'doctest print("a", "b", "c", sep=chr(10)): expected a b, got a b c',
        ),
    }
    assert (result.total, result.failed) == (3, 3)


@pytest.fixture
def manager(state_dir: Path) -> Iterator[SidecarManager]:
    need_isolation()
    mgr = SidecarManager(state_dir, default_runtime="namespace")
    yield mgr
    for record in mgr.list_sidecars():
        mgr.destroy(record.id)
    mgr.close()


@pytest.mark.isolation
def test_unittest_in_a_sidecar_is_named_counted_and_its_output_untouched(
    manager: SidecarManager, tmp_path: Path
) -> None:
    files = {
        "tests/__init__.py": "",
        "tests/test_x.py": TEST_X,
        "tests/test_broken.py": "import not_a_module_anywhere\n",
    }
    root = write_project(tmp_path / "proj", '[sidecar]\nmemory = "512MiB"\n', files)
    sidecar = manager.create_sidecar(find_project(root), runtime="namespace").id
    tree = manager.get(sidecar).tree
    assert tree
    record = run_checks(
        manager,
        sidecar,
        [CheckConfig(name="tests", command="python3 -m unittest -v")],
        tree=tree,
        config_hash="a" * 64,
        project="/proj",
    )
    result = record.checks[0]
    assert result.status == "failed"
    got = {f["id"]: (f["location"], f["message"]) for f in result.failures}
    assert set(got) == set(WANTED)
    for test_id, (file, line, message) in WANTED.items():
        assert got[test_id][0] == f"{file}:{line}" and message in got[test_id][1]
    log = Path(result.log_path or "").read_text()
    assert "test_ok (tests.test_x.TestFoo.test_ok) ... ok" in log  # the env was not seen
    assert "MICROBUILD" not in log and "Ran 7 tests" in log
    report = plain_report(record)
    assert report.startswith("FAILED tests (5 of 7)"), report
    for test_id in WANTED:
        if test_id.endswith("(i=2)"):
            assert "tests.test_x.TestFoo.test_sub (i=1) \N{MULTIPLICATION SIGN}2" in report
            assert "  also: (i=2)" in report, report
        else:
            assert test_id in report
    # The XML went to the sidecar's /tmp, never into the synced tree.
    assert not [p for p in manager.workspace(sidecar).rglob("*.xml")]


def test_trial_format_of_virtue_names_the_test() -> None:
    """virtue (jsonschema's runner) prints trial's format: `[FAIL]`, the traceback, then the
    test's id; captured from a real run (tests/fixtures/report/virtue_fail.txt)."""
    log = (Path(__file__).parent / "fixtures" / "report" / "virtue_fail.txt").read_text()
    result = parse_output("unittest", log, None)
    assert [(f.id, f.location, f.message) for f in result.failures] == [
        ("pkg.test_a.TestA.test_x", "pkg/test_a.py:5", "AssertionError: 'got' != 'expected'")
    ]
    assert (result.total, result.failed) == (2, 1)
