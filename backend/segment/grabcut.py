"""OpenCV's GrabCut from a trimap: colour models of object and background, then a graph cut.

A trimap is (H, W) uint8 of OpenCV's labels: `SURE_BG`, `SURE_FG`, `PROBABLE_BG`,
`PROBABLE_FG`. GrabCut keeps the sure labels and decides the probable ones.
"""

from __future__ import annotations

import cv2
import numpy as np

from .images import to_uint8

SURE_BG, SURE_FG, PROBABLE_BG, PROBABLE_FG = cv2.GC_BGD, cv2.GC_FGD, cv2.GC_PR_BGD, cv2.GC_PR_FGD

# Margin (fraction of the undecided region's size) kept around it when cropping.
_CROP_MARGIN = 0.15


def grabcut(rgb: np.ndarray, trimap: np.ndarray, iterations: int, name: str) -> np.ndarray:
    """The object mask (H, W) bool that GrabCut finds in `rgb` (H, W, 3) float in [0, 1]
    from `trimap` (H, W) uint8.

    Works on the crop around the pixels that are not sure background (the rest stays
    background), so the background's colour model is the object's surroundings.
    Raises ValueError naming `name` when the trimap has no object or no background.
    """
    if rgb.shape[:2] != trimap.shape:
        raise ValueError(f"{name}: trimap {trimap.shape} does not match the image {rgb.shape[:2]}")
    candidate = trimap != SURE_BG
    if not ((trimap == SURE_FG) | (trimap == PROBABLE_FG)).any():
        raise ValueError(f"{name}: no object found (nothing stands out from the background)")
    if candidate.all():
        raise ValueError(f"{name}: no background found (the object seems to fill the image)")
    rows, cols = _crop(candidate)
    labels = np.ascontiguousarray(trimap[rows, cols])
    image = cv2.cvtColor(to_uint8(rgb[rows, cols, :3]), cv2.COLOR_RGB2BGR)
    has_bg = ((labels == SURE_BG) | (labels == PROBABLE_BG)).any()
    if not has_bg:  # the crop is the whole image and all of it may be object
        labels[0, :] = labels[-1, :] = labels[:, 0] = labels[:, -1] = PROBABLE_BG
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(image, labels, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    mask = np.zeros(trimap.shape, dtype=bool)
    mask[rows, cols] = (labels == SURE_FG) | (labels == PROBABLE_FG)
    return mask


def _crop(candidate: np.ndarray) -> tuple[slice, slice]:
    """Row and column slices around the True pixels of (H, W) `candidate`, with a margin."""
    ys = np.flatnonzero(candidate.any(axis=1))
    xs = np.flatnonzero(candidate.any(axis=0))
    h, w = candidate.shape
    my = int(_CROP_MARGIN * (ys[-1] - ys[0] + 1)) + 8
    mx = int(_CROP_MARGIN * (xs[-1] - xs[0] + 1)) + 8
    return (slice(max(0, ys[0] - my), min(h, ys[-1] + 1 + my)),
            slice(max(0, xs[0] - mx), min(w, xs[-1] + 1 + mx)))
