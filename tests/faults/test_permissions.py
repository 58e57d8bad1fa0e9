"""The independent attack on the suite, item 1: permissions. On a cluster's shared filesystem collaborators
must be able to read what segbench writes: every file the real commands write (download, prepare, split,
cache, train) gets the mode ``open()`` would give it under the umask, every folder the mode ``mkdir`` would."""
from __future__ import annotations

import stat

import pytest
from archive_fixtures import pranet_test_members, serve, write_zip

from .helpers import last_lines, segbench, train_args, train_config, with_umask


def wrong_modes(root, umask: int) -> list[str]:
    """Files and folders under ``root`` whose permission bits differ from what the umask gives."""
    wrong = []
    for path in sorted(root.rglob("*")):
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        found = stat.S_IMODE(path.lstat().st_mode)
        if found != expected:
            wrong.append(f"{path.relative_to(root)}: {found:o} (expected {expected:o})")
    return wrong


@pytest.mark.parametrize("umask", [
    pytest.param(0o022, id="umask-022", marks=pytest.mark.fault(
        "outputs on a shared filesystem under umask 022 (temporary files are created 0600 and renamed into place)",
        expected="every file written by `segbench data download/prepare/split/cache` and `segbench train` (archive, "
                 "sha256.lock, images, integrity.json, split, cache, model.pt, checkpoints, manifest, log) is 644, "
                 "every folder 755")),
    pytest.param(0o002, id="umask-002", marks=pytest.mark.fault(
        "outputs on a group-shared filesystem under umask 002",
        expected="every file those commands write is 664 and every folder 775, so the group can read and update them")),
])
def test_outputs_get_the_mode_the_umask_gives(tmp_path, data_root, umask):
    served = tmp_path / "served"
    write_zip(served / "TestDataset.zip", pranet_test_members())
    root = tmp_path / "data"
    umasked = {"cwd": tmp_path, "preexec_fn": with_umask(umask)}
    with serve(served) as server:
        commands = [
            ("data", "download", "TestDataset.zip", "--root", root, "--no-progress", {"SEGBENCH_MIRROR": server.url}),
            ("data", "prepare", "kvasir", "--root", root, "--expected-count", 2, "--no-progress", {}),
            ("data", "split", "kvasir", "--root", root, {}),
            ("data", "cache", "kvasir", "--size", 32, "--root", root, "--no-progress", {}),
        ]
        for *args, env in commands:
            result = segbench(*args, **umasked, **env)
            assert result.returncode == 0, last_lines(result.stderr)
    run = tmp_path / "run"
    config = train_config(tmp_path / "train.yaml", data_root)
    result = segbench(*train_args(config, run), **umasked)
    assert result.returncode == 0, last_lines(result.stderr)

    written = {path.relative_to(tmp_path).as_posix() for path in [*root.rglob("*"), *run.rglob("*")]}
    assert {"data/raw/TestDataset.zip", "data/raw/sha256.lock", "data/processed/kvasir/integrity.json",
            "data/splits/kvasir.csv", "data/cache/kvasir_32.npz", "run/model.pt", "run/manifest.json",
            "run/train_log.csv", "run/checkpoints/last.pt", "run/checkpoints/last.pt.sha256"} <= written
    assert wrong_modes(root, umask) + wrong_modes(run, umask) == []
