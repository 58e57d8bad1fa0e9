"""`dvc plots`: the long-format files of reports/plots/ and dvc.yaml's top-level plots over them."""
import csv
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY_CONFIG, run_tool, write_config
from segbench.report.collect import collect
from segbench.report.plot_data import DICE_COLUMNS, PER_IMAGE_DICE, PLOT_DIR, TRAINING_COLUMNS, TRAINING_CURVES, \
    write_plot_data
from test_report import fabricate

COLUMNS = {f"reports/{PLOT_DIR}/{TRAINING_CURVES}": TRAINING_COLUMNS,
           f"reports/{PLOT_DIR}/{PER_IMAGE_DICE}": DICE_COLUMNS}  # the files dvc.yaml's plots read


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _plot_definitions() -> dict[str, dict]:
    """dvc.yaml's top-level plots: id -> properties."""
    return {plot_id: props for entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
            for plot_id, props in entry.items()}


def _page_specs(page: Path) -> dict[str, dict]:
    """The Vega-Lite specs a `dvc plots` page embeds, by plot title."""
    specs = [json.loads(match) for match in re.findall(r"var spec = (\{.*\});$", page.read_text(), re.M)]
    return {spec["title"]["text"]: spec for spec in specs}


def test_every_plot_reads_columns_the_report_writes():
    definitions = _plot_definitions()
    assert definitions
    for plot_id, props in definitions.items():
        assert isinstance(props["y"], dict) and len(props["y"]) == 1, plot_id
        (path, field), = props["y"].items()
        assert path in COLUMNS, f"{plot_id}: {path} is not a file of reports/{PLOT_DIR}"
        assert field in COLUMNS[path] and props["x"] in COLUMNS[path], plot_id
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["report"]
    assert f"reports/{PLOT_DIR}" in {next(iter(out)) for out in stage["outs"]}
    assert f"/{PLOT_DIR}/" in (REPO / "reports" / ".gitignore").read_text().splitlines()


def test_plot_data_has_one_row_per_epoch_and_per_image_of_every_run(tmp_path):
    results, _ = fabricate(tmp_path)
    write_plot_data(collect(results), tmp_path / "reports")
    curves = _rows(tmp_path / "reports" / PLOT_DIR / TRAINING_CURVES)
    logs = sorted(results.glob("*/*/seed*/train_log.csv"))
    assert len(logs) > 2 and len(curves) == sum(len(_rows(log)) for log in logs)
    for log in logs:
        protocol, variant, seed = log.parts[-4], log.parts[-3], log.parts[-2].removeprefix("seed")
        mine = [row for row in curves if (row["protocol"], row["variant"], row["seed"]) == (protocol, variant, seed)]
        assert mine == [{"protocol": protocol, "variant": variant, "seed": seed,
                         **{key: str(float(row[key])) if key != "epoch" else row[key]
                            for key in TRAINING_COLUMNS[3:]}} for row in _rows(log)], log

    dice = _rows(tmp_path / "reports" / PLOT_DIR / PER_IMAGE_DICE)
    per_image = sorted(results.glob("*/*/seed*/eval/*/per_image.csv"))
    assert list(dice[0]) == DICE_COLUMNS and len(dice) == sum(len(_rows(path)) for path in per_image)
    for path in per_image:
        protocol, variant, seed, test_set = path.parts[-6], path.parts[-5], path.parts[-4].removeprefix("seed"), \
            path.parts[-2]
        mine = [row for row in dice if (row["protocol"], row["variant"], row["seed"], row["test_set"])
                == (protocol, variant, seed, test_set)]
        assert {row["id"]: float(row["dice"]) for row in mine} == {row["id"]: float(row["dice"])
                                                                   for row in _rows(path)}
        by_dice = sorted(mine, key=lambda row: float(row["dice"]))
        assert [float(row["quantile"]) for row in by_dice] == [(rank + 0.5) / len(mine) for rank in range(len(mine))]


def test_without_results_the_plot_files_hold_their_header(tmp_path):
    written = write_plot_data(collect(tmp_path / "results"), tmp_path / "reports")
    assert [path.read_text().splitlines() for path in written] == [[",".join(TRAINING_COLUMNS)],
                                                                   [",".join(DICE_COLUMNS)]]


@pytest.mark.slow
def test_dvc_plots_show_and_diff_with_head_on_the_tiny_dag(project_copy):
    config = write_config(project_copy / "tiny.yaml")
    run_tool([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(config)], project_copy)
    n_runs = len(TINY_CONFIG["seeds"]) * len(TINY_CONFIG["models"])
    rows = {path: _rows(project_copy / path) for path in COLUMNS}
    assert len(rows[f"reports/{PLOT_DIR}/{TRAINING_CURVES}"]) == n_runs * TINY_CONFIG["train"]["epochs"]
    assert len(rows[f"reports/{PLOT_DIR}/{PER_IMAGE_DICE}"]) == n_runs * TINY_CONFIG["data"]["synthetic"]["n_test"] \
        * len(TINY_CONFIG["protocols"]["polyp"]["test"])

    show = run_tool(["dvc", "plots", "show", "-o", "shown"], project_copy)
    # HEAD has no reports/plots (git-ignored, not cached): the diff shows the workspace alone, without error
    diff = run_tool(["dvc", "plots", "diff", "HEAD", "-o", "diffed"], project_copy)
    for result, page, revisions in ((show, "shown", {"workspace"}), (diff, "diffed", {"workspace"})):
        assert "ERROR" not in result.stdout + result.stderr, result.stdout + result.stderr
        specs = _page_specs(project_copy / page / "index.html")
        assert sorted(specs) == sorted(_plot_definitions()), page
        for plot_id, props in _plot_definitions().items():
            (path, field), = props["y"].items()
            spec = specs[plot_id]
            assert (spec["encoding"]["x"]["field"], spec["encoding"]["y"]["field"]) == (props["x"], field), plot_id
            values = spec["data"]["values"]
            assert [{key: value for key, value in point.items() if key != "rev"} for point in values] == rows[path]
            assert {point["rev"] for point in values} == revisions, plot_id
