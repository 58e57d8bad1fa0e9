"""Preparation: archives (or the synthetic generator) -> ``processed/<dataset>/{images,masks}/<id>.png``.

One convention for every dataset: lossless RGB PNG images, 0/255 grayscale PNG masks, original
resolution. ``integrity.json`` is written last and is the done-marker: a dataset folder without it
is incomplete. Everything is written into a temporary folder beside the target and renamed at the
end; on any violation the temporary folder (and a stale incomplete target) is removed.

Mask rule: values >= 128 are foreground. A mask whose values are not all 0 or 255 (compression or
resampling artefacts at the border) is thresholded and counted as a warning; a mask where more
than ``MAX_AMBIGUOUS_FRACTION`` of the pixels lie between ``AMBIGUOUS_LOW`` and ``AMBIGUOUS_HIGH``
is not a mask at all (a photo, a probability map) and stops preparation.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import os
import posixpath
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from segbench.data import registry
from segbench.data.parallel import ordered_map
from segbench.io import write_json

MAX_AMBIGUOUS_FRACTION = 0.05
AMBIGUOUS_LOW, AMBIGUOUS_HIGH = 32, 223
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
RULE = "prepare"
PNG_COMPRESSION = 1


class PrepareError(RuntimeError):
    """Preparation found a problem; the message names the file(s), the rule and what to do."""


class _FileProblem(ValueError):
    pass


@dataclasses.dataclass
class Pair:
    """One image and its mask before conversion. Loaders return encoded bytes or a PIL image."""

    id: str
    image_name: str
    mask_name: str
    load_image: Callable[[], bytes | Image.Image]
    load_mask: Callable[[], bytes | Image.Image]
    source_split: str | None = None


def _decode(data: bytes | Image.Image, name: str, what: str) -> Image.Image:
    if isinstance(data, Image.Image):
        return data
    if len(data) == 0:
        raise _FileProblem(f"{what} {name} is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except Exception as error:  # noqa: BLE001 - PIL raises many kinds; tifffile may still read it
        if name.lower().endswith((".tif", ".tiff")):
            try:
                import tifffile

                return Image.fromarray(np.squeeze(tifffile.imread(io.BytesIO(data))))
            except Exception:  # noqa: BLE001 - report PIL's reason below
                pass
        raise _FileProblem(f"{what} {name} cannot be read as an image ({type(error).__name__}: {error})") from None


def _to_8bit(array: np.ndarray) -> tuple[np.ndarray, str | None]:
    if array.dtype == np.uint8:
        return array, None
    if array.dtype == bool:
        return array.astype(np.uint8) * 255, "boolean -> 0/255"
    values = array.astype(np.float64)
    peak = float(values.max()) if values.size else 0.0
    if peak <= 1.0:
        return np.clip(np.rint(values * 255), 0, 255).astype(np.uint8), f"{array.dtype} in [0, 1] -> 0..255"
    if peak <= 255:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8), f"{array.dtype} -> uint8"
    scale = 65535.0 if peak <= 65535 else peak
    return np.clip(np.rint(values * 255 / scale), 0, 255).astype(np.uint8), f"{array.dtype} scaled to 8 bits"


def _image_rgb(image: Image.Image) -> tuple[np.ndarray, str | None]:
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image), None
    if mode in ("RGBA", "LA", "PA"):
        return np.asarray(image.convert("RGB")), f"image {mode} -> RGB (alpha dropped)"
    if mode in ("L", "P", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(image.convert("RGB")), f"image {mode} -> RGB"
    array, _ = _to_8bit(np.asarray(image))
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3]), f"image {mode} -> RGB"


def _mask_gray(mask: Image.Image) -> tuple[np.ndarray, list[str]]:
    notes = []
    mode = mask.mode
    if mode == "1":
        array = np.asarray(mask).astype(np.uint8) * 255
    elif mode == "L":
        array = np.asarray(mask)
    elif mode in ("RGB", "RGBA"):
        rgb = np.asarray(mask)[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            array = np.ascontiguousarray(rgb[..., 0])
            notes.append(f"mask {mode} with equal channels -> one channel")
        else:
            array = np.asarray(mask.convert("L"))
            notes.append(f"mask {mode} (coloured) -> grayscale luminance")
    elif mode in ("P", "PA", "LA"):
        array = np.asarray(mask.convert("L"))
        notes.append(f"mask {mode} -> grayscale")
    else:
        array, note = _to_8bit(np.asarray(mask))
        if array.ndim == 3:
            array = array[..., 0]
        notes.append(f"mask {mode}: {note}")
    if array.size and array.max() == 1:
        array = array * np.uint8(255)
        notes.append("mask 0/1 -> 0/255")
    return array, notes


def _binarize(mask: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """0/255 mask and whether thresholding changed any value."""
    ambiguous = float(((mask >= AMBIGUOUS_LOW) & (mask <= AMBIGUOUS_HIGH)).mean())
    if ambiguous > MAX_AMBIGUOUS_FRACTION:
        raise _FileProblem(
            f"mask {name} is not binary: {ambiguous:.1%} of its pixels lie between {AMBIGUOUS_LOW} and "
            f"{AMBIGUOUS_HIGH} (at most {MAX_AMBIGUOUS_FRACTION:.0%} allowed for border artefacts); "
            "expected a 0/255 mask. Is this file an image or a probability map placed among the masks?"
        )
    binary = np.where(mask >= 128, 255, 0).astype(np.uint8)
    return binary, bool((binary != mask).any())


def _convert(pair: Pair) -> tuple[np.ndarray, np.ndarray, dict]:
    image, image_note = _image_rgb(_decode(pair.load_image(), pair.image_name, "image"))
    mask, mask_notes = _mask_gray(_decode(pair.load_mask(), pair.mask_name, "mask"))
    if image.shape[:2] != mask.shape:
        raise _FileProblem(
            f"mask {pair.mask_name} is {mask.shape[1]}x{mask.shape[0]} (width x height) but its image "
            f"{pair.image_name} is {image.shape[1]}x{image.shape[0]}; every mask must have its image's size"
        )
    if image.size == 0:
        raise _FileProblem(f"image {pair.image_name} has no pixels")
    mask, thresholded = _binarize(mask, pair.mask_name)
    notes = ([image_note] if image_note else []) + mask_notes
    record = {
        "id": pair.id,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "source_split": pair.source_split,
        "image": pair.image_name,
        "mask": pair.mask_name,
        "foreground_fraction": round(float((mask > 0).mean()), 6),
        "thresholded": thresholded,
        "notes": notes,
    }
    return image, mask, record


def _fail(dataset: str, problems: list[str], advice: str) -> PrepareError:
    shown = problems[:20]
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return PrepareError(
        f"rule {RULE} ({dataset}): {len(problems)} problem(s); nothing was prepared:\n  "
        + "\n  ".join(shown) + more + f"\n{advice}"
    )


def _discard(temporary: Path | None, target: Path) -> None:
    """Remove the work folder, and a target left incomplete by an earlier run (it has no done-marker)."""
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
    if target.exists() and not (target / "integrity.json").exists():
        shutil.rmtree(target, ignore_errors=True)


def _swap_into_place(temporary: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(temporary, target)
    shutil.rmtree(old, ignore_errors=True)


def write_processed(
    dataset: str,
    pairs: list[Pair],
    out_dir: str | Path,
    expected_count: int | None,
    report: dict,
    advice: str,
    progress: bool = True,
    workers: int = 1,
) -> dict:
    """Check and convert ``pairs``, write the dataset folder atomically, return the integrity report."""
    target = Path(out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        if expected_count is not None and len(pairs) != expected_count:
            raise _fail(dataset, [
                f"found {len(pairs)} image/mask pairs, expected {expected_count} "
                "(segbench/data/registry.py or data.expected_counts in the config)"
            ], advice)
        (temporary / "images").mkdir(parents=True)
        (temporary / "masks").mkdir()
        problems, items = [], []
        conversions = collections.Counter()

        def convert_and_write(pair: Pair):
            try:
                image, mask, record = _convert(pair)
            except _FileProblem as problem:
                return str(problem)
            Image.fromarray(image).save(temporary / "images" / f"{pair.id}.png", compress_level=PNG_COMPRESSION)
            Image.fromarray(mask).save(temporary / "masks" / f"{pair.id}.png", compress_level=PNG_COMPRESSION)
            return record

        for result in ordered_map(convert_and_write, pairs, workers, f"prepare {dataset}", progress):
            if isinstance(result, str):
                problems.append(result)
            else:
                conversions.update(result["notes"])
                items.append(result)
        if problems:
            raise _fail(dataset, problems, advice)
        report = _summarise(dataset, items, conversions, expected_count, report)
        write_json(temporary / "integrity.json", report)
        _swap_into_place(temporary, target)
        return report
    except OSError as error:
        _discard(temporary, target)
        raise PrepareError(
            f"rule {RULE} ({dataset}): could not write {target}: {error.strerror or error}; nothing was prepared. "
            "Free disk space and rerun."
        ) from error
    except BaseException:
        _discard(temporary, target)
        raise


def _summarise(dataset: str, items: list[dict], conversions, expected_count, report: dict) -> dict:
    import segbench

    items = sorted(items, key=lambda item: item["id"])
    heights = [item["height"] for item in items]
    widths = [item["width"] for item in items]
    empty = [item["id"] for item in items if item["foreground_fraction"] == 0]
    thresholded = [item["id"] for item in items if item["thresholded"]]
    by_split = collections.Counter(item["source_split"] for item in items if item["source_split"])
    warnings = list(report.pop("warnings", []))
    if thresholded:
        warnings.append(f"{len(thresholded)} mask(s) had values other than 0/255 and were thresholded at 128")
    if empty:
        warnings.append(f"{len(empty)} mask(s) are empty (no foreground pixel)")
    spec = registry.get_dataset(dataset)
    return {
        "dataset": dataset,
        "title": spec.title,
        "terms": spec.terms,
        "segbench_version": segbench.__version__,
        "rule": RULE,
        **report,
        "n_pairs": len(items),
        "expected_count": expected_count,
        "counts_by_source_split": dict(sorted(by_split.items())),
        "height_range": [min(heights), max(heights)],
        "width_range": [min(widths), max(widths)],
        "checks": [
            "every image has exactly one mask, paired by id",
            "no file names differing only in case",
            "no empty (0-byte) or unreadable file",
            "every mask has the size of its image",
            f"masks binary after thresholding at 128 (at most {MAX_AMBIGUOUS_FRACTION:.0%} ambiguous pixels)",
            "pair count matches the registry" if expected_count is not None else "pair count not checked",
        ],
        "n_empty_masks": len(empty),
        "empty_mask_ids": empty,
        "n_masks_thresholded": len(thresholded),
        "thresholded_mask_ids": thresholded,
        "conversions": dict(sorted(conversions.items())),
        "warnings": warnings,
        "items": items,
    }


# --- real archives ----------------------------------------------------------------------------


def _folder_matches(folder: str, suffix: str) -> bool:
    return folder == suffix or folder.endswith("/" + suffix)


def _find_files(reader, archive_name: str, suffix: str, dataset: str, advice: str) -> tuple[dict[str, str], str]:
    """Members directly inside the one folder of the archive that ends with ``suffix``."""
    by_folder: dict[str, list[str]] = collections.defaultdict(list)
    for name in reader.files:
        folder = posixpath.dirname(name)
        if _folder_matches(folder, suffix):
            by_folder[folder].append(name)
    if not by_folder:
        raise _fail(dataset, [f"{archive_name} has no folder '{suffix}/' (is it the right archive?)"], advice)
    if len(by_folder) > 1:
        raise _fail(dataset, [f"{archive_name} has several folders ending in '{suffix}/': {sorted(by_folder)}"], advice)
    folder, names = next(iter(by_folder.items()))
    return {posixpath.basename(name): name for name in names}, folder


def _case_collisions(names: Iterable[str], where: str) -> list[str]:
    seen: dict[str, str] = {}
    problems = []
    for name in sorted(names):
        other = seen.setdefault(name.lower(), name)
        if other != name:
            problems.append(f"{where}: file names {other!r} and {name!r} differ only in case")
    return problems


def _pair_group(group: registry.Group, readers: dict, dataset: str, advice: str):
    """Pairs of one image/mask folder pair, the ignored members, and the problems found."""
    images, image_folder = _find_files(readers[group.image_archive], group.image_archive, group.image_dir, dataset, advice)
    masks, mask_folder = _find_files(readers[group.mask_archive], group.mask_archive, group.mask_dir, dataset, advice)
    where_images = f"{group.image_archive}:{image_folder}/"
    where_masks = f"{group.mask_archive}:{mask_folder}/"
    problems = _case_collisions(images, where_images) + _case_collisions(masks, where_masks)
    ignored = []
    image_by_id: dict[str, list[str]] = collections.defaultdict(list)
    for base, member in images.items():
        stem, extension = posixpath.splitext(base)
        if extension.lower() in registry.IMAGE_EXTENSIONS and re.fullmatch(group.image_pattern, stem):
            image_by_id[stem].append(member)
        else:
            ignored.append(f"{group.image_archive}:{member}")
    mask_by_id: dict[str, list[str]] = collections.defaultdict(list)
    for base, member in masks.items():
        stem, extension = posixpath.splitext(base)
        if extension.lower() not in registry.MASK_EXTENSIONS:
            ignored.append(f"{group.mask_archive}:{member}")
            continue
        if group.mask_suffix and stem.endswith(group.mask_suffix):
            stem = stem[: -len(group.mask_suffix)]
        mask_by_id[stem].append(member)
    pairs = []
    for identifier in sorted(set(image_by_id) | set(mask_by_id)):
        found_images, found_masks = image_by_id.get(identifier, []), mask_by_id.get(identifier, [])
        if len(found_images) > 1:
            problems.append(f"{where_images}: several images for id {identifier!r}: {sorted(found_images)}")
        if len(found_masks) > 1:
            problems.append(f"{where_masks}: several masks for id {identifier!r}: {sorted(found_masks)}")
        if not found_masks:
            problems.append(f"image {group.image_archive}:{found_images[0]} has no mask in {where_masks}")
            continue
        if not found_images:
            problems.append(f"mask {group.mask_archive}:{found_masks[0]} has no image in {where_images}")
            continue
        if not SAFE_ID.fullmatch(identifier):
            problems.append(f"image {group.image_archive}:{found_images[0]}: id {identifier!r} is not a safe file name")
            continue
        image_reader, mask_reader = readers[group.image_archive], readers[group.mask_archive]
        image_member, mask_member = found_images[0], found_masks[0]
        pairs.append(Pair(
            identifier,
            f"{group.image_archive}:{image_member}",
            f"{group.mask_archive}:{mask_member}",
            lambda r=image_reader, m=image_member: r.read(m),
            lambda r=mask_reader, m=mask_member: r.read(m),
            group.source_split,
        ))
    return pairs, ignored, problems


def collect_pairs(dataset: str, source: registry.Source, readers: dict, advice: str):
    pairs, ignored, problems = [], [], []
    for group in source.groups:
        group_pairs, group_ignored, group_problems = _pair_group(group, readers, dataset, advice)
        pairs += group_pairs
        ignored += group_ignored
        problems += group_problems
    problems += [
        f"id {identifier!r} appears in more than one folder of the source"
        for identifier, count in collections.Counter(pair.id for pair in pairs).items() if count > 1
    ]
    problems += _case_collisions({pair.id for pair in pairs}, f"{dataset} ids")
    if problems:
        raise _fail(dataset, problems, advice)
    return sorted(pairs, key=lambda pair: pair.id), ignored


def prepare_real(
    dataset: str,
    raw_dir: str | Path,
    out_dir: str | Path,
    isic_split: str = "vmunet_archive",
    known_hashes: dict[str, str] | None = None,
    expected_count: int | None = None,
    max_uncompressed: int | None = None,
    progress: bool = True,
    workers: int = 1,
) -> dict:
    """Prepare ``dataset`` from its archives in ``raw_dir`` (verified against the known or locked hashes)."""
    from segbench.data.archives import DEFAULT_MAX_UNCOMPRESSED, ArchiveReader, ArchiveReadError, UnsafeArchiveError
    from segbench.data.download import DownloadError, verify_archive

    raw_dir = Path(raw_dir)
    spec = registry.get_dataset(dataset)
    source = spec.sources[registry.source_name(dataset, isic_split)]
    advice = (
        f"The archive(s) {', '.join(str(raw_dir / name) for name in source.archives)} do not hold {dataset} as "
        "expected. Delete the archive and download it again (snakemake or `segbench data download`), or place "
        "a good copy there by hand (docs/data.md)."
    )
    readers, hashes = {}, {}
    try:
        for name in source.archives:
            try:
                hashes[name] = verify_archive(raw_dir / name, known_hashes or {})
                readers[name] = ArchiveReader(raw_dir / name, max_uncompressed or DEFAULT_MAX_UNCOMPRESSED)
            except (DownloadError, ArchiveReadError, UnsafeArchiveError) as error:
                raise PrepareError(f"rule {RULE} ({dataset}): {error}") from None
        pairs, ignored = collect_pairs(dataset, source, readers, advice)
        expected = source.expected_count if expected_count is None else expected_count
        warnings = _split_count_warnings(source, pairs, expected_count)
        report = {
            "source": source.name,
            "archives": hashes,
            "n_ignored_files": len(ignored),
            "ignored_files_examples": ignored[:20],
            "warnings": warnings,
        }
        return write_processed(dataset, pairs, out_dir, expected, report, advice, progress, workers)
    except BaseException:
        _discard(None, Path(out_dir))
        raise
    finally:
        for reader in readers.values():
            reader.close()


def _split_count_warnings(source: registry.Source, pairs: list[Pair], override: int | None) -> list[str]:
    if not source.expected_split_counts or override is not None:
        return []
    found = collections.Counter(pair.source_split for pair in pairs)
    return [
        f"the archive's {split} part has {found.get(split, 0)} pairs; the papers report {count} (unverified)"
        for split, count in source.expected_split_counts.items()
        if found.get(split, 0) != count
    ]


def prepare_synthetic(dataset: str, settings, out_dir: str | Path, progress: bool = True) -> dict:
    from segbench.data.synthetic import generate, synthetic_count

    pairs = [
        Pair(identifier, f"synthetic:{identifier}", f"synthetic:{identifier}",
             lambda image=image: Image.fromarray(image), lambda mask=mask: Image.fromarray(mask))
        for identifier, image, mask in generate(dataset, settings)
    ]
    report = {"source": "synthetic", "synthetic": dataclasses.asdict(settings), "archives": {}}
    advice = "The synthetic generator produced a bad pair; this is a bug in segbench/data/synthetic.py."
    return write_processed(dataset, pairs, out_dir, synthetic_count(dataset, settings), report, advice, progress)
