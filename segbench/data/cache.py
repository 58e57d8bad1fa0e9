"""The resized cache ``cache/<dataset>_<size>.npz``: what training and pooled evaluation read.

Arrays: ``ids`` (str, N), ``split`` (str, N: train|val|test), ``images`` uint8 (N, S, S, 3),
``masks`` uint8 (N, S, S) with values 0/255. Rows follow the split file (sorted ids).

Resize rule: images bilinear with antialiasing (PIL). Masks are resized bilinearly as float
in [0, 1] (the official pipeline resizes the mask tensor bilinearly) and then thresholded at 0.5,
which is exactly how the official metrics binarise the resized ground truth. The cache therefore
keeps binary 0/255 targets; the official training saw the soft border values instead (a border
of about one pixel; see docs/data.md).
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from segbench.data.registry import SPLITS


ARRAYS = ("ids", "split", "images", "masks")
# What np.load raises on a file that is not a readable .npz (cut short, another format, pickled objects).
UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


class CacheError(ValueError):
    """The cache file is missing, malformed, or has no rows for the requested split; the message names it first."""


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
    soft = Image.fromarray(mask.astype(np.float32) / 255.0, mode="F").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized), np.where(np.asarray(soft) >= 0.5, 255, 0).astype(np.uint8)


def build_cache(dataset: str, processed_dir: str | Path, split_file: str | Path, size: int,
                out_path: str | Path, progress: bool = True, workers: int = 1) -> int:
    """Write the cache for every row of the split file (files verified against its hashes)."""
    from PIL import Image

    from segbench.data.parallel import ordered_map
    from segbench.data.splits import read_split
    from segbench.io import atomic_path, sha256_file

    processed_dir = Path(processed_dir)
    rows = read_split(split_file)
    if not rows:
        raise CacheError(f"{split_file}: no rows (expected one per prepared pair, found 0); re-run the split for "
                         f"{dataset}")
    images = np.empty((len(rows), size, size, 3), np.uint8)
    masks = np.empty((len(rows), size, size), np.uint8)

    def load_and_resize(row: dict) -> tuple[np.ndarray, np.ndarray]:
        pair = []
        for kind in ("image", "mask"):
            path = processed_dir / f"{kind}s" / f"{row['id']}.png"
            found = sha256_file(path) if path.exists() else "no file"
            if found != row[f"{kind}_sha256"]:
                raise CacheError(
                    f"{path}: does not match {split_file} (expected sha256 {row[f'{kind}_sha256']}, found {found}: "
                    f"missing or changed after the split was made); re-run the prepare and split steps for {dataset}"
                )
            with Image.open(path) as handle:
                pair.append(np.asarray(handle.convert("RGB" if kind == "image" else "L")))
        return resize_pair(pair[0], pair[1], size)

    resized = ordered_map(load_and_resize, rows, workers, f"cache {dataset} {size}px", progress)
    for index, (image, mask) in enumerate(resized):
        images[index], masks[index] = image, mask
    with atomic_path(out_path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, ids=np.array([row["id"] for row in rows]), split=np.array([row["split"] for row in rows]),
                     images=images, masks=masks)
    return len(rows)


def cache_file(root: str | Path, dataset: str, size: int) -> Path:
    """Where the resized cache of ``dataset`` at ``size`` pixels lives under the data root."""
    return Path(root) / "cache" / f"{dataset}_{size}.npz"


def load_cache(path: str | Path, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(ids, images uint8 (N,S,S,3), masks uint8 (N,S,S) 0/255)`` of one split of a cache file."""
    path = Path(path)
    if split not in SPLITS:
        raise CacheError(f"split must be one of {SPLITS}, got {split!r}")
    if not path.exists():
        raise CacheError(
            f"{path}: cache file does not exist; build it with `snakemake {path}` "
            "(or `segbench data cache DATASET --size S`)"
        )
    rebuild = f"delete it and rebuild it (`snakemake {path}` or `segbench data cache DATASET --size S`)"
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            found = "an .npy array file" if handle.read(6) == b"\x93NUMPY" else "another kind of file"
        raise CacheError(f"{path}: is not a segbench cache (expected an .npz archive of {', '.join(ARRAYS)}, found "
                         f"{found}); {rebuild}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in ARRAYS if name not in archive.files]
            if missing:
                raise CacheError(f"{path}: is not a segbench cache (expected arrays {', '.join(ARRAYS)}, found "
                                 f"{', '.join(archive.files) or 'none'}); {rebuild}")
            ids, splits, images, masks = (archive[name] for name in ARRAYS)
    except CacheError:
        raise
    except UNREADABLE as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise CacheError(f"{path}: is not a segbench cache (expected a readable .npz archive, found {reason}); "
                         f"{rebuild}") from None
    _check_shapes(path, ids, splits, images, masks, rebuild)
    keep = splits == split
    if not keep.any():
        found = {name: int((splits == name).sum()) for name in SPLITS if (splits == name).any()}
        raise CacheError(f"{path}: no {split!r} rows (expected some, found {found}); check the dataset's split rule")
    return [str(i) for i in ids[keep]], images[keep], masks[keep]


def _check_shapes(path: Path, ids, splits, images, masks, rebuild: str) -> None:
    count = len(ids)
    expected = f"ids and split (N,), images uint8 (N,S,S,3), masks uint8 (N,S,S) with N={count}"
    found = (f"ids {ids.shape}, split {splits.shape}, images {images.dtype} {images.shape}, "
             f"masks {masks.dtype} {masks.shape}")
    good = (ids.ndim == 1 and splits.shape == (count,) and images.dtype == masks.dtype == np.uint8
            and images.ndim == 4 and images.shape[0] == count and images.shape[3] == 3
            and masks.shape == images.shape[:3] and images.shape[1] == images.shape[2])
    if not good:
        raise CacheError(f"{path}: is not a segbench cache (expected {expected}, found {found}); {rebuild}")
