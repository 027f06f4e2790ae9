"""Which mask file belongs to which image (standard library only: the add-on and
`backend.segment` both match masks by these rules).

A mask for ``photo.jpg`` is, in the masks folder, ``photo`` followed by nothing,
``_mask``, ``-mask`` or ``.mask``, with any image extension (case ignored).
"""

from __future__ import annotations

from pathlib import Path

MASK_SUFFIXES = ("", "_mask", "-mask", ".mask")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".bmp", ".webp")


def find_mask(image_name: str, mask_dir: str | Path) -> Path:
    """The mask file for image `image_name` in `mask_dir`: same stem, or the stem followed
    by one of `MASK_SUFFIXES`, with any image extension. Raises ValueError when there is
    none or more than one."""
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise ValueError(f"{mask_dir}: the masks folder does not exist")
    stem = Path(image_name).stem
    wanted = {(stem + suffix).lower() for suffix in MASK_SUFFIXES}
    found = sorted(p for p in mask_dir.iterdir()
                   if p.suffix.lower() in IMAGE_EXTENSIONS and p.stem.lower() in wanted)
    if not found:
        raise ValueError(f"{image_name}: no mask in {mask_dir} (expected {stem}.png or "
                         f"{stem}_mask.png, any image extension)")
    if len(found) > 1:
        raise ValueError(f"{image_name}: several masks match in {mask_dir}: "
                         + ", ".join(p.name for p in found))
    return found[0]
