"""The polyp field's PraNet-toolbox metrics (pysodmetrics) and boundary metrics (MONAI), per image.

Everything here works on one image at its mask's original resolution and is accumulated over a
test set. Definitions, aggregations and the empty-mask rules are in docs/metrics.md.

* toolbox: the PraNet MATLAB toolbox's metrics through pysodmetrics, which reproduces it. The
  prediction is a uint8 probability map (value/255); the library min-max normalises it as the
  toolbox does, and sweeps 256 thresholds (value >= 255, 254, ..., 0) for Dice, IoU and E-measure.
  Set values follow the toolbox: curves are averaged over images first, then over thresholds
  (mean_*) or maximised (max_em), so ``max_em`` is not the mean of the per-image maxima.
* boundary: HD95 and NSD of the prediction thresholded as for the Dice column, in pixels.
  Empty-mask rule: both empty gives HD95 0 and NSD 1; exactly one empty (MONAI returns inf or
  nan) gives HD95 = the image diagonal and NSD 0, and is counted in ``n_boundary_undefined``.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

TOOLBOX_COLUMNS = ("mean_dice", "mean_iou", "wfm", "s_measure", "mean_em", "max_em", "mae")
BOUNDARY_COLUMNS = ("hd95", "nsd")
FIELD_COLUMNS = TOOLBOX_COLUMNS + BOUNDARY_COLUMNS
# Two pixels at the mask's resolution: the rasterisation of a hand-drawn outline is uncertain by
# about one pixel on each side, so a predicted boundary within 2 px agrees with the annotation.
NSD_TOLERANCE_PX = 2


class FieldMetrics:
    """Both metric families over the images of one test set: ``add`` each image, then ``summary``."""

    def __init__(self):
        # Imported here, not at module level: pysodmetrics takes ~1 s (OpenCV, scikit-image) and
        # MONAI ~3 s, which every other segbench command would pay for nothing.
        import py_sod_metrics
        from monai.metrics import compute_hausdorff_distance, compute_surface_dice

        self._dice = py_sod_metrics.DICEHandler(with_dynamic=True, with_adaptive=False)
        self._iou = py_sod_metrics.IOUHandler(with_dynamic=True, with_adaptive=False)
        self._curves = py_sod_metrics.FmeasureV2({"dice": self._dice, "iou": self._iou})
        self._wfm = py_sod_metrics.WeightedFmeasure(beta=1)
        self._sm = py_sod_metrics.Smeasure(alpha=0.5)
        self._em = py_sod_metrics.Emeasure()
        self._mae = py_sod_metrics.MAE()
        self._hausdorff, self._surface_dice = compute_hausdorff_distance, compute_surface_dice
        self._boundary: list[tuple[float, float]] = []
        self.n_boundary_undefined = 0

    def add(self, probability: np.ndarray, prediction: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        """One image's FIELD_COLUMNS. ``probability``: uint8, value/255 is the foreground probability;
        ``prediction``: the boolean thresholded map scored by the Dice column; ``gt``: boolean mask."""
        gt_levels = gt.astype(np.uint8) * 255
        for evaluator in (self._curves, self._wfm, self._sm, self._em, self._mae):
            evaluator.step(probability, gt_levels)
        em_curve = self._em.changeable_ems[-1]
        row = {
            "mean_dice": float(np.mean(self._dice.dynamic_results[-1])),
            "mean_iou": float(np.mean(self._iou.dynamic_results[-1])),
            "wfm": float(self._wfm.weighted_fms[-1]),
            "s_measure": float(self._sm.sms[-1]),
            "mean_em": float(np.mean(em_curve)),
            "max_em": float(np.max(em_curve)),
            "mae": float(self._mae.maes[-1]),
        }
        hd95, nsd = self._boundary_scores(prediction, gt)
        self._boundary.append((hd95, nsd))
        return {**row, "hd95": hd95, "nsd": nsd}

    def _boundary_scores(self, prediction: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
        has_prediction, has_gt = bool(prediction.any()), bool(gt.any())
        if not (has_prediction and has_gt):
            if has_prediction or has_gt:
                self.n_boundary_undefined += 1
                return math.hypot(*gt.shape), 0.0
            return 0.0, 1.0
        pair = [torch.from_numpy(np.ascontiguousarray(mask))[None, None] for mask in (prediction, gt)]
        with warnings.catch_warnings():
            # MONAI 1.6 passes its own deprecated get_mask_edges argument internally: not ours to fix.
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            hd95 = self._hausdorff(*pair, include_background=True, percentile=95)
            nsd = self._surface_dice(*pair, class_thresholds=[NSD_TOLERANCE_PX], include_background=True)
        return float(hd95), float(nsd)

    def summary(self) -> dict:
        """The ``toolbox`` and ``boundary`` blocks of a test set (toolbox values are fractions)."""
        curves = self._curves.get_results()
        em_curve = self._em.get_results()["em"]["curve"]
        hd95, nsd = np.mean(self._boundary, axis=0)
        return {
            "toolbox": {
                "mean_dice": float(np.mean(curves["dice"]["dynamic"])),
                "mean_iou": float(np.mean(curves["iou"]["dynamic"])),
                "wfm": float(self._wfm.get_results()["wfm"]),
                "s_measure": float(self._sm.get_results()["sm"]),
                "mean_em": float(np.mean(em_curve)),
                "max_em": float(np.max(em_curve)),
                "mae": float(self._mae.get_results()["mae"]),
            },
            "boundary": {"hd95": float(hd95), "nsd": float(nsd), "nsd_tolerance_px": NSD_TOLERANCE_PX,
                         "n_boundary_undefined": self.n_boundary_undefined},
        }
