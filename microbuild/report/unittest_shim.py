"""`python -m unittest`, as it is, that also writes JUnit XML of what ran.

The runner replaces `-m unittest` in a check's command with `-c <this source>` (passed in the
environment, so nothing is written into the sidecar and sys.path[0] stays the working directory,
as with `-m`). The terminal output is unittest's own, byte for byte; the XML (one <testsuite>
per invocation, appended when a check runs unittest several times) goes to
$MICROBUILD_UNITTEST_XML. Standard library only, and Python 3.8 syntax: it runs in the project's
interpreter, whatever its version.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import unittest
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import TracebackType

    _ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
    _Case = tuple[str, str, unittest.TestCase, str, str, str, str, float]

_OUT = os.environ.pop("MICROBUILD_UNITTEST_XML", "")
os.environ.pop("MICROBUILD_UNITTEST_SHIM", None)


def _where(test: Any) -> tuple[str | None, int | None]:
    method = getattr(test, "_testMethodName", None)
    func = getattr(type(test), method, None) if method else None
    code = getattr(func, "__code__", None)
    if code is None:
        return None, None
    return code.co_filename, code.co_firstlineno


def _names(test: unittest.TestCase) -> tuple[str, str]:
    case = getattr(test, "test_case", None)
    if case is not None:
        classname, name = _names(case)
        describe = getattr(test, "_subDescription", None)
        return classname, f"{name} {describe()}" if describe else name
    test_id = test.id()
    if test_id.startswith("unittest.loader._FailedTest."):
        return "", test_id[len("unittest.loader._FailedTest.") :]
    module, _, name = test_id.rpartition(".")
    return module, name


class _Recorder(unittest.TextTestResult):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cases: list[_Case] = []
        self._started: dict[int, float] = {}

    def startTest(self, test: unittest.TestCase) -> None:
        self._started[id(test)] = time.perf_counter()
        super().startTest(test)

    def _record(
        self,
        test: unittest.TestCase,
        outcome: str,
        err: _ExcInfo | None = None,
        detail: str = "",
    ) -> None:
        began = self._started.pop(id(test), None)
        elapsed = time.perf_counter() - began if began is not None else 0.0
        classname, name = _names(test)
        text = detail
        message = ""
        kind = ""
        if err is not None:
            try:
                text = self._exc_info_to_string(err, test)  # type: ignore[attr-defined]
            except Exception:
                text = "".join(traceback.format_exception(*err))
            message = str(err[1]).split("\n", 1)[0]
            kind = err[0].__name__
        self._cases.append((classname, name, test, outcome, message, kind, text, elapsed))

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._record(test, "passed")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._record(test, "failure", err)

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._record(test, "error", err)

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._record(test, "skipped", detail=reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, "passed")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, "failure", detail="unexpected success")
        classname, name, case, _outcome, _msg, _kind, text, elapsed = self._cases.pop()
        failed = "unexpected success"
        self._cases.append(
            (classname, name, case, "failure", failed, "unexpectedSuccess", text, elapsed)
        )

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(subtest, "failure" if failed else "error", err)

    def stopTestRun(self) -> None:
        super().stopTestRun()
        if _OUT:
            try:
                _write(self._cases)
            except Exception as exc:
                sys.stderr.write(f"microbuild: no JUnit XML written: {exc}\n")


def _write(cases: list[_Case]) -> None:
    suite = ET.Element("testsuite", name="unittest", tests=str(len(cases)))
    for classname, name, test, outcome, message, kind, text, elapsed in cases:
        element = ET.SubElement(
            suite, "testcase", classname=classname, name=name, time=f"{elapsed:.6f}"
        )
        file, line = _where(getattr(test, "test_case", test))
        if file:
            element.set("file", file)
            element.set("line", str(line))
        if outcome in ("failure", "error"):
            child = ET.SubElement(element, outcome, message=message, type=kind)
            child.text = text
        elif outcome == "skipped":
            ET.SubElement(element, "skipped", message=text)
    if os.path.exists(_OUT):
        try:
            root = ET.parse(_OUT).getroot()
        except ET.ParseError:
            root = ET.Element("testsuites")
        if root.tag != "testsuites":
            root = ET.Element("testsuites")
    else:
        root = ET.Element("testsuites")
    root.append(suite)
    partial = f"{_OUT}.{os.getpid()}"
    ET.ElementTree(root).write(partial, encoding="utf-8", xml_declaration=True)
    os.replace(partial, _OUT)


class _Runner(unittest.TextTestRunner):
    resultclass = _Recorder


if __name__ == "__main__":
    sys.argv[0] = "python -m unittest"
    unittest.main(module=None, testRunner=_Runner)
