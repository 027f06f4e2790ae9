"""Reference masks to measure segmentation against (tests and benchmarks).

The temple of the Middlebury multi-view data set (templeSparseRing) comes with its
authors' mask recipe: grey value above 0.19, dilated by 10 px, eroded by 7 px. It is
right on the temple and wrong on the dark cloth at one side of some photos, where lit
folds pass the threshold; `TEMPLE_CLOTH` lists regions of two photos that hold only
cloth and backdrop (found by looking at the photos) so a comparison can leave them out.
"""

from __future__ import annotations

import cv2
import numpy as np

from .cleanup import disc
from .images import to_grey, to_uint8

# (rows, columns) of the 640x480 photos that show only cloth and black backdrop.
TEMPLE_CLOTH = {
    "templeSR0001": [(slice(0, 480), slice(0, 100)), (slice(0, 100), slice(100, 190)),
                     (slice(100, 480), slice(100, 128))],
    "templeSR0016": [(slice(0, 480), slice(540, 640)), (slice(0, 80), slice(400, 540))],
}


def recipe_mask(image: np.ndarray, threshold: float = 0.19, dilate: int = 10,
                erode: int = 7) -> np.ndarray:
    """The authors' mask of `image` (H, W, 3|4) float in [0, 1]: (H, W) bool, grey (8-bit,
    as the authors' tools see it) above `threshold`, dilated then eroded by discs of
    those radii in pixels."""
    grey = to_uint8(to_grey(image[..., :3])).astype(np.float32) / 255.0
    mask = (grey > threshold).astype(np.uint8)
    return cv2.erode(cv2.dilate(mask, disc(dilate)), disc(erode)).astype(bool)


def cloth_region(name: str, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the `TEMPLE_CLOTH` regions of temple photo `name` (stem)."""
    if name not in TEMPLE_CLOTH:
        raise ValueError(f"no cloth regions known for {name!r}; known: {', '.join(TEMPLE_CLOTH)}")
    region = np.zeros(shape, bool)
    for rows, cols in TEMPLE_CLOTH[name]:
        region[rows, cols] = True
    return region


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks (H, W), each thresholded at 0.5."""
    a, b = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    union = int((a | b).sum())
    if union == 0:
        raise ValueError("IoU of two empty masks is undefined")
    return float((a & b).sum() / union)
