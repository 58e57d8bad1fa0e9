"""Run the fault-injection suite and write ``reports/reliability.md``: fault, expected behaviour, test, outcome.

    python scripts/reliability_report.py                    # every fault, slow ones included
    python scripts/reliability_report.py -- -m "not slow"   # extra pytest arguments after --

The rows come from the tests themselves: each test in ``tests/faults/`` declares
``@pytest.mark.fault("what goes wrong", expected="what segbench does")`` (parametrized cases carry
their own mark), and the outcome column is the outcome of this run. Faults proven by tests that
other parts of the project own are listed in ``REFERENCED`` and run here too. The exit status is
pytest's, so a failing fault test fails this script as well; the report is written either way.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segbench.io import atomic_write

REPO = Path(__file__).resolve().parents[1]
FAULT_TESTS = "tests/faults"

# The issues' items, by the test module that covers each: 1-5 from the first fault-injection issue,
# 6-10 from the independent attack on the suite that followed it.
ITEMS = {
    "test_untrusted_files": "1 untrusted files",
    "test_atomic_outputs": "2 atomic outputs",
    "test_interrupted_work": "3 interrupted work",
    "test_bad_inputs": "4 bad inputs",
    "test_concurrency": "5 concurrency",
    "test_gpu_slots": "5 concurrency",
    "test_permissions": "6 permissions",
    "test_bounded_archives": "7 bounded archives",
    "test_downloads": "8 downloads",
    "test_checkpoint_saves": "9 checkpoints",
    "test_one_line_errors": "10 one-line errors",
    "test_config_binding": "11 results bound to their config, training edge cases",
}

# Faults whose proof lives in another part's tests (run here, not duplicated in tests/faults/).
REFERENCED = {
    "tests/test_gpu_slots.py::test_sigkilled_holder_releases_its_slot": (
        "a job holding a GPU slot is SIGKILLed (crash, OOM kill)",
        "the kernel drops its flock at once; the next job gets the same GPU within seconds",
    ),
}


class FaultCollector:
    """A pytest plugin: the fault declaration of every collected test, then its outcome."""

    def __init__(self):
        self.rows: dict[str, dict] = {}

    def pytest_collection_modifyitems(self, items):
        for item in items:
            marker = item.get_closest_marker("fault")
            if marker is not None:
                fault, expected = marker.args[0], marker.kwargs.get("expected", "")
            elif item.nodeid in REFERENCED:
                fault, expected = REFERENCED[item.nodeid]
            else:
                continue
            self.rows[item.nodeid] = {"item": ITEMS.get(item.path.stem, "other"), "fault": fault,
                                      "expected": expected, "outcome": "not run", "seconds": 0.0, "reason": ""}

    def pytest_deselected(self, items):
        for item in items:
            if item.nodeid in self.rows:
                self.rows[item.nodeid]["outcome"] = "deselected"

    def pytest_runtest_logreport(self, report):
        row = self.rows.get(report.nodeid)
        if row is None:
            return
        row["seconds"] += report.duration
        if report.when == "call" or report.outcome != "passed":
            if report.outcome == "failed" and report.when != "call":
                row["outcome"] = f"error ({report.when})"
            elif hasattr(report, "wasxfail"):
                row["outcome"] = "xfail" if report.skipped else "xpass"
            else:
                row["outcome"] = report.outcome
            if report.outcome != "passed":
                row["reason"] = _reason(report)


def _reason(report) -> str:
    """One line: the end of the assertion's message (the command's last error line) and the failed check."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    check = next((index for index, line in enumerate(lines) if line.startswith("assert ")), len(lines))
    message = lines[check - 1].removeprefix("AssertionError: ") if check else ""
    shown = " / ".join(part for part in (message, lines[check] if check < len(lines) else "") if part)
    return shown[:300]


def _item_order(item: str) -> tuple[int, str]:
    """Items by their number (10 after 9), unnumbered ones last."""
    number = item.split(" ", 1)[0]
    return (int(number) if number.isdigit() else len(ITEMS) + 1, item)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _git_sha() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def render(rows: dict[str, dict], pytest_args: list[str], exit_code: int, seconds: float) -> str:
    counts: dict[str, int] = {}
    for row in rows.values():
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))
    lines = [
        "# Reliability: faults injected and what segbench does",
        "",
        f"Generated by `python scripts/reliability_report.py` (pytest {' '.join(pytest_args)}) on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {_git_sha()}, "
        f"Python {platform.python_version()}, {platform.machine()}; {len(rows)} faults: {summary}; "
        f"{seconds:.0f} s, pytest exit status {exit_code}.",
        "",
        "Each row is one test that injects the fault through the real CLI or Snakemake and asserts both the "
        "error (or the documented conversion) and that no partial output is left. Declarations live next to "
        "the tests (`@pytest.mark.fault` in `tests/faults/`); the outcome is this run's.",
        "",
        "| # | issue item | fault | expected behaviour | test | outcome | s |",
        "|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(rows.items(), key=lambda entry: _item_order(entry[1]["item"]))
    for number, (nodeid, row) in enumerate(ordered, 1):
        lines.append(f"| {number} | {row['item']} | {_cell(row['fault'])} | {_cell(row['expected'])} | "
                     f"`{_cell(nodeid)}` | {row['outcome']} | {row['seconds']:.1f} |")
    failing = [(nodeid, row) for nodeid, row in rows.items() if row["reason"]]
    if failing:
        lines += ["", "## Not passing", ""]
        lines += [f"- `{nodeid}` ({row['outcome']}): {_cell(row['reason'])}" for nodeid, row in failing]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "reliability.md")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    os.chdir(REPO)  # node ids and tests/faults are relative to the repository
    collector = FaultCollector()
    pytest_args = [FAULT_TESTS, *REFERENCED, "-q", "-p", "no:cacheprovider", *args.pytest_args]
    started = time.monotonic()
    exit_code = int(pytest.main(list(pytest_args), plugins=[collector]))
    text = render(collector.rows, pytest_args, exit_code, time.monotonic() - started)

    with atomic_write(args.out) as handle:
        handle.write(text)
    print(f"{args.out}: {len(collector.rows)} faults")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
