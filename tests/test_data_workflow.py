"""The data rules of workflow/rules/data.smk driven by real Snakemake, archives served on 127.0.0.1.

A tiny Snakefile in tmp includes the real data.smk; SEGBENCH_MIRROR points at the fixture server, so
nothing leaves the machine.
"""
import csv
import json
import subprocess

import numpy as np
import pytest
import yaml
from archive_fixtures import (FIXTURE_COUNTS, encode, gradient_like, isic_challenge_archives, pranet_test_members,
                              pranet_train_members, real_layout_archives, serve, vmunet_isic_members, write_zip)
from conftest import BIN, REPO, tool_env

pytestmark = pytest.mark.slow

DEAD_MIRROR = "http://127.0.0.1:9"
SOME = ("polyp_train", "clinicdb", "kvasir", "isic17")


def _workdir(tmp_path, **data):
    work = tmp_path / "work"
    work.mkdir()
    (work / "Snakefile").write_text(f'configfile: "config.yaml"\ninclude: "{REPO}/workflow/rules/data.smk"\n')
    config = {
        "data": {"source": "real", "root": "data", "val_fraction": 0.1, "split_seed": 0,
                 "isic_split": "vmunet_archive", "urls": {}, "sha256": {},
                 "synthetic": {"seed": 0, "n_train": 12, "n_test": 4, "min_side": 40, "max_side": 72},
                 "expected_counts": dict(FIXTURE_COUNTS), **data},
        "image_size": 32,
        "protocols": {"isic17": {"train": "isic17", "test": ["isic17"]},
                      "isic18": {"train": "isic18", "test": ["isic18"]},
                      "polyp": {"train": "polyp_train", "test": ["kvasir", "clinicdb", "colondb", "etis", "cvc300"]}},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return work


def _env(mirror):
    env = tool_env(SEGBENCH_MIRROR=mirror)
    probe = subprocess.run([str(BIN / "segbench"), "data", "--help"], capture_output=True, env=env)
    if probe.returncode != 0:
        raise AssertionError("`segbench data` is missing from the top-level CLI: segbench/cli.py must call "
                             "segbench.data.cli.add_subparsers(commands)")
    return env


def _snakemake(work, mirror, *targets, expect_ok=True):
    result = subprocess.run([str(BIN / "snakemake"), "--cores", "2", "--keep-going", *targets], cwd=work,
                            env=_env(mirror), capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert (result.returncode == 0) == expect_ok, output[-6000:]
    return output


def _leftovers(work):
    data = work / "data"
    return sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()) if data.exists() else []


def test_real_layouts_download_prepare_split_and_cache(tmp_path):
    served = tmp_path / "served"
    archives = real_layout_archives(served)
    work = _workdir(tmp_path)
    with serve(served) as server:
        server.cuts["TestDataset.zip"] = 1
        _snakemake(work, server.url, *(f"data/cache/{d}_32.npz" for d in SOME))
        assert sorted(server.requests) == sorted(["TestDataset.zip", "TestDataset.zip", "TrainDataset.zip",
                                                  "isic_vmunet.zip"]), "one cut transfer retried, nothing else"
    data = work / "data"
    for name, archive in archives.items():
        assert (data / "raw" / name).read_bytes() == archive.read_bytes()
    assert len((data / "raw" / "sha256.lock").read_text().splitlines()) == 4
    for dataset in SOME:
        count = FIXTURE_COUNTS[dataset]
        report = json.loads((data / "processed" / dataset / "integrity.json").read_text())
        assert report["n_pairs"] == count
        with open(data / "splits" / f"{dataset}.csv") as handle:
            splits = [row["split"] for row in csv.DictReader(handle)]
        assert len(splits) == count
        with np.load(data / "cache" / f"{dataset}_32.npz") as cache:
            assert cache["images"].shape == (count, 32, 32, 3) and list(cache["split"]) == splits
    with open(data / "splits" / "kvasir.csv") as handle:
        assert [row["split"] for row in csv.DictReader(handle)] == ["test", "test"]
    with open(data / "splits" / "isic17.csv") as handle:
        assert [row["split"] for row in csv.DictReader(handle)].count("test") == 2

    check = subprocess.run([str(BIN / "segbench"), "data", "check", "clinicdb", "--root", "data"], cwd=work,
                           env=_env(DEAD_MIRROR), capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "pairs: 2 (expected 2)" in check.stdout and "re-check now: ok" in check.stdout
    assert "Nothing to be done" in _snakemake(work, DEAD_MIRROR, "-n", *(f"data/cache/{d}_32.npz" for d in SOME))


def test_checksum_mismatch_and_dead_connections_leave_nothing_marked_done(tmp_path):
    served = tmp_path / "served"
    real_layout_archives(served)
    work = _workdir(tmp_path, sha256={"TrainDataset.zip": "0" * 64})
    with serve(served) as server:
        server.cuts["TestDataset.zip"] = 99
        output = _snakemake(work, server.url, "data/processed/polyp_train/integrity.json",
                            "data/processed/kvasir/integrity.json", expect_ok=False)
    assert "data/raw/TrainDataset.zip: the file downloaded from" in output
    assert f"data.sha256.TrainDataset.zip in the config expects {'0' * 64}" in output
    assert "could not download TestDataset.zip" in output and "Connection broken" in output
    assert "save it as data/raw/TestDataset.zip" in output
    assert _leftovers(work) == []


def test_hand_placed_archive_is_used_and_a_missing_one_is_named(tmp_path):
    work = _workdir(tmp_path)
    write_zip(work / "data" / "raw" / "TestDataset.zip", pranet_test_members())
    output = _snakemake(work, DEAD_MIRROR, "data/splits/etis.csv", "data/processed/polyp_train/integrity.json",
                        expect_ok=False)
    assert "download_pranet_test" not in output
    assert (work / "data" / "splits" / "etis.csv").exists()
    assert "could not download TrainDataset.zip" in output
    assert "save it as data/raw/TrainDataset.zip (exactly this name)" in output
    assert "https://drive.google.com/file/d/1YiGHLw4iTvKdvbT6MgwO9zcCv8zJ_Bnb/view" in output
    assert not (work / "data" / "processed" / "polyp_train").exists()


def test_bad_archives_stop_preparation_with_the_file_named(tmp_path):
    served = tmp_path / "served"
    test_members = pranet_test_members()
    test_members["TestDataset/../../escaped.png"] = b"x"
    write_zip(served / "TestDataset.zip", test_members)
    train_members = pranet_train_members()
    train_members["TrainDataset/masks/1.png"] = gradient_like(train_members["TrainDataset/masks/1.png"])
    train_members["TrainDataset/masks/2.png"] = encode(np.zeros((9, 9), np.uint8))
    write_zip(served / "TrainDataset.zip", train_members)
    isic_members = vmunet_isic_members()
    del isic_members["data/isic2017/val/masks/ISIC_0000004_segmentation.png"]
    write_zip(served / "isic_vmunet.zip", isic_members)
    work = _workdir(tmp_path)
    with serve(served) as server:
        output = _snakemake(work, server.url, *(f"data/splits/{d}.csv" for d in ("kvasir", "polyp_train", "isic17")),
                            expect_ok=False)
    assert "'TestDataset/../../escaped.png' contains '..' and would escape the target folder" in output
    assert "data/raw/TrainDataset.zip:TrainDataset/masks/1.png: mask is not binary" in output
    assert "data/raw/TrainDataset.zip:TrainDataset/masks/2.png: mask size differs from its image" in output
    assert "data/raw/isic_vmunet.zip:data/isic2017/val/images/ISIC_0000004.png: image has no mask" in output
    assert "nothing was prepared for polyp_train (rule prepare)" in output
    assert not (work / "escaped.png").exists() and not (tmp_path / "escaped.png").exists()
    assert [p for p in _leftovers(work) if not p.startswith("raw/")] == []


def test_official_isic_zips_with_the_seeded_split(tmp_path):
    served = tmp_path / "served"
    isic_challenge_archives(served)
    work = _workdir(tmp_path, isic_split="seeded", expected_counts={"isic17": 10})
    with serve(served) as server:
        _snakemake(work, server.url, "data/cache/isic17_32.npz")
        assert len(server.requests) == 4
    with open(work / "data" / "splits" / "isic17.csv") as handle:
        splits = [row["split"] for row in csv.DictReader(handle)]
    assert {s: splits.count(s) for s in ("train", "val", "test")} == {"train": 6, "val": 1, "test": 3}


def test_synthetic_source_needs_no_archive(tmp_path):
    work = _workdir(tmp_path, source="synthetic")
    output = _snakemake(work, DEAD_MIRROR, "data/cache/isic18_32.npz", "data/cache/cvc300_32.npz")
    assert "download_" not in output
    assert not (work / "data" / "raw").exists()
    with np.load(work / "data" / "cache" / "isic18_32.npz") as cache:
        assert sorted(set(cache["split"])) == ["test", "train", "val"] and len(cache["ids"]) == 16


def test_paper_config_plans_download_prepare_and_split_for_every_dataset(tmp_path):
    result = subprocess.run([str(BIN / "snakemake"), "-n", "-s", str(REPO / "workflow" / "Snakefile"), "-d", str(tmp_path),
                             "--configfile", str(REPO / "config" / "config.yaml")],
                            env=tool_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    counts = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert {"download_pranet_train": 1, "download_pranet_test": 1, "download_isic_vmunet": 1, "prepare": 8,
            "split": 8, "cache": 8}.items() <= counts.items()
