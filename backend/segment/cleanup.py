"""Tidying a binary mask: specks removed, small holes filled.

Sizes are fractions of the object's area, so the same settings suit any resolution.
"""

from __future__ import annotations

import cv2
import numpy as np


def clean_mask(mask: np.ndarray, speck_fraction: float = 0.01,
               hole_fraction: float = 0.01) -> np.ndarray:
    """mask: (H, W) bool. Returns (H, W) bool with the pieces smaller than
    `speck_fraction` of the largest piece removed and the enclosed holes smaller than
    `hole_fraction` of the remaining object filled. Background that reaches the image
    border is never a hole (the object may touch the border); larger holes stay (the
    gaps between an object's legs are background)."""
    mask = remove_specks(mask, speck_fraction)
    return fill_holes(mask, hole_fraction * float(mask.sum()))


def remove_specks(mask: np.ndarray, fraction: float) -> np.ndarray:
    """(H, W) bool -> bool without the 8-connected pieces smaller than `fraction` of
    the largest one."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if count <= 1:
        return mask.copy()
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.concatenate([[False], areas >= fraction * areas.max()])
    return keep[labels]


def fill_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """(H, W) bool -> bool with the 4-connected background pieces that do not reach the
    image border and have at most `max_area` pixels set to object."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), 4)
    if count <= 1:
        return mask.copy()
    h, w = mask.shape
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right = left + stats[:, cv2.CC_STAT_WIDTH]
    bottom = top + stats[:, cv2.CC_STAT_HEIGHT]
    enclosed = (left > 0) & (top > 0) & (right < w) & (bottom < h)
    fill = enclosed & (stats[:, cv2.CC_STAT_AREA] <= max_area)
    fill[0] = False  # label 0 is the object itself
    return mask | fill[labels]


def disc(radius: int) -> np.ndarray:
    """A (2r+1, 2r+1) uint8 disc, the structuring element for dilate/erode by `radius` px."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
