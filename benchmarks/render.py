"""Join the benchmarks' markdown files into reports/benchmarks_cpu.md (printed to stdout).

Usage: python benchmarks/render.py reports/.bench_scan.md reports/.bench_models.md reports/.bench_loader.md
A file that does not exist is reported as not run, so a partial `make bench` still renders.

Also the machine description the other benchmarks print (``machine_lines``): CPU model, cores, torch
threads and the load average, because these numbers come from a shared machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

TITLES = {
    "scan": "Selective scan: torch backend vs a sequential recurrence (benchmarks/scan.py)",
    "models": "Models: forward, forward+backward and training speed (benchmarks/models.py)",
    "loader": "Training data path vs training step (benchmarks/loader.py)",
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " / ".join(f"{value:.1f}" for value in os.getloadavg()) + " (1/5/15 min)"
    except OSError:
        return "unknown"


def machine_lines(threads: int) -> list[str]:
    """Lines for a benchmark's header: what ran it and how busy the machine was."""
    return [
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; torch threads: {threads}.",
        f"Load average at start: {load_average()}; other processes share this machine, so the candidates are "
        "interleaved in rounds and the ratios matter more than the absolute numbers.",
    ]


def publish(table: str, markdown: str | None) -> None:
    """Print a benchmark's table and, when asked, write it (atomically) for `make bench` to merge."""
    from segbench.io import atomic_write

    print()
    print(table)
    if markdown:
        with atomic_write(markdown) as handle:
            handle.write(table + "\n")
        print(f"\nwrote {markdown}")


def _section_name(path: Path) -> str:
    stem = path.stem.lstrip(".")
    return stem.removeprefix("bench_")


def render(paths: list[Path]) -> str:
    lines = [
        "# CPU benchmarks (`make bench`)",
        "",
        f"Rendered {time.strftime('%Y-%m-%d %H:%M %Z')} on {platform.node()}: {cpu_model()}, "
        f"{os.cpu_count()} logical cores, load average now {load_average()}.",
        "This machine was shared with other processes (other agents' builds and tests) while these ran: "
        "absolute times are noisy and pessimistic; each benchmark interleaves its candidates and reports "
        "medians so that the ratios stay meaningful.",
    ]
    for path in paths:
        name = _section_name(path)
        lines += ["", f"## {TITLES.get(name, path.name)}", ""]
        if path.exists():
            lines.append(path.read_text().strip())
        else:
            lines.append(f"Not run: {path} does not exist (its benchmark did not finish or was not part of this run).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("markdown", nargs="+", type=Path, help="markdown files written by the benchmarks")
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.markdown))


if __name__ == "__main__":
    main()
