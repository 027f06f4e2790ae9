"""Which faces can touch which pixels: cutoff-expanded boxes and their cells.

Shared by both implementations. The CPU path enumerates (face, pixel) pairs of
each face's expanded pixel box; the GPU path enumerates (face, tile) pairs and
sorts them into per-tile face lists. Lists are sized exactly from the boxes, so no
face is ever dropped for lack of room.
"""

from __future__ import annotations

import torch


def pixel_boxes(
    face_screen: torch.Tensor, margin: float, width: int, height: int
) -> torch.Tensor:
    """Inclusive pixel-index boxes (..., 4) = [x0, x1, y0, y1] of every face.

    face_screen: (..., 3, >=2) corner pixel coordinates. A pixel i (centre i + 0.5)
    is inside when its centre lies within ``margin`` pixels of the face's bounding
    box; every pixel where D >= cutoff is, with margin = `RenderSettings.cutoff_distance`.
    Boxes are clipped to the image; an empty box has x1 < x0 or y1 < y0.
    """
    xy = face_screen[..., :2].detach()
    lo = xy.amin(dim=-2) - margin - 0.5
    hi = xy.amax(dim=-2) + margin - 0.5
    x0 = torch.ceil(lo[..., 0]).clamp(0, width)
    x1 = torch.floor(hi[..., 0]).clamp(-1, width - 1)
    y0 = torch.ceil(lo[..., 1]).clamp(0, height)
    y1 = torch.floor(hi[..., 1]).clamp(-1, height - 1)
    return torch.stack([x0, x1, y0, y1], dim=-1).long()


def enumerate_cells(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every cell of every inclusive box.

    boxes: (N, 4) int64 [x0, x1, y0, y1]. Returns (owner, x, y), each (P,) int64:
    cell k lies in box ``owner[k]`` at column x[k], row y[k]; owners ascend, and
    within a box cells run row by row.
    """
    w = (boxes[:, 1] - boxes[:, 0] + 1).clamp_min(0)
    h = (boxes[:, 3] - boxes[:, 2] + 1).clamp_min(0)
    counts = w * h
    owner = torch.repeat_interleave(torch.arange(len(boxes), device=boxes.device), counts)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(len(owner), device=boxes.device) - first[owner]
    w_owner = w[owner]
    x = boxes[owner, 0] + local % w_owner
    y = boxes[owner, 2] + local // w_owner
    return owner, x, y


def tile_size_for(width: int, height: int) -> int:
    """Tile edge in pixels, following PyTorch3D's choice for the image size."""
    size = max(width, height)
    if size <= 64:
        return 8
    if size <= 256:
        return 16
    if size <= 512:
        return 32
    return 64


def bin_faces(
    face_screen: torch.Tensor,
    face_valid: torch.Tensor,
    margin: float,
    width: int,
    height: int,
    tile: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tile face lists for B cameras, in compressed (CSR) form.

    face_screen: (B, F, 3, >=2); face_valid: (B, F) bool. Tiles are ``tile`` pixels
    square, row-major, ``tiles_x = ceil(width / tile)`` per row.
    Returns offsets (B * tiles + 1,) int32 and faces (L,) int32: tile t of camera b
    (list index b * tiles + t) holds face indices ``faces[offsets[i]:offsets[i + 1]]``
    in ascending order, so per-pixel sums run in a fixed order (deterministic).
    """
    B, F = face_valid.shape
    tiles_x = -(-width // tile)
    tiles_y = -(-height // tile)
    n_tiles = tiles_x * tiles_y
    boxes = pixel_boxes(face_screen, margin, width, height)  # (B, F, 4)
    # Empty pixel boxes (x1 < x0) must stay empty in tile units.
    empty = (boxes[..., 1] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 2]) | ~face_valid
    boxes = torch.div(boxes, tile, rounding_mode="floor").masked_fill(empty[..., None], 0)
    boxes[..., 1] = boxes[..., 1].masked_fill(empty, -1)
    owner, tx, ty = enumerate_cells(boxes.reshape(B * F, 4))
    camera, face = owner // F, owner % F
    list_index = camera * n_tiles + ty * tiles_x + tx
    # A stable sort keeps faces ascending within each tile.
    list_index, order = torch.sort(list_index, stable=True)
    faces = face[order].to(torch.int32)
    counts = torch.bincount(list_index, minlength=B * n_tiles)
    offsets = torch.zeros(B * n_tiles + 1, dtype=torch.int64, device=face_screen.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return offsets.to(torch.int32), faces
