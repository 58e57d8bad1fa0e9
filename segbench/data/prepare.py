"""Preparation: archives (or the synthetic generator) -> ``processed/<dataset>/{images,masks}/<id>.png``.

One convention for every dataset: lossless RGB PNG images, 0/255 grayscale PNG masks, original
resolution. ``integrity.json`` is written last and is the done-marker: a dataset folder without it
is incomplete. Everything is written into a temporary folder beside the target and renamed at the
end; on any violation the temporary folder (and a stale incomplete target) is removed.

Mask rule: values >= 128 are foreground. A mask whose values are not all 0 or 255 (compression or
resampling artefacts at the border) is thresholded and counted as a warning; a mask where more
than ``MAX_AMBIGUOUS_FRACTION`` of the pixels lie between ``AMBIGUOUS_LOW`` and ``AMBIGUOUS_HIGH``
is not a mask at all (a photo, a probability map) and stops preparation.

Every problem is reported on one line that starts with the offending file (``<archive>:<member>``
for a file inside an archive): ``<file>: <what is wrong> (expected ..., found ...); <what to do>``,
followed by a count and a summary of the other problems found. The work folder of a preparation
that was killed (``.<dataset>.partial-<pid>``, ``.<dataset>.old-<pid>``) is removed by the next one
once no process has that pid.
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


MORE_PROBLEMS_SHOWN = 5
STALE_WORK = re.compile(r"\.(?P<dataset>.+)\.(?:partial|old)-(?P<pid>\d+)")


class PrepareError(RuntimeError):
    """Preparation found a problem; the message names the file first, then what is wrong and what to do."""


class _FileProblem(ValueError):
    """One bad file: ``<file>: <what is wrong>``; ``todo`` replaces the dataset's advice when given."""

    def __init__(self, file: str, what: str, todo: str | None = None):
        super().__init__(f"{file}: {what}")
        self.file, self.what, self.todo = file, what, todo


@dataclasses.dataclass
class Pair:
    """One image and its mask before conversion. Loaders return encoded bytes or a PIL image."""

    id: str
    image_name: str
    mask_name: str
    load_image: Callable[[], bytes | Image.Image]
    load_mask: Callable[[], bytes | Image.Image]
    source_split: str | None = None
    folder: str = ""  # where ``image_name`` and ``mask_name`` are (data/raw), for messages

    def where(self, name: str) -> str:
        return f"{self.folder}/{name}" if self.folder else name


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _decode(data: bytes | Image.Image, name: str, what: str) -> Image.Image:
    if isinstance(data, Image.Image):
        return data
    if len(data) == 0:
        raise _FileProblem(name, f"{what} is empty (expected an encoded image, found 0 bytes)")
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
        raise _FileProblem(name, f"{what} cannot be decoded (expected PNG, JPEG, BMP or TIFF, found "
                                 f"{type(error).__name__}: {_one_line(error)})") from None


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
            name, f"mask is not binary (expected 0/255 with at most {MAX_AMBIGUOUS_FRACTION:.0%} of the pixels "
                  f"between {AMBIGUOUS_LOW} and {AMBIGUOUS_HIGH} from border artefacts, found {ambiguous:.1%})",
            "is it an image or a probability map placed among the masks? Replace it with the 0/255 mask",
        )
    binary = np.where(mask >= 128, 255, 0).astype(np.uint8)
    return binary, bool((binary != mask).any())


def _convert(pair: Pair) -> tuple[np.ndarray, np.ndarray, dict]:
    image_file, mask_file = pair.where(pair.image_name), pair.where(pair.mask_name)
    image, image_note = _image_rgb(_decode(pair.load_image(), image_file, "image"))
    mask, mask_notes = _mask_gray(_decode(pair.load_mask(), mask_file, "mask"))
    if image.shape[:2] != mask.shape:
        raise _FileProblem(
            mask_file, f"mask size differs from its image {image_file} (expected {image.shape[1]}x{image.shape[0]} "
                       f"(width x height), found {mask.shape[1]}x{mask.shape[0]})",
            "every mask must have its image's size: replace the mask",
        )
    if image.size == 0:
        raise _FileProblem(image_file, f"image has no pixels (expected at least one, found "
                                       f"{image.shape[1]}x{image.shape[0]})")
    mask, thresholded = _binarize(mask, mask_file)
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


def _fail(dataset: str, problems: list[_FileProblem], advice: str) -> PrepareError:
    """One line: the first problem in full, what to do, then a summary of the others."""
    first, others = problems[0], problems[1:]
    more = ""
    if others:
        shown = "; ".join(str(problem) for problem in others[:MORE_PROBLEMS_SHOWN])
        ellipsis = "; ..." if len(others) > MORE_PROBLEMS_SHOWN else ""
        more = f" ({len(others)} more problem(s): {shown}{ellipsis})"
    return PrepareError(f"{first}; {first.todo or advice}; nothing was prepared for {dataset} (rule {RULE}){more}")


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_work(target: Path) -> None:
    """Work folders of preparations of ``target`` that were killed (their pid is no running process)."""
    for path in target.parent.glob(f".{target.name}.*-*"):
        match = STALE_WORK.fullmatch(path.name)
        if match and match["dataset"] == target.name and not _process_running(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)


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
    source: str = "the source",
) -> dict:
    """Check and convert ``pairs``, write the dataset folder atomically, return the integrity report.
    ``source`` names where the pairs come from (the archives) for a count that does not match."""
    target = Path(out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work(target)
    temporary = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        if expected_count is not None and len(pairs) != expected_count:
            raise _fail(dataset, [_FileProblem(
                source, f"wrong number of image/mask pairs for {dataset} (expected {expected_count}, from "
                        f"segbench/data/registry.py or data.expected_counts in the config, found {len(pairs)})",
                f"if this is the source you want, set data.expected_counts.{dataset}: {len(pairs)} in the config "
                f"(--expected-count {len(pairs)}); else replace it",
            )], advice)
        (temporary / "images").mkdir(parents=True)
        (temporary / "masks").mkdir()
        problems, items = [], []
        conversions = collections.Counter()

        def convert_and_write(pair: Pair):
            try:
                image, mask, record = _convert(pair)
            except _FileProblem as problem:
                return problem
            Image.fromarray(image).save(temporary / "images" / f"{pair.id}.png", compress_level=PNG_COMPRESSION)
            Image.fromarray(mask).save(temporary / "masks" / f"{pair.id}.png", compress_level=PNG_COMPRESSION)
            return record

        for result in ordered_map(convert_and_write, pairs, workers, f"prepare {dataset}", progress):
            if isinstance(result, _FileProblem):
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
            f"{target}: could not write ({error.strerror or error}); nothing was prepared for {dataset} "
            f"(rule {RULE}). Free disk space and rerun."
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


def _find_files(reader, suffix: str, dataset: str, advice: str) -> tuple[dict[str, str], str]:
    """Members directly inside the one folder of the archive that ends with ``suffix``."""
    by_folder: dict[str, list[str]] = collections.defaultdict(list)
    for name in reader.files:
        folder = posixpath.dirname(name)
        if _folder_matches(folder, suffix):
            by_folder[folder].append(name)
    if not by_folder:
        raise _fail(dataset, [_FileProblem(
            str(reader.path),
            f"no folder '{suffix}/' (expected the layout of {dataset}'s source, found none; is it the right archive?)",
        )], advice)
    if len(by_folder) > 1:
        raise _fail(dataset, [_FileProblem(str(reader.path), f"several folders end in '{suffix}/' (expected one, "
                                                             f"found {sorted(by_folder)})")], advice)
    folder, names = next(iter(by_folder.items()))
    return {posixpath.basename(name): name for name in names}, folder


def _case_collisions(names: Iterable[str], where: str) -> list[_FileProblem]:
    seen: dict[str, str] = {}
    problems = []
    for name in sorted(names):
        other = seen.setdefault(name.lower(), name)
        if other != name:
            problems.append(_FileProblem(f"{where}{name}", f"file names {other!r} and {name!r} differ only in case "
                                                           "(expected names unique ignoring case, as macOS and "
                                                           "Windows need)"))
    return problems


def _pair_group(group: registry.Group, readers: dict, dataset: str, advice: str, raw_dir: Path):
    """Pairs of one image/mask folder pair, the ignored members, and the problems found."""
    images, image_folder = _find_files(readers[group.image_archive], group.image_dir, dataset, advice)
    masks, mask_folder = _find_files(readers[group.mask_archive], group.mask_dir, dataset, advice)
    where_images = f"{raw_dir / group.image_archive}:{image_folder}/"
    where_masks = f"{raw_dir / group.mask_archive}:{mask_folder}/"
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
    mask_extensions = "/".join(extension.lstrip(".") for extension in registry.MASK_EXTENSIONS)
    pairs = []
    for identifier in sorted(set(image_by_id) | set(mask_by_id)):
        found_images, found_masks = sorted(image_by_id.get(identifier, [])), sorted(mask_by_id.get(identifier, []))
        image_file = f"{raw_dir / group.image_archive}:{found_images[0]}" if found_images else ""
        mask_file = f"{raw_dir / group.mask_archive}:{found_masks[0]}" if found_masks else ""
        if len(found_images) > 1:
            problems.append(_FileProblem(image_file, f"several images for id {identifier!r} (expected one, found "
                                                     f"{found_images})"))
        if len(found_masks) > 1:
            problems.append(_FileProblem(mask_file, f"several masks for id {identifier!r} (expected one, found "
                                                    f"{found_masks})"))
        if not found_masks:
            expected = f"{identifier}{group.mask_suffix}.{mask_extensions} in {where_masks}"
            problems.append(_FileProblem(image_file, f"image has no mask (expected {expected}, found none)"))
            continue
        if not found_images:
            problems.append(_FileProblem(mask_file, f"mask has no image (expected an image {identifier}.* in "
                                                    f"{where_images}, found none)"))
            continue
        if not SAFE_ID.fullmatch(identifier):
            problems.append(_FileProblem(image_file, f"id is not a safe file name (expected {SAFE_ID.pattern}, "
                                                     f"found {identifier!r})"))
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
            str(raw_dir),
        ))
    return pairs, ignored, problems


def collect_pairs(dataset: str, source: registry.Source, readers: dict, advice: str, raw_dir: Path):
    pairs, ignored, problems = [], [], []
    for group in source.groups:
        group_pairs, group_ignored, group_problems = _pair_group(group, readers, dataset, advice, raw_dir)
        pairs += group_pairs
        ignored += group_ignored
        problems += group_problems
    first_by_id: dict[str, Pair] = {}
    first_by_lower: dict[str, Pair] = {}
    for pair in pairs:
        image_file = pair.where(pair.image_name)
        first = first_by_id.setdefault(pair.id, pair)
        if first is not pair:
            problems.append(_FileProblem(image_file, f"id {pair.id!r} appears in more than one folder of the source "
                                                     f"(expected once, found also {first.where(first.image_name)})"))
            continue
        other = first_by_lower.setdefault(pair.id.lower(), pair)
        if other is not pair:
            problems.append(_FileProblem(image_file, f"ids {other.id!r} and {pair.id!r} differ only in case "
                                                     "(expected ids unique ignoring case, as macOS and Windows need)"))
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
    max_member: int | None = None,
) -> dict:
    """Prepare ``dataset`` from its archives in ``raw_dir`` (verified against the known or locked hashes;
    ``max_uncompressed`` and ``max_member`` cap what the archives may unpack to, in bytes)."""
    from segbench.data.archives import (MAX_MEMBER_BYTES, MAX_TOTAL_BYTES, ArchiveReader, ArchiveReadError,
                                        UnsafeArchiveError)
    from segbench.data.download import DownloadError, verify_archive

    raw_dir = Path(raw_dir)
    spec = registry.get_dataset(dataset)
    source = spec.sources[registry.source_name(dataset, isic_split)]
    archive_paths = ", ".join(str(raw_dir / name) for name in source.archives)
    caps = (max_uncompressed or MAX_TOTAL_BYTES, max_member or MAX_MEMBER_BYTES)
    advice = (
        f"fix or replace the archive ({archive_paths}): delete it and download it again (snakemake or "
        "`segbench data download`), or place a good copy there by hand (docs/data.md)"
    )
    readers, hashes = {}, {}
    try:
        for name in source.archives:
            hashes[name] = verify_archive(raw_dir / name, known_hashes or {}, *caps)
            readers[name] = ArchiveReader(raw_dir / name, *caps)
        pairs, ignored = collect_pairs(dataset, source, readers, advice, raw_dir)
        expected = source.expected_count if expected_count is None else expected_count
        warnings = _split_count_warnings(source, pairs, expected_count)
        report = {
            "source": source.name,
            "archives": hashes,
            "n_ignored_files": len(ignored),
            "ignored_files_examples": ignored[:20],
            "warnings": warnings,
        }
        return write_processed(dataset, pairs, out_dir, expected, report, advice, progress, workers, archive_paths)
    except (DownloadError, ArchiveReadError, UnsafeArchiveError) as error:
        _discard(None, Path(out_dir))
        raise PrepareError(f"{str(error).rstrip('.')}. Nothing was prepared for {dataset} (rule {RULE}).") from None
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
    advice = "the synthetic generator produced a bad pair: this is a bug in segbench/data/synthetic.py"
    return write_processed(dataset, pairs, out_dir, synthetic_count(dataset, settings), report, advice, progress,
                           source="segbench/data/synthetic.py")
