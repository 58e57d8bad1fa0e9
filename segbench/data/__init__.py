"""Datasets: registry, download, preparation, splits, the resized cache and the synthetic source.

Kept light on purpose: importing ``segbench.data`` loads numpy only; downloaders (pooch, gdown)
and image libraries are imported where they are used.
"""
from segbench.data.cache import CacheError, cache_file, load_cache
from segbench.data.registry import DATASET_NAMES, DATASETS

__all__ = ["CacheError", "DATASETS", "DATASET_NAMES", "cache_file", "load_cache"]
