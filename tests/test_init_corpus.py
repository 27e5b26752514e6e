"""`microbuild init`, then `validate`, on twelve real projects (tests/init_corpus.py; termcolor
twice, once with `init --no-ci`): init's checks are the ones a correct distillation of the
project's CI / tox / nox / pyproject writes, the clean tree passes, and one bug per runner
family the project has (a pytest or unittest assertion, a doctest Expected/Got mismatch, a
ruff-fixable unused import, a mypy type error) is named in the report by its test id or rule,
located at its file:line, quoted (the assertion or Expected/Got), classified `code` with exit 1.

The classification `environment` (exit 3) is the report corpus' business (tests/corpus.py: a
missing module, a timeout, the memory limit); every bug here is the code's, so a report that
calls one `environment` fails its case.

Cases today's microbuild gets wrong are strict xfails, each with the defect (`issue 12: ...`)
as reason: a fix makes them pass, which fails the run until the mark is removed.

One host for the module; one checkout, init, snapshot and sidecar per project, shared by its
cases (pytest orders the parametrized cases by project).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_isolation, stop_local_host

if __package__:  # tests/ became a package
    from . import corpus, init_corpus
else:
    import corpus
    import init_corpus

pytestmark = [pytest.mark.slow, pytest.mark.isolation]

_CASES: dict[tuple[str, str, str], init_corpus.Case] = {}


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    need_isolation()
    # Not under pytest's tmp_path: the sidecars' overlay mount options carry these paths.
    path = Path(tempfile.mkdtemp(prefix="mbi-", dir="/var/tmp"))
    yield path
    corpus.stop_host(path / "state", path)
    stop_local_host(path / "state")
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def prepared(request: pytest.FixtureRequest, base: Path) -> Iterator[init_corpus.Prepared]:
    project = init_corpus.PROJECTS[request.param]
    result = init_corpus.prepare(project, base)
    try:
        yield result
    finally:
        init_corpus.cleanup(result)


def _xfail(reason: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.xfail(reason=reason, strict=True)] if reason else []


def _projects(defect: str) -> list[object]:
    return [
        pytest.param(name, id=name, marks=_xfail(getattr(project, defect)))
        for name, project in init_corpus.PROJECTS.items()
    ]


@pytest.mark.parametrize("prepared", _projects("init_defect"), indirect=True)
def test_init_writes_the_projects_checks(prepared: init_corpus.Prepared) -> None:
    problems = init_corpus.init_problems(prepared)
    assert not problems, "\n".join([*problems, f"init wrote: {prepared.checks}"])


@pytest.mark.parametrize("prepared", _projects("baseline_defect"), indirect=True)
def test_clean_tree_passes(prepared: init_corpus.Prepared) -> None:
    problems = init_corpus.baseline_problems(prepared)
    assert not problems, "\n".join(problems)


def _case_params() -> list[object]:
    return [
        pytest.param(name, inj, id=f"{name}-{inj.kind}", marks=_xfail(inj.defect))
        for name, inj in init_corpus.cases()
    ]


def _case(prepared: init_corpus.Prepared, inj: init_corpus.Injection) -> init_corpus.Case:
    key = (prepared.project.name, inj.kind, inj.file)
    if key not in _CASES:
        _CASES[key] = init_corpus.run_case(prepared, inj)
    return _CASES[key]


@pytest.mark.parametrize(("prepared", "injection"), _case_params(), indirect=["prepared"])
def test_injected_bug_is_named_located_and_classified(
    prepared: init_corpus.Prepared, injection: init_corpus.Injection
) -> None:
    case = _case(prepared, injection)
    verdict = case.verdict
    assert not verdict.problems, "\n".join([*verdict.problems, "--- report", verdict.report])
    assert verdict.exit_code == 1
    # The figures `validate --json` gives: the report is smaller than what it summarises.
    assert verdict.report_tokens > 0, case.tokens
    assert verdict.report_tokens < verdict.raw_tokens, case.tokens
    if case.check_tokens is not None:
        assert 0 < case.check_tokens <= verdict.raw_tokens, case.tokens
