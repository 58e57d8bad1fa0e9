"""config/paper_claims.yaml: quotes against the paper's text, verdicts on the paper's own numbers, and on ours."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from segbench.report.analysis import summarize
from segbench.report.claims import ClaimsError, check_ours, check_paper, contradicting_cells, load_claims
from segbench.report.collect import collect
from segbench.report.paper import load_paper_results, paper_lookup

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ROOT / "config" / "paper_claims.yaml"
PAPER_TEXT = ROOT.parent / "shared" / "paper" / "vm-unetv2-paper.txt"


@pytest.fixture(scope="module")
def claims():
    return {claim.id: claim for claim in load_claims(CLAIMS)}


@pytest.fixture(scope="module")
def paper():
    return paper_lookup(load_paper_results(ROOT / "config" / "paper_results.csv"))


@pytest.mark.skipif(not PAPER_TEXT.exists(), reason=f"paper text not on this machine ({PAPER_TEXT})")
def test_every_quote_is_verbatim_in_the_results_or_ablation_section(claims):
    text = PAPER_TEXT.read_text(encoding="utf-8")
    results_and_ablation = text[text.index("3.3 Results"):text.index("4 Conclusions")]
    for claim in claims.values():
        assert claim.quote in results_and_ablation, claim.id
        section = "3.3" if results_and_ablation.index(claim.quote) < results_and_ablation.index("3.4 Ablation") \
            else "3.4"
        assert claim.section == section, claim.id


def test_the_comparative_sentences_are_all_transcribed(claims):
    assert sorted(claims) == sorted([
        "isic_vmunetv2_best", "polyp_vmunetv2_beats_unetv2", "complexity_flops_best", "complexity_fps_best",
        "depth_2292_better", "depth_large_not_needed", "deep_supervision_mostly_better"])


def test_verdicts_on_the_papers_own_tables_match_a_reading_by_hand(claims, paper):
    # Table 1, ISIC17: UNetV2's Acc 96.78 beats VM-UNetV2's 96.70; every other cell of the claim holds
    verdict, checks = check_paper(claims["isic_vmunetv2_best"], paper)
    assert verdict == "contradicted" and len(checks) == 45
    assert contradicting_cells(claims["isic_vmunetv2_best"], checks) == [
        "ISIC17 Acc, VM-UNetV2 vs UNetV2: 96.70 vs 96.78"]
    # Table 2: "in all metrics" fails on Sen of Kvasir-SEG and ETIS, and on Acc and Spe of CVC-300
    verdict, checks = check_paper(claims["polyp_vmunetv2_beats_unetv2"], paper)
    assert verdict == "contradicted"
    assert contradicting_cells(claims["polyp_vmunetv2_beats_unetv2"], checks) == [
        "Kvasir-SEG Sen, VM-UNetV2 vs UNetV2: 87.71 vs 88.39", "ETIS Sen, VM-UNetV2 vs UNetV2: 88.07 vs 92.96",
        "CVC-300 Acc, VM-UNetV2 vs UNetV2: 99.08 vs 99.34", "CVC-300 Spe, VM-UNetV2 vs UNetV2: 99.38 vs 99.54"]
    # Table 3: lowest FLOPs (4.40 < 5.40, 7.56), but UNetV2 is faster (32.74 FPS vs 32.58)
    assert check_paper(claims["complexity_flops_best"], paper)[0] == "supported"
    verdict, checks = check_paper(claims["complexity_fps_best"], paper)
    assert verdict == "contradicted"
    assert contradicting_cells(claims["complexity_fps_best"], checks) == ["FPS, VM-UNetV2 vs UNetV2: 32.58 vs 32.74"]
    # Tables 4-5: deep supervision is better in 20 of the 30 dataset x metric x depth cells: "most cases" holds
    verdict, checks = check_paper(claims["deep_supervision_mostly_better"], paper)
    assert verdict == "supported" and (sum(c.holds for c in checks), len(checks)) == (20, 30)
    # [2,2,9,2] beats [2,2,27,2] except with deep supervision on ColonDB and ETIS (both metrics)
    verdict, checks = check_paper(claims["depth_large_not_needed"], paper)
    assert verdict == "supported" and (sum(c.holds for c in checks), len(checks)) == (16, 20)


def _write_claims(tmp_path, **changes) -> Path:
    entries = yaml.safe_load(CLAIMS.read_text())
    entries[0].update(changes)
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


@pytest.mark.parametrize("changes, expected", [
    ({"direction": "better"}, "direction 'better'"),
    ({"comparators": ["unet", "convnext"]}, "the model 'convnext'"),
    ({"metrics": ["hd95"]}, "metric 'hd95'"),
    ({"factor": "encoder_depth"}, "the encoder_depth 'vmunetv2'"),
    ({"verdict": "true"}, "expected the keys id, section"),
])
def test_a_malformed_claim_is_an_error_naming_it(tmp_path, changes, expected):
    with pytest.raises(ClaimsError, match=expected) as error:
        load_claims(_write_claims(tmp_path, **changes))
    assert "claim 0 (isic_vmunetv2_best)" in str(error.value)


def test_verdicts_on_our_results(tmp_path, claims):
    from test_report import fabricate

    results_dir, _ = fabricate(tmp_path)
    results = collect(results_dir)
    summaries = summarize(results, 200, 0)
    # fabricated: VM-UNetV2 scores 0.1 above UNetV2 on every image, 12 images, 2 seeds: every tested cell supported,
    # but ClinicDB, ColonDB and ETIS are not test sets here, so the claim on all polyp sets stays inconclusive
    verdict, checks = check_ours(claims["polyp_vmunetv2_beats_unetv2"], results, summaries)
    tested = [c for c in checks if c.tested]
    assert verdict == "inconclusive" and len(tested) == 10 and {c.status for c in tested} == {"supported"}
    assert {c.reason for c in checks if not c.tested} == {"ClinicDB is not a test set here", "ColonDB is not a test "
                                                          "set here", "ETIS is not a test set here"}
    assert all(c.p_holm >= c.p_value for c in tested)
    # FLOPs as counted in results/profile/: the fabricated VM-UNetV2 has more than UNetV2, VM-UNet was not run
    verdict, checks = check_ours(claims["complexity_flops_best"], results, summaries)
    assert verdict == "contradicted" and [c.status for c in checks] == ["contradicted", "inconclusive"]
    assert checks[1].reason == "no complexity profile of VM-UNet"
    # FPS 28 vs 29 is 3.4% apart: timing noise, inconclusive
    assert check_ours(claims["complexity_fps_best"], results, summaries)[1][0].status == "inconclusive"
    # a contradiction: UNetV2 made better than VM-UNetV2 on every Kvasir-SEG image of every seed
    for seed in (0, 1):
        for variant, shift in (("unetv2", 0.25), ("vmunetv2", -0.25)):
            path = results_dir / "polyp" / variant / f"seed{seed}" / "eval" / "kvasir" / "per_image.csv"
            lines = path.read_text().splitlines()
            header = lines[0].split(",")
            rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
            for row in rows:
                row["dice"] = str(min(1.0, max(0.0, float(row["dice"]) + shift)))
            path.write_text("\n".join([lines[0]] + [",".join(row[h] for h in header) for row in rows]) + "\n")
            metrics = results_dir / "polyp" / variant / f"seed{seed}" / "eval" / "kvasir" / "metrics.json"
            data = json.loads(metrics.read_text())
            data["per_image"]["dice_mean"] = sum(float(r["dice"]) for r in rows) / len(rows)
            data["pooled"]["dsc"] = min(1.0, max(0.0, data["pooled"]["dsc"] + shift))
            metrics.write_text(json.dumps(data))
    results = collect(results_dir)
    verdict, checks = check_ours(claims["polyp_vmunetv2_beats_unetv2"], results, summarize(results, 200, 0))
    kvasir_dsc = [c for c in checks if (c.comparison.dataset, c.comparison.metric) == ("kvasir", "dsc")][0]
    assert kvasir_dsc.status == "contradicted" and kvasir_dsc.difference < 0 and not math.isnan(kvasir_dsc.p_holm)
    assert verdict == "contradicted"
