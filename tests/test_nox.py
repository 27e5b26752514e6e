"""noxfile.py read with `ast`, never run: module constants built from literals resolve, a
branch that needs posargs is not taken, a TemporaryDirectory is `.nox/tmp`, and a run whose
argument cannot be known without running the file is left out, never run short of it."""

from __future__ import annotations

import textwrap
from pathlib import Path

from microbuild.distill.nox import nox_sessions
from microbuild.distill.steps import classify

NOXFILE = textwrap.dedent(
    """\
    from pathlib import Path
    from tempfile import TemporaryDirectory
    import os

    import nox

    ROOT = Path(__file__).parent
    PACKAGE = ROOT / "pkg"
    PYPROJECT = ROOT / "pyproject.toml"
    TAG = f"{PACKAGE}-docs"


    @nox.session
    def tests(session):
        session.install("virtue", str(ROOT))
        if session.posargs and session.posargs[0] == "coverage":
            session.run("coverage", "run", "-m", "virtue", PACKAGE)
        else:
            session.run("virtue", *session.posargs, PACKAGE)


    @nox.session
    def typing(session):
        session.run("mypy", "--config", PYPROJECT, PACKAGE)


    @nox.session
    def build(session):
        with TemporaryDirectory() as tmpdir:
            session.run("python", "-m", "build", ROOT, "--outdir", tmpdir)
            session.run("twine", "check", tmpdir + "/*")
            session.run("python", "-m", "docutils", "CHANGES.rst", os.devnull)


    @nox.session
    def docs(session):
        session.run("sphinx-build", TAG, session.create_tmp())
        session.run("echo", compute())
    """
)


def test_constants_posargs_branches_and_temporary_directories(tmp_path: Path) -> None:
    (tmp_path / "noxfile.py").write_text(NOXFILE)
    sessions = nox_sessions(tmp_path)
    assert sessions["tests"] == [("install", ["virtue", "."]), ("run", ["virtue", "pkg"])]
    assert sessions["typing"] == [("run", ["mypy", "--config", "pyproject.toml", "pkg"])]
    assert sessions["build"] == [
        ("run", ["python", "-m", "build", ".", "--outdir", ".nox/tmp"]),
        ("run", ["twine", "check", ".nox/tmp/*"]),
        ("run", ["python", "-m", "docutils", "CHANGES.rst", "/dev/null"]),
    ]
    # `session.create_tmp()` and `compute()` are known only by running the file.
    assert sessions["docs"] == []


def test_test_runners_beyond_pytest_are_tests() -> None:
    for command in ("virtue jsonschema", "python -m virtue pkg", "green -vv pkg", "stestr run"):
        assert classify(command).kind == "tests", command
