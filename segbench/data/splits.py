"""Split files: ``splits/<dataset>.csv`` with ``id,split,image_sha256,mask_sha256`` (split in train|val|test).

The seeded rule does not depend on any random number generator's stream: ids are ranked by
``sha256("<seed>/<dataset>/<purpose>/<id>")`` and the first ``round(fraction * n)`` of the ranking
are taken. The same ids, seed and fraction give the same split on every machine and version.

- test datasets: every id is ``test``.
- ISIC (7:3): the archive's split when the source has one (VM-UNet's ``train``/``val`` folders,
  ``val`` being their test set), else the seeded rule with a 30 % test share over the sorted ids.
- training sets: a validation subset (``data.val_fraction``, default 10 %) is carved out of the
  training ids by the seeded rule, so no checkpoint is ever chosen on a test set.

A user-supplied file (``id,split``) replaces the rule; it must name every prepared id exactly once.
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from segbench.data.registry import ISIC_TEST_FRACTION, SPLITS, get_dataset
from segbench.io import atomic_write, sha256_file

COLUMNS = ("id", "split", "image_sha256", "mask_sha256")


class SplitError(ValueError):
    """A split cannot be made or a split file is wrong; the message names the file first."""


def round_half_up(value: float) -> int:
    return int(value + 0.5)


def seeded_subset(ids: list[str], fraction: float, seed: int, dataset: str, purpose: str) -> set[str]:
    """``round(fraction * len(ids))`` ids chosen by the seeded hash ranking (at least one when n >= 2)."""
    count = round_half_up(fraction * len(ids))
    if len(ids) >= 2:
        count = min(max(count, 1), len(ids) - 1)
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}/{dataset}/{purpose}/{i}".encode()).hexdigest())
    return set(ranked[:count])


def assign_splits(dataset: str, ids: list[str], source_split: dict[str, str | None],
                  val_fraction: float, seed: int, where: str | Path | None = None) -> dict[str, str]:
    """id -> train|val|test under the dataset's split rule (``where``: the integrity report, for messages)."""
    spec = get_dataset(dataset)
    ids = sorted(ids)
    if spec.split_rule == "test_only":
        return {i: "test" for i in ids}
    if spec.split_rule == "isic_7_3":
        given = {source_split.get(i) for i in ids}
        if given == {"train", "test"}:
            assignment = {i: source_split[i] for i in ids}
        elif given == {None}:
            test = seeded_subset(ids, ISIC_TEST_FRACTION, seed, dataset, "test")
            assignment = {i: "test" if i in test else "train" for i in ids}
        else:
            raise SplitError(f"{where or dataset}: source split labels of {dataset} are wrong (expected all absent "
                             f"or exactly train/test, found {sorted(map(str, given))}); re-prepare the dataset")
    else:
        assignment = {i: "train" for i in ids}
    train = [i for i in ids if assignment[i] == "train"]
    for i in seeded_subset(train, val_fraction, seed, dataset, "val"):
        assignment[i] = "val"
    return assignment


def read_user_split(path: str | Path, ids: list[str], dataset: str) -> dict[str, str]:
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise SplitError(f"{path}: user split file (data.split_files.{dataset}) does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise SplitError(f"{path}: user split file cannot be read (expected a CSV with columns id,split, found "
                         f"{type(error).__name__}: {error})") from None
    if not rows or not {"id", "split"} <= set(rows[0]):
        raise SplitError(f"{path}: wrong columns (expected a CSV with columns id,split, found "
                         f"{list(rows[0]) if rows else 'no rows'}); fix the file named by data.split_files.{dataset}")
    assignment = {}
    for number, row in enumerate(rows, 2):
        identifier, split = row["id"], row["split"]
        if split not in SPLITS:
            raise SplitError(f"{path}:{number}: unknown split for id {identifier!r} (expected one of {SPLITS}, "
                             f"found {split!r}); fix the line")
        if identifier in assignment:
            raise SplitError(f"{path}:{number}: id {identifier!r} appears twice (expected once); remove one line")
        assignment[identifier] = split
    unknown = sorted(set(assignment) - set(ids))
    missing = sorted(set(ids) - set(assignment))
    if unknown or missing:
        raise SplitError(
            f"{path}: does not name every prepared id of {dataset} exactly once (expected {len(ids)} ids, found "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unknown)} unknown (e.g. {unknown[:3]})); fix the file"
        )
    if not get_dataset(dataset).is_training_set and set(assignment.values()) != {"test"}:
        raise SplitError(f"{path}: {dataset} is a test dataset (expected split 'test' on every row, found "
                         f"{sorted(set(assignment.values()))}); fix the file")
    return assignment


def write_split(dataset: str, processed_dir: str | Path, out_path: str | Path, val_fraction: float = 0.1,
                seed: int = 0, user_split: str | Path | None = None) -> dict[str, int]:
    """Write the split file for a prepared dataset; return the count per split."""
    processed_dir = Path(processed_dir)
    report_path = processed_dir / "integrity.json"
    if not report_path.exists():
        raise SplitError(f"{report_path}: missing, so {dataset} is not prepared; run `segbench data prepare {dataset}`")
    items = read_integrity_items(report_path)
    ids = [item["id"] for item in items]
    if user_split:
        assignment = read_user_split(user_split, ids, dataset)
    else:
        assignment = assign_splits(dataset, ids, {item["id"]: item.get("source_split") for item in items},
                                   val_fraction, seed, report_path)
    counts = {split: 0 for split in SPLITS}
    with atomic_write(out_path, newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for identifier in sorted(ids):
            image = processed_dir / "images" / f"{identifier}.png"
            mask = processed_dir / "masks" / f"{identifier}.png"
            for path in (image, mask):
                if not path.exists():
                    raise SplitError(f"{path}: missing (expected it, as {report_path} lists it, found no file); "
                                     f"re-prepare {dataset}")
            writer.writerow([identifier, assignment[identifier], sha256_file(image), sha256_file(mask)])
            counts[assignment[identifier]] += 1
    return counts


def read_split(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.exists():
        raise SplitError(f"{path}: split file does not exist; run `segbench data split` or the snakemake rule split")
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise SplitError(f"{path}: wrong columns (expected {','.join(COLUMNS)}, found {reader.fieldnames}); "
                                 "delete it and re-run the split")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise SplitError(f"{path}: not a split file (expected a CSV with columns {','.join(COLUMNS)}, found "
                         f"{type(error).__name__}: {error}); delete it and re-run the split") from None
    broken = next((number for number, row in enumerate(rows, 2) if None in row.values() or None in row), None)
    if broken is not None:
        raise SplitError(f"{path}:{broken}: wrong number of fields (expected {len(COLUMNS)}); delete the file and "
                         "re-run the split")
    return rows


def read_integrity_items(report_path: str | Path) -> list[dict]:
    """The ``items`` of a prepared dataset's integrity report, with one-line errors naming the report."""
    report_path = Path(report_path)
    advice = "re-prepare the dataset (segbench data prepare)"
    try:
        items = json.loads(report_path.read_text())["items"]
        if not all(isinstance(item, dict) and "id" in item for item in items):
            raise TypeError("items without an id")
        return items
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SplitError(f"{report_path}: not valid JSON (expected an integrity report, found "
                         f"{type(error).__name__}: {error}); {advice}") from None
    except (KeyError, TypeError) as error:
        raise SplitError(f"{report_path}: not a segbench integrity report (expected a list of items with ids, found "
                         f"{type(error).__name__}: {error}); {advice}") from None
