"""Image and mask files as float arrays, through OpenCV.

An image is (H, W, 3) RGB or (H, W, 4) RGBA float32 in [0, 1], row 0 at the top,
values as stored in the file (sRGB-encoded for ordinary photos); a mask is (H, W)
float32 in [0, 1], 1 = object.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def read_image(path: str | Path) -> np.ndarray:
    """The image at `path` as (H, W, 3) RGB or (H, W, 4) RGBA float32 in [0, 1].

    Grey images become RGB; 8- and 16-bit files are scaled by their maximum value.
    Raises ValueError when the file is missing or is not an image OpenCV reads.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such image file")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"{path}: not an image file OpenCV can read (PNG, JPEG, TIFF, EXR...)")
    image = _to_float(raw, path)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        return np.concatenate([image[..., 2::-1], image[..., 3:]], axis=2)
    if image.shape[2] == 3:
        return np.ascontiguousarray(image[..., ::-1])
    raise ValueError(f"{path}: {image.shape[2]} channels; expected grey, RGB or RGBA")


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file (white = object, grey = partly object) as (H, W) float32 in [0, 1].

    Colour masks count by their luma; a transparent pixel counts as background.
    """
    image = read_image(path)
    mask = to_grey(image[..., :3])
    if image.shape[2] == 4:
        mask = mask * image[..., 3]
    return mask.astype(np.float32)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA float in [0, 1] as 8 bits."""
    data = to_uint8(image)
    if data.ndim == 3:
        data = cv2.cvtColor(data, cv2.COLOR_RGB2BGR if data.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    if not cv2.imwrite(str(path), data):
        raise ValueError(f"{path}: could not write the image (is the folder there?)")


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) float32 luma (Rec. 601 weights, as OpenCV's greyscale)."""
    return (rgb[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float in [0, 1] -> uint8 (rounded, clipped), same shape."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _to_float(raw: np.ndarray, path: Path) -> np.ndarray:
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / 65535.0
    if raw.dtype in (np.float32, np.float64):
        return np.clip(raw.astype(np.float32), 0.0, 1.0)
    raise ValueError(f"{path}: pixel type {raw.dtype} is not supported (use 8 or 16 bits)")
