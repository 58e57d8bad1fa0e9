"""Dataset registry: where every dataset comes from, how its files pair up, and how it is split.

Facts (archive names, Google Drive ids, layouts, counts) come from
``shared/reference/reference-facts.md`` section 7. Counts marked unverified are compared with a
warning only; verified counts stop preparation on a mismatch.
"""
from __future__ import annotations

import dataclasses

DATASET_NAMES = ("isic17", "isic18", "polyp_train", "kvasir", "clinicdb", "colondb", "etis", "cvc300")
TRAIN_DATASETS = ("isic17", "isic18", "polyp_train")
SPLITS = ("train", "val", "test")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif")

ISIC_BASE_URL = "https://isic-challenge-data.s3.amazonaws.com"


@dataclasses.dataclass(frozen=True)
class Archive:
    """One file in ``data/raw/``, and the places it can be fetched from."""

    name: str
    drive_id: str | None = None
    url: str | None = None
    approx_size: str = "unknown"
    origin: str = ""

    @property
    def default_url(self) -> str:
        if self.url:
            return self.url
        return f"https://drive.google.com/uc?id={self.drive_id}"

    @property
    def manual_url(self) -> str:
        """Where a person with a browser gets the file."""
        if self.drive_id:
            return f"https://drive.google.com/file/d/{self.drive_id}/view"
        return self.url or ""

    @property
    def rule_name(self) -> str:
        return "download_" + self.key

    @property
    def key(self) -> str:
        return ARCHIVE_KEYS[self.name]


@dataclasses.dataclass(frozen=True)
class Group:
    """Image/mask pairs found in one folder pair of an archive.

    ``image_dir``/``mask_dir`` are matched as path suffixes of the archive members' folders, so
    an extra top-level folder in an archive does not matter. Images pair with masks by id: the
    image's file stem, and the mask's stem with ``mask_suffix`` removed.
    """

    image_archive: str
    image_dir: str
    mask_archive: str
    mask_dir: str
    source_split: str | None = None
    image_pattern: str = r"[^/]+"
    mask_suffix: str = ""


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    groups: tuple[Group, ...]
    expected_count: int
    expected_split_counts: dict | None = None
    split_counts_verified: bool = True

    @property
    def archives(self) -> tuple[str, ...]:
        names = []
        for group in self.groups:
            for name in (group.image_archive, group.mask_archive):
                if name not in names:
                    names.append(name)
        return tuple(names)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """``split_rule``: ``train_val`` (all train, val carved out), ``test_only``, or ``isic_7_3``
    (the archive's 7:3 split when the source has one, else a seeded 7:3 split; val carved out of
    train)."""

    name: str
    kind: str
    title: str
    split_rule: str
    sources: dict[str, Source]
    terms: str

    @property
    def is_training_set(self) -> bool:
        return self.split_rule != "test_only"


PRANET_TRAIN = Archive(
    "TrainDataset.zip",
    drive_id="1YiGHLw4iTvKdvbT6MgwO9zcCv8zJ_Bnb",
    approx_size="399.5 MB",
    origin="PraNet README (DengPingFan/PraNet), training set: 900 Kvasir-SEG + 550 CVC-ClinicDB",
)
PRANET_TEST = Archive(
    "TestDataset.zip",
    drive_id="1Y2z7FD5p5y31vkZwQQomXFRB0HutHyao",
    approx_size="327.2 MB",
    origin="PraNet README, the five polyp test sets",
)
VMUNET_ISIC = Archive(
    "isic_vmunet.zip",
    drive_id="1XM10fmAXndVLtXWOt5G0puYSQyI2veWy",
    approx_size="not published (ISIC 2017 and 2018, 7:3, PNG)",
    origin="VM-UNet README, ISIC 2017 and 2018 split 7:3 (isic2017/, isic2018/)",
)


def _isic(year: str, name: str) -> Archive:
    size = "several GB" if ("Data" in name or "Input" in name) else "a few MB"
    return Archive(name, url=f"{ISIC_BASE_URL}/{year}/{name}", approx_size=f"{size}, not recorded here",
                   origin=f"ISIC {year} challenge, official archive")


ISIC_CHALLENGE = (
    _isic("2017", "ISIC-2017_Training_Data.zip"),
    _isic("2017", "ISIC-2017_Training_Part1_GroundTruth.zip"),
    _isic("2017", "ISIC-2017_Validation_Data.zip"),
    _isic("2017", "ISIC-2017_Validation_Part1_GroundTruth.zip"),
    _isic("2018", "ISIC2018_Task1-2_Training_Input.zip"),
    _isic("2018", "ISIC2018_Task1_Training_GroundTruth.zip"),
    _isic("2018", "ISIC2018_Task1-2_Validation_Input.zip"),
    _isic("2018", "ISIC2018_Task1_Validation_GroundTruth.zip"),
)

ARCHIVES: dict[str, Archive] = {a.name: a for a in (PRANET_TRAIN, PRANET_TEST, VMUNET_ISIC, *ISIC_CHALLENGE)}
ARCHIVE_KEYS = {
    "TrainDataset.zip": "pranet_train",
    "TestDataset.zip": "pranet_test",
    "isic_vmunet.zip": "isic_vmunet",
    "ISIC-2017_Training_Data.zip": "isic2017_train_images",
    "ISIC-2017_Training_Part1_GroundTruth.zip": "isic2017_train_masks",
    "ISIC-2017_Validation_Data.zip": "isic2017_val_images",
    "ISIC-2017_Validation_Part1_GroundTruth.zip": "isic2017_val_masks",
    "ISIC2018_Task1-2_Training_Input.zip": "isic2018_train_images",
    "ISIC2018_Task1_Training_GroundTruth.zip": "isic2018_train_masks",
    "ISIC2018_Task1-2_Validation_Input.zip": "isic2018_val_images",
    "ISIC2018_Task1_Validation_GroundTruth.zip": "isic2018_val_masks",
}

ISIC_ID = r"ISIC_\d{7}"
ISIC_TERMS = "ISIC Archive, CC BY-NC 4.0 (non-commercial, attribution); cite the ISIC challenge papers"
POLYP_TERMS = "research and educational use only, cite the dataset paper; no redistribution"


def _vmunet_source(folder: str, total: int, train: int, test: int) -> Source:
    return Source(
        "vmunet_archive",
        groups=(
            Group("isic_vmunet.zip", f"{folder}/train/images", "isic_vmunet.zip", f"{folder}/train/masks",
                  source_split="train", mask_suffix="_segmentation"),
            Group("isic_vmunet.zip", f"{folder}/val/images", "isic_vmunet.zip", f"{folder}/val/masks",
                  source_split="test", mask_suffix="_segmentation"),
        ),
        expected_count=total,
        expected_split_counts={"train": train, "test": test},
        split_counts_verified=False,
    )


def _challenge_source(parts: list[tuple[str, str, str, str]], total: int) -> Source:
    groups = tuple(
        Group(images, images_dir, masks, masks_dir, image_pattern=ISIC_ID, mask_suffix="_segmentation")
        for images, images_dir, masks, masks_dir in parts
    )
    return Source("isic_challenge", groups=groups, expected_count=total)


def _pranet_test(folder: str, count: int) -> dict[str, Source]:
    group = Group("TestDataset.zip", f"TestDataset/{folder}/images", "TestDataset.zip", f"TestDataset/{folder}/masks")
    return {"pranet": Source("pranet", groups=(group,), expected_count=count)}


DATASETS: dict[str, Dataset] = {
    "isic17": Dataset(
        "isic17", "isic", "ISIC 2017 (7:3)", "isic_7_3",
        {
            "vmunet_archive": _vmunet_source("isic2017", 2150, 1500, 650),
            "isic_challenge": _challenge_source([
                ("ISIC-2017_Training_Data.zip", "ISIC-2017_Training_Data",
                 "ISIC-2017_Training_Part1_GroundTruth.zip", "ISIC-2017_Training_Part1_GroundTruth"),
                ("ISIC-2017_Validation_Data.zip", "ISIC-2017_Validation_Data",
                 "ISIC-2017_Validation_Part1_GroundTruth.zip", "ISIC-2017_Validation_Part1_GroundTruth"),
            ], 2150),
        },
        ISIC_TERMS,
    ),
    "isic18": Dataset(
        "isic18", "isic", "ISIC 2018 (7:3)", "isic_7_3",
        {
            "vmunet_archive": _vmunet_source("isic2018", 2694, 1886, 808),
            "isic_challenge": _challenge_source([
                ("ISIC2018_Task1-2_Training_Input.zip", "ISIC2018_Task1-2_Training_Input",
                 "ISIC2018_Task1_Training_GroundTruth.zip", "ISIC2018_Task1_Training_GroundTruth"),
                ("ISIC2018_Task1-2_Validation_Input.zip", "ISIC2018_Task1-2_Validation_Input",
                 "ISIC2018_Task1_Validation_GroundTruth.zip", "ISIC2018_Task1_Validation_GroundTruth"),
            ], 2694),
        },
        ISIC_TERMS,
    ),
    "polyp_train": Dataset(
        "polyp_train", "polyp", "PraNet training set (900 Kvasir-SEG + 550 CVC-ClinicDB)", "train_val",
        {"pranet": Source("pranet", groups=(
            Group("TrainDataset.zip", "TrainDataset/images", "TrainDataset.zip", "TrainDataset/masks"),
        ), expected_count=1450)},
        "Kvasir-SEG and CVC-ClinicDB terms: " + POLYP_TERMS,
    ),
    "kvasir": Dataset("kvasir", "polyp", "Kvasir-SEG test (PraNet)", "test_only", _pranet_test("Kvasir", 100),
                      "Kvasir-SEG: " + POLYP_TERMS),
    "clinicdb": Dataset("clinicdb", "polyp", "CVC-ClinicDB test (PraNet)", "test_only",
                        _pranet_test("CVC-ClinicDB", 62), "CVC-ClinicDB: " + POLYP_TERMS),
    "colondb": Dataset("colondb", "polyp", "CVC-ColonDB (PraNet)", "test_only", _pranet_test("CVC-ColonDB", 380),
                       "CVC-ColonDB: " + POLYP_TERMS),
    "etis": Dataset("etis", "polyp", "ETIS-LaribPolypDB (PraNet)", "test_only",
                    _pranet_test("ETIS-LaribPolypDB", 196), "ETIS-LaribPolypDB: " + POLYP_TERMS),
    "cvc300": Dataset("cvc300", "polyp", "CVC-300 / EndoScene test (PraNet)", "test_only",
                      _pranet_test("CVC-300", 60), "CVC-300 (EndoScene): " + POLYP_TERMS),
}

ISIC_TEST_FRACTION = 0.3


def get_dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}") from None


def source_name(dataset: str, isic_split: str = "vmunet_archive") -> str:
    """The real source a dataset is prepared from under the ``data.isic_split`` setting."""
    spec = get_dataset(dataset)
    if spec.kind == "isic":
        return "vmunet_archive" if isic_split == "vmunet_archive" else "isic_challenge"
    return "pranet"


def archives_for(dataset: str, isic_split: str = "vmunet_archive") -> tuple[str, ...]:
    """Archive file names (in ``data/raw/``) that preparing ``dataset`` from real data needs."""
    return get_dataset(dataset).sources[source_name(dataset, isic_split)].archives


def get_archive(name: str) -> Archive:
    try:
        return ARCHIVES[name]
    except KeyError:
        raise KeyError(f"unknown archive {name!r}; known: {', '.join(ARCHIVES)}") from None
