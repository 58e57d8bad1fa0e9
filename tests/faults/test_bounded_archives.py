"""The independent attack on the suite, item 2: bounded archives. Archives whose members unpack to more than
the caps (by their headers or while being read), members that do not unpack, and work folders of killed
preparations, through the real `segbench data prepare` (and Snakemake): a one-line error naming the archive
and the member, bounded memory, and nothing half-made in data/processed/."""
from __future__ import annotations

import io
import signal
import subprocess
import sys
import tarfile
import zipfile

import pytest
import yaml
from archive_fixtures import deflated, deflated_zeros, encode, sample_pair, write_raw_zip

from conftest import REPO, run_tool
from segbench.data.archives import MAX_MEMBER_BYTES, MAX_TOTAL_BYTES
from segbench.data.download import read_lock
from segbench.io import sha256_file

from .helpers import (SEGBENCH, error_line, kill_group, last_lines, partial_files, segbench, segbench_peak_memory,
                      start, wait_until)

KVASIR = "TestDataset/Kvasir"
BOMB = f"{KVASIR}/images/cju0bomb.png"
# The CLI with numpy and PIL loaded stays far below this; reading the 1.5 GiB member would not.
MEMORY_BOUND = 1024**3


def mask_member() -> tuple[str, tuple[bytes, int, int]]:
    _, mask = sample_pair(0)
    return f"{KVASIR}/masks/cju0bomb.png", deflated(encode(mask))


def prepare(root, *options, peak_memory=False):
    args = ("data", "prepare", "kvasir", "--root", root, "--no-progress", *options)
    if peak_memory:
        return segbench_peak_memory(*args, cwd=root.parent)
    return segbench(*args, cwd=root.parent)


def assert_nothing_half_made(root) -> None:
    processed = root / "processed"
    assert not (processed / "kvasir").exists(), "an (empty) dataset folder was left in data/processed"
    assert partial_files(root.parent) == []


def placed(root, name="TestDataset.zip"):
    """Where a hand-placed archive goes; data/processed/kvasir exists already, as Snakemake makes it."""
    (root / "processed" / "kvasir").mkdir(parents=True)
    (root / "raw").mkdir(parents=True, exist_ok=True)
    return root / "raw" / name


@pytest.mark.fault(
    "a 1.6 MB zip whose one member unpacks to 1.5 GiB (a zip bomb under the total cap)",
    expected="`segbench data prepare` refuses it from the declared size, before reading it: exit 2, one line "
             "naming the archive, the member, the per-member cap (256 MiB) and --max-member; peak memory well "
             "under 1 GiB; no data/processed/kvasir (not even the empty folder Snakemake makes)",
)
def test_member_over_the_cap_is_refused_before_it_is_read(tmp_path):
    root = tmp_path / "data"
    archive = write_raw_zip(placed(root), [(BOMB, deflated_zeros(1536)), mask_member()])
    assert archive.stat().st_size < 2 * 1024**2

    result, peak = prepare(root, "--expected-count", 1, peak_memory=True)

    message = error_line(result, "data prepare")
    assert message.startswith(f"{archive}: member '{BOMB}' declares {1536 * 1024**2} bytes"), message
    assert f"per-member cap of {MAX_MEMBER_BYTES} bytes" in message and "--max-member" in message, message
    assert peak < MEMORY_BOUND, f"peak memory {peak / 1024**2:.0f} MiB"
    assert_nothing_half_made(root)
    assert "TestDataset.zip" not in read_lock(root / "raw"), "a refused archive's hash was locked"


@pytest.mark.fault(
    "a zip member whose headers declare 1000 bytes but whose data inflates to 1.5 GiB (a lying header), "
    "its archive's sha256 already known so preparation reads it",
    expected="the read stops at the declared size and the CRC check fails: exit 2, one line naming the archive "
             "and the member as corrupt; peak memory well under 1 GiB; nothing in data/processed",
)
def test_member_that_inflates_past_its_header_is_stopped(tmp_path):
    root = tmp_path / "data"
    archive = write_raw_zip(placed(root), [(BOMB, deflated_zeros(1536)), mask_member()], declared={BOMB: 1000})

    result, peak = prepare(root, "--expected-count", 1, "--sha256", f"TestDataset.zip={sha256_file(archive)}",
                           peak_memory=True)

    message = error_line(result, "data prepare")
    assert message.startswith(f"{archive}: member '{BOMB}' is corrupt (expected it to unpack, found BadZipFile: "
                              "Bad CRC-32"), message
    assert peak < MEMORY_BOUND, f"peak memory {peak / 1024**2:.0f} MiB"
    assert_nothing_half_made(root)


@pytest.mark.fault(
    "an archive of 260 members, each under the per-member cap, that unpack to 66 GiB in total",
    expected="`segbench data prepare` refuses it from the declared sizes: exit 2, one line naming the archive, the "
             "total cap (64 GiB) and --max-uncompressed; nothing in data/processed",
)
def test_members_over_the_total_cap_are_refused(tmp_path):
    root = tmp_path / "data"
    member = deflated_zeros(MAX_MEMBER_BYTES // 1024**2 - 1)
    count = MAX_TOTAL_BYTES // member[2] + 3
    archive = write_raw_zip(placed(root), [(f"{KVASIR}/images/z{index}.png", member) for index in range(count)])

    result = prepare(root, "--expected-count", 1)

    message = error_line(result, "data prepare")
    assert message.startswith(f"{archive}: members declare {count * member[2]} bytes"), message
    assert f"over the total cap of {MAX_TOTAL_BYTES} bytes" in message and "--max-uncompressed" in message, message
    assert_nothing_half_made(root)


def kvasir_files(count: int = 2) -> dict[str, bytes]:
    files = {}
    for index in range(count):
        image, mask = sample_pair(index)
        files[f"{KVASIR}/images/cju0{index}.png"] = encode(image)
        files[f"{KVASIR}/masks/cju0{index}.png"] = encode(mask)
    return files


def flip_bytes(data: bytes, start: int, count: int) -> bytes:
    spoiled = bytearray(data)
    spoiled[start : start + count] = bytes(byte ^ 0xFF for byte in spoiled[start : start + count])
    return bytes(spoiled)


def stored_zip_with_a_bad_crc(path, files):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    victim = f"{KVASIR}/images/cju01.png"
    raw = path.read_bytes()
    path.write_bytes(flip_bytes(raw, raw.index(files[victim]) + 100, 4))
    return victim, "is corrupt (expected it to unpack, found BadZipFile: Bad CRC-32"


def zip_with_corrupt_deflate_data(path, files):
    victim = f"{KVASIR}/images/cju01.png"
    members = [(name, deflated(data)) for name, data in files.items()]
    members = [(name, (flip_bytes(data, 2, 12), crc, size) if name == victim else (data, crc, size))
               for name, (data, crc, size) in members]
    write_raw_zip(path, members)
    return victim, "is corrupt (expected it to unpack, found "


def truncated_tar(path, files):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    whole = buffer.getvalue()
    last = list(files)[-1]
    path.write_bytes(whole[: whole.index(files[last]) + len(files[last]) // 2])
    return last, "is cut short or corrupt (expected it to unpack, found ReadError"


@pytest.mark.parametrize("spoil, hash_known", [
    pytest.param(stored_zip_with_a_bad_crc, False, id="bad-crc", marks=pytest.mark.fault(
        "a zip member whose data does not match its CRC-32 (bit rot, a bad copy)",
        expected="`segbench data prepare` exits 2 with one line naming the archive and the member as corrupt; the "
                 "archive's hash is not locked; nothing in data/processed")),
    pytest.param(stored_zip_with_a_bad_crc, True, id="bad-crc-known-hash", marks=pytest.mark.fault(
        "the same bad-CRC member in an archive whose sha256 is given (data.sha256), so only preparation reads it",
        expected="the worker reading the member stops preparation: exit 2, one line naming the archive and the "
                 "member; nothing in data/processed")),
    pytest.param(zip_with_corrupt_deflate_data, False, id="corrupt-deflate", marks=pytest.mark.fault(
        "a zip member whose deflate stream is corrupt",
        expected="`segbench data prepare` exits 2 with one line naming the archive and the member as corrupt; "
                 "nothing in data/processed")),
    pytest.param(truncated_tar, False, id="truncated-tar", marks=pytest.mark.fault(
        "a tar archive cut short in the middle of its last member",
        expected="`segbench data prepare` exits 2 with one line naming the archive and the member that was cut; "
                 "nothing in data/processed")),
])
def test_member_that_does_not_unpack_is_named(tmp_path, spoil, hash_known):
    root = tmp_path / "data"
    archive = placed(root)
    member, reason = spoil(archive, kvasir_files())
    options = ["--sha256", f"TestDataset.zip={sha256_file(archive)}"] if hash_known else []

    result = prepare(root, "--expected-count", 2, *options)

    message = error_line(result, "data prepare")
    assert message.startswith(f"{archive}: member '{member}' {reason}"), message
    assert "download it again" in message and "Nothing was prepared for kvasir" in message, message
    assert_nothing_half_made(root)
    if not hash_known:
        assert "TestDataset.zip" not in read_lock(root / "raw"), "a refused archive's hash was locked"


@pytest.mark.fault(
    "`segbench data prepare` is SIGKILLed while it writes a dataset, leaving .kvasir.partial-<pid>",
    expected="the next preparation removes that folder (its pid is no running process) and keeps the work folder "
             "of a preparation that is still running; the dataset is prepared",
)
def test_work_folder_of_a_killed_preparation_is_removed_by_the_next(tmp_path):
    root = tmp_path / "data"
    processed = root / "processed"
    big = ["data", "prepare", "kvasir", "--source", "synthetic", "--n-test", 200, "--min-side", 256,
           "--max-side", 320, "--root", root, "--no-progress"]
    killed = start([SEGBENCH, *map(str, big)], tmp_path, tmp_path / "killed.log")
    partial = processed / f".kvasir.partial-{killed.pid}"
    wait_until(lambda: partial.exists() and any((partial / "images").glob("*.png")), killed,
               what="the preparation's first image")
    kill_group(killed, signal.SIGKILL)
    assert partial.exists()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        busy = processed / f".kvasir.partial-{running.pid}"
        (busy / "images").mkdir(parents=True)

        result = segbench("data", "prepare", "kvasir", "--source", "synthetic", "--n-test", 4, "--root", root,
                          "--no-progress", cwd=tmp_path)

        assert result.returncode == 0, last_lines(result.stderr)
        assert not partial.exists(), "the killed preparation's work folder is still there"
        assert busy.exists(), "the work folder of a running preparation was removed"
        assert (processed / "kvasir" / "integrity.json").exists()
    finally:
        running.kill()
        running.wait()


@pytest.mark.slow
@pytest.mark.fault(
    "Snakemake's prepare rule runs on a hand-placed zip bomb (Snakemake makes data/processed/kvasir/ first)",
    expected="the job fails with the one-line refusal in its log; data/processed/kvasir does not exist afterwards "
             "and nothing half-made is left",
)
def test_snakemake_prepare_of_a_zip_bomb_leaves_no_dataset_folder(tmp_path):
    work = tmp_path / "work"
    root = work / "data"
    archive = write_raw_zip(root / "raw" / "TestDataset.zip", [(BOMB, deflated_zeros(1536)), mask_member()])
    (work / "Snakefile").write_text(f'configfile: "config.yaml"\ninclude: "{REPO}/workflow/rules/data.smk"\n')
    data = {"source": "real", "root": "data", "val_fraction": 0.1, "split_seed": 0, "isic_split": "vmunet_archive",
            "urls": {}, "sha256": {}, "expected_counts": {"kvasir": 1},
            "synthetic": {"seed": 0, "n_train": 4, "n_test": 4, "min_side": 40, "max_side": 72}}
    (work / "config.yaml").write_text(yaml.safe_dump({"data": data, "image_size": 32, "protocols": {
        "polyp": {"train": "polyp_train", "test": ["kvasir"]}}}))

    result = run_tool([sys.executable, "-m", "snakemake", "--cores", "1", "data/processed/kvasir/integrity.json"],
                      work, check=False)

    output = result.stdout + result.stderr
    assert result.returncode != 0, last_lines(output)
    assert f"segbench data prepare: error: {archive.relative_to(work)}: member '{BOMB}' declares" in output, \
        last_lines(output, 20)
    assert not (root / "processed" / "kvasir").exists()
    assert partial_files(work) == []
