"""Triangle quality of a mesh: per-triangle minimum angles and their summary statistics.

    angles = min_angles(vertices, faces)     # (F,) degrees, 0 for a degenerate triangle
    stats = quality_stats(vertices, faces)   # dict of plain floats, for reports and benchmarks

A well-shaped surface mesh has every triangle's smallest angle far from zero
(60 degrees for an equilateral triangle); slivers (a small minimum angle) make
the shading noisy and the fit's gradients badly conditioned. numpy only.
"""

from __future__ import annotations

import numpy as np

from ..core.mesh_arrays import triangle_arrays

# The thresholds `quality_stats` counts triangles under, in degrees.
SLIVER_THRESHOLDS = (10.0, 20.0)


def corner_angles(vertices, faces) -> np.ndarray:
    """The three interior angles of every triangle, in degrees.

    vertices: (V, 3) float; faces: (F, 3) integer. Returns (F, 3) float64, column k
    the angle at corner ``faces[:, k]``; a corner with a zero-length side gets 0.
    """
    vertices, faces = triangle_arrays(vertices, faces)
    corners = vertices[faces]  # (F, 3, 3): triangle, corner, xyz
    to_next = np.roll(corners, -1, axis=1) - corners
    to_prev = np.roll(corners, 1, axis=1) - corners
    # atan2(|a x b|, a . b) stays accurate near 0 and 180 degrees, unlike acos.
    sine = np.linalg.norm(np.cross(to_next, to_prev), axis=2)
    cosine = np.einsum("fkc,fkc->fk", to_next, to_prev)
    angles = np.degrees(np.arctan2(sine, cosine))
    zero_side = (np.linalg.norm(to_next, axis=2) == 0) | (np.linalg.norm(to_prev, axis=2) == 0)
    return np.where(zero_side, 0.0, angles)


def min_angles(vertices, faces) -> np.ndarray:
    """Each triangle's smallest interior angle in degrees: (F,) float64 in [0, 60].

    0 for a degenerate triangle (collinear or coincident corners).
    """
    return corner_angles(vertices, faces).min(axis=1)


def quality_stats(vertices, faces) -> dict[str, float]:
    """Summary of the per-triangle minimum angles (degrees) of a triangle mesh.

    vertices: (V, 3) float; faces: (F, 3) integer, at least one face. Returns plain
    floats: ``faces`` (count), ``min_angle_min``, ``min_angle_p5`` (5th percentile),
    ``min_angle_mean``, and ``pct_under_10`` / ``pct_under_20`` (percent of triangles
    whose minimum angle is under 10 / 20 degrees).
    """
    angles = min_angles(vertices, faces)
    if angles.size == 0:
        raise ValueError("the mesh has no faces: quality statistics need at least one triangle")
    stats = {
        "faces": float(angles.size),
        "min_angle_min": float(angles.min()),
        "min_angle_p5": float(np.percentile(angles, 5)),
        "min_angle_mean": float(angles.mean()),
    }
    for threshold in SLIVER_THRESHOLDS:
        stats[f"pct_under_{threshold:g}"] = float(100.0 * np.mean(angles < threshold))
    return stats
