"""Segmentation metrics, named by their aggregation.

* pooled ("micro" in smp's words): one confusion matrix over every pixel of a test set, as the
  VM-UNet/VM-UNetV2 code computes it. Its "mIoU" is the foreground IoU TP/(TP+FP+FN).
* per-image ("macro-imagewise"): Dice and IoU of each image, then their mean.

Zero-denominator rule for pooled ratios: 0 (as the official code). Empty-mask rule for per-image
scores: a ground truth with no foreground scores Dice = IoU = 1 when the prediction is empty too
and 0 otherwise; such images are counted (``n_empty_masks``) and the rule is stated in the report.
"""
from __future__ import annotations

import numpy as np

POOLED_METRICS = ("miou", "dsc", "acc", "sen", "spe")


def confusion(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) of two boolean arrays of the same shape."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    return tp, fp, fn, int(pred.size - tp - fp - fn)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def ratios(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """The paper's five metrics from one confusion matrix, as fractions in [0, 1]."""
    return {
        "miou": _ratio(tp, tp + fp + fn),
        "dsc": _ratio(2 * tp, 2 * tp + fp + fn),
        "acc": _ratio(tp + tn, tp + fp + fn + tn),
        "sen": _ratio(tp, tp + fn),
        "spe": _ratio(tn, tn + fp),
    }


def image_scores(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """(dice, iou) of one image under the empty-mask rule above."""
    if tp + fn == 0:
        perfect = float(fp == 0)
        return perfect, perfect
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


class PooledConfusion:
    """Accumulates one confusion matrix over many images."""

    def __init__(self):
        self.counts = np.zeros(4, dtype=np.int64)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
        counts = confusion(pred, gt)
        self.counts += counts
        return counts

    def ratios(self) -> dict[str, float]:
        return ratios(*(int(value) for value in self.counts))
