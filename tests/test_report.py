"""segbench report end to end on a fabricated results tree (docs/ARCHITECTURE.md formats), plus rendering."""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from segbench.report import build_reports, report_files
from segbench.report.collect import ReportInputError, Results
from segbench.report.figures import lr_changes
from segbench.report.render import (
    MAX_MARKDOWN_COLUMNS, Cell, Column, Section, best_rows, fmt_mean_sd, markdown_blocks, section_latex,
    section_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "config" / "paper_results.csv"
SIZE = 32
N_IMAGES = 12
MODELS = ["unet", "unetv2", "vmunetv2", "vmunetv2_noscan"]
PRETRAINED = {"unetv2": "weights/pvt_v2_b2.pth", "vmunetv2": "weights/vssm.pth", "vmunetv2_noscan": "weights/vssm.pth"}
# mean per-image Dice of each fabricated model; a run from scratch scores 0.1 lower
QUALITY = {"unet": 0.55, "unetv2": 0.7, "vmunetv2": 0.8, "vmunetv2_noscan": 0.79}
TOOLBOX = ["mean_dice", "mean_iou", "wfm", "s_measure", "mean_em", "max_em", "mae"]


def _config() -> dict:
    return {
        "run_name": "fabricated", "comparable_to_paper": False, "image_size": SIZE,
        "data": {"source": "synthetic", "root": "data", "val_fraction": 0.1, "split_seed": 0},
        "protocols": {"isic17": {"train": "isic17", "test": ["isic17"]},
                      "polyp": {"train": "polyp_train", "test": ["kvasir", "cvc300"]}},
        "models": list(MODELS), "model_args": {}, "pretrained": dict(PRETRAINED), "from_scratch": ["polyp"],
        "ablation": {"model": "vmunetv2", "protocol": "polyp", "depths": [[2, 2, 2, 2], [2, 2, 9, 2]],
                     "deep_supervision": [True, False], "seeds": [0]},
        "seeds": [0, 1], "scan_backend": "torch",
        "train": {"epochs": 3, "batch_size": 4, "lr": 0.001, "weight_decay": 0.01, "t_max": 50, "eta_min": 1e-5,
                  "checkpoint": "last", "rotation_angle": "per_batch", "input_scaling": "minmax255"},
        "evaluate": {"threshold": 0.5, "save_predictions": 3},
        "report": {"bootstrap_resamples": 200, "seed": 0, "qualitative_n": 2},
    }


def _ratios(tp, fp, fn, tn) -> dict:
    return {"miou": tp / (tp + fp + fn), "dsc": 2 * tp / (2 * tp + fp + fn), "acc": (tp + tn) / (tp + fp + fn + tn),
            "sen": tp / (tp + fn), "spe": tn / (tn + fp)}


def _quality(variant: str) -> float:
    scratch = variant.endswith("_scratch")
    return QUALITY.get(variant.removesuffix("_scratch"), 0.75) - (0.1 if scratch else 0.0)


def _write_run(run_dir: Path, protocol: str, variant: str, seed: int, tests: list[str], rng,
               older: bool = False, cfg: dict | None = None) -> None:
    """One run's files in the documented formats, bound to ``cfg`` by the run's fingerprint; ``older``: as
    segbench wrote them before the toolbox, boundary and cost fields existed."""
    from segbench.fingerprint import digest, run_fingerprint

    run_dir.mkdir(parents=True)
    fingerprint = run_fingerprint(cfg, protocol, variant, seed)
    quality = _quality(variant)
    with open(run_dir / "train_log.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "steps", "lr", "train_loss", "val_loss", "val_dsc", "seconds"]
                        + ([] if older else ["images_per_second", "peak_memory_mb"]))
        for epoch in range(1, 4):
            writer.writerow([epoch, 2 * epoch, 1e-3 / epoch, round(1.0 / epoch + rng.random() / 10, 6),
                             round(1.1 / epoch, 6), round(quality * epoch / 3, 6), 0.5]
                            + ([] if older else [40.0, 512.0]))
    manifest = {
        "protocol": protocol, "variant": variant, "seed": seed, "git_sha": "abc1234", "device": "cpu: fabricated",
        "scan_backend": "torch", "selected_checkpoint": "last", "versions": {"python": "3.11.0", "torch": "2.14.1"},
        "determinism": {"deterministic_algorithms": True},
        "pretrained": None if variant.endswith("_scratch") or variant not in PRETRAINED else
        {"file": PRETRAINED[variant], "sha256": "0" * 64},
        "fingerprint": fingerprint, "fingerprint_sha256": digest(fingerprint)}
    if not older:
        seconds_per_epoch = 10.0 * (1 + MODELS.index(variant.removesuffix("_scratch"))) if \
            variant.removesuffix("_scratch") in MODELS else 12.0
        manifest.update(init="scratch" if manifest["pretrained"] is None else "pretrained", cost={
            "wall_seconds": 3 * seconds_per_epoch + seed, "seconds_per_epoch": seconds_per_epoch + seed / 3,
            "images_per_second": 100.0 / seconds_per_epoch, "peak_memory_mb": 1000.0 + 10 * seed,
            "peak_memory_kind": "cpu_peak_rss", "epochs": 3})
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    for test_set in tests:
        eval_dir = run_dir / "eval" / test_set
        eval_dir.mkdir(parents=True)
        dice = np.clip(quality + rng.normal(0, 0.05, N_IMAGES), 0, 1).round(6)
        rows = []
        for i, d in enumerate(dice):
            tp = int(200 * d)
            row = {"id": f"{test_set}_{i:03d}", "dice": d, "iou": round(d / (2 - d), 6), "tp": tp, "fp": 220 - tp,
                   "fn": 200 - tp, "tn": 1600, "height": 40, "width": 48, "mask_empty": 0}
            if not older:
                row.update({metric: round(float(np.clip(d + 0.01 * k, 0, 1)), 6) for k, metric in enumerate(TOOLBOX)})
                row.update(mae=round(1 - d, 6) / 10, hd95=round(20 * (1 - d), 4), nsd=round(d, 6))
            rows.append(row)
        with open(eval_dir / "per_image.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        tp = int(1000 * quality) + int(rng.integers(0, 20))
        pooled = _ratios(tp, 1000 - tp, 1000 - tp, 20000)
        metrics = {
            "protocol": protocol, "variant": variant, "model": variant.split("_")[0], "seed": seed,
            "test_set": test_set, "n_images": N_IMAGES, "threshold": 0.5, "size": SIZE, "pooled": pooled,
            "fingerprint_sha256": digest(fingerprint),
            "per_image": {"dice_mean": float(np.mean([r["dice"] for r in rows])),
                          "iou_mean": float(np.mean([r["iou"] for r in rows])), "n_empty_masks": 0}}
        if not older:
            metrics["toolbox"] = {metric: float(np.mean([r[metric] for r in rows])) for metric in TOOLBOX}
            metrics["boundary"] = {"hd95": float(np.mean([r["hd95"] for r in rows])),
                                   "nsd": float(np.mean([r["nsd"] for r in rows])), "nsd_tolerance_px": 2.0,
                                   "n_boundary_undefined": 1}
        (eval_dir / "metrics.json").write_text(json.dumps(metrics))
        probabilities = (rng.random((3, SIZE, SIZE)) * 255).astype(np.uint8)
        np.savez_compressed(eval_dir / "predictions.npz", ids=np.array([r["id"] for r in rows[:3]]),
                            probabilities=probabilities)


def fabricate(root: Path, cfg: dict | None = None, older: bool = False) -> tuple[Path, Path]:
    """A complete results tree and processed images (isic17, kvasir; cvc300 has none) under ``root``."""
    from segbench.config import ablation_cells, planned_runs

    cfg = cfg or _config()
    results, data = root / "results", root / "data"
    results.mkdir(parents=True)
    (results / "run_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True))
    rng = np.random.default_rng(0)
    for run in planned_runs(cfg):
        _write_run(results / run.protocol / run.variant / f"seed{run.seed}", run.protocol, run.variant, run.seed,
                   cfg["protocols"][run.protocol]["test"], rng, older, cfg)
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


def _table_rows(markdown: str) -> list[list[str]]:
    """Cells of every Markdown table row (header and separator rows left out)."""
    rows = [line.split(" | ") for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip("| ") for cell in row] for row in rows if not row[0].startswith("|---")]


def test_same_results_give_byte_identical_reports(built):
    root, _ = built
    build_reports(root / "results", root / "again", root / "data", PAPER)
    first, second = _files(root / "reports"), _files(root / "again")
    assert sorted(first) == sorted(second)
    differing = [name for name in first if first[name] != second[name]]
    assert differing == []
    assert b"CreationDate" not in first["figures/training_curves.pdf"]


def test_report_files_lists_exactly_what_is_written(built, tmp_path):
    root, _ = built
    cfg = yaml.safe_load((root / "results" / "run_config.yaml").read_text())
    listed = report_files(cfg)
    written = set(_files(root / "reports")) - {"README.md", "summary.json"}
    assert sorted(f.path for f in listed) == sorted(written)
    assert {"table2b_polyp_toolbox.md", "controls.tex", "claims.csv", "figures/dsc_vs_training_cost.png",
            "figures/qualitative_cvc300.pdf"} <= written
    # one category per table, figures by kind; captions are plain sentences, safe in reStructuredText
    categories = {f.path.split(".")[0]: f.category for f in listed}
    assert categories["table2b_polyp_toolbox"] == "Table 2b" and categories["figures/qualitative_kvasir"] == \
        "Qualitative results"
    assert len({f.category for f in listed if not f.path.startswith("figures/")}) == 7
    for entry in listed:
        assert re.fullmatch(r"[A-Z0-9][\w ,.;:()'%±=-]*\.", entry.caption) and "_" not in entry.caption, entry
    # without results only the tables of the paper are written, and listed
    empty = build_reports(tmp_path / "results", tmp_path / "reports", tmp_path / "data", PAPER)
    assert empty["accuracy"] == {}
    assert sorted(f.path for f in report_files(None)) == sorted(set(_files(tmp_path / "reports"))
                                                               - {"README.md", "summary.json"})
    # qualitative_n: 0 writes and lists no qualitative grids
    cfg["report"]["qualitative_n"] = 0
    assert not [f for f in report_files(cfg) if "qualitative" in f.path]


def test_markdown_tables_fit_a_screen(built):
    root, _ = built
    for path in sorted((root / "reports").glob("*.md")):
        for row in _table_rows(path.read_text()):
            assert len(row) <= MAX_MARKDOWN_COLUMNS, (path.name, row)
    text = (root / "reports" / "table1_isic.md").read_text()
    assert "Part 1 of 2: mIoU (%), DSC (%)." in text and "Part 2 of 2: Acc (%), Spe (%), Sen (%)." in text
    # LaTeX keeps the whole table: one tabular with all 17 columns
    assert r"\begin{tabular}{llrrrrrrrrrrrrrrr}" in (root / "reports" / "table1_isic.tex").read_text()
    for path in sorted((root / "reports").glob("*.tex")):  # every symbol escaped: any LaTeX engine reads it
        assert path.read_text().isascii(), path.name


def test_table1_cells_paper_order_and_bold_best(built):
    root, _ = built
    text = (root / "reports" / "table1_isic.md").read_text()
    assert "> **Synthetic data, smoke settings: not comparable to the paper.**" in text
    miou_dsc = text.split("### Per-image")[0].split("Part 2 of 2")[0]
    rows = _table_rows(miou_dsc)[1:]
    assert [r[0] for r in rows][:9] == ["**ISIC17**", "UNet", "UTNetV2", "TransFuse", "MALUNet", "UNetV2", "VM-UNet",
                                       "VM-UNetV2", "VM-UNetV2 no-scan"]
    assert [r[0] for r in rows][9:12] == ["**ISIC18**", "UNet", "UNet++"] and rows[-1][0] == "VM-UNetV2"
    vmunetv2 = rows[7]
    assert vmunetv2[1] == "**82.34**"  # paper mIoU, best of ISIC17 in the paper
    assert "±" in vmunetv2[2] and vmunetv2[2].startswith("**")  # ours: best of our rows (fabricated quality)
    assert vmunetv2[3].startswith(("+", "-"))
    assert rows[11][2] == ""  # UNet++ was not run: the paper's value with ours empty
    tex = (root / "reports" / "table1_isic.tex").read_text()
    assert r"\toprule" in tex and r"\textbf{82.34}" in tex and r"$\pm$" in tex
    assert r"\textbf{Synthetic data, smoke settings: not comparable to the paper.}" in tex
    per_image = _table_rows(text.split("### Per-image")[1].split("Part 2 of 2")[0])
    assert per_image[0] == ["Model", "Dice (%) ours", "Dice (%) 95% CI", "IoU (%) ours", "Boundary HD95 (px)",
                            "Boundary NSD"]
    assert re.fullmatch(r"\*\*\d+\.\d\d ± \d+\.\d\d\*\*", per_image[4][4])  # VM-UNetV2: lowest HD95, bold
    assert "within 2 px of the other boundary" in text and "at most 1 per run" in text


def test_scratch_rows_beside_pretrained_ones_with_their_start(built):
    root, _ = built
    text = (root / "reports" / "table2_polyp.md").read_text()
    kvasir = [r[0] for r in _table_rows(text.split("**ClinicDB**")[0])[1:]]
    assert kvasir[kvasir.index("UNetV2"):kvasir.index("UNetV2") + 2] == ["UNetV2", "UNetV2 (scratch)"]
    assert "VM-UNetV2 (scratch)" in kvasir and "VM-UNetV2 no-scan (scratch)" in kvasir
    assert "UNet (scratch)" not in kvasir  # UNet has no pretrained weights: no scratch twin
    assert ("Starting weights: pretrained encoder weights (config `pretrained:`): UNetV2 (weights/pvt_v2_b2.pth), "
            "VM-UNetV2 (weights/vssm.pth)") in text
    assert "random initialisation (from scratch): UNet, UNetV2 (scratch), VM-UNetV2 (scratch)" in text
    assert "Rows marked (scratch) are tested against VM-UNetV2 (scratch)" in text
    assert "VM-UNetV2 (scratch)" not in (root / "reports" / "table1_isic.md").read_text()  # isic17 is not from_scratch
    rows = _csv_rows(root / "reports" / "table2_polyp.csv")
    scratch = [r for r in rows if r["variant"] == "unetv2_scratch" and r["dataset"] == "kvasir"]
    assert {r["init"] for r in scratch} == {"scratch"} and {r["paper"] for r in scratch} == {""}
    dice = [r for r in scratch if r["metric"] == "dice"][0]
    assert float(dice["p_holm"]) < 0.05 and float(dice["median_difference"]) > 0  # vs VM-UNetV2 (scratch)


def test_csv_statistics_and_marking(built):
    root, summary = built
    rows = _csv_rows(root / "reports" / "table2_polyp.csv")
    assert all(row["comparable_to_paper"] == "false" and row["run_name"] == "fabricated" for row in rows)
    dice = {(r["dataset"], r["variant"]): r for r in rows if r["aggregation"] == "per_image" and r["metric"] == "dice"}
    unet = dice[("kvasir", "unet")]
    assert float(unet["ci_low"]) < float(unet["ours_mean"]) < float(unet["ci_high"])
    assert float(unet["rank_biserial"]) == 1.0 and float(unet["median_difference"]) > 0  # VM-UNetV2 better on all
    assert float(unet["p_holm"]) >= float(unet["wilcoxon_p"])
    assert dice[("kvasir", "vmunetv2")]["p_holm"] == ""
    paper_only = [r for r in rows if r["model"] == "vmunet" and r["metric"] == "dsc" and r["dataset"] == "kvasir"]
    assert paper_only[0]["paper"] == "89.09" and paper_only[0]["ours_mean"] == ""
    hd95 = [r for r in rows if r["metric"] == "hd95" and r["variant"] == "vmunetv2" and r["dataset"] == "kvasir"][0]
    assert hd95["unit"] == "px" and float(hd95["ours_mean"]) > 0 and hd95["n_seeds"] == "2"
    assert summary["comparable_to_paper"] is False
    entry = summary["accuracy"]["polyp"]["kvasir"]["vmunetv2"]
    assert 0 < entry["per_image_dice"] <= 1 and 0 < entry["toolbox_max_em"] <= 1 and entry["hd95"] > 0
    assert entry["init"] == "pretrained" and summary["accuracy"]["polyp"]["kvasir"]["vmunetv2_scratch"]["init"] == \
        "scratch"
    assert summary["cost"]["polyp"]["unet"]["seconds_per_epoch"] == pytest.approx(10 + 1 / 6)
    assert summary["cost_runs"] == 26 and summary["cost_total_wall_hours"] > 0
    assert summary["controls"]["polyp"]["kvasir"]["pretrained_vs_scratch_vmunetv2"]["verdict"] == "supported"
    assert summary["claims"]["paper"] == {"supported": 4, "contradicted": 3, "inconclusive": 0}
    assert sum(summary["claims"]["ours"].values()) == 7
    assert json.loads((root / "reports" / "summary.json").read_text()) == summary


def test_table2b_beside_published_numbers(built):
    root, _ = built
    text = (root / "reports" / "table2b_polyp_toolbox.md").read_text()
    rows = {r[0]: r for r in _table_rows(text.split("**ClinicDB**")[0])}
    assert rows["Model"] == ["Model", "mDice", "mIoU", "wFm", "Sα", "mean Eφ", "max Eφ", "MAE", "HD95 (px)", "NSD"]
    assert rows["PraNet (Fan et al. 2020)"][1:] == ["0.898", "0.840", "0.885", "0.915", "", "0.948", "0.030", "", ""]
    assert rows["Polyp-PVT (Dong et al. 2021)"][1] == "**0.917**"
    ours = rows["ours: VM-UNetV2"]
    metrics = [json.loads((root / "results" / "polyp" / "vmunetv2" / f"seed{k}" / "eval" / "kvasir" /
                           "metrics.json").read_text()) for k in (0, 1)]
    mean = np.mean([m["toolbox"]["max_em"] for m in metrics])
    sd = np.std([m["toolbox"]["max_em"] for m in metrics], ddof=1)
    assert ours[6] == f"{mean:.3f} ± {sd:.3f}"
    assert ours[7].startswith("**")  # lowest MAE of the Kvasir-SEG rows (fabricated), min is best
    assert "PraNet (Fan et al. 2020): no mean Eφ (not reported); HD95 (px) (not reported)" in text
    assert "DengPingFan/Polyp-PVT@cd71fbf" in text and "ours: UNetV2 (scratch)" in text
    records = _csv_rows(root / "reports" / "table2b_polyp_toolbox.csv")
    published = [r for r in records if r["model"] == "polyp_pvt" and r["dataset"] == "etis" and r["metric"] == "mae"]
    assert published[0]["published"] == "0.013" and "Polyp-PVT" in published[0]["source"]


def test_ablation_and_complexity_tables(built):
    root, _ = built
    rows = _csv_rows(root / "reports" / "table4_5_ablation.csv")
    cell = [r for r in rows if r["dataset"] == "cvc300" and r["encoder_depth"] == "2-2-9-2"
            and r["deep_supervision"] == "false" and r["metric"] == "dsc" and r["aggregation"] == "pooled"][0]
    assert cell["table"] == "5" and cell["paper"] == "88.41" and cell["variant"] == "vmunetv2_d2-2-9-2_ds0"
    assert cell["n_seeds"] == "1" and cell["seeds_expected"] == "1"  # ablation.seeds: [0]
    not_run = [r for r in rows if r["encoder_depth"] == "2-2-27-2" and r["dataset"] == "etis"]
    assert {r["paper"] for r in not_run} == {"70.72", "82.85", "63.55", "77.72"}
    assert {r["ours_mean"] for r in not_run} == {""}
    complexity = (root / "reports" / "table3_complexity.md").read_text()
    assert "| VM-UNetV2 | (3, 256, 256) | (3, 256, 256) | **17.91** | 6.30 |" in complexity
    assert "cpu: fabricated" in complexity


def test_training_cost_in_table3_and_readme(built):
    root, _ = built
    complexity = (root / "reports" / "table3_complexity.md").read_text()
    cost = complexity.split("### Training cost per job")[1]
    rows = {r[0]: r for r in _table_rows(cost.split("**polyp**")[1])}
    assert rows["UNetV2 (scratch)"][1:4] == ["scratch", "20.2 ± 0.2", "60 ± 1"]
    assert rows["VM-UNetV2 [2,2,9,2] without deep supervision"][-1] == "1/1"
    assert "CPU, peak resident set" in rows["UNet"]
    readme = (root / "reports" / "README.md").read_text()
    measured = readme.split("## Measured cost per job")[1].split("## Protocol")[0]
    assert "26 runs recorded their cost and took 0.53 hours of wall time in total" in measured
    assert "| VM-UNetV2 no-scan (scratch) | scratch | 40.2 ± 0.2 | 120 ± 1 |" in measured
    records = _csv_rows(root / "reports" / "table3_complexity.csv")
    assert [r["ours_mean"] for r in records if r["variant"] == "unet" and r["protocol"] == "polyp"
            and r["metric"] == "seconds_per_epoch"] == ["10.1667"]


def test_controls_table_tests_and_sentences(built, tmp_path):
    root, _ = built
    text = (root / "reports" / "controls.md").read_text()
    assert "### polyp protocol: accuracy" in text and "isic17 protocol" not in text  # from_scratch: [polyp]
    assert "Holm-corrected over all 14 tests of this table" in text
    sentences = [line for line in text.splitlines() if line.startswith("- Kvasir-SEG: ")]
    assert len(sentences) == 7
    assert any(s.startswith("- Kvasir-SEG: Evidence that ImageNet pretraining helps VM-UNetV2 on this test set: "
                            "VM-UNetV2 − VM-UNetV2 (scratch) = +") for s in sentences)
    assert any(s.startswith("- Kvasir-SEG: No evidence that the selective scan helps (from scratch): ") and
               "not significant after Holm correction (p_Holm = " in s for s in sentences)
    records = _csv_rows(root / "reports" / "controls.csv")
    assert len(records) == 14 and {r["verdict"] for r in records} <= {"supported", "no evidence", "contradicted"}
    assert all(float(r["p_holm"]) >= float(r["wilcoxon_p"]) for r in records)
    # a missing run keeps its row and turns its comparisons into "not tested", never dropped
    results, data = fabricate(tmp_path)
    shutil.rmtree(results / "polyp" / "vmunetv2_noscan_scratch")
    build_reports(results, tmp_path / "reports", data, PAPER)
    text = (tmp_path / "reports" / "controls.md").read_text()
    assert "| VM-UNetV2 no-scan (scratch) | scratch |  |  |  | 0/2 |" in text
    assert ("Not tested: VM-UNetV2 no-scan (scratch) has no per-image results on Kvasir-SEG (VM-UNetV2 (scratch) vs "
            "VM-UNetV2 no-scan (scratch)).") in text
    assert "Holm-corrected over all 10 tests" in text  # 2 comparisons x 2 test sets fewer


def test_readme_index_deviations_environment_errata_citation(built):
    root, _ = built
    readme = (root / "reports" / "README.md").read_text()
    for link in ("table1_isic.md", "table4_5_ablation.tex", "figures/params_vs_dsc.png",
                 "figures/qualitative_isic17.pdf", "table2b_polyp_toolbox.csv", "controls.md", "claims.md"):
        assert f"({link})" in readme
    assert "**Checkpoint selection** (changed)" in readme and "`train.checkpoint` = `last` in this run" in readme
    assert "cpu: fabricated (" in readme and "| torch | 2.14.1 |" in readme
    assert "Table 2, ClinicDB, VM-UNetV2 and Table 2, CVC-300, VM-UNetV2 print the same" in readme
    assert "@article{zhang2024vmunetv2" in readme and "@software{segbench" in readme
    assert "CVC-300 image" in readme  # cvc300 has no processed images: a note, not a crash
    claims = readme.split("## Claims")[1].split("## Measured cost")[0]
    assert "| polyp_vmunetv2_beats_unetv2 | 3.3 | 2 | contradicted | 4/25 |" in claims
    assert "Also trained from scratch (variants `<model>_scratch`, same seeds) on the protocols polyp" in readme


def test_older_results_without_the_new_fields_still_report(tmp_path):
    results, data = fabricate(tmp_path, older=True)
    summary = build_reports(results, tmp_path / "reports", data, PAPER)
    readme = (tmp_path / "reports" / "README.md").read_text()
    assert "metrics.json files have no 'toolbox' block" in readme and "Rerun the workflow's evaluate rule" in readme
    assert "manifest.json files have no 'cost' block" in readme and "Rerun the workflow's train rule" in readme
    assert "per_image.csv files lack the columns mean_dice," in readme
    ours = [r for r in _table_rows((tmp_path / "reports" / "table2b_polyp_toolbox.md").read_text())
            if r[0] == "ours: VM-UNetV2"][0]
    assert ours[1:] == [""] * 9
    assert "no measured cost" in (tmp_path / "reports" / "table3_complexity.md").read_text()
    assert summary["cost"] == {} and "toolbox_mean_dice" not in summary["accuracy"]["polyp"]["kvasir"]["vmunetv2"]
    assert summary["accuracy"]["polyp"]["kvasir"]["vmunetv2"]["per_image_dice"] > 0


def test_a_run_trained_with_another_config_is_left_out_with_a_note(tmp_path):
    """A manifest whose fingerprint is not the one the reported config implies (here: another learning rate,
    and one with no fingerprint at all) never lends its numbers to a table."""
    results, data = fabricate(tmp_path)
    changed = results / "polyp" / "unet" / "seed0" / "manifest.json"
    manifest = json.loads(changed.read_text())
    manifest["fingerprint"]["train"]["lr"] = 0.01
    changed.write_text(json.dumps(manifest))
    unbound = results / "polyp" / "unet" / "seed1" / "manifest.json"
    unbound.write_text(json.dumps({key: value for key, value in json.loads(unbound.read_text()).items()
                                   if key != "fingerprint"}))
    summary = build_reports(results, tmp_path / "reports", data, PAPER)
    readme = (tmp_path / "reports" / "README.md").read_text()
    assert f"{changed} was trained with another config (train.lr: 0.01 -> 0.001)" in readme
    assert f"{unbound} records no config fingerprint" in readme
    assert "unet" not in summary["accuracy"]["polyp"]["kvasir"], "both seeds of unet are left out"


def test_an_evaluation_of_another_model_is_left_out_with_a_note(tmp_path):
    results, data = fabricate(tmp_path)
    metrics = results / "polyp" / "unetv2" / "seed0" / "eval" / "kvasir" / "metrics.json"
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "fingerprint_sha256": "f" * 64}))
    summary = build_reports(results, tmp_path / "reports", data, PAPER)
    assert f"{metrics} scores another model than" in (tmp_path / "reports" / "README.md").read_text()
    assert summary["accuracy"]["polyp"]["kvasir"]["unetv2"]["n_seeds"] == 1


def test_a_manifest_that_disagrees_with_the_config_is_noted(tmp_path):
    results, data = fabricate(tmp_path)
    path = results / "polyp" / "unetv2_scratch" / "seed0" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "init": "pretrained"}))
    build_reports(results, tmp_path / "reports", data, PAPER)
    assert (f"{path}: the run started from pretrained weights, but the config plans scratch for unetv2_scratch"
            in (tmp_path / "reports" / "README.md").read_text())


def test_missing_results_leave_empty_cells_with_a_note(tmp_path):
    results, data = fabricate(tmp_path)
    shutil.rmtree(results / "polyp" / "unet" / "seed1")
    shutil.rmtree(results / "polyp" / "unetv2")
    (results / "profile" / "unet.json").unlink()
    build_reports(results, tmp_path / "reports", data, PAPER)
    text = (tmp_path / "reports" / "table2_polyp.md").read_text()
    assert "UNet on Kvasir-SEG: results for 1 of 2 seeds" in text
    assert "UNetV2 on CVC-300: results for 0 of 2 seeds; its cells are empty" in text
    row = [r for r in _table_rows(text.split("Part 2 of 2")[0]) if r[0] == "UNetV2"][0]
    assert row[1] == "84.00" and row[2] == ""  # Kvasir-SEG: the paper's mIoU kept, ours empty
    assert "UNet: no complexity profile" in (tmp_path / "reports" / "table3_complexity.md").read_text()


def test_without_any_results_only_the_paper_is_shown(tmp_path):
    summary = build_reports(tmp_path / "results", tmp_path / "reports", tmp_path / "data", PAPER)
    assert summary["accuracy"] == {} and summary["comparable_to_paper"] is None
    assert "| UNet | 76.98 |  |" in (tmp_path / "reports" / "table1_isic.md").read_text()
    assert summary["claims"]["ours"] == {"supported": 0, "contradicted": 0, "inconclusive": 7}
    assert "Nothing to compare: no results were found." in (tmp_path / "reports" / "controls.md").read_text()


@pytest.mark.parametrize("damage, expected", [
    (lambda d: (d / "metrics.json").write_text('{"pooled": {"dsc": 2}}'), "metrics.json: expected 'pooled'"),
    (lambda d: (d / "metrics.json").write_text("{not json"), "metrics.json: expected JSON"),
    (lambda d: (d / "per_image.csv").write_text("id,score\na,1\n"), "per_image.csv: expected columns"),
    (lambda d: (d / "predictions.npz").write_bytes(b"garbage"), "predictions.npz: expected an .npz archive"),
    (lambda d: _edit_json(d / "metrics.json", toolbox={"mean_dice": 1.5}), "metrics.json: expected 'toolbox'"),
    (lambda d: _edit_json(d / "metrics.json", boundary={"hd95": -1}), "metrics.json: expected 'boundary'"),
    (lambda d: _edit_json(d.parents[1] / "manifest.json", cost={"wall_seconds": "long"}),
     "manifest.json: expected 'cost'"),
    (lambda d: _edit_json(d.parents[1] / "manifest.json", init="imagenet"), "manifest.json: expected init"),
    (lambda d: _edit_csv(d / "per_image.csv", "nsd", "1.7"), "per_image.csv: expected nsd values"),
])
def test_a_malformed_results_file_is_an_error_naming_it(tmp_path, damage, expected):
    results, data = fabricate(tmp_path)
    eval_dir = results / "polyp" / "unet" / "seed0" / "eval" / "kvasir"
    damage(eval_dir)
    with pytest.raises(ReportInputError, match=expected) as error:
        build_reports(results, tmp_path / "reports", data, PAPER)
    assert str(results / "polyp" / "unet" / "seed0") in str(error.value)
    assert not (tmp_path / "reports" / "README.md").exists()


def _edit_json(path: Path, **fields) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _edit_csv(path: Path, column: str, value: str) -> None:
    rows = _csv_rows(path)
    rows[0][column] = value
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_cli_entry_reports_malformed_input_with_exit_code_2(tmp_path):
    results, _ = fabricate(tmp_path)
    (results / "profile" / "unet.json").write_text('{"params_total": "many"}')
    process = subprocess.run([sys.executable, "-m", "segbench.report", "--results", str(results), "--out",
                              str(tmp_path / "reports"), "--paper", str(PAPER)], capture_output=True, text=True)
    assert process.returncode == 2
    assert "unet.json: expected a non-negative number params_total" in process.stderr


def test_wide_sections_split_into_blocks_that_keep_groups_together():
    keys = [Column("model", "Model", align="l")]
    metric_groups = [Column(f"{m}_{part}", part, m) for m in ("mIoU", "DSC", "Acc", "Spe", "Sen")
                     for part in ("paper", "ours", "Δ")]
    blocks = markdown_blocks(keys, metric_groups)
    assert [[c.group for c in block][::3] for block in blocks] == [["mIoU", "DSC"], ["Acc", "Spe", "Sen"]]
    assert markdown_blocks(keys, metric_groups[:9]) == [metric_groups[:9]]  # fits: one block
    wide = [Column(f"c{i}", "x", "one group") for i in range(12)]
    assert markdown_blocks(keys, wide) == [wide]  # a group wider than a screen is not torn apart


def test_learning_rate_panel_only_when_the_rate_changes():
    flat = pd.DataFrame({"epoch": [1, 2], "lr": [1e-3, 0.999e-3]})
    falling = pd.DataFrame({"epoch": [1, 2], "lr": [1e-3, 5e-4]})
    empty = Results(None, pd.DataFrame(), {}, {}, {("p", "m"): {0: flat}}, [], {}, [])
    assert not lr_changes(empty)
    empty.train_logs[("p", "m")][1] = falling
    assert lr_changes(empty)


def test_dvc_stage_declares_every_report_file():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
    outs = {next(iter(out)) for out in stage["outs"]}
    tables = {f"reports/{f.path}" for f in report_files(None)}
    assert tables | {"reports/README.md", "reports/figures", "reports/plots"} == outs
    assert {"config/literature_results.csv", "config/paper_claims.yaml"} <= set(stage["deps"])
    ignored = (ROOT / "reports" / ".gitignore").read_text().splitlines()
    assert all(f"/{path.removeprefix('reports/').split('.')[0]}.*" in ignored for path in tables)


def _section(values: list[float], best: str = "max") -> Section:
    rows = [{"group": Cell("A" if i == 0 else ""), "value": Cell(f"{v:.2f}", v)} for i, v in enumerate(values)]
    return Section("t", "t", [Column("group", "Group", align="l"), Column("value", "Value", best=best)], rows, "group")


def test_best_of_each_group_is_bold_ties_included():
    assert best_rows(_section([1.0, 3.0, 3.0, 2.0])) == {(1, "value"), (2, "value")}
    assert best_rows(_section([1.0, 3.0, 0.5], best="min")) == {(2, "value")}
    markdown = section_markdown(_section([1.0, 3.0]))
    assert "| **A** |\n| 1.00 |\n| **3.00** |" in markdown  # the group column becomes a header row
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
    for relative in ("dvc.yaml", ".dvcignore", "config/paper_results.csv", "config/literature_results.csv",
                     "config/paper_claims.yaml", "reports/.gitignore", "segbench/config.py"):
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
