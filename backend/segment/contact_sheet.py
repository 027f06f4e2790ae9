"""A contact sheet for reports: one row per view, photo | mask | outlines on the photo.

The third tile draws the mask's outline in green and, when given, the fitted mesh's
silhouette outline in magenta, so misfits show at a glance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .images import to_uint8, write_image

_MASK_COLOUR = (0.2, 1.0, 0.2)
_FITTED_COLOUR = (1.0, 0.2, 1.0)


def contact_sheet(photos: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                  fitted: Sequence[np.ndarray | None] | None = None,
                  names: Sequence[str] | None = None, tile_width: int = 240) -> np.ndarray:
    """The sheet as (H, W, 3) float32 RGB in [0, 1].

    photos: per view (h, w, 3|4) float in [0, 1]; masks: per view (h, w) float in [0, 1];
    fitted: per view (h, w) float silhouette of the fitted mesh, or None (no outline);
    names: written on each row's photo. Every tile is scaled to `tile_width` pixels wide.
    """
    if len(photos) != len(masks) or (fitted is not None and len(fitted) != len(photos)):
        raise ValueError("contact_sheet needs one mask (and fitted silhouette) per photo")
    if not photos:
        raise ValueError("contact_sheet needs at least one photo")
    rows = []
    for k, (photo, mask) in enumerate(zip(photos, masks, strict=True)):
        if photo.shape[:2] != mask.shape:
            raise ValueError(f"view {k}: photo {photo.shape[:2]} and mask {mask.shape} differ")
        rgb = photo[..., :3].astype(np.float32)
        outlined = rgb.copy()
        _outline(outlined, mask, _MASK_COLOUR)
        if fitted is not None and fitted[k] is not None:
            _outline(outlined, fitted[k], _FITTED_COLOUR)
        if names is not None:
            _label(rgb, names[k])
        tiles = [rgb, np.repeat(mask[..., None], 3, axis=2).astype(np.float32), outlined]
        scale = tile_width / rgb.shape[1]
        size = (tile_width, max(1, int(round(rgb.shape[0] * scale))))
        rows.append(np.hstack([cv2.resize(t, size, interpolation=cv2.INTER_AREA)
                               for t in tiles]))
    return np.vstack(rows)


def write_contact_sheet(path: str | Path, photos, masks, fitted=None, names=None,
                        tile_width: int = 240) -> None:
    """`contact_sheet` written to `path` (PNG or JPEG by its extension)."""
    write_image(path, contact_sheet(photos, masks, fitted, names, tile_width))


def _outline(image: np.ndarray, mask: np.ndarray, colour) -> None:
    """Draw the outline of `mask` > 0.5 into `image` (H, W, 3) float, 2 px wide, in place."""
    binary = (np.asarray(mask) > 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, int(round(image.shape[1] / 320)))
    cv2.drawContours(image, contours, -1, colour, thickness)


def _label(image: np.ndarray, text: str) -> None:
    """Write `text` at the top-left of `image` (H, W, 3) float, in place."""
    scale = image.shape[1] / 640
    canvas = to_uint8(image)
    cv2.putText(canvas, text, (int(8 * scale) + 1, int(24 * scale) + 1),
                cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), max(1, int(2 * scale)), cv2.LINE_AA)
    cv2.putText(canvas, text, (int(8 * scale), int(24 * scale)),
                cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), max(1, int(2 * scale)),
                cv2.LINE_AA)
    image[...] = canvas.astype(np.float32) / 255.0
