"""The paper's published numbers (config/paper_results.csv), its names and its row orders."""
from __future__ import annotations

import csv
import math
from pathlib import Path

PAPER_COLUMNS = ["table", "dataset", "model", "encoder_depth", "deep_supervision", "metric", "value", "unit"]

# Zhang et al. 2024, Tables 1-2: the order of rows and columns as printed. ISIC18 lists every model,
# and every other dataset's row order is a subsequence of it.
MODEL_ORDER = ["unet", "unetpp", "attunet", "utnetv2", "sanet", "transfuse", "malunet", "unetv2", "vmunet",
               "vmunetv2"]
MODEL_LABELS = {
    "unet": "UNet", "unetpp": "UNet++", "attunet": "Att-UNet", "utnetv2": "UTNetV2", "sanet": "SANet",
    "transfuse": "TransFuse", "malunet": "MALUNet", "unetv2": "UNetV2", "vmunet": "VM-UNet",
    "vmunetv2": "VM-UNetV2",
    # segbench's baselines and controls (not in the paper) and the published polyp models of Table 2b
    "resenc_unet": "nnU-Net ResEnc-M", "unet_resnet50": "UNet (ResNet-50)", "vmunetv2_noscan": "VM-UNetV2 no-scan",
    "pranet": "PraNet", "polyp_pvt": "Polyp-PVT",
}
REFERENCE_MODEL = "vmunetv2"
ISIC_DATASETS = ["isic17", "isic18"]
POLYP_DATASETS = ["kvasir", "clinicdb", "colondb", "etis", "cvc300"]
DATASET_LABELS = {
    "isic17": "ISIC17", "isic18": "ISIC18", "kvasir": "Kvasir-SEG", "clinicdb": "ClinicDB",
    "colondb": "ColonDB", "etis": "ETIS", "cvc300": "CVC-300", "polyp_train": "Polyp train",
}
POOLED_METRICS = ["miou", "dsc", "acc", "spe", "sen"]  # the paper's column order
METRIC_LABELS = {"miou": "mIoU", "dsc": "DSC", "acc": "Acc", "spe": "Spe", "sen": "Sen", "params": "Params",
                 "flops": "FLOPs", "fps": "FPS"}
# The PraNet evaluation toolbox's per-image metrics (metrics.json "toolbox"), fractions; MAE is lower-better.
TOOLBOX_METRICS = ["mean_dice", "mean_iou", "wfm", "s_measure", "mean_em", "max_em", "mae"]
TOOLBOX_LABELS = {"mean_dice": "mDice", "mean_iou": "mIoU", "wfm": "wFm", "s_measure": "Sα", "mean_em": "mean Eφ",
                  "max_em": "max Eφ", "mae": "MAE"}
# metrics.json "boundary": HD95 in pixels (lower-better), NSD a fraction.
BOUNDARY_METRICS = ["hd95", "nsd"]
BOUNDARY_LABELS = {"hd95": "HD95 (px)", "nsd": "NSD"}
LOWER_IS_BETTER = {"mae", "hd95", "params", "flops"}
# Tables 4-5: encoder depth x deep supervision, in the printed row order.
ABLATION_ORDER = [("2-2-2-2", True), ("2-2-2-2", False), ("2-2-9-2", True), ("2-2-9-2", False),
                  ("2-2-27-2", True), ("2-2-27-2", False)]


def model_label(name: str) -> str:
    return MODEL_LABELS.get(name, name)


def dataset_label(name: str) -> str:
    return DATASET_LABELS.get(name, name)


def depth_key(depths) -> str:
    """[2, 2, 9, 2] -> '2-2-9-2', the form used in the CSV and in ablation variant names."""
    return "-".join(str(int(depth)) for depth in depths)


def depth_label(key: str) -> str:
    return "[" + key.replace("-", ",") + "]"


class PaperResultsError(ValueError):
    """config/paper_results.csv is malformed; the message names the line."""


def load_paper_results(path: str | Path) -> list[dict]:
    """Rows of the CSV with ``value`` as float, ``value_text`` as printed and ``deep_supervision`` as bool/None."""
    path = Path(path)
    try:
        handle = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise PaperResultsError(f"{path} does not exist; it ships with segbench (config/paper_results.csv)") from None
    with handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != PAPER_COLUMNS:
            raise PaperResultsError(f"{path}: expected the header {','.join(PAPER_COLUMNS)}, "
                                    f"found {','.join(reader.fieldnames or [])}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                value = float(row["value"])
            except ValueError:
                raise PaperResultsError(f"{path}:{line}: value {row['value']!r} is not a number") from None
            if not math.isfinite(value) or row["table"] not in {"1", "2", "3", "4", "5"}:
                raise PaperResultsError(f"{path}:{line}: expected table 1-5 and a finite value, found {row}")
            if row["deep_supervision"] not in {"", "true", "false"}:
                raise PaperResultsError(f"{path}:{line}: deep_supervision must be true, false or empty, "
                                        f"found {row['deep_supervision']!r}")
            rows.append({
                **row, "table": int(row["table"]), "value": value, "value_text": row["value"],
                "deep_supervision": {"": None, "true": True, "false": False}[row["deep_supervision"]],
            })
    return rows


def paper_lookup(rows: list[dict]) -> dict[tuple, dict]:
    """(table, dataset, model, encoder_depth, deep_supervision, metric) -> row."""
    return {(row["table"], row["dataset"], row["model"], row["encoder_depth"], row["deep_supervision"],
             row["metric"]): row for row in rows}
