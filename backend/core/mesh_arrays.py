"""Checking a triangle mesh given as arrays (numpy only, shared by the backend and devtools)."""

from __future__ import annotations

import numpy as np


def triangle_arrays(vertices, faces) -> tuple[np.ndarray, np.ndarray]:
    """vertices as (V, 3) float64 and faces as (F, 3) int64, or ValueError saying what is wrong."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"faces must be an integer array of shape (F, 3) (triangles; "
                         f"triangulate polygons first), got {faces.shape} {faces.dtype}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"face indices must lie in [0, {len(vertices) - 1}], got "
                         f"[{faces.min()}, {faces.max()}]")
    if not np.all(np.isfinite(vertices)):
        raise ValueError("vertices must be finite (found NaN or infinity)")
    return vertices, faces.astype(np.int64)
