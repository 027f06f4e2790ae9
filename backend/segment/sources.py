"""Silhouettes from an image's alpha or from mask files, and the `auto` choice.

A silhouette is (H, W) float32 in [0, 1] (1 = object; fractional values are soft
edges), at the image's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.mask_files import IMAGE_EXTENSIONS, MASK_SUFFIXES, find_mask
from .images import read_image, read_mask
from .key import KeySettings, key_silhouette
from .learned import SalientObjectModel

MODES = ("auto", "alpha", "masks", "key", "learned")
__all__ = ["IMAGE_EXTENSIONS", "MASK_SUFFIXES", "MODES", "Silhouette", "find_mask",
           "silhouette", "silhouettes_from_files"]

# Alpha below this (8-bit: 254) anywhere means the image has transparency.
_OPAQUE = 254.0 / 255.0


@dataclass
class Silhouette:
    """name: the image's name; mask: (H, W) float32 in [0, 1]; source: "alpha", "mask",
    "key" or "learned" (how it was found); path: the mask file for source "mask"."""

    name: str
    mask: np.ndarray
    source: str
    path: Path | None = None


def has_transparency(image: np.ndarray) -> bool:
    """image: (H, W, 3|4) float in [0, 1]; True when it has alpha below 254/255 somewhere."""
    return image.shape[2] == 4 and float(image[..., 3].min()) < _OPAQUE


def alpha_silhouette(image: np.ndarray, name: str) -> np.ndarray:
    """The alpha channel of (H, W, 4) `image` as (H, W) float32; raises ValueError naming
    the image when it is opaque everywhere (its alpha gives no silhouette)."""
    if not has_transparency(image):
        raise ValueError(f"{name}: opaque everywhere, so its alpha gives no silhouette; use "
                         "silhouettes 'key' (plain backdrop) or 'masks' (mask files)")
    alpha = image[..., 3].astype(np.float32)
    if float(alpha.max()) <= 0.0:
        raise ValueError(f"{name}: transparent everywhere, so no object is in it")
    return alpha


def mask_silhouette(path: str | Path, width: int, height: int, name: str) -> np.ndarray:
    """The mask file at `path` as (H, W) float32, checked against the image's size."""
    mask = read_mask(path)
    if mask.shape != (height, width):
        raise ValueError(f"{name}: its mask {Path(path).name} is {mask.shape[1]}x{mask.shape[0]} "
                         f"but the image is {width}x{height}; masks must match their images' "
                         "size")
    if float(mask.max()) <= 0.0:
        raise ValueError(f"{name}: its mask {Path(path).name} is black everywhere (no object; "
                         "white marks the object)")
    return mask


def silhouette(image: np.ndarray, name: str, mode: str = "auto",
               mask_dir: str | Path | None = None, key: KeySettings | None = None,
               model: SalientObjectModel | None = None) -> Silhouette:
    """The silhouette of `image` (H, W, 3|4) float in [0, 1], named `name`.

    mode: "alpha" (the image's alpha), "masks" (a file in `mask_dir`, see `find_mask`),
    "key" (the backdrop keyed out, see `backend.segment.key`), "learned" (`model`, see
    `backend.segment.learned`), or "auto": alpha when the image has transparency, else
    the mask when `mask_dir` is given, else key.
    """
    if mode not in MODES:
        raise ValueError(f"silhouettes mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        mode = ("alpha" if has_transparency(image)
                else "masks" if mask_dir is not None else "key")
    h, w = image.shape[:2]
    if mode == "alpha":
        return Silhouette(name, alpha_silhouette(image, name), "alpha")
    if mode == "masks":
        if mask_dir is None:
            raise ValueError("silhouettes 'masks' needs a masks folder")
        path = find_mask(name, mask_dir)
        return Silhouette(name, mask_silhouette(path, w, h, name), "mask", path)
    if mode == "learned":
        if model is None:
            raise ValueError("silhouettes 'learned' needs a salient-object model file "
                             "(U2-Net-class ONNX)")
        return Silhouette(name, model.segment(image, name), "learned")
    return Silhouette(name, key_silhouette(image, name, key), "key")


def silhouettes_from_files(image_paths: Sequence[str | Path], mode: str = "auto",
                           mask_dir: str | Path | None = None,
                           key: KeySettings | None = None,
                           model_path: str | Path | None = None) -> list[Silhouette]:
    """`silhouette` for each image file, named by its file name; mode "learned" loads
    the model at `model_path` once."""
    model = None
    if mode == "learned":
        if model_path is None:
            raise ValueError("silhouettes 'learned' needs a salient-object model file "
                             "(U2-Net-class ONNX): name one")
        model = SalientObjectModel(model_path)
    return [silhouette(read_image(p), Path(p).name, mode, mask_dir, key, model)
            for p in image_paths]
