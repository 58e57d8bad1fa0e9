"""The CPU benchmarks run end to end at toy sizes and write the tables `make bench` renders.

No timing assertions: speed targets are checked by reading reports/benchmarks_cpu.md, never in CI.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _run(script: str, *arguments) -> str:
    completed = subprocess.run([sys.executable, str(BENCHMARKS / script), *map(str, arguments)], cwd=ROOT,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, f"{script} failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}"
    return completed.stdout


def _table_rows(markdown: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # without the column names


def test_models_benchmark_times_each_model_and_compares_with_unetv2(tmp_path):
    out = tmp_path / "models.md"
    _run("models.py", "--quick", "--threads", "1", "--models", "unetv2", "vmunetv2", "--markdown", out)
    markdown = out.read_text()
    rows = {row[0]: row for row in _table_rows(markdown)}
    assert set(rows) == {"unetv2", "vmunetv2"}
    assert rows["unetv2"][4] == rows["unetv2"][5] == "1.00x"  # the reference against itself
    for row in rows.values():
        assert float(row[1]) > 0 and float(row[6]) > 0  # parameters (M), training images/s
        assert re.fullmatch(r"\d+", row[2]) and re.fullmatch(r"\d+", row[3])  # one round: best only
    assert re.search(r"Target: vmunetv2 forward\+backward within 3x of unetv2's: \d+\.\d+x from the best times "
                     r"\(\d+\.\d+x from the medians\), (met|NOT met)\.", markdown)
    assert "torch threads: 1" in markdown


def test_loader_benchmark_builds_a_cache_with_the_cli_and_reports_the_ratio(tmp_path):
    out = tmp_path / "loader.md"
    _run("loader.py", "--quick", "--threads", "1", "--markdown", out)
    rows = _table_rows(out.read_text())
    assert len(rows) == 1
    label, cache, _, loader_ms, loader_rate, step_ms, step_rate, ratio, verdict = rows[0]
    assert label == "vmunetv2 smoke widths, 64x64" and cache.endswith("x 64x64")
    assert float(loader_rate) > 0 and float(step_rate) > 0
    assert verdict == ("met" if float(ratio.rstrip("x")) >= 5 else "NOT met")


def test_render_joins_the_tables_and_names_a_missing_one(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import render
    finally:
        sys.path.remove(str(BENCHMARKS))
    models = tmp_path / ".bench_models.md"
    models.write_text("| model |\n|---|\n| unet |\n")
    text = render.render([tmp_path / ".bench_scan.md", models])
    assert text.startswith("# CPU benchmarks")
    assert f"Not run: {tmp_path / '.bench_scan.md'} does not exist" in text
    assert "## Models: forward, forward+backward and training speed (benchmarks/models.py)\n\n| model |" in text
    assert "shared with other processes" in text
