"""Keying: the background's colour estimated from the image border, refined with GrabCut.

For photos of one object on a plain backdrop (dark, light, green or any uniform
colour). The backdrop colour is the median of a strip along the image border, so the
object may touch the border (it covers less than half of the strip) and a second,
smaller backdrop region (a cloth) does not move it. Each pixel's distance to that
colour, in units of the threshold, sorts it into a trimap for GrabCut, whose colour
models then separate the object from everything that is not the backdrop colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .cleanup import clean_mask, disc
from .grabcut import PROBABLE_BG, PROBABLE_FG, SURE_BG, SURE_FG, grabcut

# Border colours are grouped into this many clusters; a cluster with at least this
# share of the border strip is backdrop.
_CLUSTERS = 4
_MIN_SHARE = 0.08


@dataclass(frozen=True)
class KeySettings:
    """How keying decides.

    tolerance: the least RGB distance (values in [0, 1]) from the backdrop colour that
        counts as object; raised to `noise_factor` times the border's noise on noisy
        backdrops.
    border: width of the sampled border strip, as a fraction of the image's shorter side.
    grabcut_iterations: GrabCut's iterations (0 keeps the plain threshold).
    reach: how far (fraction of the shorter side) from clearly distinct pixels a
        faintly distinct one may still be object before GrabCut decides.
    speck_fraction, hole_fraction: see `backend.segment.cleanup.clean_mask`.
    """

    tolerance: float = 0.15
    noise_factor: float = 4.0
    border: float = 0.03
    grabcut_iterations: int = 4
    reach: float = 0.05
    speck_fraction: float = 0.01
    hole_fraction: float = 0.01

    def __post_init__(self):
        if not 0.0 < self.tolerance < 1.7:
            raise ValueError(f"key tolerance must be in (0, 1.7) (an RGB distance), "
                             f"got {self.tolerance}")
        if not 0.0 < self.border <= 0.25:
            raise ValueError(f"key border must be in (0, 0.25] of the shorter side, "
                             f"got {self.border}")
        if not 0.0 < self.reach <= 0.5:
            raise ValueError(f"key reach must be in (0, 0.5] of the shorter side, got {self.reach}")
        if self.noise_factor <= 0 or self.grabcut_iterations < 0:
            raise ValueError("key noise_factor must be positive and grabcut_iterations >= 0")
        if not (0 <= self.speck_fraction < 1 and 0 <= self.hole_fraction < 1):
            raise ValueError("key speck_fraction and hole_fraction must be in [0, 1)")


@dataclass(frozen=True)
class Backdrop:
    """colours: (K, 3) float32 RGB, the backdrop's colours; threshold: the RGB distance
    from the nearest of them beyond which a pixel stands out."""

    colours: np.ndarray
    threshold: float


def estimate_backdrop(rgb: np.ndarray, settings: KeySettings) -> Backdrop:
    """The backdrop of `rgb` (H, W, 3) float in [0, 1] from its border strip.

    The strip's colours are clustered (k-means, `_CLUSTERS` clusters); every cluster
    holding at least `_MIN_SHARE` of the strip is a backdrop colour, so a second
    backdrop (a cloth at one side) is one too, while an object touching the border
    covers less and is not.
    """
    h, w = rgb.shape[:2]
    b = max(1, int(round(settings.border * min(h, w))))
    strip = np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3),
                            rgb[b:-b, :b].reshape(-1, 3), rgb[b:-b, -b:].reshape(-1, 3)])
    strip = np.ascontiguousarray(strip, dtype=np.float32)
    cv2.setRNGSeed(0)  # k-means starts from random centres: the same ones every time
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1e-3)
    _, labels, centres = cv2.kmeans(strip, _CLUSTERS, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    share = np.bincount(labels.ravel(), minlength=_CLUSTERS) / len(strip)
    colours = centres[share >= _MIN_SHARE]
    # The median distance is the noise's scale whenever most of the strip is backdrop.
    noise = float(np.median(_nearest_distance(strip, colours)))
    return Backdrop(colours, max(settings.tolerance, settings.noise_factor * noise))


def key_score(rgb: np.ndarray, backdrop: Backdrop) -> np.ndarray:
    """(H, W) float32: each pixel's RGB distance from the nearest backdrop colour over the
    threshold (above 1 stands out)."""
    h, w = rgb.shape[:2]
    distance = _nearest_distance(rgb[..., :3].reshape(-1, 3), backdrop.colours)
    return (distance / backdrop.threshold).reshape(h, w).astype(np.float32)


def _nearest_distance(colours: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, 3) colours, (K, 3) centres -> (N,) distance to the nearest centre."""
    best = np.full(len(colours), np.inf, dtype=np.float32)
    for centre in centres:
        np.minimum(best, np.linalg.norm(colours - centre, axis=1), out=best)
    return best


def key_trimap(score: np.ndarray, reach: int) -> np.ndarray:
    """(H, W) score -> GrabCut trimap (H, W) uint8.

    Sure object: score beyond 2 and beyond 0.6 times the median score of the pixels that
    stand out (those beyond 1), so faint backdrop (cloth) next to a clearly distinct
    object is not sure; eroded by 2 px so that GrabCut places the
    outline. Probable object: beyond 1 and within `reach` px of sure object, so backdrop
    that merely stands out (a lit fold of cloth away from the object) teaches GrabCut's
    backdrop model instead of the object's. Probable backdrop: the rest beyond 0.5;
    sure backdrop below.
    """
    trimap = np.full(score.shape, SURE_BG, dtype=np.uint8)
    trimap[score > 0.5] = PROBABLE_BG
    standing_out = score > 1.0
    if not standing_out.any():
        return trimap
    strong = max(2.0, 0.6 * float(np.median(score[standing_out])))
    sure = cv2.erode((score > strong).astype(np.uint8), disc(2))
    near = cv2.dilate(sure, disc(reach)).astype(bool) if sure.any() else True
    trimap[standing_out & near] = PROBABLE_FG
    trimap[sure.astype(bool)] = SURE_FG
    return trimap


def key_silhouette(rgb: np.ndarray, name: str, settings: KeySettings | None = None
                   ) -> np.ndarray:
    """The object's mask (H, W) float32 in {0, 1} in photo `rgb` (H, W, 3+) float in [0, 1].

    Raises ValueError naming the photo when no object stands out from its backdrop.
    """
    settings = settings or KeySettings()
    rgb = rgb[..., :3]
    backdrop = estimate_backdrop(rgb, settings)
    score = key_score(rgb, backdrop)
    mask = score > 1.0
    if mask.any() and settings.grabcut_iterations > 0:
        reach = max(2, int(round(settings.reach * min(rgb.shape[:2]))))
        mask = grabcut(rgb, key_trimap(score, reach), settings.grabcut_iterations, name)
    mask = clean_mask(mask, settings.speck_fraction, settings.hole_fraction)
    if not mask.any():
        raise ValueError(
            f"{name}: no object found: no region differs from the backdrop colours "
            f"{np.round(backdrop.colours, 2).tolist()} (estimated from the image border) by more "
            f"than {backdrop.threshold:.3f}; lower the key tolerance or give a mask")
    return mask.astype(np.float32)
