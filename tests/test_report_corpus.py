"""The report on real failures in real projects (tests/corpus.py): six PyPI sdists, each
validated clean, then, one injection at a time (inject, validate, revert), failures of every kind
the report must handle: a failing assertion, an exception in library code, a syntax error, an
import of a missing third-party module, a lint finding, a type error, an endless loop (the
tests check's 20 s timeout) and a memory hog (past the sidecar's 512 MiB).

For each, the report must name every failing test pytest lists (or the rule), show the
injection's file:line, classify it (`code`, or `environment` with exit 3) and cost at most a
fifth of the raw log's tokens.

One host for the module; one snapshot and sidecar per project, reused by its injections. Each
project runs its `plan` (every kind covered at least twice across the corpus, 21 cases) rather
than every kind, to keep the file within a few minutes: snapshot builds dominate.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import need_isolation, stop_local_host

if __package__:  # tests/ became a package
    from . import corpus
else:
    import corpus

pytestmark = [pytest.mark.slow, pytest.mark.isolation]

# The 5x target is within reach only where the tool's own output is long enough: a collection
# error, one ruff or mypy finding, or a process killed early writes 50-450 tokens, and a report
# that says the verdict, names and locates the failure and says where the full log is takes
# 60-110. Those cases are held to an absolute size instead (and reported by benchmarks/report.py
# as below target: the 5x figure is not claimed for them).
RATIO_MIN_RAW_TOKENS = 600
SMALL_LOG_REPORT_MAX_TOKENS = 120
# One validate per case, shared by the tests that look at it.
_VERDICTS: dict[tuple[str, str], corpus.Verdict] = {}


@dataclass
class Checkout:
    project: corpus.CorpusProject
    root: Path
    state: Path
    baseline: corpus.Validated


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    need_isolation()
    # Not under pytest's tmp_path: the sidecars' overlay mount options carry these paths.
    path = Path(tempfile.mkdtemp(prefix="mbr-", dir="/var/tmp"))
    yield path
    corpus.stop_host(path / "state", path)
    stop_local_host(path / "state")
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def checkout(request: pytest.FixtureRequest, base: Path) -> Iterator[Checkout]:
    project = corpus.PROJECTS[request.param]
    state = base / "state"
    root = corpus.prepare(project, base / "src")
    try:
        baseline = corpus.validate(state, root, timeout=corpus.BUILD_TIMEOUT_S)
        yield Checkout(project, root, state, baseline)
    finally:
        corpus.destroy_sidecars(state, root)
        shutil.rmtree(root, ignore_errors=True)


def _case(name: str, injection: str) -> object:
    return pytest.param(name, injection, id=f"{name}-{injection}")


@pytest.mark.parametrize("checkout", sorted(corpus.PROJECTS), indirect=True)
def test_baseline_passes(checkout: Checkout) -> None:
    result = checkout.baseline.result
    assert checkout.baseline.exit_code == 0, result.get("report") or checkout.baseline.stderr
    assert result["status"] == "passed"
    names = [c["name"] for c in result["checks"]]
    assert names == list(checkout.project.commands())
    assert all(c["status"] == "passed" for c in result["checks"]), result["checks"]
    assert result["failures"] == []
    assert result["report"].startswith(f"PASSED {len(names)} check")


def _verdict(checkout: Checkout, injection: str) -> corpus.Verdict:
    """Inject, validate, revert (once per case), and judge the report."""
    key = (checkout.project.name, injection)
    if key not in _VERDICTS:
        assert checkout.baseline.exit_code == 0, "the baseline must pass first"
        applied = corpus.inject(checkout.project, injection, checkout.root)
        try:
            validated = corpus.validate(checkout.state, checkout.root)
        finally:
            applied.revert()
        assert corpus.realproject.git(checkout.root, "status", "--porcelain") == ""
        _VERDICTS[key] = corpus.judge(applied, validated)
    return _VERDICTS[key]


@pytest.mark.parametrize(
    ("checkout", "injection"),
    [_case(name, injection) for name, injection in corpus.cases()],
    indirect=["checkout"],
)
def test_injected_failure_is_named_located_and_classified(
    checkout: Checkout, injection: str
) -> None:
    verdict = _verdict(checkout, injection)
    assert not verdict.problems, "\n".join([*verdict.problems, "--- report", verdict.report])
    # The injection really failed something: pytest lists a failing test, or a rule, or a cause.
    assert verdict.ids_expected or verdict.expected.words, verdict.to_json()


@pytest.mark.parametrize(
    ("checkout", "injection"),
    [_case(name, injection) for name, injection in corpus.cases()],
    indirect=["checkout"],
)
def test_report_is_5x_smaller_than_a_long_log_and_small_otherwise(
    checkout: Checkout, injection: str
) -> None:
    """5x fewer tokens than the raw log wherever the log has 600 tokens or more; a smaller log
    (a collection error, a lint or type finding, a kill) gets a report of at most 120 tokens."""
    verdict = _verdict(checkout, injection)
    assert verdict.report_tokens > 0, verdict.to_json()
    figures = (
        f"raw {verdict.raw_tokens} / report {verdict.report_tokens} tokens"
        f" = {verdict.ratio:.1f}x\n--- report\n{verdict.report}"
    )
    if verdict.raw_tokens >= RATIO_MIN_RAW_TOKENS:
        assert verdict.ratio >= corpus.RATIO_TARGET, figures
    else:
        assert verdict.report_tokens <= SMALL_LOG_REPORT_MAX_TOKENS, figures
