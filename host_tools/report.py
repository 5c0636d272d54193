"""Conformance results: one CheckResult per check, printed as a table and written as JUnit XML."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ElementTree
from typing import Any, Callable, TextIO

PASS = "pass"
FAIL = "fail"


class CheckFailed(Exception):
    """A check saw something else than the contract says: what was expected, what was seen,
    and the frames (hex) that show it."""

    def __init__(self, expected: str, seen: str, frames: list[str] | None = None):
        super().__init__(f"expected {expected}; seen {seen}")
        self.expected = expected
        self.seen = seen
        self.frames = list(frames or [])


class CheckResult:
    def __init__(
        self,
        name: str,
        status: str,
        detail: str = "",
        seconds: float = 0.0,
        failure: CheckFailed | None = None,
    ):
        self.name = name
        self.status = status
        self.detail = detail
        self.seconds = seconds
        self.failure = failure

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def message(self) -> str:
        """The failure in full: the check, expected, seen, and each frame in hex."""
        if self.failure is None:
            return self.detail
        lines = [
            f"{self.name}: expected {self.failure.expected}",
            f"{' ' * len(self.name)}  seen {self.failure.seen}",
        ]
        lines += [f"{' ' * len(self.name)}  frame {frame}" for frame in self.failure.frames]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "check": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
        }
        if self.failure is not None:
            out.update(
                expected=self.failure.expected, seen=self.failure.seen, frames=self.failure.frames
            )
        return out


def run_check(name: str, check: Callable[[], str]) -> CheckResult:
    """Run one check: its return value is the detail of a pass, CheckFailed a failure."""
    started = time.monotonic()
    try:
        detail = check()
    except CheckFailed as failure:
        return CheckResult(name, FAIL, str(failure), time.monotonic() - started, failure)
    return CheckResult(name, PASS, detail or "", time.monotonic() - started)


def print_table(results: list[CheckResult], out: TextIO, title: str) -> None:
    width = max([len("CHECK")] + [len(result.name) for result in results])
    print(title, file=out)
    print(f"{'CHECK'.ljust(width)}  RESULT  SECONDS  DETAIL", file=out)
    for result in results:
        detail = result.detail if result.passed else str(result.failure)
        first = detail.splitlines()[0] if detail else ""
        status = result.status.upper()
        print(f"{result.name.ljust(width)}  {status:6}  {result.seconds:7.2f}  {first}", file=out)
    failed = [result for result in results if not result.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed", file=out)
    for result in failed:
        print("\n" + result.message(), file=out)
    out.flush()


def write_junit(results: list[CheckResult], path: str, suite: str, target: str) -> None:
    """JUnit XML as CI systems read it: one testcase per check, failures with the message."""
    failures = sum(1 for result in results if not result.passed)
    root = ElementTree.Element(
        "testsuites", name=f"host-tools conformance {suite}", tests=str(len(results))
    )
    element = ElementTree.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        time=f"{sum(result.seconds for result in results):.3f}",
        hostname=target,
    )
    for result in results:
        case = ElementTree.SubElement(
            element,
            "testcase",
            classname=f"conformance.{suite}",
            name=result.name,
            time=f"{result.seconds:.3f}",
        )
        if result.passed:
            if result.detail:
                ElementTree.SubElement(case, "system-out").text = result.detail
            continue
        failure = ElementTree.SubElement(case, "failure", message=str(result.failure))
        failure.text = result.message()
    ElementTree.indent(root)
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
