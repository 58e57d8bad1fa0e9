"""segbench report end to end on a fabricated results tree (docs/ARCHITECTURE.md formats), plus rendering."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segbench.report import build_reports
from segbench.report.collect import ReportInputError
from segbench.report.render import Cell, Column, Section, best_rows, fmt_mean_sd, section_latex, section_markdown

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "config" / "paper_results.csv"
SIZE = 32
N_IMAGES = 6
MODELS = ["unet", "unetv2", "vmunetv2"]
QUALITY = {"unet": 0.55, "unetv2": 0.7, "vmunetv2": 0.8}  # mean per-image Dice of each fabricated model


def _config() -> dict:
    return {
        "run_name": "fabricated", "comparable_to_paper": False, "image_size": SIZE,
        "data": {"source": "synthetic", "root": "data", "val_fraction": 0.1, "split_seed": 0},
        "protocols": {"isic17": {"train": "isic17", "test": ["isic17"]},
                      "polyp": {"train": "polyp_train", "test": ["kvasir", "cvc300"]}},
        "models": list(MODELS), "model_args": {},
        "ablation": {"model": "vmunetv2", "protocol": "polyp", "depths": [[2, 2, 2, 2], [2, 2, 9, 2]],
                     "deep_supervision": [True, False]},
        "seeds": [0, 1], "scan_backend": "torch",
        "train": {"epochs": 3, "batch_size": 4, "lr": 0.001, "weight_decay": 0.01, "t_max": 50, "eta_min": 1e-5,
                  "checkpoint": "last", "rotation_angle": "per_batch", "input_scaling": "minmax255"},
        "evaluate": {"threshold": 0.5, "save_predictions": 3},
        "report": {"bootstrap_resamples": 200, "seed": 0, "qualitative_n": 2},
    }


def _ratios(tp, fp, fn, tn) -> dict:
    return {"miou": tp / (tp + fp + fn), "dsc": 2 * tp / (2 * tp + fp + fn), "acc": (tp + tn) / (tp + fp + fn + tn),
            "sen": tp / (tp + fn), "spe": tn / (tn + fp)}


def _write_run(run_dir: Path, protocol: str, variant: str, seed: int, tests: list[str], rng) -> None:
    run_dir.mkdir(parents=True)
    quality = QUALITY.get(variant, 0.75)
    with open(run_dir / "train_log.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "steps", "lr", "train_loss", "val_loss", "val_dsc", "seconds"])
        for epoch in range(1, 4):
            writer.writerow([epoch, 2 * epoch, 1e-3 / epoch, round(1.0 / epoch + rng.random() / 10, 6),
                             round(1.1 / epoch, 6), round(quality * epoch / 3, 6), 0.5])
    (run_dir / "manifest.json").write_text(json.dumps({
        "protocol": protocol, "variant": variant, "seed": seed, "git_sha": "abc1234", "device": "cpu: fabricated",
        "scan_backend": "torch", "selected_checkpoint": "last", "versions": {"python": "3.11.0", "torch": "2.14.1"},
        "determinism": {"deterministic_algorithms": True}}))
    for test_set in tests:
        eval_dir = run_dir / "eval" / test_set
        eval_dir.mkdir(parents=True)
        dice = np.clip(quality + rng.normal(0, 0.05, N_IMAGES), 0, 1).round(6)
        rows = [{"id": f"{test_set}_{i:03d}", "dice": d, "iou": round(d / (2 - d), 6), "tp": 50, "fp": 5, "fn": 5,
                 "tn": 964, "height": 40, "width": 48, "mask_empty": 0} for i, d in enumerate(dice)]
        with open(eval_dir / "per_image.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        tp = int(1000 * quality) + int(rng.integers(0, 20))
        pooled = _ratios(tp, 1000 - tp, 1000 - tp, 20000)
        (eval_dir / "metrics.json").write_text(json.dumps({
            "protocol": protocol, "variant": variant, "model": variant.split("_")[0], "seed": seed,
            "test_set": test_set, "n_images": N_IMAGES, "threshold": 0.5, "size": SIZE, "pooled": pooled,
            "per_image": {"dice_mean": float(np.mean([r["dice"] for r in rows])),
                          "iou_mean": float(np.mean([r["iou"] for r in rows])), "n_empty_masks": 0}}))
        probabilities = (rng.random((3, SIZE, SIZE)) * 255).astype(np.uint8)
        np.savez_compressed(eval_dir / "predictions.npz", ids=np.array([r["id"] for r in rows[:3]]),
                            probabilities=probabilities)


def fabricate(root: Path, cfg: dict | None = None) -> tuple[Path, Path]:
    """A complete results tree and processed images (isic17, kvasir; cvc300 has none) under ``root``."""
    from segbench.config import ablation_cells, planned_runs

    cfg = cfg or _config()
    results, data = root / "results", root / "data"
    results.mkdir(parents=True)
    (results / "run_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True))
    rng = np.random.default_rng(0)
    for run in planned_runs(cfg):
        _write_run(results / run.protocol / run.variant / f"seed{run.seed}", run.protocol, run.variant, run.seed,
                   cfg["protocols"][run.protocol]["test"], rng)
    (results / "profile").mkdir()
    for index, variant in enumerate(list(cfg["models"]) + list(ablation_cells(cfg))):
        (results / "profile" / f"{variant}.json").write_text(json.dumps({
            "variant": variant, "model": variant.split("_")[0], "size": 256, "params_total": 1_000_000 * (index + 5),
            "params_paper": 900_000 * (index + 5), "flops_g": 2.0 + index, "macs_no_scan_g": 1.5 + index,
            "fps": 30.0 - index, "fps_batch": 1, "device": "cpu: fabricated", "versions": {"torch": "2.14.1"}}))
    for dataset in ("isic17", "kvasir"):
        for kind in ("images", "masks"):
            (data / "processed" / dataset / kind).mkdir(parents=True)
        for i in range(3):
            image = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
            Image.fromarray(image).save(data / "processed" / dataset / "images" / f"{dataset}_{i:03d}.png")
            mask = np.zeros((40, 48), np.uint8)
            mask[10:30, 12:36] = 255
            Image.fromarray(mask).save(data / "processed" / dataset / "masks" / f"{dataset}_{i:03d}.png")
    return results, data


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    results, data = fabricate(root)
    summary = build_reports(results, root / "reports", data, PAPER)
    return root, summary


def test_same_results_give_byte_identical_reports(built):
    root, _ = built
    build_reports(root / "results", root / "again", root / "data", PAPER)
    first, second = _files(root / "reports"), _files(root / "again")
    assert sorted(first) == sorted(second)
    differing = [name for name in first if first[name] != second[name]]
    assert differing == []
    for stem in ("table1_isic", "table2_polyp", "table3_complexity", "table4_5_ablation"):
        assert {f"{stem}.md", f"{stem}.tex", f"{stem}.csv"} <= set(first)
    assert {"figures/dsc_pooled_bars.png", "figures/dsc_pooled_bars.pdf", "figures/params_vs_dsc.pdf",
            "figures/flops_vs_dsc.png", "figures/training_curves.png", "figures/dice_per_image_bars.pdf",
            "figures/qualitative_kvasir.png", "figures/qualitative_cvc300.pdf"} <= set(first)
    assert b"CreationDate" not in first["figures/training_curves.pdf"]


def test_table1_cells_paper_order_and_bold_best(built):
    root, _ = built
    text = (root / "reports" / "table1_isic.md").read_text()
    assert "> **Synthetic data, smoke settings: not comparable to the paper.**" in text
    pooled = text.split("### Per-image")[0]
    lines = [line for line in pooled.splitlines() if line.startswith("| ")][1:]
    models = [line.split(" | ")[1] for line in lines]
    assert models[:7] == ["UNet", "UTNetV2", "TransFuse", "MALUNet", "UNetV2", "VM-UNet", "VM-UNetV2"]
    assert models[7:9] == ["UNet", "UNet++"] and models[-1] == "VM-UNetV2"
    vmunetv2 = lines[6].split(" | ")
    assert vmunetv2[2] == "**82.34**"  # paper mIoU, best of ISIC17 in the paper
    assert "±" in vmunetv2[3] and vmunetv2[3].startswith("**")  # ours: best of our rows (fabricated quality)
    assert vmunetv2[4].startswith(("+", "-"))
    unetpp = lines[8].split(" | ")
    assert unetpp[3] == ""  # UNet++ was not run: the paper's value with ours empty
    tex = (root / "reports" / "table1_isic.tex").read_text()
    assert r"\toprule" in tex and r"\textbf{82.34}" in tex and r"$\pm$" in tex
    assert r"\textbf{Synthetic data, smoke settings: not comparable to the paper.}" in tex


def test_csv_statistics_and_marking(built):
    root, summary = built
    rows = _csv_rows(root / "reports" / "table2_polyp.csv")
    assert all(row["comparable_to_paper"] == "false" and row["run_name"] == "fabricated" for row in rows)
    dice = {(r["dataset"], r["model"]): r for r in rows if r["aggregation"] == "per_image" and r["metric"] == "dice"}
    unet = dice[("kvasir", "unet")]
    assert float(unet["ci_low"]) < float(unet["ours_mean"]) < float(unet["ci_high"])
    assert float(unet["rank_biserial"]) == 1.0 and float(unet["median_difference"]) > 0  # VM-UNetV2 better on all
    assert float(unet["p_holm"]) >= float(unet["wilcoxon_p"])
    assert dice[("kvasir", "vmunetv2")]["p_holm"] == ""
    paper_only = [r for r in rows if r["model"] == "vmunet" and r["metric"] == "dsc" and r["dataset"] == "kvasir"]
    assert paper_only[0]["paper"] == "89.09" and paper_only[0]["ours_mean"] == ""
    assert summary["comparable_to_paper"] is False
    assert 0 < summary["accuracy"]["polyp"]["kvasir"]["vmunetv2"]["per_image_dice"] <= 1
    assert json.loads((root / "reports" / "summary.json").read_text()) == summary


def test_ablation_and_complexity_tables(built):
    root, _ = built
    rows = _csv_rows(root / "reports" / "table4_5_ablation.csv")
    cell = [r for r in rows if r["dataset"] == "cvc300" and r["encoder_depth"] == "2-2-9-2"
            and r["deep_supervision"] == "false" and r["metric"] == "dsc" and r["aggregation"] == "pooled"][0]
    assert cell["table"] == "5" and cell["paper"] == "88.41" and cell["variant"] == "vmunetv2_d2-2-9-2_ds0"
    assert cell["n_seeds"] == "2" and cell["ours_sd"] != ""
    not_run = [r for r in rows if r["encoder_depth"] == "2-2-27-2" and r["dataset"] == "etis"]
    assert {r["paper"] for r in not_run} == {"70.72", "82.85", "63.55", "77.72"}
    assert {r["ours_mean"] for r in not_run} == {""}
    complexity = (root / "reports" / "table3_complexity.md").read_text()
    assert "| VM-UNetV2 | (3, 256, 256) | (3, 256, 256) | **17.91** | 6.30 |" in complexity
    assert "cpu: fabricated" in complexity


def test_readme_index_deviations_environment_errata_citation(built):
    root, _ = built
    readme = (root / "reports" / "README.md").read_text()
    for link in ("table1_isic.md", "table4_5_ablation.tex", "figures/params_vs_dsc.png",
                 "figures/qualitative_isic17.pdf"):
        assert f"({link})" in readme
    assert "**Checkpoint selection** (changed)" in readme and "`train.checkpoint` = `last` in this run" in readme
    assert "cpu: fabricated (" in readme and "| torch | 2.14.1 |" in readme
    assert "Table 2, ClinicDB, VM-UNetV2 and Table 2, CVC-300, VM-UNetV2 print the same" in readme
    assert "@article{zhang2024vmunetv2" in readme and "@software{segbench" in readme
    assert "CVC-300 image" in readme  # cvc300 has no processed images: a note, not a crash


def test_missing_results_leave_empty_cells_with_a_note(tmp_path):
    results, data = fabricate(tmp_path)
    shutil.rmtree(results / "polyp" / "unet" / "seed1")
    shutil.rmtree(results / "polyp" / "unetv2")
    (results / "profile" / "unet.json").unlink()
    build_reports(results, tmp_path / "reports", data, PAPER)
    text = (tmp_path / "reports" / "table2_polyp.md").read_text()
    assert "UNet on Kvasir-SEG: results for 1 of 2 seeds" in text
    assert "UNetV2 on CVC-300: results for 0 of 2 seeds; its cells are empty" in text
    row = [line for line in text.splitlines() if line.startswith("|  | UNetV2 |")][0].split(" | ")
    assert row[2] == "84.00" and row[3] == ""  # Kvasir-SEG: the paper's mIoU kept, ours empty
    assert "UNet: no complexity profile" in (tmp_path / "reports" / "table3_complexity.md").read_text()


def test_without_any_results_only_the_paper_is_shown(tmp_path):
    summary = build_reports(tmp_path / "results", tmp_path / "reports", tmp_path / "data", PAPER)
    assert summary["accuracy"] == {} and summary["comparable_to_paper"] is None
    assert "| ISIC17 | UNet | 76.98 |  |" in (tmp_path / "reports" / "table1_isic.md").read_text()


@pytest.mark.parametrize("damage, expected", [
    (lambda d: (d / "metrics.json").write_text('{"pooled": {"dsc": 2}}'), "metrics.json: expected 'pooled'"),
    (lambda d: (d / "metrics.json").write_text("{not json"), "metrics.json: expected JSON"),
    (lambda d: (d / "per_image.csv").write_text("id,score\na,1\n"), "per_image.csv: expected columns"),
    (lambda d: (d / "predictions.npz").write_bytes(b"garbage"), "predictions.npz: expected an .npz archive"),
])
def test_a_malformed_results_file_is_an_error_naming_it(tmp_path, damage, expected):
    results, data = fabricate(tmp_path)
    eval_dir = results / "polyp" / "unet" / "seed0" / "eval" / "kvasir"
    damage(eval_dir)
    with pytest.raises(ReportInputError, match=expected) as error:
        build_reports(results, tmp_path / "reports", data, PAPER)
    assert str(eval_dir) in str(error.value)
    assert not (tmp_path / "reports" / "README.md").exists()


def test_cli_entry_reports_malformed_input_with_exit_code_2(tmp_path):
    results, _ = fabricate(tmp_path)
    (results / "profile" / "unet.json").write_text('{"params_total": "many"}')
    process = subprocess.run([sys.executable, "-m", "segbench.report", "--results", str(results), "--out",
                              str(tmp_path / "reports"), "--paper", str(PAPER)], capture_output=True, text=True)
    assert process.returncode == 2
    assert "unet.json: expected a non-negative number params_total" in process.stderr


def _section(values: list[float], best: str = "max") -> Section:
    rows = [{"group": Cell("A" if i == 0 else ""), "value": Cell(f"{v:.2f}", v)} for i, v in enumerate(values)]
    return Section("t", "t", [Column("group", "Group", align="l"), Column("value", "Value", best=best)], rows, "group")


def test_best_of_each_group_is_bold_ties_included():
    assert best_rows(_section([1.0, 3.0, 3.0, 2.0])) == {(1, "value"), (2, "value")}
    assert best_rows(_section([1.0, 3.0, 0.5], best="min")) == {(2, "value")}
    markdown = section_markdown(_section([1.0, 3.0]))
    assert "| A | 1.00 |" in markdown and "|  | **3.00** |" in markdown
    assert r"\textbf{3.00}" in section_latex(_section([1.0, 3.0]), "c", "l")
    assert best_rows(_section([math.nan, math.nan])) == set()


def test_mean_sd_formatting():
    assert fmt_mean_sd(82.3449, 0.1234) == "82.34 ± 0.12"
    assert fmt_mean_sd(82.3449, math.nan) == "82.34"
    assert fmt_mean_sd(math.nan, math.nan) == ""


def test_citation_files_agree():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    bib = (ROOT / "segbench" / "report" / "citation.bib").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert citation["cff-version"] == "1.2.0" and citation["authors"]
    assert f'version = "{citation["version"]}"' in pyproject and f"version = {{{citation['version']}}}" in bib
    paper = citation["references"][0]
    assert "arXiv:2403.09157" in bib and paper["identifiers"][0]["value"] == "arXiv:2403.09157"
    assert [a["family-names"] for a in paper["authors"]] == ["Zhang", "Yu", "Gu", "Lin", "Tao"]


def _run(command: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    process = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert process.returncode == 0, f"{' '.join(command)} failed:\n{process.stdout}\n{process.stderr}"
    return process


@pytest.mark.slow
def test_dvc_repro_builds_reports_then_does_nothing(tmp_path):
    """The real dvc.yaml in a fresh git repo whose results/ is a plain, git-ignored folder."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    hookup = subprocess.run(["segbench", "report", "--help"], env=env, capture_output=True, text=True)
    if hookup.returncode != 0:
        pytest.fail("`segbench report` is not registered in segbench/cli.py (see segbench/report/__init__.py "
                    f"for the three-line hook-up): {hookup.stderr.strip()[-300:]}")
    repo = tmp_path / "repo"
    for relative in ("dvc.yaml", ".dvcignore", "config/paper_results.csv", "reports/.gitignore", "segbench/config.py"):
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, repo / relative)
    shutil.copytree(ROOT / "segbench" / "report", repo / "segbench" / "report",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".gitignore").write_text("/results/\n/data/\n__pycache__/\n")  # DVC refuses a git-ignored dvc.lock
    fabricate(repo)
    _run(["git", "init", "-q"], repo, env)
    _run(["dvc", "init", "-q"], repo, env)
    _run(["git", "add", "."], repo, env)
    _run(["git", "commit", "-qm", "fixture"], repo, env)
    _run(["dvc", "repro"], repo, env)
    first = _files(repo / "reports")
    assert "table2_polyp.csv" in first and "summary.json" in first and "figures/training_curves.png" in first
    bytecode = repo / "segbench" / "report" / "__pycache__" / "build.cpython-311.pyc"
    bytecode.parent.mkdir(exist_ok=True)
    bytecode.write_bytes(b"imports write bytecode beside the sources; .dvcignore keeps it out of the stage's hash")
    second = _run(["dvc", "repro"], repo, env)
    assert "didn't change" in second.stdout and "up to date" in second.stdout, second.stdout
    assert _files(repo / "reports") == first
    status = _run(["git", "status", "--porcelain"], repo, env).stdout.splitlines()
    assert status == ["?? dvc.lock"], f"generated reports must be git-ignored: {status}"
    metrics = _run(["dvc", "metrics", "show", "--json"], repo, env).stdout
    assert "per_image_dice" in metrics
