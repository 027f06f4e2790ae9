"""Faces in screen space: what the renderer hands to the rasterizers.

`screen_faces` turns projected vertices into per-camera triangles in pixel
coordinates and decides which of them are rasterized at all. Pure torch; of the
project it needs only the settings.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .settings import RenderSettings

# A face whose projected (doubled) area is below this many square pixels is skipped:
# its barycentrics are undefined and it covers less than a millionth of a pixel.
MIN_SCREEN_AREA = 1e-6


class ScreenFaces(NamedTuple):
    """Faces projected into B cameras.

    corners: (B, F, 3, 3) float, [u, v, z] per corner: pixel coordinates (v down)
        and view depth; differentiable w.r.t. the vertices.
    valid: (B, F) bool, the faces each camera rasterizes.
    """

    corners: torch.Tensor
    valid: torch.Tensor


def screen_faces(
    screen: torch.Tensor, faces: torch.Tensor, settings: RenderSettings
) -> ScreenFaces:
    """Per-camera screen triangles from projected vertices.

    screen: (B, V, 3) [u, v, z] per vertex; faces: (F, 3) int64.
    A face is invalid with a corner outside [near, far] (behind the camera
    included), a projected area under `MIN_SCREEN_AREA`, or facing away when the
    settings are not double-sided.
    """
    corners = gather_faces(screen, faces, dim=1)  # (B, F, 3, 3)
    with torch.no_grad():
        z = corners[..., 2]
        valid = ((z >= settings.near) & (z <= settings.far)).all(dim=-1)
        area2 = signed_area2(corners)
        valid &= area2.abs() > MIN_SCREEN_AREA
        if not settings.double_sided:
            # With v pointing down, a counter-clockwise (front) face has negative area.
            valid &= area2 < 0
    return ScreenFaces(corners, valid)


def gather_faces(values: torch.Tensor, faces: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Per-corner values of every face: values (..., V, C) -> (..., F, 3, C) along ``dim``;
    any integer index works the same way ((E,) or (E, 2) gives (..., E, C) or (..., E, 2, C)).

    Same as ``values[faces]`` (dim 0), but its backward pass is an index_add, which
    is deterministic on the CPU; advanced indexing's accumulate is not with several
    threads, and that made fits differ from run to run.
    """
    picked = values.index_select(dim, faces.reshape(-1))
    return picked.unflatten(dim, tuple(faces.shape))


def signed_area2(face_screen: torch.Tensor) -> torch.Tensor:
    """Twice the signed area of screen triangles (..., 3, >=2) -> (...)."""
    a, b, c = face_screen[..., 0, :2], face_screen[..., 1, :2], face_screen[..., 2, :2]
    return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (
        c[..., 0] - a[..., 0]
    )
