"""config/paper_results.csv against the paper's own text (../shared/paper/vm-unetv2-paper.txt), and
config/literature_results.csv (published PraNet and Polyp-PVT values for Table 2b)."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from segbench.report.literature import LiteratureResultsError, load_literature_results
from segbench.report.paper import (
    ABLATION_ORDER, MODEL_ORDER, PAPER_COLUMNS, POLYP_DATASETS, load_paper_results, paper_lookup,
)

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "config" / "paper_results.csv"
PAPER_TEXT = ROOT.parent / "shared" / "paper" / "vm-unetv2-paper.txt"

MODEL_NAMES = {"UNet": "unet", "UNet++": "unetpp", "Att-Unet": "attunet", "UTNetV2": "utnetv2", "SANet": "sanet",
               "TransFuse": "transfuse", "MALUNet": "malunet", "UNetV2": "unetv2", "VM-UNet": "vmunet",
               "VM-UNetV2": "vmunetv2", "VMUnet": "vmunet", "VMUnetV2": "vmunetv2", "VM-Unet": "vmunet",
               "VM-UnetV2": "vmunetv2"}
DATASET_NAMES = {"ISIC17": "isic17", "ISIC18": "isic18", "Kvasir-SEG": "kvasir", "ClinicDB": "clinicdb",
                 "ColonDB": "colondb", "ETIS": "etis", "CVC-300": "cvc300"}
NUMBER = re.compile(r"^\d+(\.\d+)?$")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("|") if cell.strip()]


def _metric(header: str) -> str:
    name = header.split("(")[0].strip("↑↓ ").lower()
    return {"mlou": "miou"}.get(name, name)


def parse_paper_tables(text: str) -> dict[tuple, str]:
    """Every numeric cell of Tables 1-5 in the text -> (table, dataset, model, depth, ds, metric): printed value."""
    lines = text.splitlines()
    cells: dict[tuple, str] = {}
    headers = [i for i, line in enumerate(lines) if line.startswith("Dataset | Model |")]
    for table, start in zip((1, 2), headers):
        metrics = [_metric(h) for h in _cells(lines[start])[2:]]
        dataset = None
        for line in lines[start + 1:]:
            row = [c for c in _cells(line) if c != "---"]
            if not row:
                continue
            if row[0] in DATASET_NAMES:
                dataset, row = DATASET_NAMES[row[0]], row[1:]
            name = re.sub(r"\s*\[\d+\]$", "", row[0])
            if name not in MODEL_NAMES or not all(NUMBER.match(v) for v in row[1:]) or len(row) != 6:
                break
            for metric, value in zip(metrics, row[1:]):
                cells[(table, dataset, MODEL_NAMES[name], "", None, metric)] = value
    start = next(i for i, line in enumerate(lines) if line.startswith("Model | Input size |"))
    metrics = [_metric(h) for h in _cells(lines[start])[2:]]
    for line in lines[start + 2:start + 5]:
        row = _cells(line)
        size = re.match(r"\(3, (\d+), \1\)", row[1]).group(1)
        cells[(3, "", MODEL_NAMES[row[0]], "", None, "input_size")] = size
        for metric, value in zip(metrics, row[2:]):
            cells[(3, "", MODEL_NAMES[row[0]], "", None, metric)] = value
    start = next(i for i, line in enumerate(lines) if line.startswith("Encoder Depth | Deep Supervision |"))
    table4_sets = [DATASET_NAMES[c] for c in _cells(lines[start])[2:]]
    depth = None
    for line in lines[start + 3:start + 9]:
        row = _cells(line)
        if row[0].startswith("["):
            depth, row = row[0].strip("[]").replace(",", "-"), row[1:]
        ds = {"TRUE": True, "FALSE": False}[row[0]]
        for index, dataset in enumerate(table4_sets):
            cells[(4, dataset, "vmunetv2", depth, ds, "miou")] = row[1 + 2 * index]
            cells[(4, dataset, "vmunetv2", depth, ds, "dsc")] = row[2 + 2 * index]
    start = next(i for i, line in enumerate(lines) if line.startswith("ColonDB | ETIS | CVC-300"))
    table5_sets = [DATASET_NAMES[c] for c in _cells(lines[start])]
    order = [(d, s) for d, s in (("2-2-2-2", True), ("2-2-2-2", False), ("2-2-9-2", True), ("2-2-9-2", False),
                                 ("2-2-27-2", True), ("2-2-27-2", False))]
    for (depth, ds), line in zip(order, lines[start + 3:start + 9]):
        row = _cells(line)
        for index, dataset in enumerate(table5_sets):
            cells[(5, dataset, "vmunetv2", depth, ds, "miou")] = row[2 * index]
            cells[(5, dataset, "vmunetv2", depth, ds, "dsc")] = row[2 * index + 1]
    return cells


def test_shape_and_vocabulary():
    rows = load_paper_results(CSV)
    assert CSV.read_text().splitlines()[0] == ",".join(PAPER_COLUMNS)
    assert Counter(row["table"] for row in rows) == {1: 85, 2: 75, 3: 12, 4: 24, 5: 36}
    keys = [(r["table"], r["dataset"], r["model"], r["encoder_depth"], r["deep_supervision"], r["metric"])
            for r in rows]
    assert len(set(keys)) == len(keys) == 232
    assert {r["dataset"] for r in rows if r["table"] == 1} == {"isic17", "isic18"}
    assert {r["dataset"] for r in rows if r["table"] in (2, 4, 5)} == set(POLYP_DATASETS)
    assert {r["model"] for r in rows} == set(MODEL_ORDER)
    assert {(r["encoder_depth"], r["deep_supervision"]) for r in rows if r["table"] in (4, 5)} == set(ABLATION_ORDER)
    assert {r["unit"] for r in rows if r["table"] != 3} == {"%"}
    assert all(0 < r["value"] <= 100 for r in rows if r["unit"] == "%")


def test_model_order_is_the_papers_order_on_every_dataset():
    rows = load_paper_results(CSV)
    for table, dataset in {(r["table"], r["dataset"]) for r in rows if r["table"] in (1, 2)}:
        listed = list(dict.fromkeys(r["model"] for r in rows if (r["table"], r["dataset"]) == (table, dataset)))
        assert listed == [m for m in MODEL_ORDER if m in listed], (table, dataset)


def test_spot_values_quoted_in_the_issue():
    paper = paper_lookup(load_paper_results(CSV))
    assert paper[(2, "cvc300", "vmunetv2", "", None, "miou")]["value"] == 89.31
    assert paper[(2, "cvc300", "vmunetv2", "", None, "acc")]["value_text"] == "99.08"
    assert paper[(2, "clinicdb", "vmunetv2", "", None, "acc")]["value_text"] == "99.09"
    assert paper[(5, "cvc300", "vmunetv2", "2-2-9-2", False, "dsc")]["value_text"] == "88.41"
    assert paper[(2, "kvasir", "vmunetv2", "", None, "dsc")]["value_text"] == "91.34"
    assert paper[(4, "kvasir", "vmunetv2", "2-2-9-2", False, "dsc")]["value_text"] == "91.39"
    assert paper[(3, "", "vmunet", "", None, "fps")]["value_text"] == "20.612"


@pytest.mark.skipif(not PAPER_TEXT.exists(), reason=f"paper text not on this machine ({PAPER_TEXT})")
def test_every_cell_matches_the_paper_text():
    parsed = parse_paper_tables(PAPER_TEXT.read_text(encoding="utf-8"))
    assert len(parsed) == 232
    transcribed = {key: row["value_text"] for key, row in paper_lookup(load_paper_results(CSV)).items()}
    assert transcribed == parsed
    assert parsed[(1, "isic18", "attunet", "", None, "sen")] == "87.60"
    assert parsed[(5, "colondb", "vmunetv2", "2-2-2-2", False, "dsc")] == "70.5"


LITERATURE = ROOT / "config" / "literature_results.csv"


def test_literature_results_shape_and_sources():
    values = load_literature_results(LITERATURE)
    assert Counter((v.model, v.reported_in) for v in values) == {
        ("pranet", "Fan et al. 2020"): 30, ("pranet", "Dong et al. 2021"): 35, ("polyp_pvt", "Dong et al. 2021"): 35}
    assert {v.dataset for v in values} == set(POLYP_DATASETS)
    # PraNet's own tables print max E but not mean E; neither paper reports a boundary metric
    assert not [v for v in values if v.reported_in == "Fan et al. 2020" and v.metric == "mean_em"]
    assert not [v for v in values if v.metric in ("hd95", "nsd")]
    for value in values:
        assert ("Table 1" in value.source if value.dataset in ("kvasir", "clinicdb") else "Table 2" in value.source) \
            if value.reported_in == "Fan et al. 2020" else "Polyp-PVT (arXiv:2108.06932), the table" in value.source
        assert re.fullmatch(r"0\.\d{3}", value.value_text), value


def test_literature_spot_values_read_from_the_printed_tables():
    values = {(v.model, v.reported_in, v.dataset, v.metric): v.value_text for v in load_literature_results(LITERATURE)}
    assert values[("pranet", "Fan et al. 2020", "kvasir", "mean_dice")] == "0.898"
    assert values[("pranet", "Fan et al. 2020", "etis", "mean_iou")] == "0.460"  # as printed in PraNet's Table 2
    assert values[("pranet", "Dong et al. 2021", "etis", "mean_iou")] == "0.567"  # Polyp-PVT's reprint differs
    assert values[("pranet", "Dong et al. 2021", "colondb", "mean_dice")] == "0.712"
    assert values[("polyp_pvt", "Dong et al. 2021", "colondb", "mean_dice")] == "0.808"
    assert values[("polyp_pvt", "Dong et al. 2021", "cvc300", "max_em")] == "0.981"
    assert values[("polyp_pvt", "Dong et al. 2021", "clinicdb", "mae")] == "0.006"


def test_a_malformed_literature_row_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "literature.csv"
    lines = LITERATURE.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + [lines[2].replace(",mean_iou,", ",miou,")]) + "\n")
    with pytest.raises(LiteratureResultsError, match=rf"{path}:3: .*metric 'miou'"):
        load_literature_results(path)
